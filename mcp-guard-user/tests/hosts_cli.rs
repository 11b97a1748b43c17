//! `mcp-guard hosts scan | wrap | unwrap` on a home directory laid out like a real one.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// The variables that move host config files: unset, so a test sees only its own files
/// and never edits the real ones of whoever runs it.
const MOVING_VARS: &[&str] = &[
    "XDG_CONFIG_HOME",
    "CODEX_HOME",
    "COPILOT_HOME",
    "CLAUDE_CONFIG_DIR",
    "CLINE_MCP_SETTINGS_PATH",
    "OPENCODE_CONFIG",
    "GEMINI_CLI_SYSTEM_SETTINGS_PATH",
    "GEMINI_CLI_SYSTEM_DEFAULTS_PATH",
    "QWEN_CODE_SYSTEM_SETTINGS_PATH",
    "QWEN_CODE_SYSTEM_DEFAULTS_PATH",
];

/// `program` with none of [`MOVING_VARS`] set.
fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in MOVING_VARS {
        c.env_remove(v);
    }
    c
}

fn run(home: &Path, args: &[&str]) -> Output {
    command(bin())
        .args(["hosts"])
        .args(args)
        .env("HOME", home)
        .current_dir(home)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// (config path, wrapped) of every stdio server `scan --json` reports.
fn scanned_stdio(home: &Path) -> Vec<(String, bool)> {
    let out = run(home, &["scan", "--json"]);
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scan --json");
    let mut stdio = Vec::new();
    for f in found.as_array().expect("an array") {
        for s in f["servers"].as_array().expect("servers") {
            if s["transport"] == "stdio" {
                let path = f["path"].as_str().expect("path").to_string();
                stdio.push((path, s["wrapped"].as_bool().expect("wrapped")));
            }
        }
    }
    stdio
}

#[test]
fn wrap_then_unwrap_through_the_cli_restores_every_byte() {
    let home = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts");
    let files = [
        (
            "claude_desktop.json",
            ".config/Claude/claude_desktop_config.json",
        ),
        ("cursor.json", ".cursor/mcp.json"),
        ("codex.toml", ".codex/config.toml"),
        ("zed.jsonc", ".config/zed/settings.json"),
    ];
    for (fixture, at) in files {
        let dest = home.path().join(at);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(fixtures.join(fixture), &dest).unwrap();
    }
    // The fixtures hold one entry wrapped already: start from the fully unwrapped files.
    let first = run(home.path(), &["unwrap"]);
    assert!(first.status.success(), "{}", text(&first));
    for (_, at) in &files {
        std::fs::remove_file(home.path().join(format!("{at}.mcp-guard.bak"))).ok();
    }
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|(_, at)| std::fs::read(home.path().join(at)).unwrap())
        .collect();

    let scan = run(home.path(), &["scan"]);
    assert!(scan.status.success(), "{}", text(&scan));
    assert!(text(&scan).contains("NOT WRAPPED"), "{}", text(&scan));
    let check = run(home.path(), &["scan", "--check"]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "unwrapped servers fail --check"
    );
    let stdio = scanned_stdio(home.path());
    for (_, at) in &files {
        assert!(
            stdio.iter().any(|(path, _)| path.ends_with(at)),
            "{at} has stdio servers: {stdio:?}"
        );
    }
    assert!(stdio.iter().all(|(_, wrapped)| !wrapped), "{stdio:?}");

    let dry = run(home.path(), &["wrap", "--dry-run", "--bin", bin()]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains(bin()),
        "a diff is shown: {}",
        text(&dry)
    );
    for ((_, at), original) in files.iter().zip(&originals) {
        assert_eq!(
            &std::fs::read(home.path().join(at)).unwrap(),
            original,
            "--dry-run changed {at}"
        );
    }

    let wrap = run(home.path(), &["wrap", "--bin", bin()]);
    assert!(wrap.status.success(), "{}", text(&wrap));
    for (_, at) in &files {
        let now = std::fs::read_to_string(home.path().join(at)).unwrap();
        assert!(now.contains(bin()), "{at} not wrapped:\n{now}");
        assert!(
            home.path().join(format!("{at}.mcp-guard.bak")).exists(),
            "no backup of {at}"
        );
    }
    let scan = run(home.path(), &["scan"]);
    assert!(!text(&scan).contains("NOT WRAPPED"), "{}", text(&scan));
    let check = run(home.path(), &["scan", "--check"]);
    assert!(check.status.success(), "all wrapped: {}", text(&check));
    assert!(
        scanned_stdio(home.path())
            .iter()
            .all(|(_, wrapped)| *wrapped)
    );
    let wrapped: Vec<Vec<u8>> = files
        .iter()
        .map(|(_, at)| std::fs::read(home.path().join(at)).unwrap())
        .collect();
    let again = run(home.path(), &["wrap", "--bin", bin()]);
    assert!(again.status.success());
    for ((_, at), before) in files.iter().zip(&wrapped) {
        assert_eq!(
            &std::fs::read(home.path().join(at)).unwrap(),
            before,
            "wrapping twice changed {at}"
        );
    }

    let unwrap = run(home.path(), &["unwrap"]);
    assert!(unwrap.status.success(), "{}", text(&unwrap));
    for ((_, at), original) in files.iter().zip(&originals) {
        assert_eq!(
            &std::fs::read(home.path().join(at)).unwrap(),
            original,
            "{at} not restored"
        );
    }
}

