//! `cargo xtask demo`: the official filesystem MCP server, wrapped with the demo policy.
//! The demo speaks JSON-RPC to the shim itself, exactly as an agent host would: it
//! initializes, reads a file (allowed), tries to write one (denied), and closes stdin.
//! Then it prints the audit records and verifies the log's hash chain.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub fn run(root: &Path) -> Result<()> {
    let status = Command::new(super::cargo()).current_dir(root).args(["build", "--quiet", "-p", "mcp-guard"]).status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let bin = root.join("target/debug/mcp-guard");
    let server = root.join(".peers/node/node_modules/.bin/mcp-server-filesystem");
    let work = std::env::temp_dir().join(format!("mcp-guard-demo-{}", std::process::id()));
    let data = work.join("files");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("hello.txt"), "hello from the demo\n")?;
    let audit = work.join("audit.jsonl");
    let policy = root.join("policies/demo.toml");

    println!("== mcp-guard demo");
    println!("   server : @modelcontextprotocol/server-filesystem on {}", data.display());
    println!("   policy : {} (filesystem is read-only)", policy.display());
    println!("   audit  : {}\n", audit.display());

    let mut child = Command::new(&bin)
        .args(["wrap", "--name", "filesystem", "--policy"])
        .arg(&policy)
        .arg("--audit")
        .arg(&audit)
        .arg("--")
        .arg(&server)
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start mcp-guard")?;
    let mut to = child.stdin.take().context("stdin")?;
    let mut from = BufReader::new(child.stdout.take().context("stdout")?);
    let mut send = |msg: Value| -> Result<()> {
        writeln!(to, "{msg}")?;
        Ok(to.flush()?)
    };
    let mut recv = |id: u64| -> Result<Value> {
        loop {
            let mut line = String::new();
            if from.read_line(&mut line)? == 0 {
                bail!("the shim closed its stdout");
            }
            let v: Value = serde_json::from_str(&line)?;
            if v.get("id") == Some(&json!(id)) {
                return Ok(v);
            }
        }
    };
    let mut call = |id: u64, method: &str, params: Value| -> Result<Value> {
        send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        if method == "initialize" {
            let v = recv(id)?;
            send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
            return Ok(v);
        }
        recv(id)
    };

    call(1, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "xtask-demo", "version": "1"}}))?;
    let read = call(2, "tools/call", json!({"name": "read_text_file", "arguments": {"path": data.join("hello.txt")}}))?;
    let text = read.pointer("/result/content/0/text").and_then(Value::as_str).unwrap_or("?");
    println!("-> tools/call read_text_file hello.txt");
    println!("<- ALLOWED: {:?}\n", text.trim_end());
    let target = data.join("evil.txt");
    let write = call(3, "tools/call", json!({"name": "write_file", "arguments": {"path": target, "content": "pwned"}}))?;
    println!("-> tools/call write_file evil.txt");
    println!(
        "<- DENIED: error {} {}",
        write.pointer("/error/code").unwrap_or(&Value::Null),
        write.pointer("/error/message").and_then(Value::as_str).unwrap_or("?")
    );
    println!("   evil.txt exists afterwards: {}\n", target.exists());
    // Close the shim's stdin, as a host does at the end of a session.
    drop(to);
    let status = child.wait()?;
    println!("shim exited with {status} after stdin closed\n");

    println!("== audit records");
    let log = std::fs::read_to_string(&audit)?;
    for line in log.lines() {
        let r: Value = serde_json::from_str(line)?;
        let s = |p: &str| r.pointer(p).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
        println!(
            "#{:<2} {:<14} {:<8} rule={:<14} method={:<12} tool={:<15} user={} host={} server={}",
            s("/seq"),
            s("/kind"),
            s("/decision"),
            s("/rule"),
            s("/method"),
            s("/tool"),
            s("/principal/user"),
            s("/agent_host/exe"),
            s("/server/exe"),
        );
    }
    println!("\n== one record in full (the denied call)");
    if let Some(line) = log.lines().find(|l| l.contains("\"decision\":\"deny\"")) {
        let mut v: Value = serde_json::from_str(line)?;
        if let Some(chain) = v.get_mut("chain").and_then(Value::as_array_mut) {
            let n = chain.len();
            chain.truncate(2);
            chain.push(json!(format!("... {n} processes up to init")));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    println!("\n== mcp-guard audit verify");
    let status = Command::new(&bin).args(["audit", "verify"]).arg(&audit).status()?;
    if !status.success() {
        bail!("audit verify failed");
    }
    Ok(())
}
