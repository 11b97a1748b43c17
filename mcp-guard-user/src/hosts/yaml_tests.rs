//! YAML editing: Goose and Continue, every style the files are written in.

use super::*;

const BIN: &str = "/opt/mcp-guard";

/// Wraps, checks what a YAML reader sees in the result (the servers' argv, as the host
/// would read it), unwraps back to the exact bytes, and wraps idempotently.
fn round_trip(host: Host, t: &str) -> String {
    let before = scan_text(host, t);
    let (w, ch) = wrap_text(host, t, BIN).unwrap_or_else(|e| panic!("{e:#}\n{t}"));
    assert!(!ch.is_empty(), "nothing wrapped in\n{t}");
    let after = scan_text(host, &w);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.name, a.name);
        if b.transport != Transport::Stdio || b.command.is_none() {
            assert_eq!((&b.command, &b.args), (&a.command, &a.args), "{w}");
            continue;
        }
        // What the host runs now: mcp-guard wrap --name NAME -- the same argv as before.
        let mut want = vec![
            "wrap".to_string(),
            "--name".into(),
            b.name.clone(),
            "--".into(),
        ];
        want.push(b.command.clone().unwrap());
        want.extend(b.args.iter().cloned());
        assert_eq!(a.command.as_deref(), Some(BIN), "{w}");
        assert_eq!(a.args, want, "{w}");
    }
    assert_eq!(
        unwrap_text(host, &w).unwrap().0,
        t,
        "unwrap is not byte-identical:\n{w}"
    );
    assert_eq!(
        wrap_text(host, &w, BIN).unwrap().0,
        w,
        "wrap is not idempotent"
    );
    w
}

fn scan_text(host: Host, t: &str) -> Vec<Server> {
    parse_entries(host, t)
        .unwrap()
        .iter()
        .map(RawEntry::to_server)
        .collect()
}

const GOOSE: &str = "\
# Goose configuration
GOOSE_PROVIDER: anthropic
extensions:
  developer:
    bundled: true
    enabled: true
    name: developer
    timeout: 300
    type: builtin
  github:
    args:
    - -y
    - '@modelcontextprotocol/server-github'
    cmd: npx   # the runner
    enabled: true
    envs:
      GITHUB_PERSONAL_ACCESS_TOKEN: ghp_example
    name: GitHub
    timeout: 300
    type: stdio
  fetch:
    cmd: \"uvx\"
    args: [mcp-server-fetch, \"--ignore-robots-txt\"]
    enabled: false
    type: stdio
  memory:
    cmd: /usr/local/bin/mcp-memory
    enabled: true
    type: stdio
  remote:
    type: sse
    uri: https://mcp.example.com/sse
    enabled: true
";

#[test]
fn goose_extensions_in_every_style() {
    let w = round_trip(Host::Goose, GOOSE);
    let servers = scan_text(Host::Goose, GOOSE);
    let kinds: Vec<(&str, Transport)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.transport))
        .collect();
    assert_eq!(
        kinds,
        [
            ("developer", Transport::Unknown),
            ("github", Transport::Stdio),
            ("fetch", Transport::Stdio),
            ("memory", Transport::Stdio),
            ("remote", Transport::Remote)
        ]
    );
    // Block sequence: new items in the sequence's own style, the comment kept on its line.
    assert!(w.contains("  github:\n    args:\n    - \"wrap\"\n    - \"--name\"\n    - \"github\"\n    - \"--\"\n    - npx\n    - -y\n"), "{w}");
    assert!(
        w.contains("cmd: \"/opt/mcp-guard\"   # the runner\n"),
        "{w}"
    );
    // Flow sequence; a command without args gets an `args` line under its key.
    assert!(
        w.contains("args: [\"wrap\", \"--name\", \"fetch\", \"--\", \"uvx\", mcp-server-fetch,"),
        "{w}"
    );
    assert!(w.contains("    cmd: \"/opt/mcp-guard\"\n    args: [ \"wrap\", \"--name\", \"memory\", \"--\", /usr/local/bin/mcp-memory ]\n    enabled: true"), "{w}");
}

const CONTINUE: &str = "\
name: My Config
version: 0.0.1
schema: v1
models: []
mcpServers:
  - name: SQLite
    command: npx
    args:
      - \"-y\"
      - \"mcp-sqlite\"
      - \"/home/alice/db.sqlite\"
    env: {}
  - command: uvx     # name after command
    name: Time
  - name: Remote
    type: streamable-http
    url: https://example.com/mcp
  - {name: Inline, command: node, args: [server.js]}
  - {name: InlineNoArgs, command: 'python3'}
