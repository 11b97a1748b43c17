//! Helpers for the `mcp-guard wrap` integration tests: run the real binary around a fake
//! MCP server (tests/fixtures/fake_server.py), with piped stdio, its own temporary
//! directory (audit log, server log, policy), reads that never wait past a deadline, and a
//! watchdog that kills a shim that outlives its test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// After this long, a shim still running is killed (the test then fails instead of hanging).
const WATCHDOG: Duration = Duration::from_secs(180);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcp-guard")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The Python 3 interpreter: `$MCP_GUARD_TEST_PYTHON`, else /usr/bin/python3, else `python3`
/// from PATH. Running the interpreter directly (rather than through the fixture's
/// `#!/usr/bin/env python3`) keeps version-manager wrappers out of the server's process.
pub fn python() -> OsString {
    if let Some(p) = std::env::var_os("MCP_GUARD_TEST_PYTHON") {
        return p;
    }
    if Path::new("/usr/bin/python3").exists() {
        return "/usr/bin/python3".into();
    }
    "python3".into()
}

/// The command line of the fake server with `args`.
pub fn fake_server(args: &[&str]) -> Vec<OsString> {
    let mut v = vec![python(), fixture("fake_server.py").into_os_string()];
    v.extend(args.iter().map(OsString::from));
    v
}

pub struct Builder {
    shim_args: Vec<OsString>,
    command: Option<Vec<OsString>>,
    server_args: Vec<String>,
    policy: Option<String>,
    envs: Vec<(OsString, OsString)>,
    audit: bool,
    fsize_limit: Option<u64>,
    clean_fds: bool,
}

/// A shim to start: `Builder::new().server_args(&[..]).spawn()`.
impl Builder {
    pub fn new() -> Builder {
        Builder {
            shim_args: vec![],
            command: None,
            server_args: vec![],
            policy: None,
            envs: vec![],
            audit: true,
            fsize_limit: None,
            clean_fds: false,
        }
    }

    /// Extra `mcp-guard wrap` options (before `--`).
    pub fn shim_args(mut self, args: &[&str]) -> Builder {
        self.shim_args.extend(args.iter().map(OsString::from));
        self
    }

