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

#[test]
fn a_policy_appearing_elsewhere_mid_session_does_not_replace_the_one_chosen() {
    // Started on the built-in policy; a user policy then appears (as a guarded tool with a
    // shell could write it). It is for the next session, not this one.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg");
    let mut shim = Builder::new()
        .env("XDG_CONFIG_HOME", cfg.to_str().unwrap())
        .env("MCP_GUARD_POLICY", "")
        .shim_args(&["--policy-poll-ms", "100"])
        .spawn();
    let v = shim.call("1", "tools/call", Some(r#"{"name":"x"}"#));
    assert!(
        v.get("error").is_none(),
        "allowed by the built-in policy: {v}"
    );
    std::fs::create_dir_all(cfg.join("mcp-guard")).unwrap();
    std::fs::write(cfg.join("mcp-guard/policy.toml"), DENY_X).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let v = shim.call("2", "tools/call", Some(r#"{"name":"x"}"#));
    assert!(
        v.get("error").is_none(),
        "the new file did not replace the session's policy: {v}"
    );
    shim.close_stdin();
    shim.wait();
    let loads = shim
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "policy_loaded")
        .count();
    assert_eq!(loads, 1, "only the start loaded a policy");
}

#[test]
fn a_guarded_call_cannot_touch_the_sessions_policy_key_or_log() {
    for policy in [ALLOW_ALL, "default = \"allow\"\nmode = \"monitor\"\n"] {
        let mut shim = Builder::new().policy(policy).spawn();
        let targets = [
            shim.path("policy.toml"),
            shim.path("audit.key"),
            shim.path("audit.pub"),
            shim.path("pins.json"),
            shim.path("audit.jsonl.head"),
            std::path::PathBuf::from(bin()),
        ];
        for (i, t) in targets.iter().enumerate() {
            let t = t.to_str().unwrap();
            let params = serde_json::json!({"name": "write_file", "arguments": {"path": "/tmp/x", "nested": [{"destination": t}]}});
            let v = shim.call(
                &(100 + i).to_string(),
                "tools/call",
                Some(&params.to_string()),
            );
            assert_eq!(error_code(&v), -32080, "{t}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("guard-own-files"),
                "{v}"
            );
            let params = serde_json::json!({"uri": format!("file://{t}")});
            let v = shim.call(
                &(200 + i).to_string(),
                "resources/read",
                Some(&params.to_string()),
            );
            assert_eq!(error_code(&v), -32080, "{t}: {v}");
        }
        assert!(
            !shim.server_log_contains(b"write_file"),
            "no such call reached the server"
        );
        shim.close_stdin();
        shim.wait();
        let alerts: Vec<Value> = shim
            .audit_records()
            .into_iter()
            .filter(|r| r["kind"] == "alert" && r["detail"]["alert"] == "guard_files_targeted")
            .collect();
        assert_eq!(alerts.len(), 2 * targets.len(), "one alert per attempt");
        shim.verify_audit();
    }
}
