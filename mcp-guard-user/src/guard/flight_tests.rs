//! Requests in flight: ids compared by value, the bound per direction, the audit budget.

use super::*;
use crate::frame::Framer;

fn session(limits: Limits) -> Session {
    let mut s = super::tests::session_with(
        "default = \"allow\"\n[[rule]]\nid = \"no-secret\"\ntool = \"secret\"\naction = \"deny\"\n",
    );
    s.set_limits(limits);
    s
}

fn judge(s: &mut Session, dir: Direction, input: &str) -> (Plan, Vec<u8>) {
    let mut f = Framer::new(1 << 20);
    let buf = f.spare(input.len());
    buf[..input.len()].copy_from_slice(input.as_bytes());
    f.filled(input.len());
    let frames: Vec<Frame> = std::iter::from_fn(|| f.next_frame()).collect();
    let plan = s.judge(dir, f.data(), frames);
    (plan, f.data().to_vec())
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes.strip_suffix(b"\n").unwrap_or(bytes)).unwrap()
}

fn records(plan: &Plan) -> Vec<serde_json::Value> {
    plan.commit
        .iter()
        .chain(&plan.append)
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

/// The one error a plan sends back, as JSON.
fn error_to(plan: &Plan, to: Direction) -> serde_json::Value {
    let out: Vec<&Vec<u8>> =
        plan.acts
            .iter()
            .filter_map(|a| match (a, to) {
                (Act::ToClient(b), Direction::ToClient)
                | (Act::ToServer(b), Direction::ToServer) => Some(b),
                _ => None,
            })
            .collect();
    assert_eq!(out.len(), 1, "{:?}", plan.acts);
    json(out[0])
}

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
const TOOLS: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret","inputSchema":{"type":"object"}},{"name":"ok","inputSchema":{"type":"object"}}]}}"#;

#[test]
fn an_id_equal_by_value_to_a_live_one_is_refused() {
    for spelling in ["1.0", "1e0", "10E-1", "1.00000000000000000001"] {
        let mut s = session(Limits::default());
        let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{LIST}\n"));
        assert!(matches!(&plan.acts[..], [Act::Forward(_)]));
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{spelling},"method":"tools/call","params":{{"name":"ok"}}}}"#
        );
        let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{call}\n"));
        let e = error_to(&plan, Direction::ToClient);
        assert_eq!(e["error"]["code"], code::INVALID_REQUEST, "{spelling}: {e}");
        let rec = &records(&plan)[0];
        assert_eq!(
            (rec["decision"].as_str(), rec["rule"].as_str()),
            (Some("deny"), Some("id-in-flight")),
            "{rec}"
        );
        // The answer is still the tool list's: filtered by the policy, as a tools/list.
        let (plan, data) = judge(&mut s, Direction::ToClient, &format!("{TOOLS}\n"));
        let out = match &plan.acts[..] {
            [Act::ToClient(b)] => json(b),
            [Act::Forward(r)] => json(&data[r.clone()]),
            other => panic!("{other:?}"),
        };
        let names: Vec<&str> = out["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ok"], "{spelling}: {out}");
        assert_eq!(records(&plan)[0]["method"], "tools/list");
    }
}

#[test]
fn ids_that_differ_by_value_or_type_are_distinct() {
    let mut s = session(Limits::default());
    for (i, id) in ["1", "\"1\"", "2", "\"1.0\"", "-1"].iter().enumerate() {
        let (plan, _) = judge(
            &mut s,
            Direction::ToServer,
            &format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n"),
        );
        assert!(
            matches!(&plan.acts[..], [Act::Forward(_)]),
            "{i} {id}: {:?}",
            plan.acts
        );
    }
    // `-0` is `0`, and 2^53 + 1 reads as 2^53 in JavaScript.
    for (a, b) in [("0", "-0"), ("9007199254740992", "9007199254740993")] {
        judge(
            &mut s,
            Direction::ToServer,
            &format!("{{\"jsonrpc\":\"2.0\",\"id\":{a},\"method\":\"ping\"}}\n"),
        );
        let (plan, _) = judge(
            &mut s,
            Direction::ToServer,
            &format!("{{\"jsonrpc\":\"2.0\",\"id\":{b},\"method\":\"ping\"}}\n"),
        );
        assert_eq!(
            error_to(&plan, Direction::ToClient)["error"]["code"],
            code::INVALID_REQUEST,
            "{a} {b}"
        );
    }
}

