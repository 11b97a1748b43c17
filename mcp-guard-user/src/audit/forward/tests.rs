use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Value, json};

use super::cursor::{self, Cursor, FileId};
use super::ocsf;
use super::source::Source;
use super::syslog::{Facility, Header, Severity, Target, octet_counted};

/// Records from a real `mcp-guard wrap` session (demo policy: one denied write).
const SAMPLE: &str = include_str!("../../../tests/fixtures/audit_forward_sample.jsonl");

fn sample(seq: usize) -> (Value, &'static str) {
    let line = SAMPLE.lines().nth(seq - 1).unwrap();
    (serde_json::from_str(line).unwrap(), line)
}

fn header() -> Header {
    Header {
        facility: Facility::Authpriv,
        hostname: "host1".into(),
        app_name: "mcp-guard".into(),
        procid: "42".into(),
    }
}

#[test]
fn denied_request_is_an_rfc5424_warning_with_seq_in_structured_data() {
    let (rec, line) = sample(4);
    let msg = header().message(&rec, line.as_bytes());
    let expected = format!(
        "<84>1 2026-11-22T16:37:10.962840Z host1 mcp-guard 42 request \
         [mcpguard@32473 seq=\"4\" session=\"7f16e233136c1b773bc681517e5571d5\" id=\"7f16e233136c1b773bc681517e5571d5-4\"] {line}"
    );
    assert_eq!(String::from_utf8(msg).unwrap(), expected);
}

#[test]
fn severity_follows_decision_and_kind() {
    assert_eq!(Severity::of(&sample(4).0), Severity::Warning);
    assert_eq!(Severity::of(&sample(3).0), Severity::Info);
    assert_eq!(Severity::of(&sample(6).0), Severity::Info);
    assert_eq!(Severity::of(&json!({"kind": "gap"})), Severity::Alert);
    assert_eq!(
        Severity::of(&json!({"kind": "malformed", "decision": "deny"})),
        Severity::Warning
    );
    assert_eq!(Severity::of(&json!({"kind": "recovery"})), Severity::Notice);
    // local0 (16) * 8 + info (6)
    let h = Header {
        facility: Facility::Local0,
        ..header()
    };
    assert!(h.message(&sample(3).0, b"x").starts_with(b"<134>1 "));
}

#[test]
fn header_fields_are_sanitized_and_sd_values_escaped() {
    let h = Header {
        hostname: "bad host\u{e9}".into(),
        app_name: String::new(),
        ..header()
    };
    let rec =
        json!({"seq": 7, "time": "yesterday", "kind": "a kind", "session": "s\"]\\", "id": "i"});
    let msg = String::from_utf8(h.message(&rec, b"{}")).unwrap();
    assert_eq!(
        msg,
        r#"<86>1 - badhost - 42 akind [mcpguard@32473 seq="7" session="s\"\]\\" id="i"] {}"#
    );
}

#[test]
fn octet_counting_counts_bytes_not_characters() {
    assert_eq!(octet_counted("é ok".as_bytes()), "5 é ok".as_bytes());
    assert_eq!(octet_counted(b""), b"0 ");
}

#[test]
fn target_urls_parse() {
    assert_eq!("unix:/dev/log".parse(), Ok(Target::Unix("/dev/log".into())));
    assert_eq!(
        "unix:///run/x.sock".parse(),
        Ok(Target::Unix("/run/x.sock".into()))
    );
    assert_eq!(
        "udp://siem.example:514".parse(),
        Ok(Target::Udp("siem.example:514".into()))
    );
    assert_eq!(
        "tcp://127.0.0.1:6514".parse(),
        Ok(Target::Tcp("127.0.0.1:6514".into()))
    );
    assert_eq!(
        "tcp://[::1]:514".parse(),
        Ok(Target::Tcp("[::1]:514".into()))
    );
    for bad in [
        "unix:",
        "tcp://host",
        "tcp://:514",
        "http://h:1",
        "h:514",
        "udp://h:99999",
    ] {
        assert!(bad.parse::<Target>().is_err(), "{bad}");
    }
}

