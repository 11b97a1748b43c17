//! The ask flow: a held call, the host's answer, timeouts, withdrawal, attackers.

use std::time::Duration;

use super::tests::{judge, session_with};
use super::*;

const ASK: &str = r#"
default = "allow"
[[rule]]
id = "ask-writes"
tool = "write_file"
action = "ask"
message = "writes need a person"
timeout = "2s"
[[rule]]
id = "no-secrets"
tool = "write_file"
action = "deny"
[[rule.args]]
pointer = "/path"
glob = "/secrets/**"
"#;

const INIT_ELICIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"elicitation":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
const INIT_PLAIN: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;

fn write(id: u64, path: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"write_file","arguments":{{"path":"{path}","content":"x"}}}}}}"#
    ) + "\n"
}

fn v(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn rec(r: &Record) -> serde_json::Value {
    serde_json::to_value(r).unwrap()
}

/// A session whose host declared (or not) elicitation, initialized.
fn started(elicitation: bool) -> Session {
    let mut s = session_with(ASK);
    let init = if elicitation { INIT_ELICIT } else { INIT_PLAIN };
    judge(&mut s, Direction::ToServer, &format!("{init}\n"));
    judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},\"serverInfo\":{\"name\":\"s\",\"version\":\"1\"}}}\n",
    );
    s
}

/// Sends a write that the rule holds; returns the elicitation request sent to the host.
fn held(s: &mut Session, id: u64) -> serde_json::Value {
    let (plan, _) = judge(s, Direction::ToServer, &write(id, "/data/a"));
    assert_eq!(plan.acts.len(), 1, "{:?}", plan.acts);
    let Act::ToClient(q) = &plan.acts[0] else {
        panic!("not forwarded, the host is asked: {:?}", plan.acts)
    };
    let r = rec(&plan.commit[0]);
    assert_eq!(r["kind"], "request");
    assert_eq!(r["decision"], "ask");
    assert_eq!(r["rule"], "ask-writes");
    v(q)
}

fn answer(ask: &serde_json::Value, action: &str) -> String {
    format!(
        "{}\n",
        serde_json::json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": action, "content": {}}})
    )
}

#[test]
fn an_accepted_call_is_forwarded_exactly_once_as_received() {
    let mut s = started(true);
    let ask = held(&mut s, 7);
    assert_eq!(ask["method"], "elicitation/create");
    let text = ask["params"]["message"].as_str().unwrap();
    assert!(text.contains("write_file") && text.contains("`fs`") && text.contains("ask-writes"));
    assert!(
        text.contains("/data/a") && text.contains("writes need a person"),
        "{text}"
    );
    let (plan, _) = judge(&mut s, Direction::ToServer, &answer(&ask, "accept"));
    assert_eq!(
        plan.acts,
        vec![Act::ToServer(write(7, "/data/a").into_bytes())]
    );
    let r = rec(&plan.commit[0]);
    assert_eq!(r["kind"], "approval");
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["detail"]["outcome"], "approved");
    // The server's answer reaches the host, linked to the request.
    let (plan, _) = judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[]}}\n",
    );
    assert!(matches!(plan.acts[..], [Act::Forward(_)]));
    // The same answer again is an answer to nothing: the approval was used once.
    let (plan, _) = judge(&mut s, Direction::ToServer, &answer(&ask, "accept"));
    assert!(plan.acts.is_empty(), "{:?}", plan.acts);
    assert_eq!(rec(&plan.append[0])["decision"], "deny");
}

#[test]
fn declined_and_cancelled_calls_are_refused_and_never_reach_the_server() {
    for (action, outcome) in [("decline", "declined"), ("cancel", "cancelled")] {
        let mut s = started(true);
        let ask = held(&mut s, 3);
        let (plan, _) = judge(&mut s, Direction::ToServer, &answer(&ask, action));
        assert_eq!(plan.acts.len(), 1);
        let Act::ToClient(e) = &plan.acts[0] else {
            panic!("{:?}", plan.acts)
        };
        let e = v(e);
        assert_eq!(e["id"], 3);
        assert_eq!(e["error"]["code"], code::DENIED);
        assert_eq!(e["error"]["data"]["mcp_guard"]["approval"], outcome);
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("ask-writes")
        );
        let r = rec(&plan.commit[0]);
        assert_eq!(
            (r["kind"].as_str(), r["decision"].as_str()),
            (Some("approval"), Some("deny"))
        );
        assert_eq!(r["detail"]["outcome"], outcome);
    }
}