/// `--bin` names what every config will launch: a name is looked up on PATH and written
/// absolute; something that does not exist or cannot run is refused, and nothing changes.
#[test]
fn bin_is_resolved_and_must_be_an_executable() {
    let home = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts");
    let config = home.path().join(".cursor/mcp.json");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::copy(fixtures.join("cursor.json"), &config).unwrap();
    let before = std::fs::read(&config).unwrap();
    for bad in ["mcp-guard-nowhere", "./mcp-guard", "/nonexistent/mcp-guard"] {
        let out = run(home.path(), &["wrap", "--bin", bad]);
        assert!(!out.status.success(), "{bad}: {}", text(&out));
        assert!(text(&out).contains("--bin"), "{bad}: {}", text(&out));
        assert_eq!(
            std::fs::read(&config).unwrap(),
            before,
            "{bad} changed the config"
        );
    }
    // A bare name found on PATH is written as its absolute path.
    let dir = Path::new(bin()).parent().unwrap();
    let name = Path::new(bin()).file_name().unwrap().to_str().unwrap();
    let out = command(bin())
        .args(["hosts", "wrap", "--bin", name])
        .env("HOME", home.path())
        .env("PATH", dir)
        .current_dir(home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(now.contains(&format!("\"{}\"", bin())), "{now}");
}

/// Run inside a repository, `wrap` leaves its checked-in project files alone unless
/// `--project` names it; `scan` still reports them.
#[test]
fn project_files_are_edited_only_with_project() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts");
    let team = repo.join(".mcp.json");
    std::fs::copy(fixtures.join("project_mcp.json"), &team).unwrap();
    let before = std::fs::read(&team).unwrap();
    let in_repo = |args: &[&str]| {
        command(bin())
            .arg("hosts")
            .args(args)
            .env("HOME", home.path())
            .current_dir(&repo)
            .output()
            .unwrap()
    };
    let scan = in_repo(&["scan"]);
    assert!(text(&scan).contains(".mcp.json"), "{}", text(&scan));
    let wrap = in_repo(&["wrap", "--bin", bin()]);
    assert!(wrap.status.success(), "{}", text(&wrap));
    assert_eq!(
        std::fs::read(&team).unwrap(),
        before,
        "a team file was edited unasked"
    );
    let wrap = in_repo(&["wrap", "--bin", bin(), "--project", "."]);
    assert!(wrap.status.success(), "{}", text(&wrap));
    assert!(
        std::fs::read_to_string(&team).unwrap().contains(bin()),
        "--project wraps it"
    );
}