#[test]
fn equal_ids_in_one_batch_refuse_the_batch() {
    let mut s = session(Limits::default());
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":1.0,"method":"tools/call","params":{"name":"ok"}}]"#;
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{batch}\n"));
    let e = error_to(&plan, Direction::ToClient);
    let codes: Vec<i64> = e
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["error"]["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [code::BATCH_REFUSED, code::INVALID_REQUEST]);
    // Nothing was left in flight: the id can be used again.
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{LIST}\n"));
    assert!(matches!(&plan.acts[..], [Act::Forward(_)]));
}

#[test]
fn requests_past_the_bound_are_refused_and_recorded_once_per_run() {
    let mut s = session(Limits {
        max_in_flight: 3,
        ..Limits::default()
    });
    let roots =
        |id: u32| format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"roots/list\"}}\n");
    for id in 0..3 {
        let (plan, _) = judge(&mut s, Direction::ToClient, &roots(id));
        assert!(matches!(&plan.acts[..], [Act::Forward(_)]));
    }
    let mut recorded = 0;
    for id in 3..50 {
        let (plan, _) = judge(&mut s, Direction::ToClient, &roots(id));
        let e = error_to(&plan, Direction::ToServer);
        assert_eq!(
            (e["id"].as_u64(), e["error"]["code"].as_i64()),
            (Some(u64::from(id)), Some(code::TOO_MANY_IN_FLIGHT))
        );
        recorded += records(&plan).len();
    }
    assert_eq!(
        recorded, 1,
        "the first refusal of the run is recorded, the rest counted"
    );
    // The client's requests have their own bound.
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{LIST}\n"));
    assert!(matches!(&plan.acts[..], [Act::Forward(_)]));
    // An answer makes room: the run ends with one alert that counts it.
    let (plan, _) = judge(
        &mut s,
        Direction::ToServer,
        "{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"roots\":[]}}\n",
    );
    let alert = records(&plan)
        .into_iter()
        .find(|r| r["kind"] == "alert")
        .expect("an alert");
    assert_eq!(
        (
            alert["detail"]["alert"].as_str(),
            alert["detail"]["refused"].as_u64()
        ),
        (Some("in_flight_limit"), Some(47))
    );
    let (plan, _) = judge(&mut s, Direction::ToClient, &roots(100));
    assert!(matches!(&plan.acts[..], [Act::Forward(_)]));
    assert_eq!(s.counters.refused_in_flight, 47);
}

#[test]
fn a_batch_cannot_step_over_the_bound() {
    let mut s = session(Limits {
        max_in_flight: 2,
        ..Limits::default()
    });
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"},{"jsonrpc":"2.0","id":3,"method":"ping"}]"#;
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{batch}\n"));
    let e = error_to(&plan, Direction::ToClient);
    assert_eq!(e[2]["error"]["code"], code::TOO_MANY_IN_FLIGHT, "{e}");
}

#[test]
fn a_session_past_its_audit_budget_is_refused_with_one_alert() {
    let mut s = session(Limits {
        audit_burst: 5,
        audit_rate: 0,
        ..Limits::default()
    });
    let mut written = 0;
    // Answers to nothing cost a record each, until the budget is gone.
    for id in 0..100 {
        let (plan, _) = judge(
            &mut s,
            Direction::ToClient,
            &format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{}}}}\n"),
        );
        assert!(plan.acts.is_empty());
        written += records(&plan).len();
    }
    assert_eq!(written, 5 + 1, "five records, then one alert");
    let (plan, _) = judge(&mut s, Direction::ToServer, &format!("{LIST}\n"));
    assert_eq!(
        error_to(&plan, Direction::ToClient)["error"]["code"],
        code::AUDIT_BUDGET
    );
    assert!(records(&plan).is_empty());
    assert_eq!(s.counters.unrecorded, 96);
}

#[test]
fn the_budget_refills() {
    let mut s = session(Limits {
        audit_burst: 2,
        audit_rate: 1000,
        ..Limits::default()
    });
    for id in 0..2 {
        let (plan, _) = judge(
            &mut s,
            Direction::ToServer,
            &format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n"),
        );
        assert!(matches!(&plan.acts[..], [Act::Forward(_)]));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (plan, _) = judge(
        &mut s,
        Direction::ToServer,
        "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}\n",
    );
    assert!(
        matches!(&plan.acts[..], [Act::Forward(_)]),
        "{:?}",
        plan.acts
    );
}
