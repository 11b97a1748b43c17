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
    // The layouts and hosts added for the coverage issue: each fixture follows the
    // host's documented format.
    (
        Host::VsCode,
        "vscode_settings.jsonc",
        ".config/Code/User/settings.json",
    ),
    (
        Host::VsCode,
        "vscode.jsonc",
        ".config/Code/User/profiles/-5a1b2c3d/mcp.json",
    ),
    (
        Host::VsCode,
        "vscode.jsonc",
        ".config/Code - Insiders/User/mcp.json",
    ),
    (
        Host::VsCode,
        "vscode.jsonc",
        ".config/VSCodium/User/mcp.json",
    ),
    (
        Host::VsCode,
        "vscode.jsonc",
        ".vscode-server/data/User/mcp.json",
    ),
    (
        Host::VsCode,
        "vscode.jsonc",
        ".var/app/com.visualstudio.code/config/Code/User/mcp.json",
    ),
    (
        Host::OpenCode,
        "opencode_v2.jsonc",
        ".config/opencode/opencode.jsonc",
    ),
    (
        Host::Cline,
        "cline.json",
        ".cline/data/settings/cline_mcp_settings.json",
    ),
    (
        Host::CopilotCli,
        "copilot_cli.json",
        ".copilot/mcp-config.json",
    ),
    (
        Host::RooCode,
        "roo.json",
        ".config/Code/User/globalStorage/rooveterinaryinc.roo-cline/settings/mcp_settings.json",
    ),
    (
        Host::RooCode,
        "roo.json",
        ".vscode-server/data/User/globalStorage/rooveterinaryinc.roo-cline/settings/mcp_settings.json",
    ),
    (Host::AmazonQ, "amazonq.json", ".aws/amazonq/mcp.json"),
    (
        Host::AmazonQ,
        "amazonq_agent.json",
        ".aws/amazonq/cli-agents/rust.json",
    ),
    (Host::Kiro, "amazonq_agent.json", ".kiro/agents/rust.json"),
    (Host::QwenCode, "qwen.jsonc", ".qwen/settings.json"),
    (Host::Crush, "crush.json", ".config/crush/crush.json"),
    (
        Host::GeminiCli,
        "gemini_extension.json",
        ".gemini/extensions/my-extension/gemini-extension.json",
    ),
];

/// (host, fixture, relative path in the project directory)
const PROJECT: &[(Host, &str, &str)] = &[
    (Host::ClaudeCode, "project_mcp.json", ".mcp.json"),
    (Host::OpenCode, "opencode_v2.jsonc", "opencode.jsonc"),
    (Host::OpenCode, "opencode.json", ".opencode/opencode.json"),
    (Host::RooCode, "roo.json", ".roo/mcp.json"),
    (Host::Kiro, "kiro.json", ".kiro/settings/mcp.json"),
    (Host::Codex, "codex.toml", ".codex/config.toml"),
    (Host::AmazonQ, "amazonq.json", ".amazonq/mcp.json"),
    (
        Host::AmazonQ,
        "amazonq_agent.json",
        ".amazonq/cli-agents/dev.json",
    ),
    (Host::QwenCode, "qwen.jsonc", ".qwen/settings.json"),
    (Host::Crush, "crush.json", ".crush.json"),
];

/// (host, fixture, path under the system root)
const SYSTEM: &[(Host, &str, &str)] = &[
    (
        Host::ClaudeCode,
        "claude_managed.json",
        "etc/claude-code/managed-mcp.json",
    ),
    (
        Host::GeminiCli,
        "gemini_system.json",
        "etc/gemini-cli/settings.json",
    ),
    (
        Host::GeminiCli,
        "gemini_system.json",
        "etc/gemini-cli/system-defaults.json",
    ),
    (Host::QwenCode, "qwen.jsonc", "etc/qwen-code/settings.json"),
    (
        Host::OpenCode,
        "opencode_v2.jsonc",
        "etc/opencode/opencode.jsonc",
    ),
];

/// Every (host, fixture) pair the layouts use, once.
fn every_fixture() -> Vec<(Host, &'static str)> {
    let mut v: Vec<(Host, &str)> = Vec::new();
    for (h, fx, _) in LAYOUT.iter().chain(PROJECT).chain(SYSTEM) {
        if !v.contains(&(*h, *fx)) {
            v.push((*h, fx));
        }
    }
    v
}

fn lay_out(root: &Path, layout: &[(Host, &str, &str)]) {
    for (_, fx, rel) in layout {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::copy(fixtures().join(fx), &p).unwrap();
    }
}

