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
fn what_cannot_be_followed_or_edited_makes_the_file_an_error() {
    // Each would let the host run something mcp-guard does not see, or an edit change
    // another entry: the file is reported (scan, and scan --check, fail on it), not edited.
    for (t, says) in [
        (
            "common: &c [-y, srv]\nmcpServers:\n  - name: a\n    command: npx\n    args: *c\n",
            "an alias",
        ),
        (
            "mcpServers:\n  - name: a\n    command: &n npx\n  - name: b\n    command: *n\n",
            "an anchor",
        ),
        (
            "mcpServers:\n  - name: a\n    <<: {command: npx}\n",
            "merge key",
        ),
        (
            "mcpServers:\n  - name: a\n    command: !custom npx\n",
            "a tag",
        ),
        (
            "mcpServers: !custom\n  - name: a\n    command: npx\n",
            "a tag",
        ),
        (
            "mcpServers:\n  - name: literal\n    command: |\n      npx\n",
            "does not edit",
        ),
        (
            "mcpServers:\n  - name: a\n    command: npx\n    args: -y\n",
            "does not edit",
        ),
        (
            "mcpServers:\n  - name: a\n    ? command\n    : npx\n",
            "does not edit",
        ),
    ] {
        let e = parse_entries(Host::Continue, t).unwrap_err();
        assert!(e.contains(says), "{t}: {e}");
        assert!(wrap_text(Host::Continue, t, BIN).is_err());
    }
    // The core tags every reader reads as plain nodes are fine, and so are anchors outside
    // the servers.
    let t = "defaults: &d {a: 1}\nmcpServers: !!seq\n  - !!map\n    name: !!str a\n    command: npx\n    args: !!seq [x]\n";
    assert_eq!(
        scan_text(Host::Continue, t)[0].command.as_deref(),
        Some("npx")
    );
    round_trip(Host::Continue, t);
}

#[test]
fn a_byte_order_mark_is_read_past() {
    let t = "\u{feff}extensions:\n  a:\n    cmd: npx\n    type: stdio\n";
    let w = round_trip(Host::Goose, t);
    assert!(w.starts_with("\u{feff}extensions:"));
}

#[test]
fn a_server_named_like_an_option_is_wrapped_and_unwrapped() {
    for name in ["--", "-x", "--name"] {
        let t =
            format!("extensions:\n  \"{name}\":\n    cmd: npx\n    args: [srv]\n    type: stdio\n");
        let (w, _) = wrap_text(Host::Goose, &t, BIN).unwrap();
        let s = &scan_text(Host::Goose, &w)[0];
        assert_eq!(
            s.args,
            [
                "wrap".to_string(),
                format!("--name={name}"),
                "--".into(),
                "npx".into(),
                "srv".into()
            ]
        );
        assert_eq!(unwrap_text(Host::Goose, &w).unwrap().0, t);
    }
}

#[test]
fn goose_decides_by_type_and_a_command_beside_a_url_is_a_process() {
    let t = "extensions:\n  a:\n    type: stdio\n    cmd: npx\n    uri: https://x\n";
    assert_eq!(scan_text(Host::Goose, t)[0].transport, Transport::Stdio);
    let t = "mcpServers:\n  - name: a\n    command: npx\n    url: https://x\n";
    assert_eq!(scan_text(Host::Continue, t)[0].transport, Transport::Stdio);
    let t = "mcpServers:\n  - name: a\n    type: sse\n    command: npx\n    url: https://x\n";
    assert_eq!(scan_text(Host::Continue, t)[0].transport, Transport::Remote);
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
