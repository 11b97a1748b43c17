//! Framing differential: the messages the guard judged are exactly the messages a server's
//! line reader delivers from the bytes the guard forwarded, for every common reader.
//!
//! Readers: Rust's `BufRead::lines` (split at `\n`, one trailing `\r` dropped: also what
//! Go's `bufio.Scanner`, the MCP TypeScript SDK's `ReadBuffer` and most hand-written servers
//! do), and universal newlines (`\n`, `\r\n` and a bare `\r` all end a line: Python's text
//! streams, which the MCP Python SDK reads, Node's `readline`, Java's and .NET's
//! `ReadLine`). The property test runs both in process on random streams; a second test
//! hands a corpus to the real Python and Node readers.

use std::io::BufRead;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use super::tests::session;
use super::*;
use crate::frame::Framer;

/// Messages with a `~` wherever JSON allows whitespace: requests, a request nested in
/// another's params (the shape of the bare-`\r` attack), a batch, strings holding escaped
/// line ends and raw U+2028, U+2029 and U+0085 (valid JSON, never a line end here).
const TEMPLATES: &[&str] = &[
    r#"{~"jsonrpc"~:~"2.0"~,~"id"~:~ID~,~"method"~:~"tools/call"~,~"params"~:~{~"name"~:~"read_file"~,~"arguments"~:~{~"path"~:~"/x"~}~}~}"#,
    r#"{~"jsonrpc":"2.0","id":ID,"method":"ping","params":{"x":~{"jsonrpc":"2.0","id":"inner","method":"tools/call","params":{"name":"write_file"}}~}~}"#,
    r#"[~{"jsonrpc":"2.0","id":ID,"method":"ping"}~,~{"jsonrpc":"2.0","method":"notifications/progress","params":{}}~]"#,
    "{\"jsonrpc\":\"2.0\",\"id\":ID,\"method\":\"ping\",\"params\":{\"s\":\"a\\r\\nb\u{2028}c\u{2029}d\u{85}\"}~}",
];

/// What may stand at a `~`: nothing, JSON whitespace, or a line end.
const GAPS: &[&str] = &["", "", "", "", " ", "\t", "\r", "\n", "\r\n"];

/// One line's worth of a stream: a message from a template with random gaps, or junk.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0..TEMPLATES.len(), 0u32..1000, proptest::collection::vec(0..GAPS.len(), 40)).prop_map(|(t, id, gaps)| {
            let mut gaps = gaps.into_iter().cycle();
            let text = TEMPLATES[t].replace("ID", &id.to_string());
            let mut out = String::new();
            for (i, part) in text.split('~').enumerate() {
                if i > 0 {
                    out.push_str(GAPS[gaps.next().unwrap_or(0)]);
                }
                out.push_str(part);
            }
            out + "\n"
        }),
        1 => prop_oneof![Just("}}"), Just("\r"), Just("\n"), Just("\r\n"), Just(" "), Just("{"), Just(",")].prop_map(str::to_string),
    ]
}

fn stream() -> impl Strategy<Value = (String, Vec<usize>)> {
    (
        proptest::collection::vec(piece(), 0..12),
        proptest::collection::vec(1usize..64, 1..8),
    )
        .prop_map(|(pieces, cuts)| (pieces.concat() + "\n", cuts))
}

/// What the guard sends to the server for `input` arriving in reads of `cuts` bytes, and the
/// messages it judged and let through (each forwarded line without its ending).
fn guard(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut s = session();
    let mut f = Framer::new(1 << 20);
    let (mut out, mut judged) = (Vec::new(), Vec::new());
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts[i % cuts.len()].min(rest.len());
        i += 1;
        f.spare(n)[..n].copy_from_slice(&rest[..n]);
        f.filled(n);
        rest = &rest[n..];
        let mut frames = Vec::new();
        while let Some(fr) = f.next_frame() {
            frames.push(fr);
        }
        let plan = s.judge(Direction::ToServer, f.data(), frames);
        for act in plan.acts {
            match act {
                Act::Forward(r) => {
                    let raw = &f.data()[r];
                    out.extend_from_slice(raw);
                    let msg = raw.strip_suffix(b"\n").unwrap_or(raw);
                    judged.push(msg.strip_suffix(b"\r").unwrap_or(msg).to_vec());
                }
                Act::ToServer(line) => {
                    out.extend_from_slice(&line);
                    judged.push(line.strip_suffix(b"\n").unwrap_or(&line).to_vec());
                }
                Act::ToClient(_) => {}
            }
        }
    }
    (out, judged)
}

