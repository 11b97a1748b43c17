//! `mcp-guard wrap`, the real binary around a fake server: what it does with input it must
//! not pass on (bad JSON, bad UTF-8, duplicate keys, non-requests, batches, denied calls,
//! bad server output). Each refusal must reach nobody but its sender, be answered with the
//! documented code and the sender's id, leave an audit record, and leave the session usable.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const DENY_DANGER: &str = r#"
default = "allow"

[[rule]]
id = "no-danger"
tool = "danger*"
action = "deny"
message = "dangerous tools are off"
"#;

/// Sends `line` (a newline is added), expects one error response and returns it with its
/// id as spelled on the wire. Then checks the session still answers a ping.
fn refused(shim: &mut Shim, line: &[u8], ping_id: u64) -> (Value, String) {
    let mut b = line.to_vec();
    b.push(b'\n');
    shim.send(&b);
    let got = shim.read_line();
    let v: Value = serde_json::from_slice(&got).unwrap_or_else(|e| {
        panic!(
            "answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&got)
        )
    });
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    let id = raw_id(&got);
    shim.ping(ping_id);
    (v, id)
}

/// The server received exactly the pings (and nothing else) sent during the test.
fn server_saw_only_pings(shim: &Shim) {
    let log = shim.server_log();
    for line in log.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).unwrap_or_else(|_| {
            panic!(
                "the server received a refused line: {:?}",
                String::from_utf8_lossy(line)
            )
        });
        assert_eq!(
            v["method"], "ping",
            "the server received a refused message: {v}"
        );
    }
}

/// The `malformed` audit records, in order.
fn malformed_records(shim: &Shim) -> Vec<Value> {
    shim.audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "malformed")
        .collect()
}

#[test]
fn invalid_json_gets_32700_with_a_null_id() {
    let mut shim = Shim::spawn_default();
    let cases: &[&[u8]] = &[
        b"{not json}",
        br#"{"method":"ping","id":1"#,
        br#"{"jsonrpc":"2.0","method":"ping"}}"#,
        br#"{"jsonrpc":"2.0","method":"ping"} {"jsonrpc":"2.0","method":"ping"}"#,
        b"nul",
        br#"{"method":"ping","jsonrpc":"2.0","id":1,"params":{"a":01}}"#,
    ];
    for (i, case) in cases.iter().enumerate() {
        let (v, id) = refused(&mut shim, case, 100 + i as u64);
        assert_eq!(
            error_code(&v),
            -32700,
            "{:?} -> {v}",
            String::from_utf8_lossy(case)
        );
        assert_eq!(id, "null", "{:?} -> {v}", String::from_utf8_lossy(case));
    }
    server_saw_only_pings(&shim);
    let recs = malformed_records(&shim);
    assert_eq!(recs.len(), cases.len(), "{recs:#?}");
    assert!(
        recs.iter()
            .all(|r| r["rule"] == "invalid_json" && r["decision"] == "deny"),
        "{recs:#?}"
    );
}

