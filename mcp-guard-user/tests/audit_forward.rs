//! `mcp-guard audit forward` against real receivers: sockets this test listens on (UDP, unix
//! datagram and stream, TCP) and Debian's rsyslogd over TCP, stopped and restarted
//! mid-stream. The logs come from real `mcp-guard wrap` sessions around the fake server.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{bin, fixture, python};
use serde_json::Value;

const SD: &[u8] = b"[mcpguard@32473 seq=\"";

/// Runs one `mcp-guard wrap` session that makes `calls` tool calls (two records each, plus
/// three for the session), `per_tick` calls every `tick` when paced.
fn wrap_session(log: &Path, calls: usize, pace: Option<(usize, Duration)>) {
    let mut shim = Command::new(bin())
        .args([
            "wrap",
            "--name",
            "filesystem",
            "--durability",
            "page-cache",
            "--audit",
        ])
        .arg(log)
        .arg("--")
        .arg(python())
        .arg(fixture("fake_server.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env(
            "MCP_GUARD_POLICY",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/demo.toml"),
        )
        .spawn()
        .unwrap();
    let mut out = shim.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut sink = Vec::new();
        out.read_to_end(&mut sink).unwrap();
    });
    let mut stdin = shim.stdin.take().unwrap();
    for i in 0..calls {
        let tool = if i % 7 == 3 {
            "write_file"
        } else {
            "read_text_file"
        };
        let line = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\",\"params\":{{\"name\":\"{tool}\",\"arguments\":{{\"path\":\"f{i}\"}}}}}}\n"
        );
        stdin.write_all(line.as_bytes()).unwrap();
        if let Some((per_tick, tick)) = pace
            && i % per_tick == per_tick - 1
        {
            thread::sleep(tick);
        }
    }
    drop(stdin);
    reader.join().unwrap();
    assert!(shim.wait().unwrap().success());
}

/// The log's lines by seq.
fn log_lines(path: &Path) -> BTreeMap<u64, Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            (
                serde_json::from_slice::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap(),
                l.to_vec(),
            )
        })
        .collect()
}

/// The seq in a message's structured data and the payload after it.
fn parse(msg: &[u8]) -> (u64, &[u8]) {
    let text = String::from_utf8_lossy(msg);
    assert!(
        msg.starts_with(b"<") && text.contains(">1 "),
        "not an RFC 5424 message: {text:.200}"
    );
    let at = memchr::memmem::find(msg, SD).unwrap_or_else(|| panic!("no seq: {text:.300}"));
    let rest = &msg[at + SD.len()..];
    let end = rest.iter().position(|&b| b == b'"').unwrap();
    let seq = std::str::from_utf8(&rest[..end]).unwrap().parse().unwrap();
    let sd_end = memchr::memmem::find(rest, b"\"] ").unwrap();
    (seq, &rest[sd_end + 3..])
}

/// Asserts that the messages carry every record of `log`, each payload the record's line
/// byte for byte, each at least once and at most `max_copies` times.
fn assert_delivered(msgs: &[Vec<u8>], log: &Path, max_copies: usize) {
    let lines = log_lines(log);
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    for m in msgs {
        let (seq, payload) = parse(m);
        let line = lines
            .get(&seq)
            .unwrap_or_else(|| panic!("seq {seq} is not in the log"));
        assert_eq!(
            payload,
            &line[..],
            "payload of seq {seq} differs from the log line"
        );
        *copies.entry(seq).or_default() += 1;
    }
    let missing: Vec<_> = lines.keys().filter(|s| !copies.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records never arrived: {missing:?}",
        missing.len(),
        lines.len()
    );
    let over: Vec<_> = copies.iter().filter(|&(_, &n)| n > max_copies).collect();
    assert!(
        over.is_empty(),
        "records arrived more than {max_copies} times: {over:?}"
    );
}

fn forward(args: &[&str], log: &Path) -> std::process::Output {
    Command::new(bin())
        .args(["audit", "forward"])
        .args(args)
        .arg(log)
        .output()
        .unwrap()
}