fn fake_home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    lay_out(&dir.path().join("home"), LAYOUT);
    let proj = dir.path().join("proj");
    lay_out(&proj, PROJECT);
    (dir, proj)
}

#[test]
fn scan_finds_every_host_and_server() {
    let (dir, proj) = fake_home();
    let found = hosts::scan(&dir.path().join("home"), std::slice::from_ref(&proj));
    assert_eq!(found.len(), LAYOUT.len() + PROJECT.len(), "{found:#?}");
    // Every file laid out is found, as the host it belongs to.
    for (root, layout) in [(dir.path().join("home"), LAYOUT), (proj.clone(), PROJECT)] {
        for (h, _, rel) in layout {
            let f = found
                .iter()
                .find(|f| f.path == root.join(rel))
                .unwrap_or_else(|| panic!("{rel} not found"));
            assert_eq!(f.host, *h, "{rel}");
            assert!(f.error.is_none(), "{rel}: {f:?}");
        }
    }
    // The first file of a host in LAYOUT order.
    let get = |h: Host| {
        let rel = LAYOUT.iter().find(|(lh, ..)| *lh == h).unwrap().2;
        found
            .iter()
            .find(|f| f.path == dir.path().join("home").join(rel))
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

    let pm = found
        .iter()
        .find(|f| f.path == proj.join(".mcp.json"))
        .unwrap();
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
    for (host, fx) in every_fixture().iter() {
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
    let err = hosts::wrap_file(&p, Host::Cursor, BIN).unwrap_err();
    // Not ours to fix: the CLI reports it as a warning, not a failure.
    assert!(err.is::<hosts::Unsupported>(), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains(&p.display().to_string()) && err.contains("parse"),
        "{err}"
    );
    let err = hosts::unwrap_file(&p, Host::Cursor)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&p.display().to_string()), "{err}");
    assert_eq!(fs::read(&p).unwrap(), before);
    // A file that cannot be read at all is a real failure, not a warning.
    let gone = hosts::wrap_file(&dir.path().join("missing.json"), Host::Cursor, BIN).unwrap_err();
    assert!(!gone.is::<hosts::Unsupported>(), "{gone:?}");
    let f = hosts::scan_file(&p, Host::Cursor);
    assert!(f.error.unwrap().contains("mcp.json"));
    // Broken YAML: the same, with the parser's line and column.
    let y = dir.path().join("config.yaml");
    fs::write(&y, "mcpServers:\n  - name: a\n    command: [npx\n").unwrap();
    let err = hosts::wrap_file(&y, Host::Continue, BIN).unwrap_err();
    assert!(err.is::<hosts::Unsupported>(), "{err:?}");
    let err = err.to_string();
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
        (Host::VsCode, "vscode_settings.jsonc"),
        (Host::OpenCode, "opencode_v2.jsonc"),
        (Host::Cline, "cline.json"),
        (Host::CopilotCli, "copilot_cli.json"),
        (Host::RooCode, "roo.json"),
        (Host::AmazonQ, "amazonq.json"),
        (Host::AmazonQ, "amazonq_agent.json"),
        (Host::Kiro, "amazonq_agent.json"),
        (Host::QwenCode, "qwen.jsonc"),
        (Host::Crush, "crush.json"),
        (Host::GeminiCli, "gemini_extension.json"),
        (Host::GeminiCli, "gemini_system.json"),
        (Host::ClaudeCode, "claude_managed.json"),
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

/// (name, transport, command) of one server.
type Listed = (String, Transport, Option<String>);

/// Each server in a fixture read as `host`.
fn servers_of(host: Host, fx: &str) -> Vec<Listed> {
    let f = hosts::scan_file(&fixtures().join(fx), host);
    assert!(f.error.is_none(), "{fx}: {:?}", f.error);
    f.servers
        .into_iter()
        .map(|s| (s.name, s.transport, s.command))
        .collect()
}

fn stdio(name: &str, cmd: &str) -> Listed {
    (name.into(), Transport::Stdio, Some(cmd.into()))
}

fn remote(name: &str) -> Listed {
    (name.into(), Transport::Remote, None)
}

/// Each host's documented entry shape is read as the host reads it: stdio entries with
/// their command, remote ones (`url`, `httpUrl`, `type` http / sse / remote /
/// streamable-http) as remote, and nothing that is not a server.
#[test]
fn each_documented_shape_lists_its_servers() {
    let cases: &[(Host, &str, Vec<Listed>)] = &[
        (
            // V2 nests servers under `mcp.servers`: no server called `servers`.
            Host::OpenCode,
            "opencode_v2.jsonc",
            vec![
                stdio("everything", "npx"),
                stdio("git", "uvx"),
                remote("context7"),
                remote("sentry"),
            ],
        ),
        (
            Host::OpenCode,
            "opencode.json",
            vec![stdio("everything", "npx"), remote("remote-docs")],
        ),
        (
            Host::VsCode,
            "vscode_settings.jsonc",
            vec![
                stdio("fetch", "uvx"),
                stdio("memory", "npx"),
                remote("github"),
                remote("legacy-sse"),
            ],
        ),
        (
            Host::CopilotCli,
            "copilot_cli.json",
            vec![
                stdio("playwright", "npx"),
                stdio("github-local", "docker"),
                remote("context7"),
                remote("events"),
            ],
        ),
        (
            Host::RooCode,
            "roo.json",
            vec![
                stdio("filesystem", "npx"),
                stdio("local-python", "python"),
                remote("remote-http"),
                remote("remote-sse"),
            ],
        ),
        (
            Host::AmazonQ,
            "amazonq.json",
            vec![
                stdio("awslabs.core-mcp-server", "uvx"),
                stdio("git", "git-mcp"),
                remote("knowledge"),
            ],
        ),
        (
            Host::AmazonQ,
            "amazonq_agent.json",
            vec![
                stdio("fetch", "fetch-server"),
                stdio("cargo", "uvx"),
                remote("docs"),
            ],
        ),
        (
            Host::QwenCode,
            "qwen.jsonc",
            vec![
                stdio("pythonTools", "python"),
                stdio("nodeServer", "node"),
                remote("httpServer"),
                remote("sseServer"),
            ],
        ),
        (
            Host::Crush,
            "crush.json",
            vec![
                stdio("filesystem", "node"),
                stdio("memory", "npx"),
                remote("github"),
                remote("streaming-service"),
            ],
        ),
        (
            Host::GeminiCli,
            "gemini_extension.json",
            vec![
                stdio("my-server", "node"),
                stdio("py-tools", "uv"),
                remote("hosted"),
            ],
        ),
        (
            Host::GeminiCli,
            "gemini_system.json",
            vec![
                stdio("corp-tools", "/opt/corp/bin/mcp-tools"),
                remote("corp-search"),
            ],
        ),
        (
            Host::ClaudeCode,
            "claude_managed.json",
            vec![
                remote("github"),
                remote("sentry"),
                stdio("company-internal", "/usr/local/bin/company-mcp-server"),
                stdio("docs", "npx"),
            ],
        ),
    ];
    for (host, fx, want) in cases {
        let got: Vec<_> = servers_of(*host, fx)
            .into_iter()
            .map(|(n, t, c)| match t {
                Transport::Remote => (n, t, None),
                _ => (n, t, c),
            })
            .collect();
        assert_eq!(&got, want, "{fx}");
    }
}

/// A server of OpenCode's V1 layout that happens to be named `servers` is still a server.
#[test]
fn an_opencode_v1_server_named_servers_is_a_server() {
    let t = r#"{"mcp": {"servers": {"type": "local", "command": ["srv"]}, "b": {"type": "remote", "url": "https://x"}}}"#;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("opencode.json");
    fs::write(&p, t).unwrap();
    let f = hosts::scan_file(&p, Host::OpenCode);
    let names: Vec<_> = f.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["servers", "b"]);
    let (w, _) = hosts::wrap_text(Host::OpenCode, t, BIN).unwrap();
    assert!(
        w.contains(
            r#""command": ["/usr/local/bin/mcp-guard", "wrap", "--name", "servers", "--", "srv"]"#
        ),
        "{w}"
    );
    // V1 entries beside a V2 `servers` block are read too (a half-migrated file).
    let mixed = r#"{"mcp": {"servers": {"a": {"type": "local", "command": ["x"]}}, "b": {"type": "local", "command": ["y"]}}}"#;
    let (w, ch) = hosts::wrap_text(Host::OpenCode, mixed, BIN).unwrap();
    assert_eq!(ch, ["wrapped a", "wrapped b"]);
    assert_eq!(hosts::unwrap_text(Host::OpenCode, &w).unwrap().0, mixed);
}

