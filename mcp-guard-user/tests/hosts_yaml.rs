//! YAML configs (Goose, Continue) against an independent reader: the `yaml` npm package,
//! which Continue itself reads its config with. What it reads from a wrapped file must be
//! `mcp-guard wrap --name NAME -- <what it read before>` for every stdio server and the
//! same as before for everything else; unwrap must give the file back byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use mcp_guard::hosts::{self, Host};
use serde_json::{Value, json};

const BIN: &str = "/usr/local/bin/mcp-guard";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts")
}

/// The `yaml` package installed by `cargo xtask peers`; in CI its absence is a failure.
fn reader() -> Option<PathBuf> {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers/node/node_modules");
    if modules.join("yaml/package.json").is_file() {
        return Some(modules);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the yaml npm package is not installed in {} (cargo xtask peers)",
        modules.display()
    );
    println!(
        "skipping: {} has no yaml package (cargo xtask peers)",
        modules.display()
    );
    None
}

/// Each document as the `yaml` package parses it, as JSON (one `node` for all of them).
fn read_all(modules: &Path, texts: &[String]) -> Vec<Value> {
    let out = Command::new("node")
        .env("NODE_PATH", modules)
        .args([
            "-e",
            "const YAML = require('yaml'); let s = ''; process.stdin.on('data', d => s += d); \
             process.stdin.on('end', () => { const out = JSON.parse(s).map(t => { \
             const doc = YAML.parseDocument(t, {uniqueKeys: true}); \
             if (doc.errors.length) { console.error(t + '\\n' + doc.errors.map(String).join('\\n')); process.exit(1); } \
             return doc.toJS(); }); console.log(JSON.stringify(out)); });",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            let input = serde_json::to_vec(texts).unwrap();
            let mut stdin = c.stdin.take().unwrap();
            let writer = std::thread::spawn(move || stdin.write_all(&input));
            let out = c.wait_with_output();
            writer.join().unwrap()?;
            out
        })
        .expect("node runs");
    assert!(
        out.status.success(),
        "yaml rejects:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (name, server object) of a Goose or Continue document, as the host sees them.
fn servers(host: Host, doc: &Value) -> Vec<(String, Value)> {
    match host {
        Host::Goose => doc["extensions"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        _ => match &doc["mcpServers"] {
            Value::Array(a) => a
                .iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or_default().to_string(),
                        v.clone(),
                    )
                })
                .collect(),
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => Vec::new(),
        },
    }
}

/// Wraps and unwraps every (host, text), reads all the results with the host's reader,
/// and checks them (see the module's comment).
fn check_all(modules: &Path, cases: &[(Host, String)]) {
    let mut texts = Vec::new();
    for (host, text) in cases {
        let (wrapped, changes) =
            hosts::wrap_text(*host, text, BIN).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        assert!(!changes.is_empty(), "nothing wrapped:\n{text}");
        let back = hosts::unwrap_text(*host, &wrapped).unwrap().0;
        texts.extend([text.clone(), wrapped, back]);
    }
    let docs = read_all(modules, &texts);
    for (i, (host, text)) in cases.iter().enumerate() {
        let (before, after, back) = (&docs[3 * i], &docs[3 * i + 1], &docs[3 * i + 2]);
        let wrapped = &texts[3 * i + 1];
        compare(*host, before, after, wrapped);
        // Unwrap gives the file back byte for byte, except a command that had to be quoted
        // to stand in a flow sequence: then only its line differs, and reads the same.
        let unwrapped = &texts[3 * i + 2];
        if unwrapped != text {
            let differ = text
                .lines()
                .zip(unwrapped.lines())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                differ, 1,
                "unwrap changed more than the command:\n{text}\n{unwrapped}"
            );
            assert_eq!(before, back, "unwrap reads differently:\n{unwrapped}");
        }
    }
}

