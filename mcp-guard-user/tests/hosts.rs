//! Host config discovery and wrap / unwrap on realistic fixtures.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mcp_guard::hosts::{self, Host, Transport};

const BIN: &str = "/usr/local/bin/mcp-guard";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts")
}

/// (host, fixture, relative path under the fake home)
const LAYOUT: &[(Host, &str, &str)] = &[
    (
        Host::ClaudeDesktop,
        "claude_desktop.json",
        ".config/Claude/claude_desktop_config.json",
    ),
    (Host::ClaudeCode, "claude_code.json", ".claude.json"),
    (Host::Cursor, "cursor.json", ".cursor/mcp.json"),
    (Host::VsCode, "vscode.jsonc", ".config/Code/User/mcp.json"),
    (
        Host::Cline,
        "cline.json",
        ".config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
    ),
    (
        Host::Windsurf,
        "windsurf.json",
        ".codeium/windsurf/mcp_config.json",
    ),
    (Host::GeminiCli, "gemini.json", ".gemini/settings.json"),
    (Host::Zed, "zed.jsonc", ".config/zed/settings.json"),
    (Host::Codex, "codex.toml", ".codex/config.toml"),
    (Host::Continue, "continue.yaml", ".continue/config.yaml"),
    (
        Host::Continue,
        "continue_block.yaml",
        ".continue/mcpServers/postgres.yaml",
    ),
    (
        Host::Continue,
        "continue_block.json",
        ".continue/mcpServers/filesystem.json",
    ),
    (Host::Goose, "goose.yaml", ".config/goose/config.yaml"),
    (Host::LmStudio, "lmstudio.json", ".lmstudio/mcp.json"),
    (
        Host::OpenCode,
        "opencode.json",
        ".config/opencode/opencode.json",
    ),
    (Host::Kiro, "kiro.json", ".kiro/settings/mcp.json"),
];

fn fake_home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    for (_, fx, rel) in LAYOUT {
        let p = home.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::copy(fixtures().join(fx), &p).unwrap();
    }
    let proj = dir.path().join("proj");
    fs::create_dir_all(&proj).unwrap();
    fs::copy(fixtures().join("project_mcp.json"), proj.join(".mcp.json")).unwrap();
    (dir, proj)
}

