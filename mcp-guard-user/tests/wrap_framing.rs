//! `mcp-guard wrap`, the real binary around a fake server: newline framing in both
//! directions (split writes, coalesced writes, `\r\n`, blank lines, big messages, over-long
//! lines, bounded memory, end of input mid-line).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_message_split_over_many_small_writes_with_pauses_arrives_intact() {
    let mut shim = Shim::spawn_default();
    let msg = format!("{}\n", tool_call("41", "split-tool"));
    let bytes = msg.as_bytes();
    let mut i = 0;
    let mut size = 1;
    while i < bytes.len() {
        let n = size.min(bytes.len() - i);
        shim.send(&bytes[i..i + n]);
        i += n;
        size = size % 7 + 1;
        thread::sleep(Duration::from_millis(3));
    }
    let v = shim.read_json();
    assert_eq!(v["id"], 41, "{v}");
    assert_eq!(
        v["result"]["content"][0]["text"], "called split-tool",
        "{v}"
    );
    assert_eq!(
        shim.server_log(),
        bytes,
        "the server must receive the message exactly as sent"
    );
}

#[test]
fn many_messages_in_one_write_all_arrive_in_order() {
    let mut shim = Shim::spawn_default();
    let n = 300;
    let mut all = String::new();
    for id in 0..n {
        if id % 3 == 0 {
            all.push_str(&tool_call(&id.to_string(), &format!("t{id}")));
        } else {
            all.push_str(&request(&id.to_string(), "ping", None));
        }
        all.push('\n');
        if id % 10 == 0 {
            all.push_str(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"n":1}}"#);
            all.push('\n');
        }
    }
    shim.send(all.as_bytes());
    for id in 0..n {
        let v = shim.read_json();
        assert_eq!(v["id"], id, "answers out of order: {v}");
        assert!(v.get("result").is_some(), "{v}");
    }
    assert_eq!(
        shim.server_log(),
        all.as_bytes(),
        "the server must receive every message, in order, unchanged"
    );
}