/// System-wide files are found under the system root, and the hosts' own environment
/// overrides (Gemini CLI, Qwen Code) are honoured.
#[test]
fn system_files_are_found_where_the_hosts_document_them() {
    let dir = tempfile::tempdir().unwrap();
    lay_out(dir.path(), SYSTEM);
    let found = hosts::scan_paths(hosts::system_candidates(dir.path(), |_| None));
    assert_eq!(found.len(), SYSTEM.len(), "{found:#?}");
    for (h, _, rel) in SYSTEM {
        let f = found
            .iter()
            .find(|f| f.path == dir.path().join(rel))
            .unwrap();
        assert_eq!(f.host, *h);
        assert!(f.error.is_none(), "{f:?}");
    }
    let moved = dir.path().join("elsewhere.json");
    fs::copy(fixtures().join("gemini_system.json"), &moved).unwrap();
    let env = |v: &str| (v == "GEMINI_CLI_SYSTEM_SETTINGS_PATH").then(|| moved.clone().into());
    let c = hosts::system_candidates(dir.path(), env);
    assert!(c.contains(&(Host::GeminiCli, moved.clone())), "{c:?}");
    assert!(
        !c.iter()
            .any(|(_, p)| p.ends_with("etc/gemini-cli/settings.json"))
    );
}

