//! `mcp-guard daemon --check-config`: what a start would use, checked without starting
//! (no root needed), and each refusal naming the file and the fix.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::bin;

fn check(config: &Path, object: &str) -> Output {
    Command::new(bin())
        .args(["daemon", "--check-config", "--config"])
        .arg(config)
        .env("MCP_GUARD_BPF_OBJECT", object)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn config(dir: &Path, policy: &Path) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("policy = \"{}\"\n", policy.display())).unwrap();
    path
}

#[test]
fn a_policy_named_in_the_configuration_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = check(&config(dir.path(), &missing), "/nonexistent.o");
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains(&missing.display().to_string()), "{t}");
    assert!(
        t.contains("mcp-guard policy check"),
        "the fix is named: {t}"
    );
}

#[test]
fn a_missing_or_foreign_ebpf_object_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "default = \"allow\"\n").unwrap();
    let cfg = config(dir.path(), &policy);
    let out = check(&cfg, "/nonexistent/mcp-guard-ebpf.o");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("/nonexistent/mcp-guard-ebpf.o"),
        "{}",
        text(&out)
    );
    // Not an object built for this binary.
    let bogus = dir.path().join("bogus.o");
    std::fs::write(&bogus, "not ELF").unwrap();
    let out = check(&cfg, bogus.to_str().unwrap());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cargo xtask build-ebpf"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_good_configuration_says_what_it_would_use() {
    let object = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mcp-guard-ebpf/target/bpfel-unknown-none/release/mcp-guard-ebpf");
    if !object.is_file() {
        if std::env::var_os("MCP_GUARD_REQUIRE_KERNEL").is_some_and(|v| v == "1") {
            panic!("no eBPF object at {}", object.display());
        }
        eprintln!("skipped: no eBPF object built");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "default = \"allow\"\n").unwrap();
    let out = check(&config(dir.path(), &policy), object.to_str().unwrap());
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&format!("policy: {}", policy.display())), "{t}");
    assert!(t.contains("configuration: ok"), "{t}");
}

#[test]
fn an_otlp_endpoint_that_is_no_url_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[otlp]\nendpoint = \"collector:4318\"\n").unwrap();
    let out = check(&path, "/nonexistent.o");
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains(&path.display().to_string()) && t.contains("otlp.endpoint"),
        "{t}"
    );
}

#[test]
fn the_otlp_export_is_named_without_header_values() {
    // The object this checkout built, or the one named by the environment.
    let object = std::env::var_os("MCP_GUARD_BPF_OBJECT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../mcp-guard-ebpf/target/bpfel-unknown-none/release/mcp-guard-ebpf")
        });
    if !object.is_file() {
        if std::env::var_os("MCP_GUARD_REQUIRE_KERNEL").is_some_and(|v| v == "1") {
            panic!("no eBPF object at {}", object.display());
        }
        eprintln!("skipped: no eBPF object built");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "default = \"allow\"\n").unwrap();
    let cfg = config(dir.path(), &policy);
    let mut text_cfg = std::fs::read_to_string(&cfg).unwrap();
    text_cfg.push_str(
        "[otlp]\nendpoint = \"https://collector.example/otlp\"\nheaders = { authorization = \"Bearer s3cr3t\" }\n",
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let out = check(&cfg, object.to_str().unwrap());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("OTLP export: https://collector.example/otlp/v1/logs and https://collector.example/otlp/v1/traces (headers: authorization;"),
        "{t}"
    );
    assert!(!t.contains("s3cr3t"), "a header value printed: {t}");
}
