//! Credentials never reach a record or a log: plant them everywhere a client, a server or a
//! command line can put them, then scan everything mcp-guard wrote.

mod common;

use common::*;

const TOKEN: &str = "ghp_plantedPlantedPlanted0123456789ab";
const AWS: &str = "AKIAPLANTED012345678";
const PASSWORD: &str = "hunter2planted";

#[test]
fn planted_credentials_never_reach_the_audit_log_or_stderr() {
    let url = format!("https://bob:{PASSWORD}@example.invalid/repo");
    let mut shim = Builder::new()
        .server_args(&["--token", TOKEN, &format!("--aws-key={AWS}"), &url])
        .policy("[[rule]]\nid = \"no-danger\"\ntool = \"danger\"\naction = \"deny\"\n")
        .spawn();
    // In tool arguments, allowed and denied.
    let args = format!(
        r#"{{"name":"echo","arguments":{{"token":"{TOKEN}","aws":"{AWS}","url":"{url}"}}}}"#
    );
    shim.call("1", "tools/call", Some(&args));
    let denied = format!(r#"{{"name":"danger","arguments":{{"token":"{TOKEN}"}}}}"#);
    let v = shim.call("2", "tools/call", Some(&denied));
    assert_eq!(error_code(&v), -32080, "{v}");
    // In malformed messages whose parse errors could quote them.
    for bad in [
        format!(
            r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"x","arguments":{{"t":"{TOKEN}","t":1}}}}}}"#
        ),
        format!(
            r#"{{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{{"name":"{TOKEN}",}}}}"#
        ),
        format!(r#"["{TOKEN}"]"#),
        format!(r#"{{"jsonrpc":"2.0","id":"{TOKEN}","method":["{AWS}"]}}"#),
    ] {
        shim.send_line(&bad);
        shim.read_line();
    }
    shim.ping(5);
    shim.close_stdin();
    shim.wait();

    let audit = std::fs::read(&shim.audit).unwrap();
    let stderr = shim.stderr_to_eof();
    assert!(!audit.is_empty());
    for secret in [TOKEN, AWS, PASSWORD] {
        assert!(
            !contains(&audit, secret.as_bytes()),
            "{secret} reached the audit log"
        );
        assert!(
            !contains(&stderr, secret.as_bytes()),
            "{secret} reached stderr"
        );
    }
    // The records still say what happened, with arguments as hashes.
    let recs = shim.audit_records();
    let denied = recs
        .iter()
        .find(|r| r["decision"] == "deny" && r["tool"] == "danger")
        .expect("deny record");
    assert_eq!(
        denied["args_sha256"].as_str().map(str::len),
        Some(64),
        "{denied}"
    );
    assert!(
        recs.iter()
            .any(|r| r["server"]["argv"].to_string().contains("[REDACTED]")),
        "argv not redacted"
    );
}

#[test]
fn arguments_are_in_clear_only_where_a_rule_asks_and_then_redacted() {
    let policy = "[[rule]]\nid = \"keep-echo\"\ntool = \"echo\"\naction = \"audit\"\nrecord_arguments = true\n";
    let mut shim = Builder::new().policy(policy).spawn();
    let echo = format!(
        r#"{{"name":"echo","arguments":{{"text":"hello","note":"key {TOKEN}","password":"{PASSWORD}"}}}}"#
    );
    shim.call("1", "tools/call", Some(&echo));
    let other = format!(r#"{{"name":"other","arguments":{{"text":"hidden {TOKEN}"}}}}"#);
    shim.call("2", "tools/call", Some(&other));
    shim.close_stdin();
    shim.wait();
    let audit = std::fs::read(&shim.audit).unwrap();
    for secret in [TOKEN, PASSWORD] {
        assert!(
            !contains(&audit, secret.as_bytes()),
            "{secret} reached the audit log"
        );
    }
    let recs = shim.audit_records();
    let kept = recs
        .iter()
        .find(|r| r["kind"] == "request" && r["tool"] == "echo")
        .expect("echo record");
    assert_eq!(kept["audit_rule"], "keep-echo", "{kept}");
    assert_eq!(kept["args"]["text"], "hello", "{kept}");
    assert_eq!(kept["args"]["note"], "key [REDACTED]", "{kept}");
    assert_eq!(kept["args"]["password"], "[REDACTED]", "{kept}");
    let hashed = recs
        .iter()
        .find(|r| r["kind"] == "request" && r["tool"] == "other")
        .expect("other record");
    assert!(
        hashed.get("args").is_none(),
        "arguments in clear without a rule asking: {hashed}"
    );
    assert_eq!(hashed["args_sha256"].as_str().map(str::len), Some(64));
}