/// `CODEX_HOME`, `COPILOT_HOME`, `CLAUDE_CONFIG_DIR`, `CLINE_MCP_SETTINGS_PATH` and
/// `OPENCODE_CONFIG` point at the files those hosts read instead.
#[test]
fn environment_overrides_name_the_files_hosts_read() {
    let env = |v: &str| {
        Some(match v {
            "CODEX_HOME" => "/srv/codex".into(),
            "COPILOT_HOME" => "/srv/copilot".into(),
            "CLAUDE_CONFIG_DIR" => "/srv/claude".into(),
            "CLINE_MCP_SETTINGS_PATH" => "/srv/cline.json".into(),
            "OPENCODE_CONFIG" => "/srv/opencode.jsonc".into(),
            _ => return None,
        })
    };
    let c = hosts::env_candidates(Path::new("/home/alice"), env);
    for want in [
        (Host::Codex, "/srv/codex/config.toml"),
        (Host::CopilotCli, "/srv/copilot/mcp-config.json"),
        (Host::ClaudeCode, "/srv/claude/.claude.json"),
        (Host::Cline, "/srv/cline.json"),
        (Host::OpenCode, "/srv/opencode.jsonc"),
    ] {
        assert!(
            c.contains(&(want.0, PathBuf::from(want.1))),
            "{want:?} in {c:?}"
        );
    }
    assert!(hosts::env_candidates(Path::new("/home/alice"), |_| Some("".into())).is_empty());
}

/// `XDG_CONFIG_HOME` moves every `~/.config` file of the hosts that follow it, VS Code
/// profiles included.
#[test]
fn xdg_config_home_moves_the_dot_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let (home, xdg) = (dir.path().join("home"), dir.path().join("xdg"));
    let profile = xdg.join("Code/User/profiles/abc");
    fs::create_dir_all(&profile).unwrap();
    fs::copy(fixtures().join("vscode.jsonc"), profile.join("mcp.json")).unwrap();
    fs::create_dir_all(xdg.join("opencode")).unwrap();
    fs::copy(
        fixtures().join("opencode_v2.jsonc"),
        xdg.join("opencode/opencode.jsonc"),
    )
    .unwrap();
    let env = |v: &str| (v == "XDG_CONFIG_HOME").then(|| xdg.clone().into());
    let c = hosts::env_candidates(&home, env);
    for want in [
        (Host::VsCode, xdg.join("Code/User/mcp.json")),
        (Host::Crush, xdg.join("crush/crush.json")),
        (Host::Zed, xdg.join("zed/settings.json")),
        (
            Host::ClaudeDesktop,
            xdg.join("Claude/claude_desktop_config.json"),
        ),
    ] {
        assert!(c.contains(&want), "{want:?} in {c:?}");
    }
    assert!(!c.iter().any(|(_, p)| p.starts_with(&home)), "{c:?}");
    let found = hosts::scan_paths(c);
    let mut paths: Vec<_> = found.iter().map(|f| f.path.clone()).collect();
    paths.sort();
    let mut want = vec![
        profile.join("mcp.json"),
        xdg.join("opencode/opencode.jsonc"),
    ];
    want.sort();
    assert_eq!(paths, want);
}

/// VS Code's `settings.json` is listed only when it holds MCP servers: it is every editor
/// setting, not an MCP config, for most users.
#[test]
fn a_vscode_settings_file_without_servers_is_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join(".config/Code/User");
    fs::create_dir_all(&user).unwrap();
    fs::write(
        user.join("settings.json"),
        "{\n  // editor\n  \"editor.fontSize\": 14,\n}\n",
    )
    .unwrap();
    assert!(hosts::scan(dir.path(), &[]).is_empty());
    fs::copy(
        fixtures().join("vscode_settings.jsonc"),
        user.join("settings.json"),
    )
    .unwrap();
    assert_eq!(hosts::scan(dir.path(), &[]).len(), 1);
}