/// The event for sample record `seq`, with the product version (which changes with every
/// release) replaced.
fn ocsf_event(seq: usize) -> Value {
    let mut ev = ocsf::event(&sample(seq).0, "host1");
    ev["metadata"]["product"]["version"] = json!("VERSION");
    ev
}

#[test]
fn ocsf_denied_tool_call() {
    insta::assert_json_snapshot!(ocsf_event(4));
}

#[test]
fn ocsf_allowed_resource_read() {
    insta::assert_json_snapshot!(ocsf_event(5));
}

#[test]
fn ocsf_response() {
    insta::assert_json_snapshot!(ocsf_event(7));
}

#[test]
fn ocsf_keeps_every_unmapped_field() {
    for line in SAMPLE.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let ev = ocsf::event(&rec, "h");
        assert_eq!(ev["class_uid"], 6003);
        assert_eq!(ev["metadata"]["sequence"], rec["seq"]);
        assert_eq!(ev["metadata"]["uid"], rec["id"]);
        assert_eq!(ev["type_uid"], 600300 + ev["activity_id"].as_u64().unwrap());
        for (k, v) in rec.as_object().unwrap() {
            let kept = ev["unmapped"].get(k) == Some(v);
            let mapped = [
                "seq",
                "time",
                "id",
                "session",
                "method",
                "tool",
                "request_id",
                "decision",
                "reason",
                "protocol",
            ];
            assert!(
                kept || mapped.contains(&k.as_str()),
                "seq {}: field {k} lost",
                rec["seq"]
            );
        }
    }
}

#[test]
fn cursor_is_saved_atomically_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl.cursor");
    assert_eq!(cursor::load(&path).unwrap(), None);
    let c = Cursor {
        offset: 1234,
        seq: 9,
        hash: "ab".into(),
        ..Cursor::start(FileId { dev: 1, ino: 2 })
    };
    cursor::save(&path, &c).unwrap();
    let c2 = Cursor {
        offset: 2000,
        seq: 10,
        ..c.clone()
    };
    cursor::save(&path, &c2).unwrap();
    assert_eq!(cursor::load(&path).unwrap(), Some(c2));
    assert!(
        !cursor::companions(&path)[0].exists(),
        "temporary file left behind"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::write(&path, b"{\"v\":1,\"dev\":1").unwrap();
    assert!(matches!(
        cursor::load(&path),
        Err(super::Error::CursorFormat { .. })
    ));
}

#[test]
fn a_cursor_is_used_by_one_forwarder_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let held = cursor::lock(&path).unwrap();
    assert!(matches!(
        cursor::lock(&path),
        Err(super::Error::CursorBusy { .. })
    ));
    drop(held);
    cursor::lock(&path).unwrap();
}

fn line(seq: u64) -> String {
    format!("{{\"seq\":{seq},\"kind\":\"request\",\"hash\":\"h{seq}\"}}\n")
}

fn append(path: &Path, seqs: std::ops::RangeInclusive<u64>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for s in seqs {
        f.write_all(line(s).as_bytes()).unwrap();
    }
}

/// Reads everything available; returns the seqs of the records and the last position.
fn drain(src: &mut Source) -> (Vec<u64>, Cursor) {
    let mut seqs = Vec::new();
    loop {
        let batch = src.next_batch(7, 1 << 20).unwrap();
        if batch.is_empty() {
            return (seqs, src.position().clone());
        }
        seqs.extend(
            batch
                .iter()
                .filter_map(|e| e.record.as_ref().map(|r| r.seq)),
        );
    }
}

