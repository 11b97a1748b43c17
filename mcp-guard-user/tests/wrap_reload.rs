//! A changed policy file takes effect in a running session; a broken one leaves the old
//! policy in force, and both are recorded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ALLOW_ALL: &str = "default = \"allow\"\n";
const DENY_X: &str =
    "default = \"allow\"\n[[rule]]\nid = \"no-x\"\ntool = \"x\"\naction = \"deny\"\n";

/// Calls tool `x` until the answer satisfies `want` (the policy is polled every 100 ms).
fn call_until(shim: &mut Shim, first_id: u64, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = first_id;
    loop {
        let v = shim.call(&id.to_string(), "tools/call", Some(r#"{"name":"x"}"#));
        if want(&v) || Instant::now() > deadline {
            return v;
        }
        id += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_edited_policy_takes_effect_and_a_broken_one_is_refused() {
    let mut shim = Builder::new()
        .policy(ALLOW_ALL)
        .shim_args(&["--policy-poll-ms", "100"])
        .spawn();
    let policy = shim.path("policy.toml");
    let v = shim.call("1", "tools/call", Some(r#"{"name":"x"}"#));
    assert!(v.get("error").is_none(), "allowed at first: {v}");

    std::fs::write(&policy, DENY_X).unwrap();
    let v = call_until(&mut shim, 100, |v| v.get("error").is_some());
    assert_eq!(error_code(&v), -32080, "the edited policy denies x: {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("no-x"),
        "{v}"
    );

    std::fs::write(
        &policy,
        "default = \"allow\"\n[[rule]]\nid = \"broken\"\nbogus = 1\n",
    )
    .unwrap();
    // Give the broken file time to be seen, then check the old policy still holds.
    wait_for_record(&shim.audit, |r| r["kind"] == "alert");
    let v = shim.call("500", "tools/call", Some(r#"{"name":"x"}"#));
    assert_eq!(
        error_code(&v),
        -32080,
        "a broken policy leaves the previous one in force: {v}"
    );

    shim.close_stdin();
    shim.wait();
    let recs = shim.audit_records();
    let loads: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "policy_loaded")
        .collect();
    assert_eq!(loads.len(), 2, "the start and the reload: {loads:#?}");
    assert_ne!(loads[0]["policy_sha256"], loads[1]["policy_sha256"]);
    assert_eq!(loads[1]["detail"]["replaces"], loads[0]["policy_sha256"]);
    let alert = recs.iter().find(|r| r["kind"] == "alert").unwrap();
    assert_eq!(alert["detail"]["alert"], "policy_reload_failed", "{alert}");
    assert!(
        alert["reason"].as_str().unwrap().contains("bogus"),
        "{alert}"
    );
    // Decisions name the policy that made them.
    let denied = recs.iter().find(|r| r["decision"] == "deny").unwrap();
    assert_eq!(denied["policy_sha256"], loads[1]["policy_sha256"]);
    assert!(
        shim.stderr_text().contains("does not load"),
        "the failure is logged"
    );
    shim.verify_audit();
}
