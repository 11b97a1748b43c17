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