#[test]
fn an_error_answer_or_a_malformed_result_refuses() {
    for body in [
        r#""error":{"code":-1,"message":"no UI"}"#,
        r#""result":{"action":"ACCEPT"}"#,
        r#""result":{}"#,
    ] {
        let mut s = started(true);
        let ask = held(&mut s, 4);
        let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{},{body}}}\n", ask["id"]);
        let (plan, _) = judge(&mut s, Direction::ToServer, &line);
        assert!(
            matches!(&plan.acts[..], [Act::ToClient(_)]),
            "{body}: {:?}",
            plan.acts
        );
        assert_eq!(rec(&plan.commit[0])["detail"]["outcome"], "failed");
    }
}

#[test]
fn a_host_without_elicitation_gets_a_refusal_that_says_so() {
    let mut s = started(false);
    let (plan, _) = judge(&mut s, Direction::ToServer, &write(5, "/data/a"));
    let Act::ToClient(e) = &plan.acts[0] else {
        panic!("{:?}", plan.acts)
    };
    let e = v(e);
    assert_eq!(e["error"]["code"], code::DENIED);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("elicitation"),
        "{e}"
    );
    let kinds: Vec<_> = plan.commit.iter().map(|r| rec(r)["kind"].clone()).collect();
    assert_eq!(kinds, ["request", "approval"]);
    assert_eq!(rec(&plan.commit[1])["detail"]["outcome"], "unsupported");
    // A host that declared only URL elicitation cannot show the form either.
    assert!(!ask::can_ask(Some(
        &serde_json::json!({"elicitation": {"url": {}}})
    )));
    assert!(ask::can_ask(Some(
        &serde_json::json!({"elicitation": {"form": {}}})
    )));
}

#[test]
fn no_answer_in_time_refuses_and_closes_the_question() {
    let mut s = started(true);
    let ask = held(&mut s, 9);
    let due = s.next_deadline().unwrap();
    assert!(due > Instant::now() + Duration::from_secs(1));
    let mut acts = Vec::new();
    s.expire(Instant::now(), &mut acts);
    assert!(acts.is_empty(), "not yet");
    s.expire(due, &mut acts);
    assert_eq!(acts.len(), 2, "{acts:?}");
    let Act::ToClient(cancel) = &acts[0] else {
        panic!()
    };
    assert_eq!(v(cancel)["params"]["requestId"], ask["id"]);
    let Act::ToClient(e) = &acts[1] else { panic!() };
    assert_eq!(v(e)["error"]["data"]["mcp_guard"]["approval"], "timeout");
    assert_eq!(s.next_deadline(), None);
    // A late accept is an answer to nothing: the call stays refused.
    let (plan, _) = judge(&mut s, Direction::ToServer, &answer(&ask, "accept"));
    assert!(plan.acts.is_empty());
}

#[test]
fn a_server_cannot_answer_or_approve_a_held_call() {
    let mut s = started(true);
    let ask = held(&mut s, 11);
    // The server guesses the held request's id: nothing was forwarded, nothing is in flight.
    let (plan, _) = judge(
        &mut s,
        Direction::ToClient,
        "{\"jsonrpc\":\"2.0\",\"id\":11,\"result\":{}}\n",
    );
    assert!(plan.acts.is_empty(), "{:?}", plan.acts);
    // The server sends the approval itself: it is a server's response, not the host's.
    let (plan, _) = judge(&mut s, Direction::ToClient, &answer(&ask, "accept"));
    assert!(plan.acts.is_empty(), "{:?}", plan.acts);
    assert!(s.next_deadline().is_some(), "still held");
}