/// Rust's `lines()`: the real reader (forwarded bytes are always UTF-8).
fn lf_reader(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .lines()
        .map(|l| l.expect("forwarded bytes are UTF-8").into_bytes())
        .collect()
}

/// Universal newlines: `\r\n`, `\r` and `\n` each end a line.
fn universal_reader(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                lines.push(std::mem::take(&mut cur));
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => lines.push(std::mem::take(&mut cur)),
            b => cur.push(b),
        }
        i += 1;
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// What a server acts on: the lines that are not blank (a blank line is no message).
fn messages(lines: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    lines
        .into_iter()
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

proptest! {
    #![proptest_config(Config { cases: 2000, ..Config::default() })]
    #[test]
    fn every_reader_sees_exactly_the_judged_messages((input, cuts) in stream()) {
        let (out, judged) = guard(input.as_bytes(), &cuts);
        prop_assert_eq!(&messages(lf_reader(&out)), &judged, "lines() differs on {:?}", input);
        prop_assert_eq!(&messages(universal_reader(&out)), &judged, "universal newlines differ on {:?}", input);
    }
}

#[test]
fn the_nested_request_of_a_bare_cr_line_is_never_forwarded() {
    let line = "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"ping\",\"params\":{\"x\":\r{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"tools/call\",\"params\":{\"name\":\"write_file\",\"arguments\":{\"path\":\"/x\"}}}\r}}\n";
    let (out, judged) = guard(line.as_bytes(), &[line.len()]);
    assert!(
        out.is_empty() && judged.is_empty(),
        "forwarded {:?}",
        String::from_utf8_lossy(&out)
    );
    let mut s = session();
    let (plan, _) = super::tests::judge(&mut s, Direction::ToServer, line);
    let [Act::ToClient(reply)] = &plan.acts[..] else {
        panic!("{:?}", plan.acts)
    };
    let reply: serde_json::Value = serde_json::from_slice(reply).unwrap();
    assert_eq!(reply["id"], 5);
    assert_eq!(reply["error"]["code"], -32700);
    assert!(plan.commit.iter().any(|r| {
        r.reason
            .as_deref()
            .is_some_and(|m| m.contains("carriage return"))
    }));
}

/// Runs a real reader over `bytes`; it prints each line it delivers as a JSON string.
fn real_reader(program: &str, args: &[&str], bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping {program}: {e}");
            return None;
        }
        Err(e) => panic!("{program}: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} failed");
    Some(
        out.stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<String>(&l.unwrap())
                    .unwrap()
                    .into_bytes()
            })
            .collect(),
    )
}

#[test]
fn real_python_and_node_readers_see_exactly_the_judged_messages() {
    // A corpus of random streams, each complete lines, so they can be read as one.
    let mut runner = TestRunner::deterministic();
    let (mut out, mut judged) = (Vec::new(), Vec::new());
    let mut attacks = 0;
    for _ in 0..400 {
        let (input, cuts) = stream().new_tree(&mut runner).unwrap().current();
        attacks += usize::from(input.contains('\r'));
        let (o, j) = guard(input.as_bytes(), &cuts);
        out.extend(o);
        judged.extend(j);
    }
    assert!(
        attacks > 100 && judged.len() > 100,
        "the corpus exercises little: {attacks} streams with CR, {} messages",
        judged.len()
    );
    // The MCP Python SDK reads stdin as a UTF-8 text stream (universal newlines).
    let python = "import io, json, sys\nfor line in io.TextIOWrapper(sys.stdin.buffer, encoding='utf-8', errors='replace'):\n    print(json.dumps(line[:-1] if line.endswith('\\n') else line))\n";
    let node = "const rl = require('readline').createInterface({ input: process.stdin, crlfDelay: Infinity });\nrl.on('line', (l) => console.log(JSON.stringify(l)));\n";
    for (program, args) in [("python3", ["-c", python]), ("node", ["-e", node])] {
        if let Some(lines) = real_reader(program, &args, &out) {
            assert_eq!(
                messages(lines),
                judged,
                "{program} reads other messages than were judged"
            );
        }
    }
}
