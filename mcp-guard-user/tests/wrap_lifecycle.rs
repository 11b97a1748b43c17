//! `mcp-guard wrap`, the real binary around a fake server: the server's life mirrored by the
//! shim (exit status, signals in both directions, end of input, escalation, death of either
//! side), what the server inherits (fds, stderr), and what the client sees on stdout.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

fn session_end(shim: &Shim) -> Value {
    shim.audit_records()
        .into_iter()
        .find(|r| r["kind"] == "session_end")
        .unwrap_or_else(|| panic!("no session_end record: {:#?}", shim.audit_records()))
}

/// The pids of the direct children of `pid`.
fn children(pid: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Live (non-zombie) processes in process group `pgid`.
fn live_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp ...
        if f.len() > 2 && f[2].parse::<i32>().ok() == Some(pgid) && !matches!(f[0], "Z" | "X") {
            out.push(pid);
        }
    }
    out
}

#[test]
fn the_servers_exit_code_becomes_the_shims() {
    let mut shim = Shim::spawn_default();
    shim.ping(1);
    shim.send_line(&request("2", "exit", Some(r#"{"code":3}"#)));
    assert_eq!(shim.exit_code(), 3);
    let end = session_end(&shim);
    assert_eq!(end["detail"]["exit_code"], 3, "{end}");
    let recs = shim.audit_records();
    assert_eq!(
        (recs[0]["kind"].as_str(), recs[1]["kind"].as_str()),
        (Some("policy_loaded"), Some("session_start")),
        "{recs:#?}"
    );
    shim.verify_audit();
}

#[test]
fn the_exit_code_of_a_server_that_exits_at_once_becomes_the_shims() {
    let cmd = vec![
        OsString::from("/bin/sh"),
        fixture("exit_with.sh").into(),
        "3".into(),
    ];
    let mut shim = Builder::new().command(cmd).spawn();
    assert_eq!(shim.exit_code(), 3);
    assert_eq!(shim.read_to_eof(), b"");
    assert!(
        String::from_utf8_lossy(&shim.stderr_to_eof()).contains("exit_with.sh: exiting with 3")
    );
    shim.verify_audit();
}

#[test]
fn the_exit_code_at_end_of_input_becomes_the_shims() {
    let mut shim = Builder::new().server_args(&["--exit-code", "5"]).spawn();
    shim.ping(1);
    shim.close_stdin();
    assert_eq!(shim.exit_code(), 5);
}

#[test]
fn a_server_killed_by_sigkill_makes_the_shim_exit_137() {
    let mut shim = Shim::spawn_default();
    shim.ping(1);
    shim.send_line(&request("2", "kill_self", Some(r#"{"signal":9}"#)));
    assert_eq!(shim.exit_code(), 137);
    let end = session_end(&shim);
    assert_eq!(end["detail"]["signal"], 9, "{end}");
    shim.verify_audit();
}

#[test]
fn a_server_killed_by_sigterm_makes_the_shim_exit_143() {
    let mut shim = Shim::spawn_default();
    shim.ping(1);
    shim.send_line(&request("2", "kill_self", Some(r#"{"signal":15}"#)));
    assert_eq!(shim.exit_code(), 143);
}

/// Sends `sig` to the shim (only to its pid) and checks the server trapped it.
fn signal_reaches_server(sig: Signal) {
    let mut shim = Builder::new()
        .server_args(&["--trap", "{dir}/trapped"])
        .spawn();
    // The answer proves the server has installed its handlers and the shim its own.
    shim.ping(1);
    shim.signal(sig);
    let code = shim.exit_code();
    let trapped = std::fs::read_to_string(shim.path("trapped")).unwrap_or_default();
    assert_eq!(
        trapped.trim(),
        format!("{sig:?}"),
        "the server did not see {sig:?}"
    );
    assert_eq!(
        code,
        100 + sig as i32,
        "the shim must exit as its server did"
    );
}

#[test]
fn sigterm_to_the_shim_reaches_the_server() {
    signal_reaches_server(Signal::SIGTERM);
}

#[test]
fn sigint_to_the_shim_reaches_the_server() {
    signal_reaches_server(Signal::SIGINT);
}

#[test]
fn sighup_to_the_shim_reaches_the_server() {
    signal_reaches_server(Signal::SIGHUP);
}

#[test]
fn closing_stdin_closes_the_servers_stdin_and_the_shim_exits_0() {
    // A grace period no test outlives: a shim that waited for it would never exit here.
    let mut shim = Builder::new()
        .shim_args(&["--shutdown-grace-ms", "3600000"])
        .server_args(&["--eof-file", "{dir}/eof", "--trap", "{dir}/trapped"])
        .spawn();
    shim.ping(1);
    shim.close_stdin();
    assert_eq!(shim.wait_within(DEADLINE).code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(shim.path("eof")).unwrap_or_default(),
        "eof",
        "the server never saw EOF"
    );
    assert!(
        !shim.path("trapped").exists(),
        "the server was signalled although it exited on EOF"
    );
    assert_eq!(shim.read_to_eof(), b"");
    assert_eq!(session_end(&shim)["detail"]["exit_code"], 0);
    shim.verify_audit();
}

#[test]
fn a_server_ignoring_eof_gets_sigterm_after_the_grace_period() {
    let mut shim = Builder::new()
        .shim_args(&["--shutdown-grace-ms", "200"])
        .server_args(&["--ignore-eof", "--trap", "{dir}/trapped"])
        .spawn();
    shim.ping(1);
    let t = Instant::now();
    shim.close_stdin();
    let code = shim.exit_code();
    let took = t.elapsed();
    assert_eq!(
        std::fs::read_to_string(shim.path("trapped"))
            .unwrap_or_default()
            .trim(),
        "SIGTERM"
    );
    assert_eq!(code, 100 + 15);
    assert!(
        took >= Duration::from_millis(190),
        "SIGTERM came before the grace period: {took:?}"
    );
}

#[test]
fn a_server_ignoring_eof_and_sigterm_gets_sigkill_after_both_grace_periods() {
    let mut shim = Builder::new()
        .shim_args(&["--shutdown-grace-ms", "200"])
        .server_args(&["--ignore-eof", "--ignore-signals"])
        .spawn();
    shim.ping(1);
    let server = shim.server_pid();
    let t = Instant::now();
    shim.close_stdin();
    let code = shim.wait_within(Duration::from_secs(10)).code();
    let took = t.elapsed();
    assert_eq!(code, Some(137), "the shim must report the server's SIGKILL");
    assert!(
        took >= Duration::from_millis(390),
        "SIGKILL came before two grace periods: {took:?}"
    );
    assert!(
        wait_gone(server, DEADLINE),
        "the server {server} is still running"
    );
}

#[test]
fn requests_in_flight_when_the_server_dies_get_32084() {
    let mut shim = Shim::spawn_default();
    shim.send_line(&request("1", "hang", None));
    shim.send_line(&request(r#""two""#, "hang", None));
    shim.send_line(&request("-3.5", "hang", None));
    shim.ping(4);
    shim.send_line(&request("5", "kill_self", Some(r#"{"signal":9}"#)));
    let mut ids = BTreeSet::new();
    for _ in 0..4 {
        let line = shim.read_line();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(error_code(&v), -32084, "{v}");
        ids.insert(raw_id(&line));
    }
    let want: BTreeSet<String> = ["1", r#""two""#, "-3.5", "5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(ids, want);
    assert_eq!(shim.read_to_eof(), b"", "nothing may follow the errors");
    assert_eq!(shim.exit_code(), 137);
    let abandoned: Vec<_> = shim
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["kind"] == "response"
                && r["decision"] == "deny"
                && r["direction"] == "server_to_client"
        })
        .collect();
    assert_eq!(abandoned.len(), 4, "{abandoned:#?}");
    shim.verify_audit();
}

#[test]
fn a_request_sent_after_the_server_died_gets_32084() {
    let mut shim = Builder::new().server_args(&["--ignore-eof"]).spawn();
    let server = shim.server_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), Signal::SIGSTOP).unwrap();
    // Queued while the server is stopped; then it dies without reading it.
    shim.send_line(&tool_call("9", "late"));
    std::thread::sleep(Duration::from_millis(100));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), Signal::SIGKILL).unwrap();
    let line = shim.read_line();
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        (raw_id(&line).as_str(), error_code(&v)),
        ("9", -32084),
        "{v}"
    );
    assert_eq!(shim.exit_code(), 137);
}

#[test]
fn the_server_cannot_outlive_a_sigkilled_shim() {
    let mut shim = Builder::new()
        .server_args(&["--ignore-eof", "--ignore-signals"])
        .spawn();
    let server = shim.server_pid();
    assert!(!process_gone(server));
    shim.signal(Signal::SIGKILL);
    let status = shim.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        wait_gone(server, DEADLINE),
        "server {server} outlived its SIGKILLed shim"
    );
}

/// Not in the contract as written, but what "process group ... escalation reaches its
/// children too" suggests: after a SIGKILLed shim, the server's own children stay behind,
/// since only the server has a parent-death signal. See the report.
#[test]
#[ignore = "known limitation: children of the server outlive a SIGKILLed shim (see report)"]
fn the_servers_children_cannot_outlive_a_sigkilled_shim() {
    let mut shim = Builder::new().spawn();
    let v = shim.call("1", "spawn_child", None);
    let grandchild = v["result"]["pid"].as_i64().unwrap() as i32;
    shim.signal(Signal::SIGKILL);
    shim.wait();
    let gone = wait_gone(grandchild, Duration::from_secs(3));
    if !gone {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(grandchild), Signal::SIGKILL);
    }
    assert!(
        gone,
        "the server's child {grandchild} outlived the SIGKILLed shim"
    );
}

#[test]
fn a_command_that_cannot_start_exits_127_with_a_message_and_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\nexit 0\n").unwrap();
    let cases: Vec<OsString> = vec![
        "/nonexistent/mcp-server".into(),
        not_exec.into_os_string(),
        dir.path().as_os_str().to_owned(),
    ];
    for cmd in cases {
        let mut shim = Builder::new()
            .command(vec![cmd.clone(), "--flag".into()])
            .spawn();
        assert_eq!(shim.exit_code(), 127, "{cmd:?}");
        assert_eq!(shim.read_to_eof(), b"", "{cmd:?}: stdout must stay empty");
        let err = String::from_utf8_lossy(&shim.stderr_to_eof()).into_owned();
        assert!(
            err.contains("cannot start") && err.contains(&*cmd.to_string_lossy()),
            "{cmd:?}: unclear message on stderr: {err:?}"
        );
    }
}

#[test]
fn no_children_are_left_after_the_shim_exits() {
    let mut shim = Shim::spawn_default();
    let v = shim.call("1", "spawn_child", None);
    let grandchild = v["result"]["pid"].as_i64().unwrap() as i32;
    let server = shim.server_pid();
    // While running, the shim's only child is the server (no helper processes, no zombies).
    assert_eq!(children(shim.pid()), BTreeSet::from([server]));
    shim.close_stdin();
    assert_eq!(shim.exit_code(), 0);
    assert!(wait_gone(server, DEADLINE), "server {server} still running");
    let gone = wait_gone(grandchild, DEADLINE);
    if !gone {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(grandchild), Signal::SIGKILL);
    }
    assert!(gone, "the server's child {grandchild} outlived the session");
    assert_eq!(
        live_in_group(server),
        Vec::<i32>::new(),
        "processes left in the server's group"
    );
}

#[test]
fn the_server_inherits_no_fds_but_stdin_stdout_stderr() {
    // The shim starts with 0, 1 and 2 only, so any other fd in the server is the shim's.
    let mut shim = Builder::new().clean_fds().spawn();
    let v = shim.call("1", "fds", None);
    let shim_fds = std::fs::read_dir(format!("/proc/{}/fd", shim.pid()))
        .unwrap()
        .count();
    assert!(
        shim_fds > 5,
        "the shim has fds of its own (audit log, pipes), or this test means nothing"
    );
    let fds = v["result"]["fds"]
        .as_object()
        .unwrap_or_else(|| panic!("{v}"));
    let server = shim.server_pid();
    let mut extra = Vec::new();
    for (fd, target) in fds {
        let target = target.as_str().unwrap();
        match fd.as_str() {
            "0" | "1" | "2" => {}
            // The directory python lists to answer, and its own log of what it received.
            _ if target == format!("/proc/{server}/fd") => {}
            _ if std::path::Path::new(target) == shim.log => {}
            _ => extra.push(format!("{fd} -> {target}")),
        }
    }
    assert!(
        extra.is_empty(),
        "fds leaked into the server: {extra:?} (all: {fds:?})"
    );
    let shim_fd = |n: u32| std::fs::read_link(format!("/proc/{}/fd/{n}", shim.pid())).unwrap();
    // The server talks to the shim over its own pipes, not to the client directly.
    assert!(fds["0"].as_str().unwrap().starts_with("pipe:"), "{fds:?}");
    assert!(fds["1"].as_str().unwrap().starts_with("pipe:"), "{fds:?}");
    assert_ne!(
        fds["0"].as_str().unwrap(),
        shim_fd(0).to_string_lossy(),
        "the server got the client's stdin"
    );
    assert_ne!(
        fds["1"].as_str().unwrap(),
        shim_fd(1).to_string_lossy(),
        "the server got the client's stdout"
    );
    assert_eq!(
        fds["2"].as_str().unwrap(),
        shim_fd(2).to_string_lossy(),
        "the server's stderr is the shim's"
    );
}

#[test]
fn the_servers_stderr_passes_through_byte_for_byte() {
    let mut shim = Builder::new().env("MCP_GUARD_LOG", "off").spawn();
    let mut noise = b"plain line\ncrlf line\r\n\xff\xfe invalid utf-8 \x00 nul\n".to_vec();
    noise.extend_from_slice(br#"{"jsonrpc":"2.0","id":1,"result":{"looks":"like a message"}}"#);
    noise.extend_from_slice(b"\n\x1b[31mcolour\x1b[0m and no final newline");
    let file = shim.path("noise");
    std::fs::write(&file, &noise).unwrap();
    let v = shim.call("5", "emit_err", Some(&format!(r#"{{"path":{:?}}}"#, file)));
    assert_eq!(v["id"], 5);
    shim.close_stdin();
    assert_eq!(shim.exit_code(), 0);
    let out = shim.read_to_eof();
    assert!(!contains(&out, b"looks"), "server stderr leaked to stdout");
    let err = shim.stderr_to_eof();
    assert!(
        err == noise,
        "stderr differs: got {:?}",
        String::from_utf8_lossy(&err)
    );
}

#[test]
fn the_shims_stdout_carries_nothing_but_mcp_messages() {
    // Maximum logging: none of it may reach stdout.
    let mut shim = Builder::new()
        .env("MCP_GUARD_LOG", "trace")
        .policy("[[rule]]\nid = \"nope\"\ntool = \"danger\"\naction = \"deny\"\n")
        .spawn();
    let noise = shim.path("noise");
    std::fs::write(&noise, b"server chatter on stderr\n").unwrap();
    let chatter = shim.path("chatter");
    std::fs::write(
        &chatter,
        b"Server started!\n\n{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{}}\n",
    )
    .unwrap();
    let mut input = String::new();
    input.push_str(&request(
        "1",
        "initialize",
        Some(r#"{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}"#),
    ));
    input.push_str("\n{oops\n[]\n42\n");
    input.push_str(&tool_call("2", "danger"));
    input.push('\n');
    input.push_str(&request(
        "3",
        "emit_err",
        Some(&format!(r#"{{"path":{:?}}}"#, noise)),
    ));
    input.push('\n');
    input.push_str(&request(
        "5",
        "emit",
        Some(&format!(r#"{{"path":{:?}}}"#, chatter)),
    ));
    input.push('\n');
    input.push_str(&request("6", "hang", None));
    input.push('\n');
    shim.send(input.as_bytes());
    // Wait until everything before `hang` is answered, then end the session.
    let mut lines = Vec::new();
    while lines.len() < 7 {
        lines.push(shim.read_line());
    }
    shim.close_stdin();
    assert_eq!(shim.exit_code(), 0);
    let rest = shim.read_to_eof();
    assert!(
        rest.is_empty() || rest.ends_with(b"\n"),
        "stdout ends mid-line: {:?}",
        String::from_utf8_lossy(&rest)
    );
    lines.extend(rest.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
    for line in &lines {
        let v: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "not JSON on stdout ({e}): {:?}",
                String::from_utf8_lossy(line)
            )
        });
        let msgs = match &v {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for m in msgs {
            assert_eq!(m["jsonrpc"], "2.0", "not a JSON-RPC message on stdout: {m}");
            assert!(
                m.get("result").is_some() != m.get("error").is_some(),
                "not a response: {m}"
            );
        }
    }
    // initialize, 3 malformed, denied, emit_err, emit; then hang's -32084 at the end.
    assert_eq!(
        lines.len(),
        8,
        "{:?}",
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(l))
            .collect::<Vec<_>>()
    );
    assert!(String::from_utf8_lossy(&shim.stderr_to_eof()).contains("server chatter on stderr"));
}

#[test]
fn the_session_ends_when_the_client_stops_reading() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("wrap")
        .arg("--audit")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--");
    cmd.args(fake_server(&[
        "--eof-file",
        &dir.path().join("eof").to_string_lossy(),
    ]));
    cmd.env_remove("MCP_GUARD_POLICY")
        .env("XDG_CONFIG_HOME", dir.path());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    // The answer cannot be delivered: the shim must treat that like the client leaving.
    stdin
        .write_all(format!("{}\n", request("1", "ping", None)).as_bytes())
        .unwrap();
    let until = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the shim kept running after its client stopped reading");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("eof")).unwrap_or_default(),
        "eof"
    );
    verify_audit(&dir.path().join("audit.jsonl"));
}

#[test]
fn the_shim_refuses_to_run_when_the_audit_log_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let audit = file.join("audit.jsonl");
    let marker = dir.path().join("started");
    let mut shim = Builder::new()
        .no_audit()
        .shim_args(&["--audit", &audit.to_string_lossy()])
        .command(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("touch {}", marker.display()).into(),
        ])
        .spawn();
    shim.close_stdin();
    let code = shim.exit_code();
    assert_ne!(code, 0);
    assert_eq!(shim.read_to_eof(), b"");
    assert!(!marker.exists(), "the server ran without an audit log");
    assert!(
        shim.stderr_text().contains("audit"),
        "{}",
        shim.stderr_text()
    );
}

#[test]
fn a_request_whose_audit_record_cannot_be_written_gets_32085_and_is_not_forwarded() {
    // Learn the size of the records a session starts with (policy_loaded, session_start) on
    // this machine, then allow only that much.
    let mut probe = Shim::spawn_default();
    probe.ping(1);
    probe.close_stdin();
    probe.wait();
    let start_len: u64 = std::fs::read_to_string(&probe.audit)
        .unwrap()
        .lines()
        .take(2)
        .map(|l| l.len() as u64 + 1)
        .sum();

    let mut shim = Builder::new().file_size_limit(start_len + 200).spawn();
    let line = {
        shim.send_line(&tool_call("1", "unrecorded"));
        shim.read_line()
    };
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        (raw_id(&line).as_str(), error_code(&v)),
        ("1", -32085),
        "{v}"
    );
    // The server has read and logged all it was sent once it has exited on EOF.
    shim.close_stdin();
    shim.wait();
    assert!(
        !shim.server_log_contains(b"unrecorded"),
        "forwarded without its audit record"
    );
    let recs = shim.audit_records();
    assert_eq!(recs.len(), 2, "{recs:#?}");
    shim.verify_audit();
}