fn spawn_forward(args: &[&str], log: &Path) -> KillOnDrop {
    let child = Command::new(bin())
        .args(["audit", "forward", "--follow", "--poll-ms", "50"])
        .args(args)
        .arg(log)
        .env("MCP_GUARD_LOG", "info")
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    KillOnDrop(Some(child))
}

/// A child process that is killed if the test ends before it is stopped.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &mut self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Waits until `f` holds, failing after `within`.
fn wait_for(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a stream collector received, and how many of its connections are still open.
struct Received {
    msgs: Mutex<Vec<Vec<u8>>>,
    open: std::sync::atomic::AtomicUsize,
}

impl Received {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.msgs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every connection accepted so far has been closed by its sender: nothing more is
    /// on its way.
    fn all_closed(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// Accepts connections on `listener` and collects the octet-counted messages of all of them.
fn collect_stream<S: Read + Send + 'static>(
    mut accept: impl FnMut() -> Option<S> + Send + 'static,
) -> Arc<Received> {
    use std::sync::atomic::Ordering::SeqCst;
    let received = Arc::new(Received {
        msgs: Mutex::new(Vec::new()),
        open: Default::default(),
    });
    let out = received.clone();
    thread::spawn(move || {
        while let Some(mut conn) = accept() {
            let out = out.clone();
            out.open.fetch_add(1, SeqCst);
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65536];
                loop {
                    let n = conn.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // Take every complete `LEN SP MSG` frame off the front.
                    while let Some(sp) = buf.iter().position(|&b| b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        out.lock().push(buf[sp + 1..sp + 1 + len].to_vec());
                        buf.drain(..sp + 1 + len);
                    }
                }
                out.open.fetch_sub(1, SeqCst);
            });
        }
    });
    received
}

fn tcp_collector() -> (u16, Arc<Received>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (
        port,
        collect_stream(move || l.accept().ok().map(|(s, _)| s)),
    )
}

#[test]
fn udp_sends_each_record_as_one_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 20, None);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = format!("udp://{}", sock.local_addr().unwrap());
    let out = forward(&["--to", &to, "--settle-ms", "100"], &log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; 65536];
    while msgs.len() < log_lines(&log).len() {
        let n = sock.recv(&mut buf).expect("datagram");
        msgs.push(buf[..n].to_vec());
    }
    assert_delivered(&msgs, &log, 1);
}

#[test]
fn unix_datagram_socket_gets_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 30, None);
    let sock_path = dir.path().join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let want = log_lines(&log).len();
    let reader = thread::spawn(move || {
        let mut msgs = Vec::new();
        let mut buf = vec![0u8; 65536];
        while msgs.len() < want {
            let n = sock.recv(&mut buf).expect("datagram");
            msgs.push(buf[..n].to_vec());
        }
        msgs
    });
    let to = format!("unix:{}", sock_path.display());
    let out = forward(&["--to", &to, "--settle-ms", "100"], &log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_delivered(&reader.join().unwrap(), &log, 1);
}

#[test]
fn unix_stream_socket_gets_octet_counted_frames() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 30, None);
    let sock_path = dir.path().join("stream.sock");
    let l = UnixListener::bind(&sock_path).unwrap();
    let msgs = collect_stream(move || l.accept().ok().map(|(s, _)| s));
    let to = format!("unix:{}", sock_path.display());
    let out = forward(&["--to", &to, "--settle-ms", "100"], &log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = log_lines(&log).len();
    wait_for(Duration::from_secs(5), "all frames", || {
        msgs.lock().len() >= want
    });
    assert_delivered(&msgs.lock(), &log, 1);
}

#[test]
fn a_second_run_sends_only_what_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 10, None);
    let first = log_lines(&log).len();
    let (port, msgs) = tcp_collector();
    let to = format!("tcp://127.0.0.1:{port}");
    assert!(
        forward(&["--to", &to, "--settle-ms", "100"], &log)
            .status
            .success()
    );
    wrap_session(&log, 10, None);
    assert!(
        forward(&["--to", &to, "--settle-ms", "100"], &log)
            .status
            .success()
    );
    let total = log_lines(&log).len();
    // Both runs have exited: once their connections are closed, all they sent is here.
    wait_for(
        Duration::from_secs(5),
        "all frames, every connection closed",
        || msgs.lock().len() >= total && msgs.all_closed(),
    );
    let got = msgs.lock();
    assert_eq!(
        got.len(),
        total,
        "a record was sent twice: {first} then {}",
        got.len() - first
    );
    assert_delivered(&got, &log, 1);
    let cursor: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("audit.jsonl.cursor")).unwrap())
            .unwrap();
    assert_eq!(
        cursor["seq"].as_u64(),
        log_lines(&log).keys().last().copied()
    );
}

