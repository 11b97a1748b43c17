use super::*;
use crate::frame::Framer;

const POLICY: &str = r#"
default = "allow"
[[rule]]
id = "no-writes"
tool = "write_*"
action = "deny"
message = "read-only"
[[rule]]
id = "no-sampling"
method = "sampling/createMessage"
action = "deny"
"#;

pub(super) fn session() -> Session {
    session_with(POLICY)
}

/// A session with server `fs` under `policy` (messages up to 1 MiB).
pub(super) fn session_with(policy: &str) -> Session {
    let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
    let ctx = Arc::new(Context {
        session: "s".into(),
        transport: crate::audit::Transport::Shim,
        policy_sha256: "p".into(),
        mode: crate::policy::Mode::Enforce,
        principal: raw("{}"),
        agent_host: raw("{}"),
        chain: raw("[]"),
        server: raw("{}"),
    });
    Session::new(
        "fs".into(),
        Arc::new(Policy::parse(policy, "t").unwrap()),
        ctx,
        1 << 20,
        Subject::default(),
    )
}

/// Feeds `input` as one read and returns the plan with the buffer it indexes.
pub(super) fn judge(s: &mut Session, dir: Direction, input: &str) -> (Plan, Vec<u8>) {
    let mut f = Framer::new(1 << 20);
    let buf = f.spare(input.len());
    buf[..input.len()].copy_from_slice(input.as_bytes());
    f.filled(input.len());
    let mut frames = Vec::new();
    while let Some(fr) = f.next_frame() {
        frames.push(fr);
    }
    let plan = s.judge(dir, f.data(), frames);
    (plan, f.data().to_vec())
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn record_json(r: &Record) -> serde_json::Value {
    serde_json::to_value(r).unwrap()
}

#[test]
fn denied_request_is_answered_and_not_forwarded() {
    let mut s = session();
    let line = r#"{"jsonrpc":"2.0","id":"q1","method":"tools/call","params":{"name":"write_file","arguments":{"path":"/x"}}}"#;
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{line}\n"));
    assert_eq!(plan.acts.len(), 1);
    let Act::ToClient(reply) = &plan.acts[0] else {
        panic!("{:?}", plan.acts)
    };
    let v = json(reply);
    assert_eq!(v["id"], "q1");
    assert_eq!(v["error"]["code"], code::DENIED);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-writes")
    );
    let rec = record_json(&plan.commit[0]);
    assert_eq!(
        (
            rec["decision"].as_str(),
            rec["rule"].as_str(),
            rec["tool"].as_str()
        ),
        (Some("deny"), Some("no-writes"), Some("write_file"))
    );
    assert_eq!(rec["args_sha256"].as_str().map(str::len), Some(64));
    assert!(plan.append.is_empty());
}

#[test]
fn allowed_request_is_forwarded_verbatim_and_its_response_linked() {
    let mut s = session();
    let req = "{\"jsonrpc\":\"2.0\", \"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\"}}\r\n";
    let (plan, data) = judge(&mut s, Direction::ToServer, req);
    let [Act::Forward(r)] = &plan.acts[..] else {
        panic!("{:?}", plan.acts)
    };
    assert_eq!(&data[r.clone()], req.as_bytes());
    let request_record = plan.commit[0].id.clone();

    let resp = "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[]}}\n";
    let (plan, _) = judge(&mut s, Direction::ToClient, resp);
    assert!(matches!(&plan.acts[..], [Act::Forward(_)]));
    assert!(plan.commit.is_empty(), "responses do not wait for the disk");
    let rec = record_json(&plan.append[0]);
    assert_eq!(rec["links"].as_str(), Some(request_record.as_str()));
    assert_eq!(rec["tool"], "read_file");
    assert_eq!(rec["outcome"]["error"], false);
}

#[test]
fn a_response_nobody_asked_for_is_dropped() {
    let mut s = session();
    let (plan, _) = judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":99,\"result\":{}}\n",
    );
    assert!(plan.acts.is_empty());
    assert_eq!(record_json(&plan.append[0])["decision"], "deny");
}

#[test]
fn a_batch_goes_whole_or_not_at_all() {
    let mut s = session();
    let ok = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/progress"}]"#;
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{ok}\n"));
    assert!(matches!(&plan.acts[..], [Act::Forward(_)]));

    let mixed = r#"[{"jsonrpc":"2.0","id":2,"method":"ping"},{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"write_file"}},{"jsonrpc":"2.0","method":"notifications/x"},7]"#;
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{mixed}\n"));
    let [Act::ToClient(reply)] = &plan.acts[..] else {
        panic!("{:?}", plan.acts)
    };
    let v = json(reply);
    let codes: Vec<(serde_json::Value, i64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].clone(), e["error"]["code"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            (2.into(), code::BATCH_REFUSED),
            (3.into(), code::DENIED),
            (serde_json::Value::Null, code::INVALID_REQUEST)
        ]
    );
    assert!(
        plan.commit
            .iter()
            .all(|r| r.decision == Some(crate::audit::Decision::Deny))
    );
    // Nothing of the refused batch is left in flight.
    let (plan, _) = judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n",
    );
    assert!(plan.acts.is_empty());
}