#[test]
fn invalid_json_with_a_leading_id_gets_32700_with_that_id() {
    let mut shim = Shim::spawn_default();
    let (v, id) = refused(
        &mut shim,
        br#"{"jsonrpc":"2.0","id":12,"method":"ping",}"#,
        1,
    );
    assert_eq!((error_code(&v), id.as_str()), (-32700, "12"), "{v}");
    let (v, id) = refused(&mut shim, br#"{"id":"abc","jsonrpc":"2.0","method":[}"#, 2);
    assert_eq!((error_code(&v), id.as_str()), (-32700, r#""abc""#), "{v}");
    server_saw_only_pings(&shim);
}

#[test]
fn invalid_utf8_gets_32700() {
    let mut shim = Shim::spawn_default();
    let cases: &[(&[u8], &str)] = &[
        (b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"\xff\xfe\"}}", "5"),
        (b"{\"method\":\"\xc3\x28\",\"jsonrpc\":\"2.0\",\"id\":6}", "null"),
        // A UTF-16 surrogate encoded in UTF-8 and an overlong encoding are not UTF-8.
        (b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\",\"params\":{\"s\":\"\xed\xa0\x80\"}}", "7"),
        (b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"ping\",\"params\":{\"s\":\"\xc0\xaf\"}}", "8"),
    ];
    for (i, (case, want_id)) in cases.iter().enumerate() {
        let (v, id) = refused(&mut shim, case, 100 + i as u64);
        assert_eq!(error_code(&v), -32700, "{v}");
        assert_eq!(&id, want_id, "{v}");
    }
    server_saw_only_pings(&shim);
    let recs = malformed_records(&shim);
    assert_eq!(recs.len(), cases.len());
    assert!(
        recs.iter().all(|r| r["rule"] == "invalid_utf8"),
        "{recs:#?}"
    );
}

#[test]
fn duplicate_keys_get_32083_with_the_id_and_never_reach_the_server() {
    let mut shim = Builder::new().policy(DENY_DANGER).spawn();
    let cases: &[(&str, &str)] = &[
        // The top-level id twice: the first one is what the sender can be answered with.
        (r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#, "1"),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"ping","method":"tools/call","params":{"name":"danger"}}"#,
            "3",
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"safe","arguments":{"p":1,"p":2}}}"#,
            "4",
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"safe","arguments":{"deep":[{"a":{"k":1,"k":1}}]}}}"#,
            "5",
        ),
        // The same key spelled differently: `na\u006de` is `name`.
        (
            r#"{"jsonrpc":"2.0","id":"s","method":"tools/call","params":{"name":"safe","na\u006de":"danger"}}"#,
            r#""s""#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"safe","\u006e\u0061\u006d\u0065":"danger"}}"#,
            "6",
        ),
        // Not sniffable: the id is not among the first keys.
        (
            r#"{"method":"tools/call","params":{"name":"a","name":"danger"},"jsonrpc":"2.0","id":7}"#,
            "null",
        ),
    ];
    for (i, (case, want_id)) in cases.iter().enumerate() {
        let (v, id) = refused(&mut shim, case.as_bytes(), 100 + i as u64);
        assert_eq!(error_code(&v), -32083, "{case} -> {v}");
        assert_eq!(&id, want_id, "{case} -> {v}");
    }
    server_saw_only_pings(&shim);
    let recs = malformed_records(&shim);
    assert_eq!(recs.len(), cases.len(), "{recs:#?}");
    assert!(
        recs.iter().all(|r| r["rule"] == "duplicate_key"),
        "{recs:#?}"
    );
    assert_eq!(recs[0]["request_id"], "1");
}

#[test]
fn non_objects_get_32600_with_a_null_id() {
    let mut shim = Shim::spawn_default();
    for (i, case) in ["42", r#""x""#, "null", "true", "1.5", "  -0 "]
        .iter()
        .enumerate()
    {
        let (v, id) = refused(&mut shim, case.as_bytes(), 100 + i as u64);
        assert_eq!(error_code(&v), -32600, "{case} -> {v}");
        assert_eq!(id, "null", "{case} -> {v}");
    }
    server_saw_only_pings(&shim);
    assert_eq!(malformed_records(&shim).len(), 6);
}

#[test]
fn an_empty_batch_gets_32600() {
    let mut shim = Shim::spawn_default();
    for (i, case) in ["[]", "[ ]", " [\t] "].iter().enumerate() {
        let (v, id) = refused(&mut shim, case.as_bytes(), 100 + i as u64);
        assert_eq!(error_code(&v), -32600, "{case} -> {v}");
        assert_eq!(id, "null");
    }
    server_saw_only_pings(&shim);
    let recs = malformed_records(&shim);
    assert!(
        recs.len() == 3 && recs.iter().all(|r| r["rule"] == "empty_batch"),
        "{recs:#?}"
    );
}

#[test]
fn requests_with_a_bad_id_type_get_32600() {
    let mut shim = Shim::spawn_default();
    for (i, id) in ["true", "{}", "[1]", "null", r#"{"a":1}"#]
        .iter()
        .enumerate()
    {
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"x"}}}}"#
        );
        let (v, got_id) = refused(&mut shim, line.as_bytes(), 100 + i as u64);
        assert_eq!(error_code(&v), -32600, "{line} -> {v}");
        assert_eq!(got_id, "null", "{line} -> {v}");
    }
    server_saw_only_pings(&shim);
}

