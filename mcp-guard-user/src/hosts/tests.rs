use super::*;

const BIN: &str = "/opt/mcp-guard";

#[test]
fn wraps_and_unwraps_json_args_shapes() {
    let t = r#"{"mcpServers": {"a": {"command": "x", "args": ["1"], "env": {"K": "v"}}, "b": {"command": "y"}, "c": {"command": "z", "args": [ ]}}}"#;
    let (w, ch) = wrap_text(Host::Cursor, t, BIN).unwrap();
    assert_eq!(ch.len(), 3);
    assert_eq!(
        w,
        r#"{"mcpServers": {"a": {"command": "/opt/mcp-guard", "args": ["wrap", "--name", "a", "--", "x", "1"], "env": {"K": "v"}}, "b": {"command": "/opt/mcp-guard", "args": [ "wrap", "--name", "b", "--", "y" ]}, "c": {"command": "/opt/mcp-guard", "args": ["wrap", "--name", "c", "--", "z" ]}}}"#
    );
    // An `args` wrap added goes away again; one the user had (even empty) stays.
    let back = unwrap_text(Host::Cursor, &w).unwrap().0;
    assert_eq!(back, t);
    assert_eq!(wrap_text(Host::Cursor, &w, BIN).unwrap().0, w);
    let t2 = "{\"mcpServers\": {\"c\": {\n  \"command\": \"z\",\n  \"args\": []\n}}}";
    let (w2, _) = wrap_text(Host::Cursor, t2, BIN).unwrap();
    assert_eq!(unwrap_text(Host::Cursor, &w2).unwrap().0, t2);
}

#[test]
fn escapes_names_and_keeps_raw_command_text() {
    let t = "{\"mcpServers\": {\"we\\\"ird\": {\"command\": \"np\\u0078\"}}}";
    let (w, _) = wrap_text(Host::Cursor, t, BIN).unwrap();
    assert!(
        w.contains(r#""--name", "we\"ird", "--", "np\u0078""#),
        "{w}"
    );
    assert_eq!(unwrap_text(Host::Cursor, &w).unwrap().0, t);
}

#[test]
fn wrapped_detection() {
    let t = r#"{"mcpServers": {"a": {"command": "mcp-guard", "args": ["wrap", "--", "x"]}, "b": {"command": "/x/not-mcp-guard", "args": ["wrap"]}, "c": {"command": "mcp-guard", "args": ["check"]}}}"#;
    let e = json::entries(Host::Cursor, t).unwrap();
    let w: Vec<bool> = e.iter().map(RawEntry::wrapped).collect();
    assert_eq!(w, [true, false, false]);
}

#[test]
fn toml_inline_table_and_no_args() {
    let t = "[mcp_servers]\na = { command = \"x\", env = { K = \"v\" } }\n[mcp_servers.b]\n  command = 'y'\n";
    let (w, _) = wrap_text(Host::Codex, t, BIN).unwrap();
    assert_eq!(
        w,
        "[mcp_servers]\na = { command = \"/opt/mcp-guard\", args = [\"wrap\", \"--name\", \"a\", \"--\", \"x\",], env = { K = \"v\" } }\n[mcp_servers.b]\n  command = \"/opt/mcp-guard\"\n  args = [\"wrap\", \"--name\", \"b\", \"--\", 'y',]\n"
    );
    assert_eq!(unwrap_text(Host::Codex, &w).unwrap().0, t);
}

#[test]
fn opencode_combined_command() {
    let t = r#"{"mcp": {"s": {"type": "local", "command": ["bun", "x", "srv"]}}}"#;
    let (w, _) = wrap_text(Host::OpenCode, t, BIN).unwrap();
    assert!(
        w.contains(r#"["/opt/mcp-guard", "wrap", "--name", "s", "--", "bun", "x", "srv"]"#),
        "{w}"
    );
    assert_eq!(unwrap_text(Host::OpenCode, &w).unwrap().0, t);
}

#[test]
fn empty_file_has_no_servers_and_slugs_round_trip() {
    assert!(json::entries(Host::Cursor, "").unwrap().is_empty());
    for h in Host::ALL {
        assert_eq!(Host::from_slug(h.slug()), Some(h));
    }
}

#[test]
fn diff_shows_changed_lines() {
    let d = line_diff("a\nb\nc\n", "a\nB\nc\n", "f");
    assert!(d.contains("\n-b\n") && d.contains("\n+B\n"), "{d}");
    assert!(d.starts_with("--- f\n+++ f\n@@ -1,3 +1,3 @@\n"), "{d}");
    assert_eq!(line_diff("same\n", "same\n", "f"), "");
}

/// The dry-run diff is a real unified diff: `git apply` turns the old file into the new one
/// (and back), CRLF files and a last line without a newline included.
#[test]
fn the_dry_run_diff_applies_with_git() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "{\n  \"mcpServers\": {\n    \"fs\": {\n      \"command\": \"npx\",\n      \"args\": [\"-y\", \"@modelcontextprotocol/server-filesystem\", \"/srv\"]\n    }\n  }\n}\n",
            "{\n  \"mcpServers\": {\n    \"fs\": {\n      \"command\": \"/usr/bin/mcp-guard\",\n      \"args\": [\"wrap\", \"--name\", \"fs\", \"--\", \"npx\", \"-y\", \"@modelcontextprotocol/server-filesystem\", \"/srv\"]\n    }\n  }\n}\n",
        ),
        ("a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n"),
        ("x\ny", "x\nz"),
    ];
    for (i, (old, new)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("config-{i}.json"));
        std::fs::write(&file, old).unwrap();
        let patch = dir.path().join(format!("config-{i}.patch"));
        std::fs::write(&patch, line_diff(old, new, &file.display().to_string())).unwrap();
        let apply = |reverse: bool| {
            let mut cmd = std::process::Command::new("git");
            cmd.args(["apply", "--unsafe-paths", "-p0"]);
            if reverse {
                cmd.arg("--reverse");
            }
            let out = cmd.arg(&patch).current_dir(dir.path()).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        apply(false);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), *new, "case {i}");
        apply(true);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), *old, "case {i}");
    }
}

/// A key named twice where the config is read (a second `command`, server, `args` or
/// `mcpServers`) is an error: hosts read the last one, a lookup here would read the first.
#[test]
fn a_key_named_twice_where_hosts_read_is_an_error() {
    let wrapped =
        r#"{"command": "/usr/bin/mcp-guard", "args": ["wrap", "--name", "fs", "--", "npx", "srv"]"#;
    for text in [
        format!(r#"{{"mcpServers": {{"fs": {wrapped}, "command": "npx"}}}}}}"#),
        format!(r#"{{"mcpServers": {{"fs": {wrapped}, "args": ["srv"]}}}}}}"#),
        format!(r#"{{"mcpServers": {{"fs": {wrapped}}}, "fs": {{"command": "npx"}}}}}}"#),
        format!(
            r#"{{"mcpServers": {{"fs": {wrapped}}}}},
"mcpServers": {{"fs": {{"command": "npx"}}}}}}"#
        ),
    ] {
        let err = json::entries(Host::Cursor, &text).unwrap_err();
        assert!(
            err.contains("appears twice") && err.contains("line "),
            "{err}\n{text}"
        );
    }
    let ok = format!(r#"{{"mcpServers": {{"fs": {wrapped}}}}}}}"#);
    assert_eq!(json::entries(Host::Cursor, &ok).unwrap().len(), 1);
}