#[test]
fn scan_finds_every_host_and_server() {
    let (dir, proj) = fake_home();
    let found = hosts::scan(&dir.path().join("home"), std::slice::from_ref(&proj));
    assert_eq!(found.len(), LAYOUT.len() + 1, "{found:#?}");
    let get = |h: Host| {
        found
            .iter()
            .find(|f| f.host == h && !f.path.starts_with(&proj))
            .unwrap()
    };
    let srv = |h: Host, n: &str| {
        get(h)
            .servers
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("{h} {n}"))
            .clone()
    };

    let cd = get(Host::ClaudeDesktop);
    assert_eq!(cd.servers.len(), 4);
    assert_eq!(
        srv(Host::ClaudeDesktop, "filesystem").transport,
        Transport::Stdio
    );
    assert_eq!(
        srv(Host::ClaudeDesktop, "filesystem").command.as_deref(),
        Some("npx")
    );
    assert!(!srv(Host::ClaudeDesktop, "filesystem").wrapped);
    assert!(srv(Host::ClaudeDesktop, "guarded").wrapped);
    assert_eq!(
        srv(Host::ClaudeDesktop, "remote-sse").transport,
        Transport::Remote
    );

    let cc = get(Host::ClaudeCode);
    assert_eq!(cc.servers.len(), 4);
    assert_eq!(srv(Host::ClaudeCode, "sentry").transport, Transport::Remote);
    let pg = srv(Host::ClaudeCode, "postgres");
    assert_eq!(pg.scope.as_deref(), Some("/home/alice/src/app"));
    assert_eq!(pg.transport, Transport::Stdio);
    assert_eq!(srv(Host::ClaudeCode, "bare").args, Vec::<String>::new());

    let pm = found.iter().find(|f| f.path.starts_with(&proj)).unwrap();
    assert_eq!(pm.host, Host::ClaudeCode);
    assert_eq!(pm.servers[0].name, "playwright");

    assert_eq!(
        srv(Host::VsCode, "fs").args,
        [
            "-y",
            "@modelcontextprotocol/server-filesystem",
            "${workspaceFolder}"
        ]
    );
    assert_eq!(srv(Host::VsCode, "github").transport, Transport::Remote);
    assert_eq!(srv(Host::Windsurf, "remote").transport, Transport::Remote);
    assert_eq!(
        srv(Host::GeminiCli, "httpServer").transport,
        Transport::Remote
    );
    assert_eq!(
        srv(Host::GeminiCli, "pythonTools").command.as_deref(),
        Some("python")
    );
    assert_eq!(srv(Host::Zed, "legacy-git").command.as_deref(), Some("uvx"));
    assert_eq!(srv(Host::Zed, "remote-one").transport, Transport::Remote);
    assert_eq!(srv(Host::Codex, "docs").args, ["--port", "4000"]);
    assert_eq!(srv(Host::Codex, "figma").transport, Transport::Remote);
    assert!(srv(Host::Codex, "already").wrapped);
    assert_eq!(
        srv(Host::OpenCode, "everything").command.as_deref(),
        Some("npx")
    );
    assert_eq!(
        srv(Host::OpenCode, "remote-docs").transport,
        Transport::Remote
    );
    assert_eq!(srv(Host::Cline, "weather").transport, Transport::Stdio);
    assert_eq!(srv(Host::Kiro, "fetch").transport, Transport::Stdio);
    assert_eq!(srv(Host::LmStudio, "hf").transport, Transport::Stdio);
    assert_eq!(srv(Host::Cursor, "linear").transport, Transport::Remote);

    let at = |rel: &str| {
        found
            .iter()
            .find(|f| f.path.ends_with(rel))
            .unwrap_or_else(|| panic!("{rel} not found"))
    };
    let cont = at(".continue/config.yaml");
    assert!(cont.error.is_none(), "{cont:?}");
    let names: Vec<(&str, Transport)> = cont
        .servers
        .iter()
        .map(|s| (s.name.as_str(), s.transport))
        .collect();
    assert_eq!(
        names,
        [
            ("SQLite MCP", Transport::Stdio),
            ("Playwright", Transport::Stdio),
            ("Memory", Transport::Stdio),
            ("Time", Transport::Stdio),
            ("Docs", Transport::Remote),
            ("Events", Transport::Remote)
        ]
    );
    assert_eq!(cont.servers[2].command.as_deref(), Some("uvx"));
    assert_eq!(
        cont.servers[0].args,
        ["-y", "mcp-sqlite", "/home/alice/db.sqlite"]
    );
    let block = at(".continue/mcpServers/postgres.yaml");
    assert_eq!(block.servers[0].name, "postgres");
    let json = at(".continue/mcpServers/filesystem.json");
    assert_eq!(json.format, hosts::Format::Json);
    assert_eq!(json.servers[1].transport, Transport::Remote);
    let goose = get(Host::Goose);
    let kinds: Vec<(&str, Transport)> = goose
        .servers
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
            ("remote-tools", Transport::Remote),
            ("api", Transport::Remote)
        ]
    );
}