    /// Options for the fake server.
    pub fn server_args(mut self, args: &[&str]) -> Builder {
        self.server_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Run this command instead of the fake server.
    pub fn command(mut self, cmd: Vec<OsString>) -> Builder {
        self.command = Some(cmd);
        self
    }

    /// Policy text, written to the temporary directory and passed with `--policy`.
    pub fn policy(mut self, text: &str) -> Builder {
        self.policy = Some(text.to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Builder {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Runs the shim (and so its server) with RLIMIT_FSIZE set to `bytes` and SIGXFSZ
    /// ignored: writes past that size fail with EFBIG, like a full disk.
    pub fn file_size_limit(mut self, bytes: u64) -> Builder {
        self.fsize_limit = Some(bytes);
        self
    }

    /// Starts the shim with only fds 0, 1 and 2: whatever else the test process inherited
    /// (from cargo, a CI runner, ...) is marked close-on-exec first.
    pub fn clean_fds(mut self) -> Builder {
        self.clean_fds = true;
        self
    }

    /// Do not pass `--audit` (the caller passes its own with `shim_args`).
    pub fn no_audit(mut self) -> Builder {
        self.audit = false;
        self
    }

    pub fn spawn(self) -> Shim {
        let dir = tempfile::tempdir().expect("temporary directory");
        let audit = dir.path().join("audit.jsonl");
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(bin());
        cmd.arg("wrap");
        if self.audit {
            cmd.arg("--audit").arg(&audit);
        }
        if let Some(text) = &self.policy {
            let p = dir.path().join("policy.toml");
            std::fs::write(&p, text).unwrap();
            cmd.arg("--policy").arg(p);
        }
        cmd.args(&self.shim_args).arg("--");
        let server_args: Vec<String> = self
            .server_args
            .iter()
            .map(|a| a.replace("{dir}", &dir.path().to_string_lossy()))
            .collect();
        match &self.command {
            Some(c) => cmd.args(c),
            None => cmd.args(fake_server(
                &server_args.iter().map(String::as_str).collect::<Vec<_>>(),
            )),
        };
        // The tests' own environment must not choose a policy for them.
        cmd.env_remove("MCP_GUARD_POLICY")
            .env("XDG_CONFIG_HOME", dir.path().join("config"));
        cmd.env_remove("MCP_GUARD_AUDIT_DURABILITY");
        cmd.env("FAKE_LOG", &log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(limit) = self.fsize_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    use nix::libc;
                    let lim = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        if self.clean_fds {
            use std::os::unix::process::CommandExt;
            // SAFETY: one system call between fork and exec. Marking (not closing) keeps the
            // standard library's own exec-error pipe working.
            unsafe {
                cmd.pre_exec(|| {
                    use nix::libc;
                    if libc::syscall(
                        libc::SYS_close_range,
                        3u32,
                        u32::MAX,
                        libc::CLOSE_RANGE_CLOEXEC,
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start mcp-guard");
        let pid = child.id();
        let stdin = child.stdin.take();
        let out = reader(child.stdout.take().unwrap());
        let err_buf = Arc::new(Mutex::new(Vec::new()));
        let (err_tx, err_done) = mpsc::channel::<()>();
        {
            let buf = err_buf.clone();
            let mut e = child.stderr.take().unwrap();
            thread::spawn(move || {
                let mut chunk = vec![0u8; 65536];
                loop {
                    match e.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = err_tx.send(());
            });
        }
        let (dog_tx, dog_rx) = mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = dog_rx.recv_timeout(WATCHDOG) {
                eprintln!("watchdog: killing shim {pid}");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::SIGKILL,
                );
            }
        });
        Shim {
            child,
            stdin,
            out,
            out_buf: Vec::new(),
            out_eof: false,
            err_buf,
            err_done,
            err_eof: false,
            status: None,
            _dog: dog_tx,
            audit,
            log,
            dir,
        }
    }
}

fn reader(mut r: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(chunk[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// A running `mcp-guard wrap`.
pub struct Shim {
    pub child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<Vec<u8>>,
    out_buf: Vec<u8>,
    out_eof: bool,
    err_buf: Arc<Mutex<Vec<u8>>>,
    err_done: Receiver<()>,
    err_eof: bool,
    status: Option<ExitStatus>,
    _dog: mpsc::Sender<()>,
    /// The audit log.
    pub audit: PathBuf,
    /// What the fake server received, byte for byte.
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Shim {
    pub fn spawn_default() -> Shim {
        Builder::new().spawn()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes bytes to the shim's stdin.
    pub fn send(&mut self, bytes: &[u8]) {
        let w = self.stdin.as_mut().expect("stdin already closed");
        if let Err(e) = w.write_all(bytes).and_then(|()| w.flush()) {
            panic!(
                "writing to the shim failed: {e}; stderr: {}",
                self.stderr_text()
            );
        }
    }

    /// Writes bytes, reporting failure instead of panicking.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let w = self.stdin.as_mut().expect("stdin already closed");
        w.write_all(bytes).and_then(|()| w.flush())
    }

    /// Writes one line, `\n` appended.
    pub fn send_line(&mut self, line: &str) {
        let mut b = line.as_bytes().to_vec();
        b.push(b'\n');
        self.send(&b);
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    fn fill(&mut self, until: Instant) -> bool {
        if self.out_eof {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        match self.out.recv_timeout(left) {
            Ok(chunk) => {
                self.out_buf.extend_from_slice(&chunk);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.out_eof = true;
                false
            }
        }
    }

    /// The next line from the shim's stdout (ending included), or None at end of output or
    /// when `within` passes.
    pub fn try_read_line(&mut self, within: Duration) -> Option<Vec<u8>> {
        let until = Instant::now() + within;
        let mut scanned = 0;
        loop {
            if let Some(i) = self.out_buf[scanned..].iter().position(|&b| b == b'\n') {
                let rest = self.out_buf.split_off(scanned + i + 1);
                return Some(std::mem::replace(&mut self.out_buf, rest));
            }
            scanned = self.out_buf.len();
            if self.out_eof || Instant::now() >= until {
                return None;
            }
            self.fill(until);
        }
    }

    /// The next line, or a test failure after [`DEADLINE`].
    pub fn read_line(&mut self) -> Vec<u8> {
        match self.try_read_line(DEADLINE) {
            Some(l) => l,
            None => panic!(
                "no line from the shim within {DEADLINE:?} (eof: {}, partial: {:?}); stderr: {}",
                self.out_eof,
                String::from_utf8_lossy(&self.out_buf[..self.out_buf.len().min(300)]),
                self.stderr_text()
            ),
        }
    }

    /// The next line, parsed as JSON.
    pub fn read_json(&mut self) -> Value {
        let line = self.read_line();
        serde_json::from_slice(&line).unwrap_or_else(|e| {
            panic!(
                "shim wrote a line that is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&line)
            )
        })
    }

    /// Expects nothing on stdout for `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        if let Some(l) = self.try_read_line(d) {
            panic!(
                "unexpected output from the shim: {:?}",
                String::from_utf8_lossy(&l)
            );
        }
    }

    /// Sends `{"jsonrpc":"2.0","id":ID,"method":METHOD[,"params":PARAMS]}` and returns the answer.
    pub fn call(&mut self, id: &str, method: &str, params: Option<&str>) -> Value {
        self.send_line(&request(id, method, params));
        self.read_json()
    }

    /// A ping round trip: the session is alive and everything sent before has been handled.
    pub fn ping(&mut self, id: u64) {
        let v = self.call(&id.to_string(), "ping", None);
        assert_eq!(v["id"], id, "ping answer: {v}");
        assert!(v.get("result").is_some(), "ping answer: {v}");
    }

    /// The server's pid, asked of the server.
    pub fn server_pid(&mut self) -> i32 {
        let v = self.call("\"pid-query\"", "pid", None);
        v["result"]["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("pid answer: {v}")) as i32
    }

    /// Everything left on stdout until end of output.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        let until = Instant::now() + DEADLINE;
        while !self.out_eof {
            if Instant::now() >= until {
                panic!(
                    "stdout of the shim not closed within {DEADLINE:?}; stderr: {}",
                    self.stderr_text()
                );
            }
            self.fill(until);
        }
        std::mem::take(&mut self.out_buf)
    }

    /// The shim's exit status; fails the test after `within`.
    pub fn wait_within(&mut self, within: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.status = Some(s);
                return s;
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the shim did not exit within {within:?}; stderr: {}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.wait_within(DEADLINE)
    }

    /// The exit code, failing if the shim was killed by a signal.
    pub fn exit_code(&mut self) -> i32 {
        let s = self.wait();
        s.code().unwrap_or_else(|| {
            panic!(
                "the shim itself died of a signal: {s:?}; stderr: {}",
                self.stderr_text()
            )
        })
    }

    /// What the shim has written to stderr so far.
    pub fn stderr_bytes(&self) -> Vec<u8> {
        self.err_buf.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr_bytes()).into_owned()
    }

    /// All of stderr, once it is closed (the shim and the server are gone).
    pub fn stderr_to_eof(&mut self) -> Vec<u8> {
        if !self.err_eof {
            self.err_done
                .recv_timeout(DEADLINE)
                .expect("stderr of the shim not closed in time");
            self.err_eof = true;
        }
        self.stderr_bytes()
    }

    /// What the fake server has received so far.
    pub fn server_log(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }

    pub fn server_log_contains(&self, needle: &[u8]) -> bool {
        contains(&self.server_log(), needle)
    }

    /// The audit records written so far.
    pub fn audit_records(&self) -> Vec<Value> {
        read_audit(&self.audit)
    }

    /// Runs `mcp-guard audit verify` on the audit log and requires success.
    pub fn verify_audit(&self) {
        verify_audit(&self.audit);
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal the shim");
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The complete records of a log, which may be read while a shim still writes it: a last
/// line without its newline is a record being written, and is left out.
pub fn read_audit(path: &Path) -> Vec<Value> {
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    text.truncate(complete);
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

pub fn verify_audit(path: &Path) {
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .expect("run audit verify");
    assert!(
        out.status.success(),
        "audit verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (up to [`DEADLINE`]) for an audit record matching `pred`.
pub fn wait_for_record(path: &Path, pred: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(r) = read_audit(path).into_iter().find(|r| pred(r)) {
            return r;
        }
        if Instant::now() >= until {
            panic!(
                "no matching audit record within {DEADLINE:?}; records: {:#?}",
                read_audit(path)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn request(id: &str, method: &str, params: Option<&str>) -> String {
    match params {
        Some(p) => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{p}}}"#),
        None => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#),
    }
}

pub fn tool_call(id: &str, tool: &str) -> String {
    request(
        id,
        "tools/call",
        Some(&format!(r#"{{"name":"{tool}","arguments":{{"x":1}}}}"#)),
    )
}

/// The id of a JSON-RPC message exactly as spelled on the wire.
pub fn raw_id(line: &[u8]) -> String {
    let m: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "not a JSON object ({e}): {:?}",
            String::from_utf8_lossy(line)
        )
    });
    m.get("id")
        .map(|r| r.get().to_string())
        .unwrap_or_else(|| panic!("no id: {:?}", String::from_utf8_lossy(line)))
}

/// The error code of an error response.
pub fn error_code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error response: {v}"))
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a process is gone (or only a zombie waiting for a parent that is not us).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // The state follows the command name, which is in parentheses.
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
                .unwrap_or_default();
            matches!(state, Some('Z' | 'X'))
        }
    }
}

/// Waits until `pid` is gone; false after `within`.
pub fn wait_gone(pid: i32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if process_gone(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    process_gone(pid)
}

/// Resident memory of a process in KiB (VmRSS), or None once it is gone.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for a file to exist and have content; returns it.
pub fn wait_for_file(path: &Path) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        if Instant::now() >= until {
            panic!("{} not written within {DEADLINE:?}", path.display());
        }
        thread::sleep(Duration::from_millis(10));
    }
}