";

#[test]
fn continue_servers_list_block_and_flow() {
    let w = round_trip(Host::Continue, CONTINUE);
    assert!(w.contains("  - command: \"/opt/mcp-guard\"     # name after command\n    args: [ \"wrap\", \"--name\", \"Time\", \"--\", uvx ]\n    name: Time"), "{w}");
    assert!(w.contains("{name: InlineNoArgs, command: \"/opt/mcp-guard\", args: [ \"wrap\", \"--name\", \"InlineNoArgs\", \"--\", 'python3' ]}"), "{w}");
    let servers = scan_text(Host::Continue, CONTINUE);
    assert_eq!(servers[2].transport, Transport::Remote);
}

#[test]
fn crlf_non_ascii_and_no_final_newline() {
    let t = "# café ☕\r\nextensions:\r\n  é:\r\n    cmd: node\r\n    type: stdio";
    let w = round_trip(Host::Goose, t);
    assert!(
        w.contains(
            "cmd: \"/opt/mcp-guard\"\r\n    args: [ \"wrap\", \"--name\", \"é\", \"--\", node ]"
        ),
        "{w:?}"
    );
    let t = "mcpServers:\r\n  - name: a\r\n    command: x\r\n    args:\r\n      - y\r\n";
    let w = round_trip(Host::Continue, t);
    assert!(
        w.contains("args:\r\n      - \"wrap\"\r\n      - \"--name\""),
        "{w:?}"
    );
}

#[test]
fn commands_that_need_quoting_in_a_flow_sequence_are_reencoded() {
    // A plain scalar with a comma is one value in block style, two in a flow sequence.
    let t = "mcpServers:\n  - name: a\n    command: /opt/my,tool\n    args: [x]\n";
    let (w, _) = wrap_text(Host::Continue, t, BIN).unwrap();
    let s = &scan_text(Host::Continue, &w)[0];
    assert_eq!(s.args, ["wrap", "--name", "a", "--", "/opt/my,tool", "x"]);
    // Unwrap restores the command (quoted now) and the arguments.
    let back = unwrap_text(Host::Continue, &w).unwrap().0;
    let s = &scan_text(Host::Continue, &back)[0];
    assert_eq!(
        (s.command.as_deref(), &s.args[..]),
        (Some("/opt/my,tool"), &["x".to_string()][..])
    );
}

#[test]
fn entries_yaml_cannot_edit_safely_are_left_alone() {
    // An alias for args, a block scalar command, a tagged value: reported, not edited.
    let t = "\
common: &c [-y, srv]
mcpServers:
  - name: aliased
    command: npx
    args: *c
  - name: literal
    command: |
      npx
  - name: tagged
    command: !!str npx
";
    let (w, ch) = wrap_text(Host::Continue, t, BIN).unwrap();
    assert!(ch.is_empty(), "{ch:?}");
    assert_eq!(w, t);
    let servers = scan_text(Host::Continue, t);
    assert!(servers.iter().all(|s| !s.wrapped));
}

#[test]
fn a_key_named_twice_is_an_error() {
    for t in [
        "mcpServers:\n  - name: a\n    command: x\n    command: y\n",
        "extensions:\n  a:\n    cmd: x\n  a:\n    cmd: y\n",
        "extensions: {}\nextensions:\n  a:\n    cmd: y\n",
    ] {
        let host = if t.contains("extensions") {
            Host::Goose
        } else {
            Host::Continue
        };
        let e = parse_entries(host, t).unwrap_err();
        assert!(e.contains("appears twice"), "{t}: {e}");
    }
}

#[test]
fn json_block_files_and_bad_yaml() {
    let t = "{\n  \"mcpServers\": {\n    \"fs\": {\"command\": \"npx\", \"args\": [\"-y\", \"srv\"]}\n  }\n}\n";
    let w = round_trip(Host::Continue, t);
    assert!(
        w.contains("\"args\": [\"wrap\", \"--name\", \"fs\", \"--\", \"npx\", \"-y\""),
        "{w}"
    );
    let e = parse_entries(Host::Goose, "extensions:\n  a: [\n").unwrap_err();
    assert!(e.contains("cannot parse as YAML"), "{e}");
    let e = parse_entries(Host::Goose, "- a\n- b\n").unwrap_err();
    assert!(e.contains("not a YAML mapping"), "{e}");
    assert!(parse_entries(Host::Goose, "").unwrap().is_empty());
    assert!(
        parse_entries(Host::Goose, "# only a comment\n")
            .unwrap()
            .is_empty()
    );
}