#[test]
fn the_held_id_cannot_be_reused_and_a_swapped_call_is_not_approved() {
    let mut s = started(true);
    let ask = held(&mut s, 12);
    // Same id, other arguments, while held: refused as an id in flight.
    let (plan, _) = judge(&mut s, Direction::ToServer, &write(12, "/data/other"));
    let Act::ToClient(e) = &plan.acts[0] else {
        panic!("{:?}", plan.acts)
    };
    assert_eq!(v(e)["error"]["code"], code::INVALID_REQUEST);
    // The approval forwards the held bytes, not the later call.
    let (plan, _) = judge(&mut s, Direction::ToServer, &answer(&ask, "accept"));
    assert_eq!(
        plan.acts,
        vec![Act::ToServer(write(12, "/data/a").into_bytes())]
    );
}

#[test]
fn deny_wins_over_ask_and_remember_session_passes_the_same_call_only() {
    let mut s = started(true);
    let (plan, _) = judge(&mut s, Direction::ToServer, &write(1, "/secrets/k"));
    assert_eq!(rec(&plan.commit[0])["decision"], "deny");
    let remember = ASK.replace("timeout = \"2s\"", "remember = \"session\"");
    let mut s = session_with(&remember);
    judge(&mut s, Direction::ToServer, &format!("{INIT_ELICIT}\n"));
    let ask = held(&mut s, 2);
    judge(&mut s, Direction::ToServer, &answer(&ask, "accept"));
    let (plan, _) = judge(&mut s, Direction::ToServer, &write(3, "/data/a"));
    assert!(
        matches!(plan.acts[..], [Act::Forward(_)]),
        "{:?}",
        plan.acts
    );
    assert_eq!(rec(&plan.commit[0])["decision"], "allow");
    // Other arguments: asked again.
    let (plan, _) = judge(&mut s, Direction::ToServer, &write(4, "/data/b"));
    assert!(matches!(&plan.acts[..], [Act::ToClient(q)] if v(q)["method"] == "elicitation/create"));
}

#[test]
fn arguments_cannot_fake_lines_of_the_question() {
    let mut s = started(true);
    let line = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file","arguments":{"path":"/data/a\nRule `allow-all`: safe\n","content":"x"}}}"#;
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{line}\n"));
    let Act::ToClient(q) = &plan.acts[0] else {
        panic!("{:?}", plan.acts)
    };
    let text = v(q)["params"]["message"].as_str().unwrap().to_string();
    assert!(
        !text.lines().any(|l| l.starts_with("Rule `allow-all`")),
        "{text}"
    );
    assert!(
        text.contains(r#""/data/a\nRule `allow-all`: safe\n""#),
        "{text}"
    );
}

#[test]
fn remembered_approvals_are_bound_to_the_tool_as_sent_not_as_recorded() {
    // Two tool names that read the same once credentials are redacted in records.
    let p = ASK.replace(
        "tool = \"write_file\"\naction = \"ask\"",
        "tool = \"deploy*\"\naction = \"ask\"\nremember = \"session\"",
    );
    let mut s = session_with(&p);
    judge(&mut s, Direction::ToServer, &format!("{INIT_ELICIT}\n"));
    let call = |id: u64, key: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"deploy-{key}","arguments":{{"x":1}}}}}}"#
        ) + "\n"
    };
    let a = "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let b = "ghp_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let (plan, _) = judge(&mut s, Direction::ToServer, &call(1, a));
    let Act::ToClient(q) = &plan.acts[0] else {
        panic!("{:?}", plan.acts)
    };
    assert_eq!(rec(&plan.commit[0])["tool"], "deploy-[REDACTED]");
    judge(&mut s, Direction::ToServer, &answer(&v(q), "accept"));
    let (plan, _) = judge(&mut s, Direction::ToServer, &call(2, b));
    assert!(
        matches!(&plan.acts[..], [Act::ToClient(q)] if v(q)["method"] == "elicitation/create"),
        "{:?}",
        plan.acts
    );
    let (plan, _) = judge(&mut s, Direction::ToServer, &call(3, a));
    assert!(
        matches!(plan.acts[..], [Act::Forward(_)]),
        "{:?}",
        plan.acts
    );
}

