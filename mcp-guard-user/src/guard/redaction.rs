//! Redaction recall: every secret of a corpus of real formats, in every form a server may
//! send it, on every server-to-client channel, is gone from what the host receives; and
//! ordinary text is forwarded untouched.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::frame::Framer;

#[derive(Deserialize)]
struct Entry {
    kind: String,
    line: String,
    /// What must not reach the host (the whole line for a bare token).
    secret: String,
    /// A key block, which a reader may cut short.
    block: bool,
}

fn corpus() -> Vec<Entry> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/secrets.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The forms a secret arrives in: as written, quoted, inside JSON text, base64 (whole and
/// inside a line), a key block cut by `head`, and in a unified diff (`edit_file` dry run).
fn forms(e: &Entry) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("plain", e.line.clone()),
        ("quoted", format!("config value = \"{}\"\n", e.line)),
        (
            "json",
            json!({ "credential": e.line, "note": "x" }).to_string(),
        ),
        ("base64", b64(&e.line)),
        (
            "base64-inline",
            format!("payload: data:text/plain;base64,{} (end)", b64(&e.line)),
        ),
        (
            "diff",
            format!(
                "--- a/config\n+++ b/config\n@@ -1,2 +1,{} @@\n context line\n-old value\n+{}\n",
                e.line.lines().count() + 1,
                e.line.replace('\n', "\n+")
            ),
        ),
    ];
    if e.block {
        let lines: Vec<&str> = e.line.lines().collect();
        out.push(("truncated", lines[..lines.len() / 2].join("\n")));
    }
    out
}

/// (channel, the client's request that the message answers, the message), with `x` in it.
fn channels(x: &str) -> Vec<(&'static str, Option<Value>, Value)> {
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/x"}}});
    let read =
        json!({"jsonrpc":"2.0","id":8,"method":"resources/read","params":{"uri":"file:///x"}});
    vec![
        (
            "tool result",
            Some(call.clone()),
            json!({"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":x}]}}),
        ),
        (
            "structured result",
            Some(call.clone()),
            json!({"jsonrpc":"2.0","id":7,"result":{"content":[],"structuredContent":{"file":{"text":x}}}}),
        ),
        (
            "resource text",
            Some(read.clone()),
            json!({"jsonrpc":"2.0","id":8,"result":{"contents":[{"uri":"file:///x","text":x}]}}),
        ),
        (
            "resource blob",
            Some(read),
            json!({"jsonrpc":"2.0","id":8,"result":{"contents":[{"uri":"file:///x","blob":b64(x)}]}}),
        ),
        (
            "error message",
            Some(call.clone()),
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":x}}),
        ),
        (
            "error data",
            Some(call),
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"failed","data":{"stderr":x}}}),
        ),
        (
            "log notification",
            None,
            json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":x}}),
        ),
        (
            "progress",
            None,
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1,"message":x}}),
        ),
        (
            "sampling request",
            None,
            json!({"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{"messages":[{"role":"user","content":{"type":"text","text":x}}],"maxTokens":10}}),
        ),
        (
            "elicitation request",
            None,
            json!({"jsonrpc":"2.0","id":"e1","method":"elicitation/create","params":{"message":x,"requestedSchema":{"type":"object","properties":{}}}}),
        ),
    ]
}

fn open_session() -> Session {
    super::tests::session_with("default = \"allow\"\n")
}

/// What the host receives when the server sends `msg` (after `request`, if any).
fn to_host(request: Option<&Value>, msg: &Value) -> Vec<u8> {
    let mut s = open_session();
    let mut out = Vec::new();
    for (dir, line) in request
        .map(|r| (Direction::ToServer, r))
        .into_iter()
        .chain([(Direction::ToClient, msg)])
    {
        let line = format!("{line}\n");
        let mut f = Framer::new(1 << 20);
        f.spare(line.len())[..line.len()].copy_from_slice(line.as_bytes());
        f.filled(line.len());
        let mut frames = Vec::new();
        while let Some(fr) = f.next_frame() {
            frames.push(fr);
        }
        let plan = s.judge(dir, f.data(), frames);
        if dir == Direction::ToClient {
            for act in plan.acts {
                match act {
                    Act::Forward(r) => out.extend_from_slice(&f.data()[r]),
                    Act::ToClient(l) => out.extend_from_slice(&l),
                    Act::ToServer(_) => {}
                }
            }
        }
    }
    out
}

/// Whether `secret` can be read from `bytes`: in any string of it, or in what a base64 run
/// of one decodes to.
fn leaks(bytes: &[u8], secret: &str) -> bool {
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(bytes);
    if text.contains(secret) {
        return true;
    }
    let mut all = Vec::new();
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            strings(&v, &mut all);
        }
    }
    let run = regex::Regex::new(r"[A-Za-z0-9+/_-]{16,}={0,2}").unwrap();
    all.iter().any(|s| {
        s.contains(secret)
            || run.find_iter(s).any(|m| {
                let e = &base64::engine::general_purpose::STANDARD;
                e.decode(m.as_str())
                    .is_ok_and(|d| String::from_utf8_lossy(&d).contains(secret))
            })
    })
}

#[test]
fn every_secret_in_every_form_on_every_channel_is_redacted() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 50,
        "the corpus has {} secrets",
        corpus.len()
    );
    let mut per_channel: std::collections::BTreeMap<&str, (u32, u32)> = Default::default();
    let mut misses = Vec::new();
    for e in &corpus {
        for (form, x) in forms(e) {
            for (channel, request, msg) in channels(&x) {
                let got = to_host(request.as_ref(), &msg);
                assert!(!got.is_empty(), "{channel}: nothing reached the host");
                let stat = per_channel.entry(channel).or_default();
                stat.1 += 1;
                if leaks(&got, &e.secret) {
                    misses.push(format!("{} ({form}) on {channel}", e.kind));
                } else {
                    stat.0 += 1;
                }
            }
        }
    }
    let (found, total) = per_channel
        .values()
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    println!(
        "redaction recall: {found}/{total} ({:.1}%) over {} secrets",
        100.0 * f64::from(found) / f64::from(total),
        corpus.len()
    );
    for (channel, (f, t)) in &per_channel {
        println!("  {channel:<20} {f}/{t}");
    }
    assert!(
        misses.is_empty(),
        "{} leaks:\n{}",
        misses.len(),
        misses.join("\n")
    );
}

#[test]
fn ordinary_text_is_forwarded_untouched() {
    let texts = [
        "commit 3f786850e387550fdab836ed7e6dc881de23001b\nAuthor: A <a@example.com>",
        "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "request id 123e4567-e89b-12d3-a456-426614174000 done",
        "The password field must be at least eight characters long.",
        "let token = next_token(&mut lexer);\nif token.kind == Kind::Ident { return Ok(token); }",
        "api_key: ${API_KEY}\npassword: <your password>\nsecret = \"changeme\"",
        "See https://docs.example.com/guide/setup#install for details.",
        "fn main() { println!(\"hello world\"); }",
        "AKIA is the prefix of AWS key ids; sk- is OpenAI's.",
        "Base64 of hello is aGVsbG8= and that is fine.",
    ];
    for t in texts {
        for (channel, request, msg) in channels(t) {
            let got = to_host(request.as_ref(), &msg);
            assert_eq!(
                serde_json::from_slice::<Value>(&got).unwrap(),
                msg,
                "{channel}: changed {t:?}: {}",
                String::from_utf8_lossy(&got)
            );
            assert_eq!(
                got,
                format!("{msg}\n").into_bytes(),
                "{channel}: not forwarded as sent"
            );
        }
    }
}
