//! `mcp-guard events -f`: a denied call of a wrapped session shows up as it happens, after
//! what the log already held.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Builder, bin};

const DENY_X: &str =
    "default = \"allow\"\n[[rule]]\nid = \"no-x\"\ntool = \"x\"\naction = \"deny\"\n";

#[test]
fn a_denied_call_is_shown_as_it_happens() {
    let mut shim = Builder::new().policy(DENY_X).spawn();
    let v = shim.call("1", "tools/call", Some(r#"{"name":"x"}"#));
    assert!(v.get("error").is_some(), "denied: {v}");
    let log = shim.path("audit.jsonl");
    let mut events = Command::new(bin())
        .args(["events", "-f", "-o", "compact", "--decision", "deny"])
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let deadline = Duration::from_secs(10);
    // What was there: the first denied call.
    let first = lines
        .recv_timeout(deadline)
        .expect("the earlier denied call");
    // What comes: the second, written while `events` follows.
    let v = shim.call("2", "tools/call", Some(r#"{"name":"x"}"#));
    assert!(v.get("error").is_some(), "denied: {v}");
    let second = lines.recv_timeout(deadline).expect("the new denied call");
    let _ = events.kill();
    let _ = events.wait();
    for line in [&first, &second] {
        assert!(
            line.contains(" deny ") && line.contains("tool=x") && line.contains("rule=no-x"),
            "{line}"
        );
        assert!(
            !line.contains('\x1b'),
            "no colour when not on a terminal: {line}"
        );
    }
    assert!(first < second, "in time order: {first} / {second}");
}