#[test]
fn unreachable_siem_fails_and_keeps_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 5, None);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to = format!("tcp://127.0.0.1:{port}");
    let cursor = dir.path().join("my.cursor");
    let args = [
        "--to",
        &to,
        "--settle-ms",
        "100",
        "--cursor",
        cursor.to_str().unwrap(),
    ];
    let out = forward(&args, &log);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    assert!(!cursor.exists());
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let msgs = collect_stream(move || l.accept().ok().map(|(s, _)| s));
    assert!(forward(&args, &log).status.success());
    let want = log_lines(&log).len();
    wait_for(Duration::from_secs(5), "all frames", || {
        msgs.lock().len() >= want
    });
    assert_delivered(&msgs.lock(), &log, 1);
}

#[test]
fn ocsf_payload_is_an_api_activity_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 8, None);
    let (port, msgs) = tcp_collector();
    let to = format!("tcp://127.0.0.1:{port}");
    let out = forward(
        &["--to", &to, "--format", "ocsf", "--settle-ms", "100"],
        &log,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = log_lines(&log);
    wait_for(Duration::from_secs(5), "all frames", || {
        msgs.lock().len() >= lines.len()
    });
    let mut denied = 0;
    for m in msgs.lock().iter() {
        let (seq, payload) = parse(m);
        let ev: Value = serde_json::from_slice(payload).unwrap();
        let rec: Value = serde_json::from_slice(&lines[&seq]).unwrap();
        assert_eq!(ev["class_uid"], 6003);
        assert_eq!(ev["metadata"]["sequence"], seq);
        assert_eq!(ev["metadata"]["uid"], rec["id"]);
        if rec["decision"] == "deny" {
            denied += 1;
            assert_eq!(ev["disposition_id"], 2);
            assert_eq!(ev["resources"][0]["name"], "write_file");
            assert_eq!(ev["api"]["service"]["name"], "filesystem");
            assert!(
                m.starts_with(b"<84>1 "),
                "a denial is a warning (authpriv.warning = 84)"
            );
        }
    }
    assert_eq!(denied, 1, "call 3 writes");
}

#[test]
fn follow_finishes_a_rotated_log_then_reads_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 10, None);
    let (port, msgs) = tcp_collector();
    let to = format!("tcp://127.0.0.1:{port}");
    let mut fwd = spawn_forward(&["--to", &to, "--settle-ms", "200"], &log);
    let first = log_lines(&log);
    wait_for(Duration::from_secs(10), "the first file", || {
        msgs.lock().len() >= first.len()
    });
    // A session still writing to the old file when it is renamed away, then a new file.
    let rotated = dir.path().join("audit.jsonl.1-x");
    std::fs::rename(&log, &rotated).unwrap();
    wrap_session(&rotated, 5, None);
    wrap_session(&log, 10, None);
    let (old, new) = (log_lines(&rotated), log_lines(&log));
    // The new file starts its own chain here, so records are told apart by id.
    let ids = |lines: &BTreeMap<u64, Vec<u8>>| -> Vec<String> {
        lines
            .values()
            .map(|l| {
                serde_json::from_slice::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let mut want: Vec<String> = ids(&old).into_iter().chain(ids(&new)).collect();
    wait_for(Duration::from_secs(10), "both files", || {
        msgs.lock().len() >= want.len()
    });
    // Stopped (signal waits for it), and its connection closed: anything it sent twice is
    // here now.
    fwd.signal(nix::sys::signal::Signal::SIGTERM);
    wait_for(Duration::from_secs(10), "the connection closed", || {
        msgs.all_closed()
    });
    let mut got: Vec<String> = msgs
        .lock()
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(parse(m).1).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Sent in order: the old file to its end, then the new one.
    assert_eq!(got, want);
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// Skips a test that needs something this machine lacks; under CI (or
/// MCP_GUARD_REQUIRE_KERNEL=1) a skip is a failure.
fn skip(why: &str) {
    if std::env::var_os("CI").is_some()
        || std::env::var("MCP_GUARD_REQUIRE_KERNEL").as_deref() == Ok("1")
    {
        panic!("cannot run: {why} (install it with `cargo xtask setup`)");
    }
    println!("skipping: {why}");
}

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// Debian's rsyslogd on 127.0.0.1:`port` (imtcp), writing each message's raw form as one
/// line to `out`; no /dev/log, its own pid file and work directory in `dir`.
fn start_rsyslog(dir: &Path, port: u16) -> KillOnDrop {
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}" maxMessageSize="1m")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
input(type="imtcp" address="127.0.0.1" port="{port}")
if $app-name == "mcp-guard" then {{
  action(type="omfile" file="{out}" template="raw" ioBufferSize="1m" flushOnTXEnd="on")
}}
"#,
            work = work.display(),
            out = dir.join("received.log").display(),
        ),
    )
    .unwrap();
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("rsyslogd.stderr"))
        .unwrap();
    let child = Command::new(RSYSLOGD)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(15), "rsyslogd to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    KillOnDrop(Some(child))
}