#[test]
fn source_resumes_after_the_cursor_and_passes_over_torn_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    append(&log, 1..=3);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"{\"seq\":4,\"kin\n")
        .unwrap();
    append(&log, 4..=5);
    let mut src = Source::open(&log, None, &[]).unwrap();
    let (seqs, pos) = drain(&mut src);
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!((pos.seq, pos.hash.as_str()), (5, "h5"));
    // An unterminated last line waits for its newline.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"{\"seq\":6,\"kind\":\"x\",")
        .unwrap();
    assert_eq!(drain(&mut src).0, Vec::<u64>::new());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"\"hash\":\"h6\"}\n")
        .unwrap();
    append(&log, 7..=8);
    let (seqs, _) = drain(&mut src);
    assert_eq!(seqs, [6, 7, 8]);
    let mut again = Source::open(&log, Some(&pos), &[]).unwrap();
    assert_eq!(drain(&mut again).0, [6, 7, 8]);
}

#[test]
fn source_finishes_a_rotated_file_before_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    append(&log, 1..=4);
    let mut src = Source::open(&log, None, &[]).unwrap();
    let mid = {
        let b = src.next_batch(2, 1 << 20).unwrap();
        b.last().unwrap().pos.clone()
    };
    // Rotation: records land in the old file right before the rename; the new file
    // continues the sequence.
    append(&log, 5..=6);
    std::fs::rename(&log, dir.path().join("audit.jsonl.1-6")).unwrap();
    append(&log, 7..=9);
    let (seqs, _) = drain(&mut src);
    assert_eq!(seqs, [3, 4, 5, 6, 7, 8, 9]);
    // A rewind goes back into the rotated file.
    src.rewind(&mid).unwrap();
    assert_eq!(drain(&mut src).0, [3, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn source_resumes_in_the_rotated_file_the_cursor_names() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    append(&log, 1..=5);
    let mut src = Source::open(&log, None, &[]).unwrap();
    let at3 = src
        .next_batch(3, 1 << 20)
        .unwrap()
        .last()
        .unwrap()
        .pos
        .clone();
    drop(src);
    // Two rotations while the forwarder was stopped.
    std::fs::rename(&log, dir.path().join("audit.jsonl.1-5")).unwrap();
    append(&log, 6..=8);
    std::fs::rename(&log, dir.path().join("audit.jsonl.6-8")).unwrap();
    append(&log, 9..=10);
    let cursor_file = dir.path().join("audit.jsonl.cursor");
    cursor::save(&cursor_file, &at3).unwrap();
    let mut src = Source::open(&log, Some(&at3), &[cursor_file]).unwrap();
    assert_eq!(drain(&mut src).0, [4, 5, 6, 7, 8, 9, 10]);
}

#[test]
fn source_without_the_cursors_file_skips_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    append(&log, 1..=5);
    let mut src = Source::open(&log, None, &[]).unwrap();
    let at3 = src
        .next_batch(3, 1 << 20)
        .unwrap()
        .last()
        .unwrap()
        .pos
        .clone();
    drop(src);
    // The log was copied to a new file (new inode), and grew.
    let copy = dir.path().join("copy");
    std::fs::copy(&log, &copy).unwrap();
    std::fs::rename(&copy, &log).unwrap();
    append(&log, 6..=6);
    assert_eq!(
        drain(&mut Source::open(&log, Some(&at3), &[]).unwrap()).0,
        [4, 5, 6]
    );
    // A new log that starts over is read from its start.
    std::fs::remove_file(&log).unwrap();
    append(&log, 1..=2);
    assert_eq!(
        drain(&mut Source::open(&log, Some(&at3), &[]).unwrap()).0,
        [1, 2]
    );
}

mod otlp_mapping {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;
    use serde_json::{Map, Value, json};

    use super::super::otlp::{self, Endpoint, Spans};
    use super::super::{Destination, syslog::Target};
    use super::sample;