#[test]
fn unusable_server_output_fails_the_request_it_answers() {
    let mut s = session();
    judge(
        &mut s,
        Direction::ToServer,
        "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/list\"}\n",
    );
    let (plan, _) = judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"a\":1,\n",
    );
    let [Act::ToClient(reply)] = &plan.acts[..] else {
        panic!("{:?}", plan.acts)
    };
    let v = json(reply);
    assert_eq!(
        (v["id"].as_i64(), v["error"]["code"].as_i64()),
        (Some(5), Some(code::SERVER_FAILED))
    );
}

#[test]
fn server_requests_are_decided_and_refusals_go_back_to_the_server() {
    let mut s = session();
    let (plan, _) = judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"sampling/createMessage\",\"params\":{}}\n",
    );
    let [Act::ToServer(reply)] = &plan.acts[..] else {
        panic!("{:?}", plan.acts)
    };
    assert_eq!(json(reply)["error"]["code"], code::DENIED);
    assert_eq!(record_json(&plan.commit[0])["kind"], "server_request");

    let (plan, _) = judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"roots/list\"}\n",
    );
    assert!(matches!(&plan.acts[..], [Act::Forward(_)]));
    // The client's answer to the server's request is matched to it, even with the same id
    // value live in the other direction.
    judge(
        &mut s,
        Direction::ToServer,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n",
    );
    let (plan, _) = judge(
        &mut s,
        Direction::ToServer,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"roots\":[]}}\n",
    );
    assert_eq!(record_json(&plan.append[0])["method"], "roots/list");
}

#[test]
fn claims_come_from_the_handshake_and_from_meta() {
    let mut s = session();
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","clientInfo":{"name":"claude","version":"1"},"capabilities":{}}}"#;
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{init}\n"));
    let rec = record_json(&plan.commit[0]);
    assert_eq!(rec["claims"]["clientInfo"]["name"], "claude");
    let (plan, _) = judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"2025-06-18\",\"serverInfo\":{\"name\":\"fs\"}}}\n",
    );
    assert_eq!(
        record_json(&plan.append[0])["claims"]["serverInfo"]["name"],
        "fs"
    );

    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"x"}}}}"#;
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{call}\n"));
    let rec = record_json(&plan.commit[0]);
    assert_eq!(
        rec["claims"]["io.modelcontextprotocol/protocolVersion"],
        "2026-07-28"
    );
}

#[test]
fn requests_in_flight_are_answered_when_abandoned() {
    let mut s = session();
    judge(
        &mut s,
        Direction::ToServer,
        "{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"tools/call\",\"params\":{\"name\":\"slow\"}}\n",
    );
    let (out, records) = s.abandon("gone");
    let v = json(out.strip_suffix(b"\n").unwrap());
    assert_eq!(
        (v["id"].as_str(), v["error"]["code"].as_i64()),
        (Some("a"), Some(code::SERVER_FAILED))
    );
    assert_eq!(records.len(), 1);
}

#[test]
fn unrecorded_requests_are_refused_and_the_rest_forwarded() {
    let mut s = session();
    let input = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n";
    let mut f = Framer::new(1 << 20);
    let buf = f.spare(input.len());
    buf[..input.len()].copy_from_slice(input.as_bytes());
    f.filled(input.len());
    let frames: Vec<Frame> = std::iter::from_fn(|| f.next_frame()).collect();
    s.judge(Direction::ToServer, f.data(), frames.iter().cloned());
    let acts = s.refuse_unrecorded(
        Direction::ToServer,
        f.data(),
        &frames,
        code::AUDIT_UNAVAILABLE,
        "disk full",
    );
    assert!(
        matches!(&acts[0], Act::ToClient(r) if json(r.strip_suffix(b"\n").unwrap())["error"]["code"] == code::AUDIT_UNAVAILABLE)
    );
    assert!(matches!(&acts[1], Act::Forward(_)));
    assert!(
        s.abandon("x").1.is_empty(),
        "the refused request is not left in flight"
    );
}

#[test]
fn secrets_are_redacted_inside_batched_responses_too() {
    let mut s = session();
    judge(
        &mut s,
        Direction::ToServer,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\"}}\n",
    );
    judge(
        &mut s,
        Direction::ToServer,
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"b\"}}\n",
    );
    let batch = r#"[{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"key AKIAABCDEFGHIJKLMNOP"}]}}, {"jsonrpc":"2.0","id":2,"result":{"x" : 1}}]"#;
    let (plan, _) = judge(&mut s, Direction::ToClient, &format!("{batch}\n"));
    let [Act::ToClient(out)] = &plan.acts[..] else {
        panic!("{:?}", plan.acts)
    };
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        !text.contains("AKIA") && text.contains("key [REDACTED]"),
        "{text}"
    );
    assert!(
        text.contains(r#"{"jsonrpc":"2.0","id":2,"result":{"x" : 1}}"#),
        "unchanged elements stay as received: {text}"
    );
    assert_eq!(record_json(&plan.append[0])["outcome"]["redactions"], 1);
}