fn received(dir: &Path) -> Vec<Vec<u8>> {
    match std::fs::read(dir.join("received.log")) {
        Ok(b) => b
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn rsyslog_gets_every_record_across_a_stop_and_a_kill() {
    if !Path::new(RSYSLOGD).exists() {
        return skip("rsyslogd is not installed (Debian package rsyslog)");
    }
    if !nix::unistd::geteuid().is_root() {
        return skip("the rsyslog test runs as root");
    }
    let dir = tempfile::tempdir().unwrap();
    let rsyslog_dir = dir.path().join("rsyslog");
    std::fs::create_dir_all(&rsyslog_dir).unwrap();
    let log = dir.path().join("audit.jsonl");
    // About 1000 records before the forwarder starts ...
    wrap_session(&log, 500, None);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut rsyslog = start_rsyslog(&rsyslog_dir, port);
    let mut fwd = spawn_forward(&["--to", &format!("tcp://127.0.0.1:{port}")], &log);
    // ... and about 1600 more while it runs, over about 8 seconds.
    let writer = {
        let log = log.clone();
        thread::spawn(move || wrap_session(&log, 800, Some((5, Duration::from_millis(50)))))
    };
    let count = |dir: &PathBuf| received(dir).len();
    wait_for(Duration::from_secs(20), "records to reach rsyslog", || {
        count(&rsyslog_dir) >= 1100
    });
    // A clean stop mid-stream ...
    rsyslog.signal(nix::sys::signal::Signal::SIGTERM);
    let at_stop = count(&rsyslog_dir);
    thread::sleep(Duration::from_secs(1));
    rsyslog = start_rsyslog(&rsyslog_dir, port);
    wait_for(Duration::from_secs(20), "records after the restart", || {
        count(&rsyslog_dir) > at_stop + 50
    });
    // ... and, once that has settled, a kill.
    thread::sleep(Duration::from_millis(2500));
    assert!(
        !writer.is_finished(),
        "the log stopped growing before the kill; slow the writer down"
    );
    rsyslog.signal(nix::sys::signal::Signal::SIGKILL);
    thread::sleep(Duration::from_secs(1));
    rsyslog = start_rsyslog(&rsyslog_dir, port);
    writer.join().unwrap();
    let want = log_lines(&log);
    wait_for(Duration::from_secs(60), "every record at rsyslog", || {
        let got: std::collections::BTreeSet<u64> =
            received(&rsyslog_dir).iter().map(|m| parse(m).0).collect();
        got.len() >= want.len()
    });
    thread::sleep(Duration::from_millis(500));
    fwd.signal(nix::sys::signal::Signal::SIGTERM);
    rsyslog.signal(nix::sys::signal::Signal::SIGTERM);
    let (msgs, torn) = split_torn(received(&rsyslog_dir));
    println!(
        "{} records, {} messages at rsyslog, {} torn by the kill",
        want.len(),
        msgs.len(),
        torn.len()
    );
    assert!(want.len() > 2000);
    // rsyslogd writes its file in buffered chunks: killed, it may leave a message cut at
    // a chunk boundary, which the next rsyslogd's first message then continues on the
    // same line. That is the receiver's own write, torn by the kill: at most one, a
    // strict prefix of a record, and that record delivered whole as well.
    assert!(torn.len() <= 1, "more than one torn message: {torn:?}");
    let lines = log_lines(&log);
    for t in &torn {
        let (seq, payload) = parse(t);
        let line = &lines[&seq];
        assert!(
            payload.len() < line.len() && line.starts_with(payload),
            "seq {seq}: a torn message that is not a cut of its record"
        );
    }
    assert_delivered(&msgs, &log, 2);
}

/// Splits lines in which a second RFC 5424 message starts (`<PRI>1 ` after the first byte)
/// into the torn first part and the whole rest: (whole messages, torn ones).
fn split_torn(lines: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let header_at = |m: &[u8]| {
        (1..m.len()).find(|&i| {
            m[i] == b'<' && {
                let digits = m[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                (1..=3).contains(&digits) && m[i + 1 + digits..].starts_with(b">1 ")
            }
        })
    };
    let (mut whole, mut torn) = (Vec::new(), Vec::new());
    for mut m in lines {
        while let Some(i) = header_at(&m) {
            let rest = m.split_off(i);
            torn.push(m);
            m = rest;
        }
        whole.push(m);
    }
    (whole, torn)
}

/// The Python of the test peers (`cargo xtask` installs `tests/peers/requirements.txt`
/// into `.peers/venv`), if it has the `opentelemetry-proto` package.
fn peers_python() -> Option<PathBuf> {
    let python = std::env::var_os("MCP_GUARD_PEERS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers/venv/bin/python"));
    let ok = Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.proto.collector.logs.v1.logs_service_pb2",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// tests/peers/otlp_receiver.py on 127.0.0.1:`port`, appending what it decodes to
/// `dir/otlp.jsonl`; `dir/control` changes its answers.
struct Collector {
    python: PathBuf,
    dir: PathBuf,
    port: u16,
    prefix: String,
    /// Serving https, with its CA in `dir/tls/ca.pem`.
    tls: bool,
    proc: KillOnDrop,
}

impl Collector {
    fn start(python: &Path, dir: &Path, port: u16, prefix: &str) -> Collector {
        Collector::start_with(python, dir, port, prefix, false)
    }

    fn start_with(python: &Path, dir: &Path, port: u16, prefix: &str, tls: bool) -> Collector {
        let mut c = Collector {
            python: python.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
            prefix: prefix.to_string(),
            tls,
            proc: KillOnDrop(None),
        };
        c.restart();
        c
    }

    fn restart(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/otlp_receiver.py");
        let mut cmd = Command::new(&self.python);
        if self.tls {
            cmd.arg(&script).arg("--tls").arg(self.dir.join("tls"));
        } else {
            cmd.arg(&script);
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--prefix", &self.prefix])
            .arg("--out")
            .arg(self.dir.join("otlp.jsonl"))
            .arg("--control")
            .arg(self.dir.join("control"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = KillOnDrop(Some(child));
        let port = self.port;
        wait_for(
            Duration::from_secs(15),
            "the OTLP receiver to listen",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{}", self.port, self.prefix)
    }

    /// How the receiver answers from now on: `503 2`, `400`, `partial 3`, or "" (200).
    fn answer(&self, how: &str) {
        std::fs::write(self.dir.join("control"), how).unwrap();
    }

    /// The lines it wrote completely (one may be on its way), parsed or not.
    fn lines(&self) -> Vec<Result<Value, String>> {
        let text = std::fs::read_to_string(self.dir.join("otlp.jsonl")).unwrap_or_default();
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        whole
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).map_err(|_| l.to_string()))
            .collect()
    }

    /// What it received, of one signal (`log`, `span`, `request`, `refused`).
    fn got(&self, signal: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|v| v["signal"] == signal)
            .collect()
    }

    /// Lines a killed receiver left unfinished (it starts again on a line of its own): its
    /// own write, cut before it answered, so the batch was sent again.
    fn torn(&self) -> usize {
        self.lines().iter().filter(|l| l.is_err()).count()
    }

    /// The seqs of the log records received, each once.
    fn seqs(&self) -> std::collections::BTreeSet<u64> {
        self.got("log")
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect()
    }
}

/// Asserts that every record of `log` arrived as a log record, its body the line as
/// written, at most `max_copies` times; and a span for each `tools/call`, right.
fn assert_otlp_delivered(c: &Collector, log: &Path, max_copies: usize) {
    let lines = log_lines(log);
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    for l in c.got("log") {
        let seq = l["seq"].as_u64().unwrap();
        let line = lines
            .get(&seq)
            .unwrap_or_else(|| panic!("seq {seq} is not in the log"));
        assert_eq!(
            l["body"].as_str().unwrap().as_bytes(),
            &line[..],
            "body of seq {seq} differs from the log line"
        );
        let rec: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(l["attributes"]["mcp_guard.record.hash"], rec["hash"]);
        assert_eq!(l["resource"]["service.name"], "mcp-guard");
        *copies.entry(seq).or_default() += 1;
    }
    let missing: Vec<_> = lines.keys().filter(|s| !copies.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records never arrived: {missing:?}",
        missing.len(),
        lines.len()
    );
    let over: Vec<_> = copies.iter().filter(|&(_, &n)| n > max_copies).collect();
    assert!(
        over.is_empty(),
        "records arrived more than {max_copies} times: {over:?}"
    );

    // A span per tools/call: by request record id.
    let recs: Vec<Value> = lines
        .values()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let ns = |r: &Value| {
        let t = humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    };
    let mut spans: BTreeMap<String, Value> = BTreeMap::new();
    for s in c.got("span") {
        let id = s["attributes"]["mcp_guard.request.record_id"]
            .as_str()
            .unwrap()
            .to_string();
        if let Some(prev) = spans.get(&id) {
            assert_eq!(
                prev["span_id"], s["span_id"],
                "a re-sent span with other ids"
            );
        }
        spans.insert(id, s);
    }
    let mut calls = 0;
    for req in recs
        .iter()
        .filter(|r| r["kind"] == "request" && r["method"] == "tools/call")
    {
        calls += 1;
        let id = req["id"].as_str().unwrap();
        let span = spans
            .get(id)
            .unwrap_or_else(|| panic!("no span for the tools/call {id}"));
        let a = &span["attributes"];
        assert_eq!(a["mcp_guard.decision"], req["decision"], "{id}");
        assert_eq!(a["mcp_guard.rule"], req["rule"], "{id}");
        assert_eq!(a["gen_ai.tool.name"], req["tool"], "{id}");
        assert_eq!(a["mcp.session.id"], req["session"], "{id}");
        assert_eq!(a["user.id"], req["principal"]["uid"].to_string(), "{id}");
        assert_eq!(a["mcp_guard.server.name"], "filesystem", "{id}");
        assert_eq!(span["start_time_unix_nano"], ns(req), "{id}");
        if req["decision"] == "deny" {
            assert_eq!(span["status"]["code"], "STATUS_CODE_ERROR", "{id}");
            assert_eq!(span["end_time_unix_nano"], ns(req), "{id}");
        } else {
            let resp = recs
                .iter()
                .find(|r| r["kind"] == "response" && r["links"] == id)
                .unwrap_or_else(|| panic!("no response to {id} in the log"));
            assert_eq!(a["mcp_guard.request.seen"], true, "{id}");
            assert_eq!(span["end_time_unix_nano"], ns(resp), "{id}: end");
            assert_eq!(
                a["mcp_guard.latency_us"], resp["outcome"]["latency_us"],
                "{id}"
            );
        }
    }
    assert!(calls > 0, "the log has no tools/call");
    assert_eq!(spans.len(), calls, "spans that are no tools/call");
}

#[test]
fn otlp_collector_gets_every_record_and_span_across_restarts() {
    let Some(python) = peers_python() else {
        return skip("no .peers/venv with opentelemetry-proto (cargo xtask setup)");
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    // About 400 records before the forwarder starts ...
    wrap_session(&log, 200, None);
    let mut c = Collector::start(&python, dir.path(), free_port(), "");
    let args = ["--to", &c.url(), "--header", "authorization=Bearer t0k3n"];
    let mut fwd = spawn_forward(&args, &log);
    // ... and about 1000 more while it runs, over about 5 seconds.
    let writer = {
        let log = log.clone();
        thread::spawn(move || wrap_session(&log, 500, Some((5, Duration::from_millis(50)))))
    };
    wait_for(Duration::from_secs(20), "records at the receiver", || {
        c.seqs().len() >= 500
    });
    // The receiver is killed mid-stream, and comes back a second later ...
    c.proc.signal(nix::sys::signal::Signal::SIGKILL);
    let at_kill = c.seqs().len();
    thread::sleep(Duration::from_secs(1));
    c.restart();
    wait_for(Duration::from_secs(20), "records after the restart", || {
        c.seqs().len() > at_kill + 50
    });
    // ... then the forwarder itself is killed and started again (from its cursor).
    assert!(
        !writer.is_finished(),
        "the log stopped growing before the forwarder's kill; slow the writer down"
    );
    fwd.signal(nix::sys::signal::Signal::SIGKILL);
    fwd = spawn_forward(&args, &log);
    writer.join().unwrap();
    let want = log_lines(&log).len();
    wait_for(
        Duration::from_secs(60),
        "every record at the receiver",
        || c.seqs().len() >= want,
    );
    thread::sleep(Duration::from_millis(500));
    fwd.signal(nix::sys::signal::Signal::SIGTERM);
    println!(
        "{want} records, {} log records and {} spans received",
        c.got("log").len(),
        c.got("span").len()
    );
    assert!(want > 1200);
    assert!(c.torn() <= 1, "more lines torn than receivers killed");
    assert_otlp_delivered(&c, &log, 2);
    let requests = c.got("request");
    assert!(
        requests
            .iter()
            .all(|r| r["authorization"] == "Bearer t0k3n"),
        "a request without the --header"
    );
}

#[test]
fn otlp_refusals_skip_nothing_and_retry_after_is_honoured() {
    let Some(python) = peers_python() else {
        return skip("no .peers/venv with opentelemetry-proto (cargo xtask setup)");
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let cursor = dir.path().join("audit.jsonl.cursor");
    wrap_session(&log, 20, None);
    // A base path, as OTEL_EXPORTER_OTLP_ENDPOINT has it.
    let c = Collector::start(&python, dir.path(), free_port(), "/otlp");
    let url = c.url() + "/";

    // 400: the run fails naming the status and the body, and commits nothing.
    c.answer("400");
    let out = forward(&["--to", &url], &log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("400") && stderr.contains("told to refuse"),
        "{stderr}"
    );
    assert!(c.got("log").is_empty());
    assert!(!cursor.exists(), "a cursor after a refusal");

    // OCSF is a syslog payload: asked of OTLP, it is an error, not ignored.
    let out = forward(&["--to", &url, "--format", "ocsf"], &log);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format ocsf is for syslog"));

    // A redirect is not followed (a POST redirected could come back a GET): a refusal.
    c.answer("307");
    let out = forward(&["--to", &url], &log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the batch with 307"), "{stderr}");
    assert!(!cursor.exists(), "a cursor after a redirect");

    // 503 with Retry-After: 2 s: with --follow, retried no sooner than asked.
    c.answer("503 2");
    let out = forward(&["--to", &url], &log);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
    let refused = c.got("refused").len();
    let mut fwd = spawn_forward(&["--to", &url], &log);
    thread::sleep(Duration::from_millis(3000));
    let attempts = c.got("refused").len() - refused;
    // 0 s and 2 s; without Retry-After the back-off (0.1, 0.2, 0.4, 0.8 s ...) makes 5.
    assert!(
        (1..=2).contains(&attempts),
        "{attempts} attempts in 3 s against Retry-After: 2"
    );
    assert!(c.got("log").is_empty());

    // A 400 under --follow is retried too; once the receiver takes them, all arrive.
    c.answer("400");
    thread::sleep(Duration::from_millis(2500));
    assert!(c.got("log").is_empty());
    c.answer("");
    let want = log_lines(&log).len();
    wait_for(
        Duration::from_secs(20),
        "every record after the refusals",
        || c.seqs().len() >= want,
    );
    thread::sleep(Duration::from_millis(300));
    fwd.signal(nix::sys::signal::Signal::SIGTERM);
    assert_otlp_delivered(&c, &log, 1);

    // Partial success: the batch is taken (the cursor moves), with a warning.
    wrap_session(&log, 3, None);
    c.answer("partial 2");
    let out = forward(&["--to", &url], &log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("rejected 2 log records"), "{stderr}");
    assert_otlp_delivered(&c, &log, 1);
    // Nothing is left to send.
    let before = c.got("request").len();
    let out = forward(&["--to", &url], &log);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(c.got("request").len(), before);
}

#[test]
fn otlp_span_of_a_call_answered_after_the_cursor_keeps_its_request() {
    use std::os::unix::fs::MetadataExt;
    let Some(python) = peers_python() else {
        return skip("no .peers/venv with opentelemetry-proto (cargo xtask setup)");
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 10, None);
    // An earlier run committed everything up to an allowed tools/call request, whose
    // response is still to be sent.
    let text = std::fs::read(&log).unwrap();
    let mut offset = 0;
    let mut req = Value::Null;
    for line in text.split_inclusive(|&b| b == b'\n') {
        offset += line.len();
        let rec: Value = serde_json::from_slice(line).unwrap();
        if rec["kind"] == "request" && rec["method"] == "tools/call" && rec["decision"] == "allow" {
            req = rec;
            break;
        }
    }
    let meta = std::fs::metadata(&log).unwrap();
    let cursor = serde_json::json!({
        "v": 1, "dev": meta.dev(), "ino": meta.ino(), "offset": offset,
        "seq": req["seq"], "hash": req["hash"],
    });
    std::fs::write(dir.path().join("audit.jsonl.cursor"), cursor.to_string()).unwrap();
    let c = Collector::start(&python, dir.path(), free_port(), "");
    let out = forward(&["--to", &c.url()], &log);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.seqs().iter().all(|&s| s > req["seq"].as_u64().unwrap()),
        "records before the cursor sent again"
    );
    let id = req["id"].as_str().unwrap();
    let span = c
        .got("span")
        .into_iter()
        .find(|s| s["attributes"]["mcp_guard.request.record_id"] == id)
        .unwrap_or_else(|| panic!("no span for {id}"));
    let a = &span["attributes"];
    assert_eq!(a["mcp_guard.request.seen"], true);
    assert_eq!(a["mcp_guard.rule"], req["rule"]);
    assert_eq!(a["user.name"], req["principal"]["user"]);
    let t = humantime::parse_rfc3339(req["time"].as_str().unwrap()).unwrap();
    let start = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert_eq!(span["start_time_unix_nano"], start);
}

#[test]
fn otlp_over_https_trusts_the_ca_file() {
    let Some(python) = peers_python() else {
        return skip("no .peers/venv with opentelemetry-proto (cargo xtask setup)");
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    wrap_session(&log, 10, None);
    let c = Collector::start_with(&python, dir.path(), free_port(), "", true);
    // Its private CA is not among the built-in roots: refused, nothing committed.
    let out = forward(&["--to", &c.url()], &log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(c.got("log").is_empty());
    // A file without certificates is named.
    let out = forward(
        &["--to", &c.url(), "--ca-file", log.to_str().unwrap()],
        &log,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-file"));
    // With its CA: every record.
    let ca = dir.path().join("tls/ca.pem");
    let out = forward(&["--to", &c.url(), "--ca-file", ca.to_str().unwrap()], &log);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_otlp_delivered(&c, &log, 1);
}