#[test]
fn wrap_unwrap_round_trip_every_fixture() {
    for (host, fx, _) in LAYOUT {
        let text = fs::read_to_string(fixtures().join(fx)).unwrap();
        let (wrapped, changes) =
            hosts::wrap_text(*host, &text, BIN).unwrap_or_else(|e| panic!("{fx}: {e:#}"));
        assert!(!changes.is_empty(), "{fx}: nothing wrapped");
        assert_ne!(wrapped, text);
        // wrapping twice is a no-op
        let (again, ch2) = hosts::wrap_text(*host, &wrapped, BIN).unwrap();
        assert_eq!(again, wrapped, "{fx}: second wrap changed the text");
        assert!(ch2.is_empty());
        // every stdio server is now wrapped with its own name
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cfg");
        fs::write(&p, &wrapped).unwrap();
        let f = hosts::scan_file(&p, *host);
        assert!(f.error.is_none(), "{fx}: {:?}", f.error);
        for s in f.servers.iter().filter(|s| s.transport == Transport::Stdio) {
            assert!(s.wrapped, "{fx}: {} not wrapped:\n{wrapped}", s.name);
            let c = s.command.as_deref().unwrap();
            assert!(c == "mcp-guard" || c.ends_with("/mcp-guard"), "{fx}: {s:?}");
            let dd = s.args.iter().position(|a| a == "--").unwrap();
            assert_eq!(s.args[0], "wrap");
            if s.name != "guarded" && s.name != "already" {
                assert_eq!(&s.args[..dd], ["wrap", "--name", s.name.as_str()], "{fx}");
            }
        }
        // unwrap of the wrapped text of a fixture without pre-wrapped entries is byte-identical
        let (back, _) = hosts::unwrap_text(*host, &wrapped).unwrap();
        let (orig_unwrapped, _) = hosts::unwrap_text(*host, &text).unwrap();
        assert_eq!(back, orig_unwrapped, "{fx}");
        let (rewrapped, _) = hosts::wrap_text(*host, &back, BIN).unwrap();
        if orig_unwrapped == text {
            assert_eq!(back, text, "{fx}: round trip not byte-identical");
        }
        assert_eq!(
            hosts::unwrap_text(*host, &rewrapped).unwrap().0,
            back,
            "{fx}"
        );
    }
}

#[test]
fn comments_order_and_remote_entries_preserved() {
    let text = fs::read_to_string(fixtures().join("vscode.jsonc")).unwrap();
    let (w, _) = hosts::wrap_text(Host::VsCode, &text, BIN).unwrap();
    for keep in [
        "// VS Code user MCP servers",
        "/* the file system server */",
        "// launched via npx",
        "\"${workspaceFolder}\", // trailing comma next\n\t\t\t],",
        "\"env\": { \"LOG\": \"debug\" },\n\t\t\t\"envFile\": \"${workspaceFolder}/.env\",",
        "\"github\": {\n\t\t\t\"type\": \"http\",\n\t\t\t\"url\": \"https://api.githubcopilot.com/mcp/\",\n\t\t},",
    ] {
        assert!(w.contains(keep), "lost {keep:?} in\n{w}");
    }
    assert!(
        w.contains("\"command\": \"/usr/local/bin/mcp-guard\", // launched via npx"),
        "{w}"
    );
    assert!(
        w.contains("\"args\": [\n\t\t\t\t\"wrap\", \"--name\", \"fs\", \"--\", \"npx\", \"-y\","),
        "{w}"
    );
    // only command and args lines differ
    let changed: Vec<_> = text
        .lines()
        .zip(w.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed.len(), 2, "{changed:#?}");

    let toml = fs::read_to_string(fixtures().join("codex.toml")).unwrap();
    let (w, _) = hosts::wrap_text(Host::Codex, &toml, BIN).unwrap();
    assert!(w.contains("command = \"/usr/local/bin/mcp-guard\" # the docs server\nargs = [\"wrap\", \"--name\", \"docs\", \"--\", \"docs-server\", \"--port\", \"4000\"]"), "{w}");
    assert!(w.contains("command = \"/usr/local/bin/mcp-guard\"\nargs = [\"wrap\", \"--name\", \"noargs\", \"--\", \"/usr/bin/noargs-server\",]\nstartup_timeout_sec = 20"), "{w}");
    assert!(
        w.contains("[mcp_servers.figma]\nurl = \"https://mcp.figma.com/mcp\"\n"),
        "{w}"
    );
    assert!(w.contains("\"-y\", # auto-install"), "{w}");
    assert!(
        w.contains("[mcp_servers.withenv.env]\nFOO = \"bar\""),
        "{w}"
    );
    assert!(w.starts_with("# Codex CLI configuration\nmodel = \"o4-mini\"\n"));
}