/// A config that does not parse is reported as a warning and left as it was; the other
/// files are still wrapped and the command succeeds, since everything it could do is done.
#[test]
fn an_unparsable_config_is_a_warning_and_the_rest_is_wrapped() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join(".cursor/mcp.json");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, "{ \"mcpServers\": { \"x\": { \"command\": ").unwrap();
    let good = home.path().join(".kiro/settings/mcp.json");
    std::fs::create_dir_all(good.parent().unwrap()).unwrap();
    std::fs::write(
        &good,
        r#"{"mcpServers": {"fs": {"command": "npx", "args": ["srv"]}}}"#,
    )
    .unwrap();
    for args in [&["wrap", "--bin", bin()][..], &["unwrap"]] {
        let out = run(home.path(), args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("warning") && err.contains(".cursor/mcp.json") && err.contains("parse"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "{ \"mcpServers\": { \"x\": { \"command\": "
        );
        if args[0] == "wrap" {
            assert!(std::fs::read_to_string(&good).unwrap().contains(bin()));
        }
    }
    assert!(!std::fs::read_to_string(&good).unwrap().contains(bin()));
    // `scan --check` still fails on it: a config nobody can read is not clean.
    let check = run(home.path(), &["scan", "--check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
}

/// A write that fails is a failure: exit 1, the file as it was.
#[test]
fn a_failed_write_fails_the_command() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join(".cursor/mcp.json");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let config = r#"{"mcpServers": {"fs": {"command": "npx", "args": ["srv"]}}}"#;
    std::fs::write(&dest, config).unwrap();
    // The backup cannot be created: its name is taken by a dangling symlink.
    std::os::unix::fs::symlink(
        home.path().join("nowhere/x"),
        home.path().join(".cursor/mcp.json.mcp-guard.bak"),
    )
    .unwrap();
    let out = run(home.path(), &["wrap", "--bin", bin()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("backup"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), config);
}

/// Real local users for `--all-users` (created once; the end-to-end suite uses them too).
const USERS: [&str; 2] = ["mcpg-alice", "mcpg-bob"];

/// The tests that edit every user's files run one at a time: `--all-users` would edit the
/// files another such test is looking at.
static EVERY_USER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ensure_user(name: &str) -> (u32, std::path::PathBuf) {
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let ok = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", name])
            .status()
            .unwrap();
        assert!(ok.success(), "useradd {name}");
    }
    let u = nix::unistd::User::from_name(name).unwrap().unwrap();
    (u.uid.as_raw(), u.dir)
}

/// As root: every user's configs are wrapped and unwrapped, owners and modes kept, and a
/// config that is a symlink into another user's files is left alone.
#[test]
fn all_users_edits_each_home_as_its_owner_would() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let _one_at_a_time = EVERY_USER.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root; this test must not skip there"
        );
        println!("skipping: --all-users needs root");
        return;
    }
    let config = r#"{
  "mcpServers": {
    "fs": { "command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"] }
  }
}
"#;
    let mut files = Vec::new();
    for name in USERS {
        let (uid, home) = ensure_user(name);
        let path = home.join(".claude.json");
        std::fs::write(&path, config).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(home.join(".claude.json.mcp-guard.bak")).ok();
        files.push((uid, path));
    }
    // Bob's Cursor config points at Alice's file.
    let (_, bob_home) = ensure_user(USERS[1]);
    let trap = bob_home.join(".cursor/mcp.json");
    std::fs::create_dir_all(trap.parent().unwrap()).unwrap();
    std::fs::remove_file(&trap).ok();
    std::os::unix::fs::symlink(&files[0].1, &trap).unwrap();

    let root = tempfile::tempdir().unwrap();
    let wrap = run(root.path(), &["wrap", "--all-users", "--bin", bin()]);
    assert_eq!(
        wrap.status.code(),
        Some(1),
        "the trap is reported: {}",
        text(&wrap)
    );
    assert!(
        text(&wrap).contains("left alone") && text(&wrap).contains(".cursor/mcp.json"),
        "{}",
        text(&wrap)
    );
    for (uid, path) in &files {
        let now = std::fs::read_to_string(path).unwrap();
        assert!(
            now.contains(bin()) && now.contains("\"wrap\""),
            "{}: {now}",
            path.display()
        );
        assert_eq!(
            now.matches("\"wrap\"").count(),
            1,
            "wrapped once, not through the symlink too"
        );
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (*uid, 0o600),
            "{}",
            path.display()
        );
    }
    let scan = run(root.path(), &["scan", "--all-users"]);
    assert!(
        text(&scan).contains("[mcpg-alice]") && text(&scan).contains("[mcpg-bob]"),
        "{}",
        text(&scan)
    );

    let unwrap = run(root.path(), &["unwrap", "--all-users"]);
    assert_eq!(unwrap.status.code(), Some(1), "{}", text(&unwrap));
    for (_, path) in &files {
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            config,
            "{}",
            path.display()
        );
    }
    std::fs::remove_file(&trap).unwrap();
}

