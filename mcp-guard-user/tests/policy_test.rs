//! `mcp-guard policy test`: a session recorded by a real shim, replayed against other
//! policies; and what it says about input that is not an audit log.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Builder, bin};
use serde_json::Value;

const ALLOW_WRITES: &str = "default = \"allow\"\n\
    [[rule]]\nid = \"writes\"\ntool = \"write_file\"\naction = \"allow\"\n";

const DENY_WRITES: &str = "default = \"allow\"\n\
    [[rule]]\nid = \"writes\"\ntool = \"write_file\"\naction = \"allow\"\n\
    [[rule]]\nid = \"no-writes\"\ntool = \"write_file\"\naction = \"deny\"\n\
    [[rule]]\nid = \"no-deletes\"\ntool = \"delete_file\"\naction = \"deny\"\n";

const ARGS_RULE: &str = "default = \"allow\"\n\
    [[rule]]\nid = \"no-etc\"\ntool = \"write_file\"\naction = \"deny\"\n\
    [[rule.args]]\npointer = \"/path\"\nprefix = \"/etc\"\n";

/// A recorded session (a `write_file` and a `read_file` call, allowed) in a directory kept
/// for the test; returns it, the log and the `write_file` record's id.
fn recorded() -> (tempfile::TempDir, PathBuf, String) {
    let mut shim = Builder::new().policy(ALLOW_WRITES).spawn();
    let v = shim.call(
        "1",
        "tools/call",
        Some(r#"{"name":"write_file","arguments":{"path":"/tmp/x","content":"y"}}"#),
    );
    assert!(v.get("result").is_some(), "allowed: {v}");
    let v = shim.call(
        "2",
        "tools/call",
        Some(r#"{"name":"read_file","arguments":{"path":"/tmp/x"}}"#),
    );
    assert!(v.get("result").is_some(), "allowed: {v}");
    shim.close_stdin();
    shim.wait_within(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    std::fs::copy(shim.path("audit.jsonl"), &log).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let write = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["kind"] == "request" && r["tool"] == "write_file")
        .expect("the write_file request is recorded");
    assert_eq!(write["rule"], "writes", "{write}");
    (dir, log, write["id"].as_str().unwrap().to_string())
}

fn policy(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn test(args: &[&Path], extra: &[&str]) -> Output {
    Command::new(bin())
        .args(["policy", "test"])
        .args(extra)
        .arg("--policy")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_changed_decision_is_named_with_its_record_and_new_rule() {
    let (dir, log, write_id) = recorded();
    let deny = policy(dir.path(), "deny.toml", DENY_WRITES);
    let o = test(&[&deny, &log], &[]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(&write_id)).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("write_file") && lines[0].contains("allow (writes) -> deny (no-writes)"),
        "{out}"
    );
    assert!(
        lines[0].contains("audit.jsonl:"),
        "file:line of the record: {out}"
    );
    assert!(out.contains("1 changed"), "{out}");
    // The rule that never matched is named; the allow rule matched (deny won).
    assert!(out.contains("never matched: no-deletes"), "{out}");

    let o = test(&[&deny, &log], &["--json"]);
    assert_eq!(o.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["changed"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["changed"][0]["id"], write_id.as_str());
    assert_eq!(report["changed"][0]["old"]["rule"], "writes");
    assert_eq!(report["changed"][0]["new"]["rule"], "no-writes");
    assert_eq!(report["changed"][0]["new"]["decision"], "deny");
    assert_eq!(report["never_matched"], serde_json::json!(["no-deletes"]));
    let by_rule = report["rules"].as_array().unwrap();
    let no_writes = by_rule.iter().find(|r| r["rule"] == "no-writes").unwrap();
    assert_eq!(
        (no_writes["decided"].as_u64(), no_writes["changed"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn the_policy_a_session_ran_under_changes_nothing() {
    let (dir, log, _) = recorded();
    let same = policy(dir.path(), "same.toml", ALLOW_WRITES);
    let o = test(&[&same, &log], &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("0 changed"), "{}", stdout(&o));
    // Other records are counted, not replayed.
    assert!(stdout(&o).contains("session_start 1"), "{}", stdout(&o));
}

#[test]
fn an_argument_constraint_on_unrecorded_arguments_is_undecidable_not_guessed() {
    let (dir, log, write_id) = recorded();
    let args = policy(dir.path(), "args.toml", ARGS_RULE);
    let o = test(&[&args, &log], &[]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(3), "{out}{}", stderr(&o));
    assert!(out.contains("undecidable (1)"), "{out}");
    assert!(out.contains(&write_id), "{out}");
    assert!(
        out.contains(
            "rule `no-etc` may or may not match: the call's arguments are not in the record"
        ),
        "{out}"
    );
    assert!(out.contains("1 undecidable"), "{out}");
    let o = test(&[&args, &log], &["--allow-unknown"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn several_files_and_standard_input_are_read() {
    let (dir, log, _) = recorded();
    let deny = policy(dir.path(), "deny.toml", DENY_WRITES);
    // The log cut in two, as rotation leaves it.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = lines.len() / 2;
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&b, lines[half..].join("\n") + "\n").unwrap();
    let whole: Value = serde_json::from_slice(&test(&[&deny, &log], &["--json"]).stdout).unwrap();
    let split: Value = serde_json::from_slice(&test(&[&deny, &a, &b], &["--json"]).stdout).unwrap();
    assert_eq!(whole["requests"], split["requests"]);
    assert_eq!(split["changed"].as_array().unwrap().len(), 1, "{split}");

    let mut child = Command::new(bin())
        .args(["policy", "test", "--json", "--policy"])
        .arg(&deny)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let piped: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(piped["requests"], whole["requests"]);
    assert!(
        piped["changed"][0]["at"]
            .as_str()
            .unwrap()
            .starts_with("<stdin>:")
    );
}

#[test]
fn bad_input_is_an_error_naming_file_and_line() {
    let (dir, log, _) = recorded();
    let deny = policy(dir.path(), "deny.toml", DENY_WRITES);
    let text = std::fs::read_to_string(&log).unwrap();
    let n = text.lines().count();
    let cases: &[(&str, String, String)] = &[
        (
            "toml.jsonl",
            "default = \"allow\"\n".into(),
            "toml.jsonl:1: not JSON".into(),
        ),
        (
            "array.jsonl",
            format!("{text}[1, 2]\n"),
            format!("array.jsonl:{}: not an audit record", n + 1),
        ),
        (
            "cut.jsonl",
            format!("{text}{{\"v\":1,\"kind\":\"requ"),
            format!("cut.jsonl:{}: the last line is cut short", n + 1),
        ),
        (
            "torn.jsonl",
            format!("{text}{{\"v\":1,\"kind\n"),
            format!("torn.jsonl:{}: not JSON", n + 1),
        ),
    ];
    for (name, content, want) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, content).unwrap();
        let o = test(&[&deny, &f], &[]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stdout(&o));
        assert!(stderr(&o).contains(want.as_str()), "{name}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{name}: no report from bad input");
    }
    // A torn line a later `recovery` record seals is part of a valid log.
    let sealed = dir.path().join("sealed.jsonl");
    let recovery = r#"{"v":1,"seq":99,"kind":"recovery","id":"r","session":"r","time":"t"}"#;
    std::fs::write(&sealed, format!("{text}{{\"v\":1,\"kind\n{recovery}\n")).unwrap();
    let o = test(&[&deny, &sealed], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("torn lines sealed by a recovery record: 1"),
        "{}",
        stdout(&o)
    );
    let o = test(&[&deny, &dir.path().join("missing.jsonl")], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
}

const WITH_TESTS: &str = "default = \"allow\"\n\
[[rule]]\nid = \"no-writes\"\ntool = \"write_file\"\naction = \"deny\"\n\
[[rule]]\nid = \"writes-ok\"\ntool = \"write_file\"\naction = \"allow\"\n\
[[test]]\nname = \"writes are denied\"\nserver = \"fs\"\ntool = \"write_file\"\n\
args = { path = \"/tmp/x\" }\nexpect = \"deny\"\nrule = \"no-writes\"\n\
[[test]]\nname = \"reads too\"\nserver = \"fs\"\n\
message = '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\"}}'\n\
expect = \"deny\"\n";

fn check(args: &[&str], file: &Path) -> Output {
    Command::new(bin())
        .args(["policy", "check"])
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn policy_check_runs_test_tables_and_warns_about_shadowed_rules() {
    let dir = tempfile::tempdir().unwrap();
    let f = policy(dir.path(), "p.toml", WITH_TESTS);
    let name = f.display().to_string();
    let o = check(&[], &f);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{name}:17: test \"reads too\": expected deny, got allow (default)"
        )),
        "{err}"
    );
    assert!(
        !err.contains("writes are denied"),
        "that test passes: {err}"
    );
    assert!(
        err.contains(&format!(
            "{name}:6:1: warning: rule `writes-ok` can never decide"
        )),
        "{err}"
    );
    assert!(stdout(&o).contains("1 of 2 tests failed"), "{}", stdout(&o));

    // Passing tests; the warning alone fails only with --strict.
    // The last table is the read's.
    let read_allowed = WITH_TESTS
        .strip_suffix("expect = \"deny\"\n")
        .map(|t| format!("{t}expect = \"allow\"\n"))
        .unwrap();
    let fixed = policy(dir.path(), "fixed.toml", &read_allowed);
    let o = check(&[], &fixed);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 tests passed"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("warning: rule `writes-ok`"),
        "{}",
        stderr(&o)
    );
    let o = check(&["--strict"], &fixed);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}

#[test]
fn a_shim_enforces_a_policy_with_test_tables_as_if_they_were_not_there() {
    let mut shim = Builder::new().policy(WITH_TESTS).spawn();
    let v = shim.call("1", "tools/call", Some(r#"{"name":"write_file"}"#));
    assert!(v.get("error").is_some(), "denied: {v}");
    let v = shim.call("2", "tools/call", Some(r#"{"name":"read_file"}"#));
    assert!(
        v.get("result").is_some(),
        "allowed, whatever the failing test expects: {v}"
    );
}

#[test]
fn policy_check_with_hosts_warns_about_servers_no_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".cursor")).unwrap();
    std::fs::copy(
        common::fixture("hosts/cursor.json"),
        home.join(".cursor/mcp.json"),
    )
    .unwrap();
    let f = policy(
        dir.path(),
        "p.toml",
        "[[rule]]\nid = \"search\"\nserver = \"brave-*\"\naction = \"allow\"\n\
         [[rule]]\nid = \"fs\"\nserver = \"filesystem\"\naction = \"deny\"\n\
         [[rule]]\nid = \"any\"\ntool = \"x\"\naction = \"deny\"\n",
    );
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(["policy", "check"])
            .args(args)
            .arg(&f)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let home_arg = home.display().to_string();
    let o = run(&["--hosts", &home_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let warnings: Vec<String> = stderr(&o).lines().map(str::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].ends_with(
            ":5:1: warning: rule `fs` names server `filesystem`, which no host config names"
        ),
        "{warnings:?}"
    );
    let o = run(&["--hosts", &home_arg, "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    // Without --hosts, no configs are read.
    let o = run(&[]);
    assert_eq!((o.status.code(), stderr(&o)), (Some(0), String::new()));
}
