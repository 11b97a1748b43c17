//! `cargo xtask demo`: the official filesystem MCP server, wrapped with the demo policy.
//! The demo speaks JSON-RPC to the shim itself, exactly as an agent host would: it
//! initializes, reads a file (allowed), tries to write one (denied), and closes stdin.
//! Then it prints the audit records and verifies the log's hash chain.
//!
//! As root, with the eBPF object built (`cargo xtask build-ebpf`, or after `cargo xtask
//! test`), it then shows the observer: `mcp-guard daemon` watching this program as an agent
//! host while it starts the same server without the shim, with `denied = "kill"`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub fn run(root: &Path) -> Result<()> {
    let status = Command::new(super::cargo())
        .current_dir(root)
        .args(["build", "--quiet", "-p", "mcp-guard"])
        .status()?;
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
    println!(
        "   server : @modelcontextprotocol/server-filesystem on {}",
        data.display()
    );
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

    call(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "xtask-demo", "version": "1"}}),
    )?;
    let read = call(
        2,
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": data.join("hello.txt")}}),
    )?;
    let text = read
        .pointer("/result/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or("?");
    println!("-> tools/call read_text_file hello.txt");
    println!("<- ALLOWED: {:?}\n", text.trim_end());
    let target = data.join("evil.txt");
    let write = call(
        3,
        "tools/call",
        json!({"name": "write_file", "arguments": {"path": target, "content": "pwned"}}),
    )?;
    println!("-> tools/call write_file evil.txt");
    println!(
        "<- DENIED: error {} {}",
        write.pointer("/error/code").unwrap_or(&Value::Null),
        write
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("?")
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
        let s = |p: &str| {
            r.pointer(p)
                .map(|v| v.to_string().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        // Seals only sign the chain; `verify` below counts them.
        if s("/kind") == "seal" {
            continue;
        }
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
    let status = Command::new(&bin)
        .args(["audit", "verify"])
        .arg(&audit)
        .status()?;
    if !status.success() {
        bail!("audit verify failed");
    }
    let object = root.join("mcp-guard-ebpf/target/bpfel-unknown-none/release/mcp-guard-ebpf");
    if !super::nix_is_root() || !object.is_file() {
        println!(
            "\n(as root, after `cargo xtask build-ebpf`, the demo also shows the observer daemon)"
        );
        return Ok(());
    }
    observer(&bin, &object, &server, &policy, &work)
}

/// Speaks JSON-RPC to a child's stdin and stdout, as an agent host does.
struct Peer {
    to: std::process::ChildStdin,
    from: BufReader<std::process::ChildStdout>,
}

impl Peer {
    fn call(&mut self, id: u64, method: &str, params: Value) -> Result<Value> {
        writeln!(
            self.to,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        )?;
        self.to.flush()?;
        loop {
            let mut line = String::new();
            if self.from.read_line(&mut line)? == 0 {
                bail!("the server closed its stdout");
            }
            let v: Value = serde_json::from_str(&line)?;
            if v.get("id") == Some(&json!(id)) {
                if method == "initialize" {
                    writeln!(
                        self.to,
                        "{}",
                        json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
                    )?;
                }
                return Ok(v);
            }
        }
    }
}

/// The daemon watches this program (`xtask`) as an agent host; the server runs unwrapped.
fn observer(bin: &Path, object: &Path, server: &Path, policy: &Path, work: &Path) -> Result<()> {
    let dir = work.join("observer");
    std::fs::create_dir_all(&dir)?;
    let files = work.join("files");
    let daemon_policy = dir.join("policy.toml");
    std::fs::write(
        &daemon_policy,
        std::fs::read_to_string(policy)? + "\n[observer]\ndenied = \"kill\"\n",
    )?;
    let audit = dir.join("audit.jsonl");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "policy = \"{}\"\naudit = \"{}\"\naudit_key = \"{}\"\nrun_dir = \"{}\"\nbpf_object = \"{}\"\n\
             hosts = [\"xtask\"]\nhost_configs = \"off\"\n",
            daemon_policy.display(),
            audit.display(),
            dir.join("audit.key").display(),
            dir.join("run").display(),
            object.display()
        ),
    )?;
    println!("\n== the observer: mcp-guard daemon, watching this program as an agent host");
    println!(
        "   the same server, started WITHOUT the shim; policy {} + [observer] denied = \"kill\"\n",
        policy.display()
    );
    let mut daemon = Command::new(bin)
        .args(["daemon", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !dir.join("run/status.json").exists() {
            if std::time::Instant::now() > deadline {
                bail!("the daemon did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut child = Command::new(server)
            .arg(&files)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut peer = Peer {
            to: child.stdin.take().context("stdin")?,
            from: BufReader::new(child.stdout.take().context("stdout")?),
        };
        peer.call(1, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "xtask-demo", "version": "1"}}))?;
        let read = peer.call(
            2,
            "tools/call",
            json!({"name": "read_text_file", "arguments": {"path": files.join("hello.txt")}}),
        )?;
        println!("-> tools/call read_text_file hello.txt (unwrapped)");
        println!(
            "<- answered: {:?}",
            read.pointer("/result/content/0/text")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .trim_end()
        );
        let target = files.join("evil2.txt");
        println!("-> tools/call write_file evil2.txt (unwrapped)");
        match peer.call(
            3,
            "tools/call",
            json!({"name": "write_file", "arguments": {"path": target, "content": "pwned"}}),
        ) {
            Ok(v) => println!("<- answered: {v}"),
            Err(e) => {
                println!("<- no answer: {e} (the daemon killed the server as it read the call)")
            }
        }
        println!("   evil2.txt exists afterwards: {}", target.exists());
        drop(peer);
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(std::time::Duration::from_millis(700));
        println!("\n== the daemon's records");
        let log = std::fs::read_to_string(&audit)?;
        for line in log.lines() {
            let r: Value = serde_json::from_str(line)?;
            let s = |p: &str| {
                r.pointer(p)
                    .map(|v| v.to_string().trim_matches('"').to_string())
                    .unwrap_or_default()
            };
            if matches!(s("/kind").as_str(), "response" | "seal") {
                continue;
            }
            println!(
                "#{:<2} {:<14} {:<15} method={:<12} tool={:<15} would_deny={:<5} alert={:<21} action={}",
                s("/seq"),
                s("/kind"),
                s("/transport"),
                s("/method"),
                s("/tool"),
                s("/would_deny"),
                s("/detail/alert"),
                s("/detail/action"),
            );
        }
        Ok(())
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    result
}