fn compare(host: Host, before: &Value, after: &Value, wrapped: &str) {
    let cmd_key = if host == Host::Goose {
        "cmd"
    } else {
        "command"
    };
    let (b, a) = (servers(host, before), servers(host, after));
    assert_eq!(b.len(), a.len());
    for ((name, was), (_, now)) in b.iter().zip(&a) {
        let stdio = was[cmd_key].is_string()
            && was.get("url").is_none()
            && was.get("uri").is_none()
            && was["type"].as_str().is_none_or(|t| t == "stdio");
        if !stdio {
            assert_eq!(was, now, "{name} changed:\n{wrapped}");
            continue;
        }
        let mut want = vec![
            json!("wrap"),
            json!("--name"),
            json!(name),
            json!("--"),
            was[cmd_key].clone(),
        ];
        want.extend(was["args"].as_array().cloned().unwrap_or_default());
        assert_eq!(now[cmd_key], json!(BIN), "{name}:\n{wrapped}");
        assert_eq!(now["args"], Value::Array(want), "{name}:\n{wrapped}");
        // Everything else about the server is as it was.
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove(cmd_key);
                o.remove("args");
            }
            v
        };
        assert_eq!(strip(was), strip(now), "{name}");
    }
    // Everything else in the document is as it was.
    let rest = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("extensions");
            o.remove("mcpServers");
        }
        v
    };
    assert_eq!(rest(before), rest(after));
}

#[test]
fn fixtures_read_the_same_by_the_hosts_own_reader() {
    let Some(modules) = reader() else { return };
    let cases: Vec<(Host, String)> = [
        (Host::Goose, "goose.yaml"),
        (Host::Continue, "continue.yaml"),
        (Host::Continue, "continue_block.yaml"),
        (Host::Continue, "continue_block.json"),
    ]
    .into_iter()
    .map(|(h, fx)| (h, fs::read_to_string(fixtures().join(fx)).unwrap()))
    .collect();
    check_all(&modules, &cases);
}

#[test]
fn every_scalar_style_and_layout_reads_the_same() {
    let Some(modules) = reader() else { return };
    let commands = [
        "npx",
        "'npx'",
        "\"npx\"",
        "\"n\\u0070x\"",
        "'it''s'",
        "/opt/my,tool",
        "/opt/a b/srv",
        "node # comment",
        "\"a:b\"",
        "C:/x",
        "é-server",
        "\"tab\\tx\"",
    ];
    let args = [
        None,
        Some("[]"),
        Some("[-y, 'x', \"y z\"]"),
        Some("\n  - -y\n  - \"@x/y\"\n"),
        Some("\n    - a\n    - 'b'\n"),
    ];
    let mut cases = Vec::new();
    for cmd in commands {
        for a in args {
            let args_line = a
                .map(|a| format!("    args:{}{a}", if a.starts_with('\n') { "" } else { " " }))
                .unwrap_or_default();
            let args_line = args_line.replace("\n  - ", "\n    - ");
            let t = format!(
                "mcpServers:\n  - name: s\n    command: {cmd}\n{args_line}{}",
                if args_line.is_empty() || args_line.ends_with('\n') {
                    ""
                } else {
                    "\n"
                }
            );
            cases.push((Host::Continue, t));
            let g = format!(
                "extensions:\n  s:\n    cmd: {cmd}\n{args_line}{}    type: stdio\n",
                if args_line.is_empty() || args_line.ends_with('\n') {
                    ""
                } else {
                    "\n"
                }
            );
            cases.push((Host::Goose, g));
        }
    }
    // Flow mappings, CRLF line ends, no final newline.
    for t in [
        "mcpServers: [{name: a, command: npx, args: [x]}, {name: b, command: 'uvx'}]\n",
        "mcpServers:\r\n  - name: a\r\n    command: npx\r\n    args:\r\n      - x\r\n  - name: b\r\n    command: uvx",
    ] {
        cases.push((Host::Continue, t.to_string()));
    }
    check_all(&modules, &cases);
}