    fn any_json(v: &Option<AnyValue>) -> Value {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => json!(s),
            Some(any_value::Value::IntValue(i)) => json!(i),
            Some(any_value::Value::BoolValue(b)) => json!(b),
            other => json!(format!("{other:?}")),
        }
    }

    fn attrs(kvs: &[KeyValue]) -> Value {
        let mut m = Map::new();
        for kv in kvs {
            assert!(
                m.insert(kv.key.clone(), any_json(&kv.value)).is_none(),
                "attribute {} twice",
                kv.key
            );
        }
        Value::Object(m)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A log record as JSON, without the observed time (the time it was mapped).
    fn log_json(r: &LogRecord) -> Value {
        json!({
            "time_unix_nano": r.time_unix_nano,
            "severity_number": r.severity_number,
            "severity_text": r.severity_text,
            "event_name": r.event_name,
            "trace_id": hex(&r.trace_id),
            "span_id": hex(&r.span_id),
            "flags": r.flags,
            "attributes": attrs(&r.attributes),
        })
    }

    fn span_json(s: &Span) -> Value {
        let status = s.status.clone().unwrap_or_default();
        json!({
            "name": s.name,
            "kind": s.kind,
            "trace_id": hex(&s.trace_id),
            "span_id": hex(&s.span_id),
            "start_time_unix_nano": s.start_time_unix_nano,
            "end_time_unix_nano": s.end_time_unix_nano,
            "status": { "code": status.code, "message": status.message },
            "attributes": attrs(&s.attributes),
        })
    }

    /// An allowed `tools/call` and its response, made from the sample's resources/read.
    fn allowed_call() -> (Value, Value) {
        let (mut req, _) = sample(5);
        req["method"] = json!("tools/call");
        req["tool"] = json!("read_text_file");
        let (mut resp, _) = sample(7);
        resp["method"] = json!("tools/call");
        resp["tool"] = json!("read_text_file");
        (req, resp)
    }

    #[test]
    fn log_record_carries_seq_hash_and_the_line_as_written() {
        let (rec, line) = sample(4);
        let r = otlp::log_record(&rec, line.as_bytes());
        assert_eq!(
            r.body.as_ref().and_then(|b| b.value.clone()),
            Some(any_value::Value::StringValue(line.to_string()))
        );
        assert!(r.observed_time_unix_nano > 0);
        insta::assert_json_snapshot!("otlp_log_denied_tool_call", log_json(&r));
    }

    #[test]
    fn log_records_of_other_kinds() {
        let (rec, line) = sample(8);
        insta::assert_json_snapshot!(
            "otlp_log_session_end",
            log_json(&otlp::log_record(&rec, line.as_bytes()))
        );
        let (rec, line) = sample(7);
        insta::assert_json_snapshot!(
            "otlp_log_response",
            log_json(&otlp::log_record(&rec, line.as_bytes()))
        );
        let alert = json!({"seq": 9, "kind": "gap", "time": "2026-11-22T16:37:12Z"});
        let r = otlp::log_record(&alert, b"{}");
        assert_eq!((r.severity_number, r.severity_text.as_str()), (19, "ALERT"));
    }

    #[test]
    fn denied_call_is_an_error_span_at_once() {
        let mut spans = Spans::default();
        let span = spans
            .observe(&sample(4).0)
            .expect("a denied call has its span");
        assert_eq!(span.start_time_unix_nano, span.end_time_unix_nano);
        assert_eq!(spans.pending(), 0, "no response is awaited for a denial");
        insta::assert_json_snapshot!("otlp_span_denied", span_json(&span));
    }

    #[test]
    fn a_call_held_for_approval_has_one_span_whatever_the_answer() {
        let (req, resp) = allowed_call();
        let mut held = req.clone();
        held["decision"] = json!("ask");
        let approval = |decision: &str, outcome: &str| {
            json!({"seq": 50, "kind": "approval", "time": "2026-11-22T16:37:11.000000Z",
                "session": req["session"], "method": "tools/call", "tool": req["tool"],
                "links": req["id"], "decision": decision, "rule": "ask-writes",
                "detail": {"outcome": outcome}})
        };
        // Declined: the approval record ends it, an error span.
        let mut spans = Spans::default();
        assert!(spans.observe(&held).is_none());
        let span = spans
            .observe(&approval("deny", "declined"))
            .expect("a refusal ends the span");
        assert_eq!(span.span_id, otlp::span_id(req["id"].as_str().unwrap()));
        assert_eq!(
            span.status.as_ref().unwrap().message,
            "not approved (declined) under rule ask-writes"
        );
        assert!(
            span.attributes
                .iter()
                .any(|a| a.key == "mcp_guard.approval")
        );
        assert_eq!(
            spans.pending(),
            1,
            "kept until the cursor passes it, as answered"
        );
        // Approved: no span yet; the response ends it, marked approved.
        let mut spans = Spans::default();
        spans.observe(&held);
        assert!(spans.observe(&approval("allow", "approved")).is_none());
        let span = spans.observe(&resp).expect("the response ends the span");
        let approved = span
            .attributes
            .iter()
            .find(|a| a.key == "mcp_guard.approval")
            .unwrap();
        assert_eq!(
            approved.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("approved".into()))
        );
        assert_eq!(span.status.as_ref().map_or(0, |s| s.code), 0);
    }

    #[test]
    fn allowed_call_span_runs_from_request_to_response() {
        let (req, resp) = allowed_call();
        let mut spans = Spans::default();
        assert!(spans.observe(&req).is_none());
        assert!(spans.observe(&sample(6).0).is_none(), "not a tools/call");
        let span = spans.observe(&resp).expect("the response ends the span");
        // 16:37:10.962889 to 16:37:11.051175
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            88_286_000
        );
        insta::assert_json_snapshot!("otlp_span_allowed", span_json(&span));
        // The log records of the call share the span's ids.
        for rec in [&req, &resp] {
            let log = otlp::log_record(rec, b"{}");
            assert_eq!(
                (log.trace_id.clone(), log.span_id.clone()),
                (span.trace_id.clone(), span.span_id.clone())
            );
        }
    }

    #[test]
    fn response_without_its_request_still_makes_a_span() {
        let (_, resp) = allowed_call();
        let span = Spans::default().observe(&resp).unwrap();
        let a = attrs(&span.attributes);
        assert_eq!(a["mcp_guard.request.seen"], json!(false));
        assert_eq!(a["mcp_guard.decision"], json!("allow"));
        assert!(a.get("mcp_guard.rule").is_none());
        // Its start is the response's time less the measured latency: 88287 µs.
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            88_287_000
        );
        // The same ids as when the request was seen.
        let (req, resp) = allowed_call();
        let mut spans = Spans::default();
        spans.observe(&req);
        let full = spans.observe(&resp).unwrap();
        assert_eq!((span.trace_id, span.span_id), (full.trace_id, full.span_id));
    }

    #[test]
    fn a_reread_response_finds_its_request_until_committed() {
        let (req, resp) = allowed_call();
        let mut spans = Spans::default();
        spans.observe(&req);
        spans.observe(&resp);
        // A failed batch is read again: the request is still known.
        let again = spans.observe(&resp).unwrap();
        assert_eq!(
            attrs(&again.attributes)["mcp_guard.request.seen"],
            json!(true)
        );
        spans.committed(6);
        assert_eq!(spans.pending(), 1, "answered after the committed seq");
        spans.committed(7);
        assert_eq!(spans.pending(), 0);
    }

    #[test]
    fn a_sessions_end_closes_its_unanswered_requests() {
        let (req, _) = allowed_call();
        let mut spans = Spans::default();
        spans.observe(&req);
        let mut other = req.clone();
        other["id"] = json!("other-1");
        other["session"] = json!("other");
        spans.observe(&other);
        assert!(spans.observe(&sample(8).0).is_none());
        spans.committed(8);
        assert_eq!(
            spans.pending(),
            1,
            "only the other session's request is left"
        );
    }

    #[test]
    fn recover_finds_requests_sent_before_the_cursor() {
        let (req, resp) = allowed_call();
        let (mut answered, _) = allowed_call();
        answered["id"] = json!("other-1");
        let mut answer = resp.clone();
        answer["links"] = json!("other-1");
        let (mut ended, _) = allowed_call();
        ended["id"] = json!("ended-1");
        ended["session"] = json!("ended");
        let end = json!({"seq": 1, "kind": "session_end", "session": "ended"});
        let before = [&answered, &ended, &req, &answer, &end]
            .iter()
            .map(|v| format!("{v}\n"))
            .collect::<String>();
        let mut spans = Spans::default();
        spans.recover(before.as_bytes());
        assert_eq!(
            spans.pending(),
            1,
            "only the unanswered request of a live session"
        );
        let span = spans.observe(&resp).unwrap();
        let a = attrs(&span.attributes);
        assert_eq!(a["mcp_guard.request.seen"], json!(true));
        assert_eq!(a["mcp_guard.rule"], json!("default"));
        assert_eq!(a["user.name"], json!("root"));
    }

    #[test]
    fn ids_depend_on_the_record_only() {
        assert_eq!(otlp::trace_id("s1"), otlp::trace_id("s1"));
        assert_ne!(otlp::trace_id("s1"), otlp::trace_id("s2"));
        assert_eq!(otlp::trace_id("s1").len(), 16);
        assert_eq!(otlp::span_id("s1-3").len(), 8);
        assert_ne!(otlp::span_id("s1-3"), otlp::span_id("s1-4"));
    }

    #[test]
    fn endpoints_are_bases_for_the_signal_paths() {
        let e = Endpoint::parse("http://collector:4318").unwrap();
        assert_eq!(e.logs(), "http://collector:4318/v1/logs");
        assert_eq!(e.traces(), "http://collector:4318/v1/traces");
        let e = Endpoint::parse("https://gw.example/otlp/").unwrap();
        assert_eq!(e.logs(), "https://gw.example/otlp/v1/logs");
        for bad in ["http://", "https:///x", "http://h:4318/?q=1", "ftp://h"] {
            assert!(Endpoint::parse(bad).is_none(), "{bad}");
        }
        assert!(matches!(
            "http://127.0.0.1:4318".parse::<Destination>(),
            Ok(Destination::Otlp(_))
        ));
        assert_eq!(
            "tcp://127.0.0.1:514".parse::<Destination>(),
            Ok(Destination::Syslog(Target::Tcp("127.0.0.1:514".into())))
        );
        assert!("http://".parse::<Destination>().is_err());
    }

    #[test]
    fn headers_are_name_equals_value() {
        let h: otlp::Header = "authorization=Bearer a=b".parse().unwrap();
        assert_eq!(
            (h.name.as_str(), h.value.as_str()),
            ("authorization", "Bearer a=b")
        );
        assert!("no-equals".parse::<otlp::Header>().is_err());
        assert!("bad name=x".parse::<otlp::Header>().is_err());
        assert!("x-a=b\r\nx-b: c".parse::<otlp::Header>().is_err());
    }

    #[test]
    fn payload_decodes_as_export_requests_with_the_resource() {
        let (rec, line) = sample(4);
        let mut spans = Spans::default();
        let span: Vec<Span> = spans.observe(&rec).into_iter().collect();
        let p = otlp::encode(
            &otlp::resource("host1"),
            vec![otlp::log_record(&rec, line.as_bytes())],
            span,
        );
        let logs = ExportLogsServiceRequest::decode(p.logs.as_slice()).unwrap();
        let rl = &logs.resource_logs[0];
        let res = attrs(&rl.resource.as_ref().unwrap().attributes);
        assert_eq!(res["service.name"], json!("mcp-guard"));
        assert_eq!(res["host.name"], json!("host1"));
        assert_eq!(res["os.type"], json!("linux"));
        assert_eq!(rl.scope_logs[0].log_records.len(), 1);
        let traces = ExportTraceServiceRequest::decode(p.traces.unwrap().as_slice()).unwrap();
        assert_eq!(
            traces.resource_spans[0].scope_spans[0].spans[0].name,
            "tools/call write_file"
        );
        // A batch that completes no call sends no traces request.
        let p = otlp::encode(&otlp::resource("host1"), Vec::new(), Vec::new());
        assert!(p.traces.is_none());
    }
}
