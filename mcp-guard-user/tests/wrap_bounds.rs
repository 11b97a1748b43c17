//! A peer that floods the shim: requests that are never answered are bounded per direction,
//! and what one session writes to the audit log is bounded by its budget. Each test prints
//! the shim's resident memory and the audit log's size before and after the flood.

mod common;

use std::ffi::OsString;

use common::*;
use serde_json::Value;

const FLOOD: u64 = 40_000;

fn flood_server() -> Vec<OsString> {
    vec![python(), fixture("flood_server.py").into_os_string()]
}

fn log_bytes(shim: &Shim) -> u64 {
    std::fs::metadata(&shim.audit).map(|m| m.len()).unwrap_or(0)
}

/// Sends a flood request and reads the shim's output until its answer; returns the lines
/// that came before it.
fn flood(shim: &mut Shim, kind: &str, n: u64) -> Vec<Value> {
    shim.send_line(&request("\"go\"", kind, Some(&format!("{{\"n\":{n}}}"))));
    let mut before = Vec::new();
    loop {
        let v = shim.read_json();
        if v["id"] == "go" && v.get("method").is_none() {
            assert_eq!(v["result"]["sent"], n, "{v}");
            return before;
        }
        before.push(v);
    }
}

#[test]
fn unanswered_server_requests_are_bounded() {
    let mut shim = Builder::new()
        .command(flood_server())
        .policy("default = \"allow\"\n")
        .shim_args(&["--name", "flood"])
        .spawn();
    shim.ping(1);
    let (rss0, log0) = (vm_rss_kib(shim.pid()).unwrap(), log_bytes(&shim));

    let forwarded = flood(&mut shim, "flood_requests", FLOOD);
    let counts = shim.call("2", "counts", None);
    let (rss1, log1) = (vm_rss_kib(shim.pid()).unwrap(), log_bytes(&shim));
    println!(
        "{FLOOD} unanswered server requests: shim RSS {rss0} KiB -> {rss1} KiB (+{} KiB), audit log {log0} -> {log1} bytes (+{} KiB)",
        rss1.saturating_sub(rss0),
        (log1 - log0) / 1024
    );

    assert_eq!(forwarded.len(), 1024, "the default bound: 1,024 in flight");
    assert!(forwarded.iter().all(|v| v["method"] == "roots/list"));
    let refused = FLOOD - 1024;
    assert_eq!(
        counts["result"]["answers"]["-32088"], refused,
        "every refused request was answered with an error: {counts}"
    );
    assert!(
        log1 - log0 < 2 << 20,
        "the log grew by {} bytes",
        log1 - log0
    );
    assert!(
        rss1.saturating_sub(rss0) < 8 << 10,
        "the shim grew by {} KiB",
        rss1 - rss0
    );

    // An answer makes room; the run of refusals is summed up in one alert.
    shim.send_line(r#"{"jsonrpc":"2.0","id":"r0","result":{"roots":[]}}"#);
    shim.ping(3);
    shim.close_stdin();
    shim.wait();
    let recs = shim.audit_records();
    let limited: Vec<&Value> = recs
        .iter()
        .filter(|r| r["rule"] == "in-flight-limit")
        .collect();
    assert_eq!(
        limited.len(),
        1,
        "recorded once per run, not once per message"
    );
    assert_eq!(limited[0]["kind"], "server_request");
    let alert = recs
        .iter()
        .find(|r| r["detail"]["alert"] == "in_flight_limit")
        .expect("the run's alert");
    assert_eq!(alert["detail"]["refused"], refused);
    let end = recs.iter().find(|r| r["kind"] == "session_end").unwrap();
    assert_eq!(end["detail"]["counters"]["refused_in_flight"], refused);
    shim.verify_audit();
}

#[test]
fn a_session_cannot_write_past_its_audit_budget() {
    let mut shim = Builder::new()
        .command(flood_server())
        .policy("default = \"allow\"\n")
        .shim_args(&[
            "--name",
            "flood",
            "--audit-burst",
            "1000",
            "--audit-rate",
            "1",
        ])
        .spawn();
    shim.ping(1);
    let (rss0, log0) = (vm_rss_kib(shim.pid()).unwrap(), log_bytes(&shim));

    // Answers to nothing and lines that are not JSON: each would be a record.
    assert!(
        flood(&mut shim, "flood_junk", FLOOD).is_empty(),
        "answers to nothing and junk are dropped"
    );
    let (rss1, log1) = (vm_rss_kib(shim.pid()).unwrap(), log_bytes(&shim));
    println!(
        "{FLOOD} answers to nothing and malformed lines: shim RSS {rss0} KiB -> {rss1} KiB (+{} KiB), audit log {log0} -> {log1} bytes (+{} KiB)",
        rss1.saturating_sub(rss0),
        (log1 - log0) / 1024
    );
    // Once the budget is spent, requests are refused, fail closed, without a record each.
    let v = shim.call("2", "tools/list", None);
    assert_eq!(error_code(&v), -32089, "{v}");
    assert!(
        log1 - log0 < 2 << 20,
        "the log grew by {} bytes",
        log1 - log0
    );

    shim.close_stdin();
    shim.wait();
    let recs = shim.audit_records();
    let alerts: Vec<&Value> = recs
        .iter()
        .filter(|r| r["detail"]["alert"] == "audit_budget_exceeded")
        .collect();
    assert_eq!(alerts.len(), 1, "one alert, not one per message");
    assert!(recs.len() < 1100, "{} records", recs.len());
    let end = recs.iter().find(|r| r["kind"] == "session_end").unwrap();
    assert!(
        end["detail"]["counters"]["unrecorded"].as_u64().unwrap() > FLOOD - 1100,
        "{end}"
    );
    shim.verify_audit();
}