#[test]
fn unparsable_file_is_an_error_naming_the_file_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mcp.json");
    fs::copy(fixtures().join("broken.json"), &p).unwrap();
    let before = fs::read(&p).unwrap();
    let err = hosts::wrap_file(&p, Host::Cursor, BIN)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&p.display().to_string()) && err.contains("parse"),
        "{err}"
    );
    let err = hosts::unwrap_file(&p, Host::Cursor)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&p.display().to_string()), "{err}");
    assert_eq!(fs::read(&p).unwrap(), before);
    let f = hosts::scan_file(&p, Host::Cursor);
    assert!(f.error.unwrap().contains("mcp.json"));
    // Broken YAML: the same, with the parser's line and column.
    let y = dir.path().join("config.yaml");
    fs::write(&y, "mcpServers:\n  - name: a\n    command: [npx\n").unwrap();
    let err = hosts::wrap_file(&y, Host::Continue, BIN)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot parse as YAML") && err.contains("config.yaml") && err.contains("line"),
        "{err}"
    );
}

#[test]
fn apply_is_atomic_keeps_mode_and_backs_up_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("claude_desktop_config.json");
    let orig = fs::read_to_string(fixtures().join("claude_desktop.json")).unwrap();
    fs::write(&p, &orig).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();

    let edit = hosts::wrap_file(&p, Host::ClaudeDesktop, BIN).unwrap();
    assert!(!edit.is_noop());
    assert!(edit.diff().contains("+"), "{}", edit.diff());
    assert_eq!(
        fs::read_to_string(&p).unwrap(),
        orig,
        "wrap_file must not write"
    );
    hosts::apply(&edit).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), edit.new);
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    let bak = hosts::backup_path(&p);
    assert_eq!(fs::read_to_string(&bak).unwrap(), orig);
    // no temp files left behind
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // second wrap: no-op, nothing written
    let again = hosts::wrap_file(&p, Host::ClaudeDesktop, BIN).unwrap();
    assert!(again.is_noop());
    hosts::apply(&again).unwrap();

    // unwrap: backup already exists, so it keeps the original
    let un = hosts::unwrap_file(&p, Host::ClaudeDesktop).unwrap();
    hosts::apply(&un).unwrap();
    assert_eq!(fs::read_to_string(&bak).unwrap(), orig);
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    // the pre-wrapped "guarded" entry is unwrapped too
    assert!(
        fs::read_to_string(&p)
            .unwrap()
            .contains("\"command\": \"uvx\"")
    );

    // a file changed after the edit was computed is not overwritten
    let e = hosts::wrap_file(&p, Host::ClaudeDesktop, BIN).unwrap();
    fs::write(&p, "{}").unwrap();
    assert!(
        hosts::apply(&e)
            .unwrap_err()
            .to_string()
            .contains("changed since")
    );
    assert_eq!(fs::read_to_string(&p).unwrap(), "{}");
}

#[test]
fn round_trip_exact_for_fixtures_without_prewrapped_entries() {
    for (host, fx) in [
        (Host::VsCode, "vscode.jsonc"),
        (Host::Zed, "zed.jsonc"),
        (Host::OpenCode, "opencode.json"),
        (Host::ClaudeCode, "claude_code.json"),
        (Host::GeminiCli, "gemini.json"),
    ] {
        let text = fs::read_to_string(fixtures().join(fx)).unwrap();
        let (w, _) = hosts::wrap_text(host, &text, BIN).unwrap();
        assert_eq!(hosts::unwrap_text(host, &w).unwrap().0, text, "{fx}\n{w}");
    }
    // Codex without its pre-wrapped entry
    let toml = fs::read_to_string(fixtures().join("codex.toml")).unwrap();
    let toml = toml.replace("[mcp_servers.already]\ncommand = \"mcp-guard\"\nargs = [\"wrap\", \"--name\", \"already\", \"--\", \"npx\", \"-y\", \"srv\"]\n\n", "");
    let (w, _) = hosts::wrap_text(Host::Codex, &toml, BIN).unwrap();
    // Even an empty `args = []` right after `command` comes back as it was.
    assert_eq!(hosts::unwrap_text(Host::Codex, &w).unwrap().0, toml, "{w}");
}