#[test]
fn crlf_line_endings_are_preserved_byte_for_byte_in_both_directions() {
    let mut shim = Shim::spawn_default();
    // Client to server: `\r\n` stays `\r\n`, mixed with `\n`, in one write.
    let sent = format!(
        "{}\r\n{}\n{}\r\n",
        request("1", "ping", None),
        request("2", "ping", None),
        tool_call("3", "t")
    );
    shim.send(sent.as_bytes());
    for id in 1..=3 {
        assert_eq!(shim.read_json()["id"], id);
    }
    assert_eq!(shim.server_log(), sent.as_bytes());

    // Server to client: the server answers with `\r\n` and odd spacing; the client gets it exactly.
    let answer =
        b"{ \"jsonrpc\" : \"2.0\", \"id\" : 9 , \"result\" : { \"k\" : \"v\\u00e9\" } }\r\n"
            .to_vec();
    let file = shim.path("answer");
    std::fs::write(&file, &answer).unwrap();
    shim.send_line(&request(
        "9",
        "emit",
        Some(&format!(r#"{{"path":{:?}}}"#, file)),
    ));
    assert_eq!(shim.read_line(), answer);
    shim.ping(10);
}

#[test]
fn blank_lines_are_dropped_and_do_not_reach_the_server() {
    let mut shim = Shim::spawn_default();
    let ping1 = request("1", "ping", None);
    let ping2 = request("2", "ping", None);
    shim.send(format!("\n\r\n   \n\t\r\n{ping1}\n\n \n{ping2}\r\n\n").as_bytes());
    assert_eq!(shim.read_json()["id"], 1);
    assert_eq!(shim.read_json()["id"], 2);
    assert_eq!(
        shim.server_log(),
        format!("{ping1}\n{ping2}\r\n").as_bytes()
    );
    // Blank lines are not refusals: no error was sent back.
    shim.expect_silence(Duration::from_millis(200));
}

/// 8 MiB of JSON string content with escapes and multi-byte UTF-8, so any re-encoding shows.
fn big_string(len: usize) -> String {
    let unit = "abcdefghij0123456789 \\u00e9\\\"é☃\\n";
    let mut s = String::with_capacity(len + unit.len());
    while s.len() < len {
        s.push_str(unit);
    }
    s
}

#[test]
fn an_8_mib_message_passes_byte_identical_in_both_directions() {
    let mut shim = Shim::spawn_default();
    let blob = big_string(8 << 20);
    let req = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"big\",\"arguments\":{{\"blob\":\"{blob}\"}}}}}}\n"
    );
    assert!(req.len() > 8 << 20);
    shim.send(req.as_bytes());
    let v = shim.read_json();
    assert_eq!(v["result"]["content"][0]["text"], "called big", "{v}");
    assert!(
        shim.server_log() == req.as_bytes(),
        "the 8 MiB request reached the server altered"
    );

    let answer = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{blob}\"}}]}}}}\n"
    );
    let file = shim.path("answer");
    std::fs::write(&file, &answer).unwrap();
    shim.send_line(&request(
        "2",
        "emit",
        Some(&format!(r#"{{"path":{:?}}}"#, file)),
    ));
    let got = shim.read_line();
    assert_eq!(got.len(), answer.len());
    assert!(
        got == answer.as_bytes(),
        "the 8 MiB answer reached the client altered"
    );
    shim.ping(3);
}

#[test]
fn a_line_over_max_message_gets_32082_with_its_sniffed_id_and_the_session_continues() {
    let mut shim = Builder::new()
        .shim_args(&["--max-message", "65536"])
        .spawn();
    shim.ping(1);
    let blob = "x".repeat(300_000);
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":77,\"method\":\"tools/call\",\"params\":{{\"name\":\"huge\",\"arguments\":{{\"blob\":\"{blob}\"}}}}}}\n"
    );
    shim.send(big.as_bytes());
    let line = shim.read_line();
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(error_code(&v), -32082, "{v}");
    assert_eq!(raw_id(&line), "77");
    shim.ping(2);
    assert!(
        !shim.server_log_contains(b"huge"),
        "the over-long message reached the server"
    );
    let rec = wait_for_record(&shim.audit, |r| {
        r["kind"] == "malformed" && r["rule"] == "too_long"
    });
    assert_eq!(rec["request_id"], "77", "{rec}");
    assert_eq!(rec["direction"], "client_to_server");
}

/// SHIM BUG (see the report): the limit is only enforced while a line is still incomplete
/// in the read buffer. A line longer than `--max-message` whose newline arrives in the same
/// read (up to 256 KiB) is accepted and forwarded to the server.
#[test]
fn a_line_over_max_message_arriving_in_one_read_is_refused_too() {
    let mut shim = Builder::new().shim_args(&["--max-message", "1000"]).spawn();
    shim.ping(1);
    let blob = "y".repeat(5000);
    let big = tool_call("5", &format!("long-{blob}"));
    assert!(big.len() > 5000);
    shim.send(format!("{big}\n").as_bytes());
    let v = shim.read_json();
    shim.ping(2);
    assert!(
        !shim.server_log_contains(b"long-yyyy"),
        "a {}-byte message passed --max-message 1000",
        big.len()
    );
    assert_eq!(v["id"], 5, "{v}");
    assert_eq!(error_code(&v), -32082, "{v}");
}

#[test]
fn an_over_long_answer_from_the_server_fails_its_request_with_32084() {
    let mut shim = Builder::new().shim_args(&["--max-message", "4096"]).spawn();
    let answer = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{{\"x\":\"{}\"}}}}\n",
        "z".repeat(100_000)
    );
    let file = shim.path("answer");
    std::fs::write(&file, &answer).unwrap();
    shim.send_line(&request(
        "5",
        "emit",
        Some(&format!(r#"{{"path":{:?}}}"#, file)),
    ));
    let line = shim.read_line();
    assert!(
        line.len() < 4096,
        "the over-long answer was forwarded ({} bytes)",
        line.len()
    );
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["id"], 5, "{v}");
    assert_eq!(error_code(&v), -32084, "{v}");
    shim.ping(6);
}

/// Streams 200 MiB of one line with no newline and samples the shim's VmRSS all along.
#[test]
fn memory_stays_bounded_while_a_200_mib_line_without_newline_streams_in() {
    const LIMIT_KIB: u64 = 40 * 1024;
    let mut shim = Builder::new()
        .shim_args(&["--max-message", "1048576"])
        .spawn();
    shim.ping(1);
    let pid = shim.pid();
    let start_rss = vm_rss_kib(pid).unwrap();
    shim.send(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"flood","arguments":{"blob":""#);
    let chunk = vec![b'a'; 1 << 20];
    let mut peak = start_rss;
    let started = Instant::now();
    for _ in 0..200 {
        shim.send(&chunk);
        peak = peak.max(vm_rss_kib(pid).expect("the shim died while the line streamed in"));
    }
    shim.send(b"\"}}}\n");
    // The refusal comes as soon as the line passes the limit, long before its end.
    let line = shim.read_line();
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(error_code(&v), -32082, "{v}");
    assert_eq!(raw_id(&line), "7");
    shim.ping(2);
    peak = peak.max(vm_rss_kib(pid).unwrap());
    eprintln!(
        "VmRSS: start {start_rss} KiB, peak {peak} KiB; 200 MiB in {:?}",
        started.elapsed()
    );
    assert!(
        peak < LIMIT_KIB,
        "shim VmRSS reached {peak} KiB streaming a 200 MiB line (limit {LIMIT_KIB} KiB)"
    );
    assert!(!shim.server_log_contains(b"flood"));
}

#[test]
fn memory_stays_bounded_while_the_server_streams_a_200_mib_line() {
    const LIMIT_KIB: u64 = 40 * 1024;
    let mut shim = Builder::new()
        .shim_args(&["--max-message", "1048576"])
        .spawn();
    shim.ping(1);
    let pid = shim.pid();
    let start_rss = vm_rss_kib(pid).unwrap();
    let prefix = r#"{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{\"x\":\""#;
    shim.send_line(&request(
        "8",
        "flood",
        Some(&format!(r#"{{"mib":200,"prefix":"{prefix}"}}"#)),
    ));
    let mut peak = start_rss;
    let mut answer = None;
    let until = Instant::now() + DEADLINE * 3;
    while answer.is_none() && Instant::now() < until {
        peak = peak.max(vm_rss_kib(pid).expect("the shim died"));
        answer = shim.try_read_line(Duration::from_millis(5));
    }
    let line = answer.expect("no answer to the flooding request");
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["id"], 8, "{v}");
    assert_eq!(error_code(&v), -32084, "{v}");
    // The flood finishes after the refusal; keep sampling until the server is done with it.
    shim.ping(2);
    peak = peak.max(vm_rss_kib(pid).unwrap());
    eprintln!("VmRSS: start {start_rss} KiB, peak {peak} KiB");
    assert!(
        peak < LIMIT_KIB,
        "shim VmRSS reached {peak} KiB while the server streamed 200 MiB"
    );
}

#[test]
fn eof_mid_line_forwards_the_unterminated_last_message_as_is() {
    let mut shim = Shim::spawn_default();
    let last = request("1", "ping", None);
    shim.send(last.as_bytes());
    shim.close_stdin();
    let v = shim.read_json();
    assert_eq!(v["id"], 1, "{v}");
    assert_eq!(shim.read_to_eof(), b"");
    assert_eq!(shim.exit_code(), 0);
    assert_eq!(shim.server_log(), last.as_bytes());
}

#[test]
fn eof_mid_line_in_an_incomplete_message_gets_a_parse_error_and_reaches_nobody() {
    let mut shim = Shim::spawn_default();
    shim.ping(1);
    shim.send(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"cut"#);
    shim.close_stdin();
    let line = shim.read_line();
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(error_code(&v), -32700, "{v}");
    assert_eq!(raw_id(&line), "3");
    assert_eq!(shim.read_to_eof(), b"");
    assert_eq!(shim.exit_code(), 0);
    assert!(!shim.server_log_contains(b"cut"));
    shim.verify_audit();
}