#[test]
fn all_users_needs_root() {
    // As root, ask as `nobody`.
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = command("runuser");
        c.args(["-u", "nobody", "--"]).arg(bin());
        c
    } else {
        command(bin())
    };
    let out = cmd.args(["hosts", "scan", "--all-users"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run it as root"));
}

/// (fixture, path under HOME, host slug) for the discovery test: one file per documented
/// location of the hosts and layouts the coverage issue named.
const DISCOVERED: &[(&str, &str, &str)] = &[
    (
        "opencode_v2.jsonc",
        ".config/opencode/opencode.jsonc",
        "opencode",
    ),
    (
        "opencode.json",
        ".config/opencode/opencode.json",
        "opencode",
    ),
    (
        "vscode_settings.jsonc",
        ".config/Code/User/settings.json",
        "vscode",
    ),
    (
        "vscode.jsonc",
        ".config/Code/User/profiles/4f3e2d1c/mcp.json",
        "vscode",
    ),
    (
        "vscode.jsonc",
        ".config/Code - Insiders/User/mcp.json",
        "vscode",
    ),
    ("vscode.jsonc", ".config/VSCodium/User/mcp.json", "vscode"),
    (
        "vscode.jsonc",
        ".vscode-server/data/User/mcp.json",
        "vscode",
    ),
    (
        "vscode.jsonc",
        ".var/app/com.visualstudio.code/config/Code/User/mcp.json",
        "vscode",
    ),
    (
        "cline.json",
        ".cline/data/settings/cline_mcp_settings.json",
        "cline",
    ),
    ("copilot_cli.json", ".copilot/mcp-config.json", "copilot"),
    (
        "roo.json",
        ".config/Code/User/globalStorage/rooveterinaryinc.roo-cline/settings/mcp_settings.json",
        "roo",
    ),
    ("amazonq.json", ".aws/amazonq/mcp.json", "amazonq"),
    (
        "amazonq_agent.json",
        ".aws/amazonq/cli-agents/rust.json",
        "amazonq",
    ),
    ("amazonq_agent.json", ".kiro/agents/rust.json", "kiro"),
    ("qwen.jsonc", ".qwen/settings.json", "qwen"),
    ("crush.json", ".config/crush/crush.json", "crush"),
    (
        "gemini_extension.json",
        ".gemini/extensions/my-extension/gemini-extension.json",
        "gemini",
    ),
    // project files, found in the current directory (HOME here)
    ("opencode_v2.jsonc", "opencode.jsonc", "opencode"),
    ("roo.json", ".roo/mcp.json", "roo"),
    ("kiro.json", ".kiro/settings/mcp.json", "kiro"),
    ("codex.toml", ".codex/config.toml", "codex"),
    ("amazonq.json", ".amazonq/mcp.json", "amazonq"),
    ("qwen.jsonc", ".qwen/settings.local.json", "qwen"),
    ("crush.json", ".crush.json", "crush"),
];

/// Every documented location is found by `scan` (as its host), every stdio server in
/// them is wrapped by `wrap`, remote ones are left alone, and `unwrap` gives every file
/// back byte for byte.
#[test]
fn every_documented_location_is_found_wrapped_and_restored() {
    let home = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts");
    for (fx, at, _) in DISCOVERED {
        let dest = home.path().join(at);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(fixtures.join(fx), &dest).unwrap();
    }
    // codex.toml holds one entry wrapped already: start from the fully unwrapped file.
    let codex = home.path().join(".codex/config.toml");
    let unwrapped = std::fs::read_to_string(&codex).unwrap();
    let (unwrapped, _) =
        mcp_guard::hosts::unwrap_text(mcp_guard::hosts::Host::Codex, &unwrapped).unwrap();
    std::fs::write(&codex, unwrapped).unwrap();
    let originals: Vec<Vec<u8>> = DISCOVERED
        .iter()
        .map(|(_, at, _)| std::fs::read(home.path().join(at)).unwrap())
        .collect();

    let out = run(home.path(), &["scan", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found = found.as_array().unwrap();
    for (_, at, host) in DISCOVERED {
        let want = home.path().join(at).display().to_string();
        let f = found
            .iter()
            .find(|f| f["path"] == want.as_str())
            .unwrap_or_else(|| panic!("{at} not found by scan"));
        assert_eq!(f["host"], *host, "{at}");
        assert!(f["error"].is_null(), "{at}: {}", f["error"]);
        assert!(
            f["servers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["transport"] == "stdio"),
            "{at}"
        );
    }
    // No server named after a layout key (OpenCode's `servers`, VS Code's `mcp`).
    let names: Vec<&str> = found
        .iter()
        .flat_map(|f| f["servers"].as_array().unwrap())
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"servers") && !names.contains(&"mcp"),
        "{names:?}"
    );

    let wrap = run(
        home.path(),
        &[
            "wrap",
            "--bin",
            bin(),
            "--project",
            home.path().to_str().unwrap(),
        ],
    );
    assert!(wrap.status.success(), "{}", text(&wrap));
    let check = run(home.path(), &["scan", "--check"]);
    assert!(check.status.success(), "all wrapped: {}", text(&check));
    for (_, at, _) in DISCOVERED {
        let now = std::fs::read_to_string(home.path().join(at)).unwrap();
        assert!(now.contains(bin()), "{at} not wrapped:\n{now}");
    }
    // Remote entries are as they were.
    let crush = std::fs::read_to_string(home.path().join(".crush.json")).unwrap();
    assert!(
        crush
            .contains("\"type\": \"http\",\n      \"url\": \"https://api.githubcopilot.com/mcp/\"")
    );

    let unwrap = run(
        home.path(),
        &["unwrap", "--project", home.path().to_str().unwrap()],
    );
    assert!(unwrap.status.success(), "{}", text(&unwrap));
    for ((_, at, _), original) in DISCOVERED.iter().zip(&originals) {
        assert_eq!(
            &std::fs::read(home.path().join(at)).unwrap(),
            original,
            "{at} not restored"
        );
    }
}

/// `CODEX_HOME` moves Codex's file: scan and wrap follow it.
#[test]
fn codex_home_is_followed() {
    let home = tempfile::tempdir().unwrap();
    let codex_home = home.path().join("codex-elsewhere");
    std::fs::create_dir_all(&codex_home).unwrap();
    let config = codex_home.join("config.toml");
    std::fs::write(
        &config,
        "[mcp_servers.docs]\ncommand = \"docs-server\"\nargs = [\"--port\", \"4000\"]\n",
    )
    .unwrap();
    let out = command(bin())
        .args(["hosts", "wrap", "--bin", bin()])
        .env("HOME", home.path())
        .env("CODEX_HOME", &codex_home)
        .current_dir(home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(now.contains("\"--name\", \"docs\""), "{now}");
}

/// A system-wide file (here Gemini CLI's, moved by its own environment variable) is edited
/// by root; anyone else gets a warning and a successful exit.
#[test]
fn system_files_are_edited_by_root_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts");
    let system = dir.path().join("gemini-system.json");
    std::fs::copy(fixtures.join("gemini_system.json"), &system).unwrap();
    std::fs::set_permissions(&system, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&system).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let hosts = |as_nobody: bool, args: &[&str]| {
        let mut c = if as_nobody {
            let mut c = command("runuser");
            c.args(["-u", "nobody", "--"]).arg(bin());
            c
        } else {
            command(bin())
        };
        c.arg("hosts")
            .args(args)
            .env("HOME", &home)
            .env("GEMINI_CLI_SYSTEM_SETTINGS_PATH", &system)
            .current_dir(&home)
            .output()
            .unwrap()
    };
    let is_root = nix::unistd::geteuid().is_root();
    let scan = hosts(false, &["scan"]);
    assert!(
        text(&scan).contains("gemini-system.json") && text(&scan).contains("corp-tools"),
        "{}",
        text(&scan)
    );
    if is_root {
        let out = hosts(true, &["wrap", "--bin", bin()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("warning") && text(&out).contains("root"),
            "{}",
            text(&out)
        );
        assert_eq!(std::fs::read(&system).unwrap(), before);
    } else {
        println!("skipping the root half: not root");
        return;
    }
    let out = hosts(false, &["wrap", "--bin", bin()]);
    assert!(out.status.success(), "{}", text(&out));
    let now = std::fs::read_to_string(&system).unwrap();
    assert!(now.contains("\"--name\", \"corp-tools\""), "{now}");
    assert!(now.contains("\"url\": \"https://search.corp.example/sse\""));
    let out = hosts(false, &["unwrap"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&system).unwrap(), before);
}

/// `--all-users` lists accounts through NSS (`getent passwd` is the same walk), and
/// `--user NAME` picks one account by name, which works where enumeration is off.
#[test]
fn users_come_from_nss_and_can_be_named() {
    use std::os::unix::fs::PermissionsExt as _;
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root; this test must not skip there"
        );
        println!("skipping: --user needs root");
        return;
    }
    let _one_at_a_time = EVERY_USER.lock().unwrap_or_else(|e| e.into_inner());
    let (alice_uid, alice_home) = ensure_user(USERS[0]);
    let (_, bob_home) = ensure_user(USERS[1]);
    let listed = mcp_guard::hosts::user_homes().unwrap();
    let getent = Command::new("getent").arg("passwd").output().unwrap();
    let getent = String::from_utf8_lossy(&getent.stdout).into_owned();
    for name in USERS {
        assert!(
            listed.iter().any(|(n, ..)| n == name),
            "{name} in {listed:?}"
        );
        assert!(getent.lines().any(|l| l.starts_with(&format!("{name}:"))));
    }
    let mut seen = std::collections::HashSet::new();
    assert!(
        listed.iter().all(|(n, ..)| seen.insert(n.clone())),
        "listed once each"
    );
    assert!(
        listed
            .iter()
            .all(|(_, uid, _)| *uid == 0 || (1000..60000).contains(uid))
    );

    let config = "{\"mcpServers\": {\"fs\": {\"command\": \"npx\", \"args\": [\"srv\"]}}}\n";
    let mut paths = Vec::new();
    for home in [&alice_home, &bob_home] {
        let p = home.join(".copilot/mcp-config.json");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, config).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&p, Some(alice_uid), None).ok();
        std::fs::remove_file(home.join(".copilot/mcp-config.json.mcp-guard.bak")).ok();
        paths.push(p);
    }
    let (bob_uid, _) = ensure_user(USERS[1]);
    std::os::unix::fs::chown(&paths[1], Some(bob_uid), Some(bob_uid)).unwrap();
    std::os::unix::fs::chown(&paths[0], Some(alice_uid), Some(alice_uid)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = run(root.path(), &["wrap", "--user", USERS[0], "--bin", bin()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_to_string(&paths[0]).unwrap().contains(bin()));
    assert_eq!(
        std::fs::read_to_string(&paths[1]).unwrap(),
        config,
        "only the user named"
    );
    let out = run(root.path(), &["scan", "--user", USERS[1]]);
    assert!(
        text(&out).contains("[mcpg-bob]") && !text(&out).contains("[mcpg-alice]"),
        "{}",
        text(&out)
    );
    let out = run(root.path(), &["unwrap", "--user", USERS[0]]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&paths[0]).unwrap(), config);
    let out = run(root.path(), &["scan", "--user", "mcpg-nobody-here"]);
    assert!(
        !out.status.success() && text(&out).contains("no user named"),
        "{}",
        text(&out)
    );
    for p in paths {
        std::fs::remove_file(&p).ok();
        std::fs::remove_file(mcp_guard::hosts::backup_path(&p)).ok();
    }
}
