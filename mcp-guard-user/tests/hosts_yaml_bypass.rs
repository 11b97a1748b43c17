//! YAML host configs written to make mcp-guard's reading differ from the host's own YAML
//! reader (the `yaml` npm package, which Continue reads with), so that after `wrap` the
//! host would still run a server unwrapped while `scan` says otherwise, or so that `wrap`
//! corrupts the file.
//!
//! The invariant: either mcp-guard refuses the file (`scan` reports it unreadable, which
//! `scan --check` fails on, and `wrap` leaves it as it is with a warning), or, read by the
//! host's reader, every stdio server of the wrapped file runs `mcp-guard wrap --name N --
//! <what it ran before>`, and every server `scan` reports wrapped is wrapped for the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use mcp_guard::hosts::{self, Host};
use serde_json::Value;

const BIN: &str = "/usr/local/bin/mcp-guard";

fn modules() -> Option<PathBuf> {
    let m = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers/node/node_modules");
    if m.join("yaml/package.json").is_file() {
        return Some(m);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the yaml npm package is not installed in {} (cargo xtask peers)",
        m.display()
    );
    None
}

/// The document as the host's reader sees it; Err(errors) when it refuses the text.
fn host_reads(text: &str) -> Result<Value, String> {
    let m = modules().expect("yaml npm package");
    let out = Command::new("node")
        .env("NODE_PATH", m)
        .args([
            "-e",
            "const YAML = require('yaml'); let s = ''; process.stdin.on('data', d => s += d); \
             process.stdin.on('end', () => { const doc = YAML.parseDocument(s, {uniqueKeys: true}); \
             if (doc.errors.length) { console.log(JSON.stringify({errors: doc.errors.map(String)})); return; } \
             console.log(JSON.stringify({doc: doc.toJS()})); });",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("node runs");
    let v: Value = serde_json::from_slice(&out.stdout).expect("node output");
    match v.get("doc") {
        Some(d) => Ok(d.clone()),
        None => Err(v["errors"].to_string()),
    }
}

/// (name, cmd, args) of every stdio server, as the host reads them.
fn stdio_servers(host: Host, doc: &Value) -> Vec<(String, String, Vec<Value>)> {
    let cmd_key = if host == Host::Goose {
        "cmd"
    } else {
        "command"
    };
    let list: Vec<(String, Value)> = match (
        host,
        &doc[if host == Host::Goose {
            "extensions"
        } else {
            "mcpServers"
        }],
    ) {
        (_, Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        (_, Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    v["name"]
                        .as_str()
                        .map_or(format!("#{}", i + 1), str::to_string),
                    v.clone(),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    list.into_iter()
        .filter_map(|(name, v)| {
            let cmd = v.get(cmd_key)?.as_str()?.to_string();
            let remote = v.get("url").is_some()
                || v.get("uri").is_some()
                || v["type"].as_str().is_some_and(|t| t != "stdio");
            if remote {
                return None;
            }
            let args = v["args"].as_array().cloned().unwrap_or_default();
            Some((name, cmd, args))
        })
        .collect()
}

fn guarded(cmd: &str, args: &[Value]) -> bool {
    (cmd == BIN || cmd.ends_with("/mcp-guard")) && args.first() == Some(&Value::from("wrap"))
}

/// The invariant of the module's comment, for a file in `host`'s format.
fn assert_wrap_guards_every_server(host: Host, text: &str) {
    if modules().is_none() {
        println!("skipping: no yaml npm package");
        return;
    }
    let before =
        host_reads(text).unwrap_or_else(|e| panic!("the host rejects the input: {e}\n{text}"));
    let wrapped = match hosts::wrap_text(host, text, BIN) {
        Err(e) => {
            println!("refused (acceptable): {e:#}");
            return;
        }
        Ok((w, _)) => w,
    };
    let after = host_reads(&wrapped).unwrap_or_else(|e| {
        panic!("wrap corrupted the file: {e}\n--- before\n{text}\n--- after\n{wrapped}")
    });
    let was = stdio_servers(host, &before);
    let now = stdio_servers(host, &after);
    for (name, cmd, args) in &now {
        assert!(
            guarded(cmd, args),
            "after wrap the host still runs `{name}` unwrapped: {cmd} {args:?}\n--- wrapped file\n{wrapped}"
        );
    }
    for (name, cmd, args) in &was {
        let Some((_, ncmd, nargs)) = now.iter().find(|(n, ..)| n == name) else {
            panic!("server `{name}` vanished after wrap\n{wrapped}");
        };
        let mut expected = vec![
            Value::from("wrap"),
            Value::from("--name"),
            Value::from(name.as_str()),
            Value::from("--"),
            Value::from(cmd.as_str()),
        ];
        expected.extend(args.iter().cloned());
        if !guarded(cmd, args) {
            assert_eq!(
                (ncmd.as_str(), nargs),
                (BIN, &expected),
                "`{name}` runs something other than before, wrapped\n--- before\n{text}\n--- after\n{wrapped}"
            );
        }
    }
    // What scan reports of the wrapped file agrees with what the host runs.
    let dir = std::env::temp_dir().join(format!(
        "mcp-guard-yaml-bypass-{}-{}",
        std::process::id(),
        text.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, &wrapped).unwrap();
    let found = hosts::scan_file(&path, host);
    for s in found.servers.iter().filter(|s| s.wrapped) {
        if let Some((_, cmd, args)) = now.iter().find(|(n, ..)| *n == s.name) {
            assert!(
                guarded(cmd, args),
                "scan reports `{}` wrapped; the host runs {cmd} {args:?}",
                s.name
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `scan` of a file as it is: every server the host would run that is not behind
/// mcp-guard must be listed, and not as wrapped.
fn assert_scan_tells_the_truth(host: Host, text: &str) {
    if modules().is_none() {
        return;
    }
    let doc =
        host_reads(text).unwrap_or_else(|e| panic!("the host rejects the input: {e}\n{text}"));
    let dir =
        std::env::temp_dir().join(format!("mcp-guard-yaml-bypass-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.yaml", text.len()));
    std::fs::write(&path, text).unwrap();
    let found = hosts::scan_file(&path, host);
    let _ = std::fs::remove_file(&path);
    if found.error.is_some() {
        // Refused: reported as unreadable, not as clean.
        return;
    }
    for (name, cmd, args) in stdio_servers(host, &doc) {
        if guarded(&cmd, &args) {
            continue;
        }
        let listed = found.servers.iter().find(|s| s.name == name);
        assert!(
            listed.is_some_and(|s| !s.wrapped),
            "the host runs `{name}` unwrapped ({cmd} {args:?}); scan says {listed:?} (error: {:?})\n{text}",
            found.error
        );
    }
}

// ---------------------------------------------------------------------------
// Findings

/// A YAML file that starts with `{` is read with the JSONC parser (comments, trailing
/// commas), but the hosts read it as YAML, where `/*` is a plain scalar and `#` starts a
/// comment. Here JSONC sees a wrapped server, YAML an unwrapped one.
const JSONC_VS_YAML: &str = r#"{"name": "b", "version": "1", "schema": "v1", "k": /*,
 "mcpServers": [{"name": "s", "command": "npx", "args": ["evil-server"]}],
 "j": 0, # */ 1, "mcpServers": [{"name": "s", "command": "mcp-guard", "args": ["wrap", "--name", "s", "--", "npx", "evil-server"]}],
 "end": 0}
"#;

#[test]
fn attack_yaml_file_starting_with_brace_is_read_as_jsonc_not_yaml_continue() {
    assert_scan_tells_the_truth(Host::Continue, JSONC_VS_YAML);
    assert_wrap_guards_every_server(Host::Continue, JSONC_VS_YAML);
}

#[test]
fn attack_yaml_file_starting_with_brace_is_read_as_jsonc_not_yaml_goose() {
    let text = r#"{"k": /*,
 "extensions": {"s": {"type": "stdio", "cmd": "npx", "args": ["evil-server"]}},
 "j": 0, # */ 1, "extensions": {"s": {"type": "stdio", "cmd": "mcp-guard", "args": ["wrap", "--name", "s", "--", "npx", "evil-server"]}},
 "end": 0}
"#;
    assert_scan_tells_the_truth(Host::Goose, text);
    assert_wrap_guards_every_server(Host::Goose, text);
}

/// The same with a `mcpServers` map (a block file copied from another host): here
/// `scan` reports `s` **wrapped** while Continue runs `npx evil-server` directly.
#[test]
fn attack_yaml_brace_file_scan_reports_wrapped_while_host_runs_unwrapped() {
    let text = r#"{"name": "b", "version": "1", "schema": "v1", "k": /*,
 "mcpServers": {"s": {"command": "npx", "args": ["evil-server"]}},
 "j": 0, # */ 1, "mcpServers": {"s": {"command": "mcp-guard", "args": ["wrap", "--name", "s", "--", "npx", "evil-server"]}},
 "end": 0}
"#;
    let dir = std::env::temp_dir().join(format!(
        "mcp-guard-yaml-bypass-brace-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("block.yaml");
    std::fs::write(&path, text).unwrap();
    let found = hosts::scan_file(&path, Host::Continue);
    let _ = std::fs::remove_dir_all(&dir);
    let host = host_reads(text).unwrap();
    assert_eq!(
        host["mcpServers"]["s"]["command"], "npx",
        "what Continue runs"
    );
    assert!(
        !found.servers.iter().any(|s| s.name == "s" && s.wrapped),
        "scan reports `s` wrapped; Continue runs {}",
        host["mcpServers"]["s"]
    );
}

/// Also without any wrapped decoy: a server only YAML sees (JSONC reads a comment).
#[test]
fn attack_yaml_brace_file_hides_a_server_in_a_jsonc_comment() {
    let text = r#"{"name": "b", "version": "1", "schema": "v1", "mcpServers": [ /* a, {"name": "hidden", "command": "npx", "args": ["evil"]}, b */ ]}
"#;
    // (YAML reads two stray string items around the server; the zod schema of Continue
    // may drop those, the server is still there.)
    let doc = host_reads(text);
    if let Ok(doc) = &doc {
        assert_eq!(doc["mcpServers"][1]["command"], "npx");
    }
    assert_scan_tells_the_truth(Host::Continue, text);
}

/// An entry (or the whole `extensions` map) with an explicit tag is skipped as "not
/// read": no entry, nothing wrapped, nothing reported. The host reads `!!map` as a map.
#[test]
fn attack_tagged_entry_is_invisible_to_scan_and_wrap() {
    let text = "extensions:\n  ok:\n    type: stdio\n    cmd: uvx\n    args: [fine]\n  hidden: !!map\n    type: stdio\n    cmd: npx\n    args: [evil]\n";
    assert_wrap_guards_every_server(Host::Goose, text);
}

#[test]
fn attack_tagged_extensions_map_is_invisible() {
    let text = "extensions: !!map\n  hidden:\n    type: stdio\n    cmd: npx\n    args: [evil]\n";
    assert_scan_tells_the_truth(Host::Goose, text);
    assert_wrap_guards_every_server(Host::Goose, text);
}

#[test]
fn attack_tagged_mcpservers_seq_is_invisible() {
    let text = "mcpServers: !!seq\n  - name: hidden\n    command: npx\n    args: [evil]\n";
    assert_scan_tells_the_truth(Host::Continue, text);
    assert_wrap_guards_every_server(Host::Continue, text);
}

/// A tagged key (`!!str cmd`) is the key `cmd` for the host; mcp-guard sees no command.
#[test]
fn attack_tagged_cmd_key_hides_the_command() {
    let text = "extensions:\n  hidden:\n    type: stdio\n    !!str cmd: npx\n    args: [evil]\n";
    assert_scan_tells_the_truth(Host::Goose, text);
    assert_wrap_guards_every_server(Host::Goose, text);
}

/// A whole entry given by an alias is skipped: the host runs it, scan does not list it.
#[test]
fn attack_alias_entry_is_invisible() {
    let text = "base: &b\n  type: stdio\n  cmd: npx\n  args: [evil]\nextensions:\n  hidden: *b\n";
    assert_scan_tells_the_truth(Host::Goose, text);
    assert_wrap_guards_every_server(Host::Goose, text);
}

/// `%YAML 1.1` turns merge keys on in the host's reader: the command comes from `<<`.
#[test]
fn attack_merge_key_under_yaml_1_1_hides_the_command() {
    let text =
        "%YAML 1.1\n---\nmcpServers:\n  - name: hidden\n    <<: {command: npx, args: [evil]}\n";
    assert_scan_tells_the_truth(Host::Continue, text);
    assert_wrap_guards_every_server(Host::Continue, text);
}

/// An anchored command used by another entry: editing the anchored scalar changes the
/// other entry too (or drops the anchor and breaks the file).
#[test]
fn attack_anchored_cmd_shared_by_another_entry() {
    let text = "extensions:\n  a:\n    type: stdio\n    cmd: &n npx\n    args: [one]\n  b:\n    type: stdio\n    cmd: *n\n    args: [two]\n";
    assert_wrap_guards_every_server(Host::Goose, text);
}

/// An anchored `args` list used by another entry: the wrap prefix inserted into it runs
/// in the other entry too.
#[test]
fn attack_anchored_args_shared_by_another_entry() {
    let text = "extensions:\n  a:\n    type: stdio\n    cmd: npx\n    args: &a [one]\n  b:\n    type: stdio\n    cmd: uvx\n    args: *a\n";
    assert_wrap_guards_every_server(Host::Goose, text);
}

/// A byte order mark at the start of the file (Windows editors write one): the hosts'
/// readers skip it; mcp-guard reads the first key as `\u{feff}extensions`, so it sees no
/// servers at all: scan lists none, wrap changes nothing and reports success.
#[test]
fn attack_bom_hides_every_server() {
    let goose = "\u{feff}extensions:\n  a:\n    type: stdio\n    cmd: npx\n    args: [x]\n";
    assert_scan_tells_the_truth(Host::Goose, goose);
    assert_wrap_guards_every_server(Host::Goose, goose);
    let cont = "\u{feff}mcpServers:\n  - name: a\n    command: npx\n";
    assert_scan_tells_the_truth(Host::Continue, cont);
    assert_wrap_guards_every_server(Host::Continue, cont);
}

/// Goose reads an extension by its `type` tag: a `type: stdio` entry runs `cmd`, and a
/// stray `uri` is an unknown field it ignores. mcp-guard sees the `uri` and calls the
/// entry remote: scan says "remote", wrap leaves it alone, Goose runs the command.
#[test]
fn attack_goose_stdio_entry_with_a_stray_uri_is_taken_for_remote() {
    let text = "extensions:\n  s:\n    type: stdio\n    cmd: npx\n    args: [evil]\n    uri: http://localhost:1/sse\n";
    let (wrapped, _) = hosts::wrap_text(Host::Goose, text, BIN).unwrap();
    let doc = host_reads(&wrapped).unwrap();
    let s = &doc["extensions"]["s"];
    assert_eq!(s["type"], "stdio", "Goose runs it as stdio: {s}");
    assert!(
        guarded(s["cmd"].as_str().unwrap(), s["args"].as_array().unwrap()),
        "wrap left a type: stdio extension unwrapped because it also has a uri: {s}"
    );
}

/// Entries mcp-guard reads as stdio but cannot edit are skipped by `wrap` without an
/// error: it reports success and the host still runs them unwrapped. (`scan` does list
/// them as not wrapped, so this is a robustness issue, not a lie.)
#[test]
fn attack_wrap_silently_skips_an_explicit_cmd_key() {
    assert_wrap_guards_every_server(
        Host::Goose,
        "extensions:\n  s:\n    type: stdio\n    ? cmd\n    : npx\n    args: [evil]\n",
    );
}

#[test]
fn attack_wrap_silently_skips_scalar_or_null_args() {
    assert_wrap_guards_every_server(
        Host::Goose,
        "extensions:\n  s:\n    type: stdio\n    cmd: npx\n    args:\n",
    );
}

#[test]
fn attack_wrap_silently_skips_a_block_scalar_command() {
    assert_wrap_guards_every_server(
        Host::Continue,
        "mcpServers:\n  - name: s\n    command: >-\n      npx\n    args: [evil]\n",
    );
}

/// A server named `--` (or `-x`): `wrap --name -- -- npx` puts the name where unwrap
/// looks for the separator (the first `--`), so unwrap restores `--` as the command and
/// keeps the rest. Corruption on unwrap (all formats share this code); and at run time
/// `--name --` is not a name for the argument parser.
#[test]
fn attack_server_named_double_dash_breaks_unwrap() {
    let text = "extensions:\n  \"--\":\n    type: stdio\n    cmd: npx\n    args: [srv]\n";
    let (wrapped, _) = hosts::wrap_text(Host::Goose, text, BIN).unwrap();
    let back = hosts::unwrap_text(Host::Goose, &wrapped).map(|r| r.0);
    assert_eq!(
        back.as_deref().ok(),
        Some(text),
        "unwrap does not give the file back:\n{wrapped}\n{back:?}"
    );
}

// ---------------------------------------------------------------------------
// Regression tests (attacks that failed when written)

#[test]
fn duplicate_keys_in_other_spellings_are_refused() {
    for text in [
        "extensions:\n  a:\n    type: stdio\n    cmd: npx\n    \"cmd\": evil\n",
        "extensions:\n  a:\n    type: stdio\n    cmd: npx\n    ? cmd\n    : evil\n",
        "extensions:\n  a:\n    type: stdio\n    cmd: npx\n    'cmd': evil\n",
        "extensions:\n  a:\n    type: stdio\n    cmd: npx\n    \"c\\x6dd\": evil\n",
    ] {
        assert!(hosts::wrap_text(Host::Goose, text, BIN).is_err(), "{text}");
    }
}

#[test]
fn bom_crlf_flow_and_comment_layouts_wrap_correctly() {
    for (host, text) in [
        (Host::Goose, "extensions: {a: {type: stdio, cmd: npx, args: [x, # c\n   y]}, b: {type: stdio,\n  cmd: uvx}}\n".to_string()),
        (Host::Goose, "extensions:\n  a:\n    type: stdio\n    cmd: npx # the command\n    args: [ # first\n      x ]\n".to_string()),
        (Host::Continue, "mcpServers:\n- name: a\n  command: npx\n  args:\n  # c\n  - x\n".to_string()),
        (Host::Continue, "mcpServers:\n  - name: a\n    command: \"n\\u0070x\"\n".to_string()),
        (Host::Continue, format!("mcpServers:\n  - name: a\n    command: npx\n    args: [{}]\n", "x".repeat(20000))),
        (Host::Goose, "extensions:\r\n  a:\r\n    type: stdio\r\n    cmd: 'np''x'\r\n    args:\r\n      - x\r\n".to_string()),
        (Host::Goose, "extensions:\n  a:\n    type: stdio\n    cmd:\n      npx\n    envs: {}\n".to_string()),
        (Host::Goose, "extensions:\n  \"a b\":\n    type: stdio\n    cmd: \"é\u{2028}x\"\n".to_string()),
    ] {
        println!("case: {text:?}");
        assert_wrap_guards_every_server(host, &text);
    }
}