#[test]
fn messages_that_are_not_json_rpc_2_get_32600() {
    let mut shim = Shim::spawn_default();
    let cases: &[(&str, &str)] = &[
        (r#"{"jsonrpc":"1.0","id":3,"method":"ping"}"#, "null"),
        (r#"{"id":3,"jsonrpc":"1.0","method":"ping"}"#, "3"),
        (r#"{"id":4,"method":"ping"}"#, "4"),
        (r#"{"jsonrpc":null,"id":5,"method":"ping"}"#, "null"),
        (r#"{"jsonrpc":"2.0","id":6}"#, "6"),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"ping","params":"x"}"#,
            "7",
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"ping","result":{}}"#,
            "8",
        ),
        ("{}", "null"),
    ];
    for (i, (case, want_id)) in cases.iter().enumerate() {
        let (v, id) = refused(&mut shim, case.as_bytes(), 100 + i as u64);
        assert_eq!(error_code(&v), -32600, "{case} -> {v}");
        assert_eq!(&id, want_id, "{case} -> {v}");
    }
    server_saw_only_pings(&shim);
    assert_eq!(malformed_records(&shim).len(), cases.len());
}

/// SHIM BUG (see the report): valid JSON whose `jsonrpc` or `method` member has the wrong
/// type is answered -32700 (parse error) instead of -32600 (invalid request); the envelope's
/// typed deserialization failure is reported as `Malformed::Json`.
#[test]
fn well_formed_json_with_wrongly_typed_members_gets_32600_not_32700() {
    let mut shim = Shim::spawn_default();
    let cases: &[(&str, &str)] = &[
        (r#"{"jsonrpc":2.0,"id":5,"method":"ping"}"#, "null"),
        (r#"{"jsonrpc":"2.0","id":9,"method":7}"#, "9"),
        (r#"{"jsonrpc":"2.0","id":10,"method":["tools/call"]}"#, "10"),
    ];
    let mut wrong = Vec::new();
    for (i, (case, want_id)) in cases.iter().enumerate() {
        let (v, id) = refused(&mut shim, case.as_bytes(), 100 + i as u64);
        assert_eq!(&id, want_id, "{case} -> {v}");
        if error_code(&v) != -32600 {
            wrong.push(format!("{case} -> {v}"));
        }
    }
    server_saw_only_pings(&shim);
    assert!(
        wrong.is_empty(),
        "valid JSON answered with another code than -32600:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_batch_of_allowed_messages_is_forwarded_as_is() {
    let mut shim = Builder::new().policy(DENY_DANGER).spawn();
    let batch = concat!(
        r#"[ {"jsonrpc":"2.0","id":1,"method":"ping"} ,"#,
        r#"{"jsonrpc":"2.0","id":"two","method":"tools/call","params":{"name":"safe","arguments":{}}},"#,
        r#" {"jsonrpc":"2.0","method":"notifications/progress","params":{}} ]"#,
        "\r\n"
    );
    shim.send(batch.as_bytes());
    let v = shim.read_json();
    let answers = v
        .as_array()
        .unwrap_or_else(|| panic!("expected a batch answer: {v}"));
    assert_eq!(answers.len(), 2, "{v}");
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[1]["id"], "two");
    assert_eq!(answers[1]["result"]["content"][0]["text"], "called safe");
    assert_eq!(
        shim.server_log(),
        batch.as_bytes(),
        "the batch must reach the server unchanged"
    );
    let recs = shim.audit_records();
    let requests: Vec<_> = recs.iter().filter(|r| r["kind"] == "request").collect();
    assert_eq!(requests.len(), 2, "{recs:#?}");
    assert!(requests.iter().all(|r| r["decision"] == "allow"));
}

#[test]
fn a_batch_with_a_denied_element_is_answered_with_errors_and_nothing_reaches_the_server() {
    let mut shim = Builder::new().policy(DENY_DANGER).spawn();
    let batch = concat!(
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"danger-zone"}},"#,
        r#"{"jsonrpc":"2.0","method":"notifications/progress"},"#,
        r#"{"jsonrpc":"2.0","id":"three","method":"tools/call","params":{"name":"safe"}}]"#,
        "\n"
    );
    shim.send(batch.as_bytes());
    let v = shim.read_json();
    let answers = v
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of errors: {v}"));
    let got: Vec<(Value, i64)> = answers
        .iter()
        .map(|a| (a["id"].clone(), error_code(a)))
        .collect();
    assert_eq!(
        got,
        vec![
            (Value::from(1), -32081),
            (Value::from(2), -32080),
            (Value::from("three"), -32081)
        ],
        "{v}"
    );
    assert!(
        answers[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-danger"),
        "{v}"
    );
    shim.ping(10);
    server_saw_only_pings(&shim);

    let recs = shim.audit_records();
    let req = |id: &str| {
        recs.iter()
            .find(|r| r["kind"] == "request" && r["request_id"] == id)
            .unwrap_or_else(|| panic!("no record for request {id}: {recs:#?}"))
    };
    assert_eq!(
        (&req("1")["decision"], &req("1")["reason"]),
        (&Value::from("deny"), &Value::from("batch refused"))
    );
    assert_eq!(
        (&req("2")["decision"], &req("2")["rule"]),
        (&Value::from("deny"), &Value::from("no-danger"))
    );
    assert_eq!(req("three")["decision"], "deny");
}

#[test]
fn a_batch_with_a_malformed_element_is_refused_whole() {
    let mut shim = Shim::spawn_default();
    let batch =
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},42,{"jsonrpc":"2.0","id":"b","oops":1}]"#;
    shim.send_line(batch);
    let v = shim.read_json();
    let answers = v
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of errors: {v}"));
    let got: Vec<(Value, i64)> = answers
        .iter()
        .map(|a| (a["id"].clone(), error_code(a)))
        .collect();
    assert_eq!(
        got,
        vec![
            (Value::from(1), -32081),
            (Value::Null, -32600),
            (Value::from("b"), -32600)
        ],
        "{v}"
    );
    shim.ping(10);
    server_saw_only_pings(&shim);
    assert_eq!(malformed_records(&shim).len(), 2);
}

#[test]
fn a_batch_with_a_duplicate_key_inside_is_refused_whole() {
    let mut shim = Shim::spawn_default();
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","name":"b"}}]"#;
    shim.send(format!("{batch}\n").as_bytes());
    let got = shim.read_line();
    let v: Value = serde_json::from_slice(&got).unwrap();
    // One error per request of the batch, as a batch: the duplicate, and its neighbour refused with it.
    let codes: Vec<(Value, i64)> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a batch: {v}"))
        .iter()
        .map(|e| (e["id"].clone(), error_code(e)))
        .collect();
    assert_eq!(codes, [(1.into(), -32081), (2.into(), -32083)], "{v}");
    shim.ping(10);
    server_saw_only_pings(&shim);
}

// ---- the policy path ----

#[test]
fn a_denied_tools_call_never_reaches_the_server_and_gets_32080_with_the_same_id() {
    let mut shim = Builder::new().policy(DENY_DANGER).spawn();
    let ids = [
        "0",
        "-5",
        "1.5",
        r#""str""#,
        r#""""#,
        "9007199254740993",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "1e3",
        r#""\u00e9\"q""#,
    ];
    for (i, id) in ids.iter().enumerate() {
        let line = tool_call(id, "danger-rm");
        shim.send_line(&line);
        let got = shim.read_line();
        assert_eq!(
            raw_id(&got),
            *id,
            "the id must come back exactly as sent: {}",
            String::from_utf8_lossy(&got)
        );
        let v: Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(error_code(&v), -32080, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("no-danger") && msg.contains("dangerous tools are off"),
            "{msg}"
        );
        assert_eq!(v["error"]["data"]["mcp_guard"]["rule"], "no-danger", "{v}");
        shim.ping(100 + i as u64);
    }
    assert!(
        !shim.server_log_contains(b"danger"),
        "a denied call reached the server"
    );
    server_saw_only_pings(&shim);
    let denied: Vec<_> = shim
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "request" && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), ids.len());
    assert!(
        denied
            .iter()
            .all(|r| r["rule"] == "no-danger" && r["tool"] == "danger-rm"),
        "{denied:#?}"
    );
    assert_eq!(denied[3]["request_id"], "str");
}

#[test]
fn an_allowed_tools_call_next_to_denied_ones_still_works() {
    let mut shim = Builder::new().policy(DENY_DANGER).spawn();
    shim.send_line(&tool_call("1", "danger"));
    shim.send_line(&tool_call("2", "safe"));
    let a = shim.read_json();
    let b = shim.read_json();
    assert_eq!((a["id"].clone(), error_code(&a)), (Value::from(1), -32080));
    assert_eq!(b["result"]["content"][0]["text"], "called safe", "{b}");
    assert!(!shim.server_log_contains(b"danger"));
}

#[test]
fn escaped_method_and_tool_names_are_denied_like_plain_ones() {
    let mut shim = Builder::new().policy(DENY_DANGER).spawn();
    let cases = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"danger"}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools\u002fcall","params":{"name":"d\u0061nger"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{},"name":"\u0064anger-x"}}"#,
    ];
    for (i, case) in cases.iter().enumerate() {
        let (v, id) = refused(&mut shim, case.as_bytes(), 100 + i as u64);
        assert_eq!(error_code(&v), -32080, "{case} -> {v}");
        assert_eq!(id, (i + 1).to_string());
    }
    server_saw_only_pings(&shim);
}

