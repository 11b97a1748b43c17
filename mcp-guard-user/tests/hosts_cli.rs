//! `mcp-guard hosts scan | wrap | unwrap` on a home directory laid out like a real one.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn run(home: &Path, args: &[&str]) -> Output {
    Command::new(bin())
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

#[test]
fn wrap_then_unwrap_through_the_cli_restores_every_byte() {
    let home = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts");
    let files = [
        ("claude_desktop.json", ".config/Claude/claude_desktop_config.json"),
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
    let originals: Vec<Vec<u8>> = files.iter().map(|(_, at)| std::fs::read(home.path().join(at)).unwrap()).collect();

    let scan = run(home.path(), &["scan"]);
    assert!(scan.status.success(), "{}", text(&scan));
    assert!(text(&scan).contains("NOT WRAPPED"), "{}", text(&scan));

    let dry = run(home.path(), &["wrap", "--dry-run", "--bin", "/usr/local/bin/mcp-guard"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("/usr/local/bin/mcp-guard"), "a diff is shown: {}", text(&dry));
    for ((_, at), original) in files.iter().zip(&originals) {
        assert_eq!(&std::fs::read(home.path().join(at)).unwrap(), original, "--dry-run changed {at}");
    }

    let wrap = run(home.path(), &["wrap", "--bin", "/usr/local/bin/mcp-guard"]);
    assert!(wrap.status.success(), "{}", text(&wrap));
    for (_, at) in &files {
        let now = std::fs::read_to_string(home.path().join(at)).unwrap();
        assert!(now.contains("/usr/local/bin/mcp-guard"), "{at} not wrapped:\n{now}");
        assert!(home.path().join(format!("{at}.mcp-guard.bak")).exists(), "no backup of {at}");
    }
    let scan = run(home.path(), &["scan"]);
    assert!(!text(&scan).contains("NOT WRAPPED"), "{}", text(&scan));
    let wrapped: Vec<Vec<u8>> = files.iter().map(|(_, at)| std::fs::read(home.path().join(at)).unwrap()).collect();
    let again = run(home.path(), &["wrap", "--bin", "/usr/local/bin/mcp-guard"]);
    assert!(again.status.success());
    for ((_, at), before) in files.iter().zip(&wrapped) {
        assert_eq!(&std::fs::read(home.path().join(at)).unwrap(), before, "wrapping twice changed {at}");
    }

    let unwrap = run(home.path(), &["unwrap"]);
    assert!(unwrap.status.success(), "{}", text(&unwrap));
    for ((_, at), original) in files.iter().zip(&originals) {
        assert_eq!(&std::fs::read(home.path().join(at)).unwrap(), original, "{at} not restored");
    }
}

#[test]
fn an_unparsable_config_is_left_alone_with_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join(".cursor/mcp.json");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, "{ \"mcpServers\": { \"x\": { \"command\": ").unwrap();
    let out = run(home.path(), &["wrap"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(".cursor/mcp.json"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "{ \"mcpServers\": { \"x\": { \"command\": ");
}