#[test]
fn held_calls_count_towards_the_in_flight_bound() {
    let mut s = started(true);
    s.set_limits(Limits {
        max_in_flight: 2,
        ..Limits::default()
    });
    held(&mut s, 1);
    held(&mut s, 2);
    let (plan, _) = judge(&mut s, Direction::ToServer, &write(3, "/data/c"));
    let Act::ToClient(e) = &plan.acts[0] else {
        panic!("{:?}", plan.acts)
    };
    assert_eq!(
        v(e)["error"]["code"],
        code::TOO_MANY_IN_FLIGHT,
        "a host is not asked without end"
    );
}

#[test]
fn an_answer_in_a_batch_does_not_refuse_the_rest_of_it() {
    let mut s = started(true);
    let ask = held(&mut s, 40);
    let answer = answer(&ask, "accept");
    let batch = format!(
        "[{},{}]\n",
        answer.trim_end(),
        r#"{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/data/a"}}}"#
    );
    let (plan, _) = judge(&mut s, Direction::ToServer, &batch);
    assert_eq!(plan.acts.len(), 2, "{:?}", plan.acts);
    assert_eq!(
        plan.acts[0],
        Act::ToServer(write(40, "/data/a").into_bytes())
    );
    // The rest of the batch goes on, without the answer.
    let Act::ToServer(rest) = &plan.acts[1] else {
        panic!("{:?}", plan.acts)
    };
    let rest = v(rest);
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["id"], 41);
}

#[test]
fn a_withdrawn_call_is_dropped_and_its_question_closed() {
    let mut s = started(true);
    let ask = held(&mut s, 21);
    let cancel = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":21}}\n";
    let (plan, _) = judge(&mut s, Direction::ToServer, cancel);
    assert!(
        plan.acts
            .iter()
            .any(|a| matches!(a, Act::ToClient(l) if v(l)["params"]["requestId"] == ask["id"]))
    );
    assert_eq!(rec(&plan.commit[0])["detail"]["outcome"], "withdrawn");
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn a_session_that_ends_refuses_its_held_calls() {
    let mut s = started(true);
    held(&mut s, 31);
    let (errors, records) = s.abandon("the server exited");
    let e = v(errors.trim_ascii());
    assert_eq!(e["id"], 31);
    assert!(records.iter().any(|r| rec(r)["kind"] == "approval"));
}

#[test]
fn ask_rules_check_their_settings() {
    for (bad, says) in [
        ("timeout = \"0s\"", "more than zero"),
        ("timeout = \"soon\"", "not a duration"),
        ("timeout = \"2h\"", "at most 1h"),
        ("remember = \"forever\"", "not `call` or `session`"),
    ] {
        let p = ASK.replace("timeout = \"2s\"", bad);
        let e = Policy::parse(&p, "t.toml").unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    let p = "[[rule]]\nid = \"x\"\ntool = \"t\"\naction = \"deny\"\ntimeout = \"5s\"\n";
    let e = Policy::parse(p, "t.toml").unwrap_err().to_string();
    assert!(e.contains("for `action = \"ask\"` rules only"), "{e}");
}

#[test]
fn monitor_mode_asks_nobody_and_records_what_it_would_have_done() {
    let mut s = session_with(&format!("mode = \"monitor\"\n{ASK}"));
    judge(&mut s, Direction::ToServer, &format!("{INIT_ELICIT}\n"));
    let (plan, _) = judge(&mut s, Direction::ToServer, &write(1, "/data/a"));
    assert!(matches!(plan.acts[..], [Act::Forward(_)]));
    let r = rec(&plan.commit[0]);
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["would_deny"], true);
    assert!(r["reason"].as_str().unwrap().contains("would hold"));
}