#[test]
fn rules_match_the_server_name_given_with_name() {
    let policy = r#"
[[rule]]
id = "prod-read-only"
server = "prod-*"
tool = "*"
action = "deny"
"#;
    let mut prod = Builder::new()
        .policy(policy)
        .shim_args(&["--name", "prod-db"])
        .spawn();
    let v = prod.call("1", "tools/call", Some(r#"{"name":"query"}"#));
    assert_eq!(error_code(&v), -32080, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prod-read-only")
    );
    assert!(!prod.server_log_contains(b"query"));

    let mut dev = Builder::new()
        .policy(policy)
        .shim_args(&["--name", "dev-db"])
        .spawn();
    let v = dev.call("1", "tools/call", Some(r#"{"name":"query"}"#));
    assert_eq!(v["result"]["content"][0]["text"], "called query", "{v}");
}

#[test]
fn default_deny_refuses_acting_methods_and_allows_plumbing() {
    let mut shim = Builder::new().policy("default = \"deny\"\n").spawn();
    shim.ping(1);
    let v = shim.call("2", "tools/list", None);
    assert!(v.get("result").is_some(), "{v}");
    let v = shim.call("3", "tools/call", Some(r#"{"name":"anything"}"#));
    assert_eq!(error_code(&v), -32080, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("default"),
        "{v}"
    );
    let v = shim.call(
        "4",
        "resources/read",
        Some(r#"{"uri":"file:///etc/passwd"}"#),
    );
    assert_eq!(error_code(&v), -32080, "{v}");
    assert!(!shim.server_log_contains(b"anything") && !shim.server_log_contains(b"passwd"));
}

// ---- what the server sends ----

fn emit(shim: &mut Shim, id: &str, bytes: &[u8]) {
    let file = shim.path(&format!("emit-{}", id.trim_matches('"')));
    std::fs::write(&file, bytes).unwrap();
    shim.send_line(&request(
        id,
        "emit",
        Some(&format!(r#"{{"path":{:?}}}"#, file)),
    ));
}

#[test]
fn invalid_json_from_the_server_answering_a_request_gets_the_client_32084_for_that_id() {
    let mut shim = Shim::spawn_default();
    let bad: &[(&str, &[u8])] = &[
        ("5", b"{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":\n"),
        ("\"u\"", b"{\"jsonrpc\":\"2.0\",\"id\":\"u\",\"result\":{\"s\":\"\xff\"}}\n"),
        ("7", b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"a\":1,\"a\":2}}\n"),
        ("8", b"{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{},\"error\":{\"code\":1,\"message\":\"x\"}}\n"),
    ];
    for (i, (id, answer)) in bad.iter().enumerate() {
        emit(&mut shim, id, answer);
        let got = shim.read_line();
        let v: Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(raw_id(&got), *id, "{v}");
        assert_eq!(error_code(&v), -32084, "{v}");
        shim.ping(100 + i as u64);
    }
    let recs = malformed_records(&shim);
    assert_eq!(recs.len(), bad.len(), "{recs:#?}");
    assert!(
        recs.iter().all(|r| r["direction"] == "server_to_client"),
        "{recs:#?}"
    );
}

#[test]
fn an_unsolicited_response_from_the_server_is_dropped() {
    let mut shim = Shim::spawn_default();
    emit(
        &mut shim,
        "5",
        b"{\"jsonrpc\":\"2.0\",\"id\":999,\"result\":{\"injected\":true}}\n{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"ok\":true}}\n",
    );
    let v = shim.read_json();
    assert_eq!(v["id"], 5, "the unsolicited response was forwarded: {v}");
    // A second answer to the same request is unsolicited too.
    emit(
        &mut shim,
        "6",
        b"{\"jsonrpc\":\"2.0\",\"id\":6,\"result\":{}}\n{\"jsonrpc\":\"2.0\",\"id\":6,\"result\":{\"again\":1}}\n",
    );
    let v = shim.read_json();
    assert_eq!(v["id"], 6);
    assert!(v["result"].get("again").is_none());
    shim.ping(7);
    shim.expect_silence(Duration::from_millis(200));
    shim.close_stdin();
    let rest = shim.read_to_eof();
    assert!(
        !contains(&rest, b"999") && !contains(&rest, b"again"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(shim.exit_code(), 0);
    let dropped: Vec<_> = shim
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["kind"] == "response"
                && r["decision"] == "deny"
                && r["direction"] == "server_to_client"
        })
        .collect();
    assert_eq!(dropped.len(), 2, "{dropped:#?}");
    assert_eq!(dropped[0]["request_id"], "999");
    shim.verify_audit();
}

#[test]
fn non_json_output_from_the_server_is_not_passed_to_the_client() {
    let mut shim = Shim::spawn_default();
    emit(
        &mut shim,
        "5",
        b"Server listening on stdio\nDEBUG: \xff\xfe ready\n{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{}}\n",
    );
    let v = shim.read_json();
    assert_eq!(v["id"], 5, "{v}");
    shim.ping(6);
    shim.expect_silence(Duration::from_millis(200));
}

#[test]
fn an_unsolicited_response_from_the_client_does_not_reach_the_server() {
    let mut shim = Shim::spawn_default();
    shim.send_line(r#"{"jsonrpc":"2.0","id":77,"result":{"forged":true}}"#);
    shim.ping(1);
    shim.expect_silence(Duration::from_millis(200));
    assert!(!shim.server_log_contains(b"forged"));
}

/// SHIM BUG (see the report): a batch from the server that answers a pending request but
/// also holds one unusable element (an unsolicited response, a malformed message) is
/// dropped whole, and the pending request is forgotten: the client gets neither the answer
/// nor an error for its id, not even when the session ends.
#[test]
fn a_server_batch_with_one_bad_element_still_settles_the_requests_it_answers() {
    let mut unanswered = Vec::new();
    for bad in [
        r#"{"jsonrpc":"2.0","id":999,"result":{}}"#,
        "42",
        r#"{"jsonrpc":"2.0","id":5}"#,
    ] {
        let mut shim = Shim::spawn_default();
        let batch =
            format!("[{{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{{\"ok\":true}}}},{bad}]\n");
        emit(&mut shim, "5", batch.as_bytes());
        shim.send_line(&request("6", "ping", None));
        // Whatever the shim makes of the batch, the client must hear about id 5 by the end.
        let mut lines = vec![shim.read_line()];
        shim.close_stdin();
        let rest = shim.read_to_eof();
        assert_eq!(shim.exit_code(), 0);
        lines.extend(rest.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
        let ids: Vec<Value> = lines
            .iter()
            .flat_map(|l| match serde_json::from_slice::<Value>(l).unwrap() {
                Value::Array(a) => a,
                v => vec![v],
            })
            .map(|m| m["id"].clone())
            .collect();
        assert!(ids.contains(&Value::from(6)), "{ids:?}");
        if !ids.contains(&Value::from(5)) {
            unanswered.push(format!("[answer to 5, {bad}] -> client saw ids {ids:?}"));
        }
    }
    assert!(
        unanswered.is_empty(),
        "request 5 was left without an answer or an error:\n{}",
        unanswered.join("\n")
    );
}

#[test]
fn an_allowed_server_request_reaches_the_client_and_its_answer_reaches_the_server() {
    let mut shim = Shim::spawn_default();
    let req =
        b"{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"sampling/createMessage\",\"params\":{\"messages\":[]}}\n";
    emit(&mut shim, "1", req);
    assert_eq!(shim.read_line(), req);
    let answer = r#"{"jsonrpc":"2.0","id":"s1","result":{"role":"assistant","content":{"type":"text","text":"hi"}}}"#;
    shim.send_line(answer);
    shim.ping(2);
    assert!(
        shim.server_log_contains(answer.as_bytes()),
        "the client's answer did not reach the server"
    );
    let rec = wait_for_record(&shim.audit, |r| r["kind"] == "server_request");
    assert_eq!(
        (&rec["decision"], &rec["method"]),
        (
            &Value::from("allow"),
            &Value::from("sampling/createMessage")
        )
    );
}

#[test]
fn a_denied_server_request_never_reaches_the_client_and_the_server_gets_32080() {
    let mut shim = Builder::new().policy("default = \"deny\"\n").spawn();
    emit(&mut shim, "1", b"{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"sampling/createMessage\",\"params\":{}}\n");
    // The emit request is not answered (the server only wrote its own request): ping behind it.
    shim.ping(2);
    shim.expect_silence(Duration::from_millis(200));
    let log = String::from_utf8_lossy(&shim.server_log()).into_owned();
    let err = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["id"] == "s1")
        .unwrap_or_else(|| panic!("the server got no answer to its denied request: {log}"));
    assert_eq!(error_code(&err), -32080, "{err}");
}
