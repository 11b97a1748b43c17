//! The load driver: an MCP client over a child's stdio.

use mcp_guard_bench::stats::percentile;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Serialize;
use serde_json::Value;

/// What to spawn: program, arguments, extra environment.
#[derive(Clone, Debug)]
pub struct Target {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Target {
    pub fn display(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s.push_str(&format!("{k}={v} "));
        }
        s.push_str(&self.program);
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

#[derive(Clone, Copy, Debug, Serialize, Default)]
pub struct Latency {
    pub n: usize,
    pub p50_us: f64,
    pub p99_us: f64,
}

#[derive(Clone, Copy, Debug, Serialize, Default)]
pub struct Throughput {
    pub msgs: u64,
    pub secs: f64,
    pub msgs_per_s: f64,
    /// Echoed payload (request line) bytes per second, one direction, in MB (10^6).
    pub mb_per_s: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub small_bytes: usize,
    pub large_bytes: usize,
    pub rtt_small: usize,
    pub rtt_large: usize,
    pub pipe_small: u64,
    pub pipe_large: u64,
    pub window_small: u64,
    pub window_large: u64,
    /// Upper bound on the wall time of one phase; a phase stops early (with at least a
    /// few samples) once it is spent, so a slow configuration cannot stretch the run.
    pub phase_cap: Duration,
    /// A phase that makes no progress for this long fails the configuration.
    pub stall_timeout: Duration,
    pub idle_settle: Duration,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct RunResult {
    pub pid: u32,
    pub rss_idle_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rtt_small: Latency,
    pub rtt_large: Latency,
    pub pipe_small: Throughput,
    pub pipe_large: Throughput,
}

/// Reads `VmRSS`/`VmHWM` (KiB) from /proc/<pid>/status.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A spawned server with a kill-on-stall watchdog.
pub struct Session {
    child: Arc<Mutex<Child>>,
    pid: u32,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    line: Vec<u8>,
    progress: Arc<AtomicU64>,
    stop_watchdog: Arc<AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
    killed: Arc<AtomicBool>,
    tool: String,
    next_id: u64,
}

impl Session {
    pub fn spawn(target: &Target, stderr_log: &Path, stall: Duration) -> Result<Self> {
        let log = std::fs::File::create(stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut child = Command::new(&target.program)
            .args(&target.args)
            .envs(target.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawning {}", target.display()))?;
        let pid = child.id();
        let stdin = BufWriter::with_capacity(1 << 16, child.stdin.take().context("child stdin")?);
        let stdout =
            BufReader::with_capacity(1 << 21, child.stdout.take().context("child stdout")?);
        let child = Arc::new(Mutex::new(child));
        let progress = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (child, progress, stop, killed) = (
                child.clone(),
                progress.clone(),
                stop.clone(),
                killed.clone(),
            );
            std::thread::spawn(move || {
                let mut last = u64::MAX;
                let mut since = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let p = progress.load(Ordering::Relaxed);
                    if p != last {
                        last = p;
                        since = Instant::now();
                    } else if since.elapsed() > stall {
                        killed.store(true, Ordering::Relaxed);
                        let _ = child.lock().unwrap_or_else(|p| p.into_inner()).kill();
                        return;
                    }
                }
            })
        };
        Ok(Session {
            child,
            pid,
            stdin: Some(stdin),
            stdout,
            line: Vec::with_capacity(1 << 21),
            progress,
            stop_watchdog: stop,
            watchdog: Some(watchdog),
            killed,
            tool: String::new(),
            next_id: 1,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn tick(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    fn stalled_err(&self, what: &str) -> anyhow::Error {
        if self.killed.load(Ordering::Relaxed) {
            anyhow!("{what}: no progress within the stall timeout; server killed")
        } else {
            anyhow!("{what}: server closed its stdout")
        }
    }

    fn send_json(&mut self, v: &Value) -> Result<()> {
        let w = self
            .stdin
            .as_mut()
            .context("stdin already handed to the pipelined writer")?;
        serde_json::to_writer(&mut *w, v)?;
        w.write_all(b"\n")?;
        w.flush()?;
        Ok(())
    }

    /// Reads lines until a response with `id`; skips notifications and server requests.
    fn recv_response(&mut self, id: &Value, what: &str) -> Result<Value> {
        loop {
            self.line.clear();
            if self.stdout.read_until(b'\n', &mut self.line)? == 0 {
                return Err(self.stalled_err(what));
            }
            self.tick();
            let v: Value = serde_json::from_slice(&self.line)
                .with_context(|| format!("{what}: response is not JSON"))?;
            if v.get("id") == Some(id) && v.get("method").is_none() {
                if let Some(e) = v.get("error") {
                    bail!("{what}: error response {e}");
                }
                return Ok(v);
            }
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = Value::from(self.next_id);
        self.next_id += 1;
        self.send_json(&serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": method, "params": params
        }))?;
        self.recv_response(&id, method)
    }

    /// initialize + notifications/initialized + tools/list (finds the echo tool, whose
    /// name a proxy may have prefixed).
    pub fn handshake(&mut self) -> Result<()> {
        let init = self.request(
            "initialize",
            serde_json::json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "mcp-bench", "version": env!("CARGO_PKG_VERSION")}
            }),
        )?;
        ensure!(
            init.pointer("/result/protocolVersion").is_some(),
            "initialize: no protocolVersion in {init}"
        );
        self.send_json(&serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"}))?;
        let list = self.request("tools/list", serde_json::json!({}))?;
        let tools = list
            .pointer("/result/tools")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("tools/list: no tools in {list}"))?;
        self.tool = tools
            .iter()
            .filter_map(|t| t.get("name")?.as_str())
            .find(|n| *n == "echo" || n.ends_with("_echo") || n.ends_with("-echo"))
            .ok_or_else(|| anyhow!("tools/list: no echo tool in {list}"))?
            .to_string();
        Ok(())
    }

    /// One fully validated tools/call (used for warm-up).
    fn checked_call(&mut self, data: &str) -> Result<()> {
        let v = self.request(
            "tools/call",
            serde_json::json!({"name": self.tool, "arguments": {"data": data}}),
        )?;
        let text = v.pointer("/result/content/0/text").and_then(Value::as_str);
        ensure!(
            text == Some(data),
            "tools/call: echo mismatch (got {} bytes)",
            text.map_or(0, str::len)
        );
        Ok(())
    }

    /// Request line pieces: `prefix` + id + `mid` (ends with the payload) + `suffix`, and
    /// the payload length.
    fn request_parts(&self, line_bytes: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>, usize) {
        let prefix = b"{\"jsonrpc\":\"2.0\",\"id\":".to_vec();
        let mid = format!(
            ",\"method\":\"tools/call\",\"params\":{{\"name\":\"{}\",\"arguments\":{{\"data\":\"",
            self.tool
        )
        .into_bytes();
        let suffix = b"\"}}}\n".to_vec();
        // Size the payload so a request line (with a 7-digit id, newline included) is
        // `line_bytes` long.
        let overhead = prefix.len() + 7 + mid.len() + suffix.len();
        let n = line_bytes.saturating_sub(overhead).max(16);
        let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let data: Vec<u8> = (0..n)
            .map(|i| alphabet[(i * 7 + i / 61) % alphabet.len()])
            .collect();
        let mut full_mid = mid;
        full_mid.extend_from_slice(&data);
        (prefix, full_mid, suffix, n)
    }

    fn payload(&self, line_bytes: usize) -> String {
        let (_, mid, _, n) = self.request_parts(line_bytes);
        String::from_utf8_lossy(&mid[mid.len() - n..]).into_owned()
    }

    pub fn warm_up(&mut self, w: &Workload) -> Result<()> {
        let small = self.payload(w.small_bytes);
        let large = self.payload(w.large_bytes);
        for _ in 0..20 {
            self.checked_call(&small)?;
        }
        for _ in 0..3 {
            self.checked_call(&large)?;
        }
        Ok(())
    }

    /// Reads one line; `Ok(true)` for an echo response (long enough to hold the payload),
    /// `Ok(false)` for a line to skip (a notification or a server request). Short lines
    /// are parsed, and an error response fails the run.
    fn read_echo_line(
        stdout: &mut BufReader<ChildStdout>,
        line: &mut Vec<u8>,
        payload_len: usize,
        sentinel: Option<&mut bool>,
    ) -> Result<Option<bool>> {
        line.clear();
        if stdout.read_until(b'\n', line)? == 0 {
            return Ok(None);
        }
        if line.len() > payload_len && line.first() == Some(&b'{') {
            return Ok(Some(true));
        }
        let v: Value = serde_json::from_slice(line).context("short line is not JSON")?;
        if let Some(e) = v.get("error") {
            bail!("error response: {e}");
        }
        if let Some(s) = sentinel
            && v.get("id").and_then(Value::as_str) == Some("bench-end")
        {
            *s = true;
        }
        Ok(Some(false))
    }

    /// Sequential round trips: send one request, wait for its response, repeat.
    pub fn round_trips(&mut self, line_bytes: usize, n: usize, cap: Duration) -> Result<Latency> {
        let (prefix, mid, suffix, payload_len) = self.request_parts(line_bytes);
        let mut samples = Vec::with_capacity(n);
        let start = Instant::now();
        let mut idbuf = itoa_buf();
        for _ in 0..n {
            if samples.len() >= 20 && start.elapsed() > cap {
                break;
            }
            let id = self.next_id;
            self.next_id += 1;
            let t0 = Instant::now();
            let w = self
                .stdin
                .as_mut()
                .context("stdin already handed to the pipelined writer")?;
            w.write_all(&prefix)?;
            w.write_all(fmt_u64(&mut idbuf, id))?;
            w.write_all(&mid)?;
            w.write_all(&suffix)?;
            w.flush()?;
            loop {
                match Self::read_echo_line(&mut self.stdout, &mut self.line, payload_len, None)? {
                    None => return Err(self.stalled_err("round trip")),
                    Some(true) => break,
                    Some(false) => continue,
                }
            }
            samples.push(t0.elapsed());
            self.tick();
        }
        samples.sort_unstable();
        Ok(Latency {
            n: samples.len(),
            p50_us: percentile(&samples, 0.5).as_secs_f64() * 1e6,
            p99_us: percentile(&samples, 0.99).as_secs_f64() * 1e6,
        })
    }

    /// Pipelined: a writer thread sends up to `m` requests back to back, with at most
    /// `window` unanswered, stopping early once `cap` is spent, and then a `ping` sentinel;
    /// this thread counts responses until it has every echo and the sentinel. The window
    /// bounds the drain time of a proxy that buffers its input without limit.
    pub fn pipelined(
        &mut self,
        line_bytes: usize,
        m: u64,
        window: u64,
        cap: Duration,
    ) -> Result<Throughput> {
        let (prefix, mid, suffix, payload_len) = self.request_parts(line_bytes);
        let req_len = (prefix.len() + 7 + mid.len() + suffix.len()) as f64;
        let mut writer = self
            .stdin
            .take()
            .context("stdin already handed to the pipelined writer")?;
        let first_id = self.next_id;
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let waiting = Arc::new(AtomicBool::new(false));
        let progress = self.progress.clone();
        let window = window.max(1);
        let start = Instant::now();
        let handle = {
            let (sent, received, waiting) = (sent.clone(), received.clone(), waiting.clone());
            std::thread::spawn(move || -> (BufWriter<ChildStdin>, Result<()>) {
                let mut idbuf = itoa_buf();
                let r = (|| {
                    for i in 0..m {
                        if i >= 8 && i % 8 == 0 && start.elapsed() > cap {
                            break;
                        }
                        if i - received.load(Ordering::Acquire) >= window {
                            writer.flush()?;
                            while i - received.load(Ordering::Acquire) >= window {
                                waiting.store(true, Ordering::SeqCst);
                                if i - received.load(Ordering::SeqCst) >= window {
                                    std::thread::park_timeout(Duration::from_millis(1));
                                }
                                waiting.store(false, Ordering::SeqCst);
                            }
                        }
                        writer.write_all(&prefix)?;
                        writer.write_all(fmt_u64(&mut idbuf, first_id + i))?;
                        writer.write_all(&mid)?;
                        writer.write_all(&suffix)?;
                        sent.fetch_add(1, Ordering::Release);
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    writer.write_all(
                        b"{\"jsonrpc\":\"2.0\",\"id\":\"bench-end\",\"method\":\"ping\"}\n",
                    )?;
                    writer.flush()?;
                    Ok(())
                })();
                (writer, r)
            })
        };
        let writer_thread = handle.thread().clone();
        let mut seen_sentinel = false;
        let result = (|| -> Result<()> {
            loop {
                if seen_sentinel
                    && handle.is_finished()
                    && received.load(Ordering::Acquire) >= sent.load(Ordering::Acquire)
                {
                    return Ok(());
                }
                match Self::read_echo_line(
                    &mut self.stdout,
                    &mut self.line,
                    payload_len,
                    Some(&mut seen_sentinel),
                )? {
                    None => return Err(self.stalled_err("pipelined")),
                    Some(true) => {
                        received.fetch_add(1, Ordering::SeqCst);
                        if waiting.load(Ordering::SeqCst) {
                            writer_thread.unpark();
                        }
                        self.tick();
                    }
                    Some(false) => {}
                }
                if seen_sentinel {
                    // The sentinel may overtake echoes on a concurrent proxy, but once the
                    // writer is done every echo must still arrive.
                    while !handle.is_finished() {
                        std::thread::yield_now();
                    }
                }
            }
        })();
        let elapsed = start.elapsed();
        let (writer, wres) = handle
            .join()
            .map_err(|_| anyhow!("writer thread panicked"))?;
        self.stdin = Some(writer);
        result?;
        wres?;
        let n = sent.load(Ordering::Acquire);
        let received = received.load(Ordering::Acquire);
        ensure!(received == n, "pipelined: sent {n}, received {received}");
        self.next_id = first_id + n;
        let secs = elapsed.as_secs_f64();
        Ok(Throughput {
            msgs: n,
            secs,
            msgs_per_s: n as f64 / secs,
            mb_per_s: n as f64 * req_len / secs / 1e6,
        })
    }

    /// Closes stdin and waits (briefly) for the server to exit, then kills it.
    pub fn shutdown(mut self) -> Result<()> {
        drop(self.stdin.take());
        let mut sink = Vec::new();
        let _ = self.stdout.read_to_end(&mut sink);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            drop(child);
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop_watchdog.store(true, Ordering::Relaxed);
        if let Some(h) = self.watchdog.take() {
            let _ = h.join();
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_watchdog.store(true, Ordering::Relaxed);
        if let Ok(mut c) = self.child.lock()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the whole workload against one target.
pub fn run_target(target: &Target, w: &Workload, stderr_log: &Path) -> Result<RunResult> {
    let mut s = Session::spawn(target, stderr_log, w.stall_timeout)?;
    let res = (|| -> Result<RunResult> {
        s.handshake()?;
        std::thread::sleep(w.idle_settle);
        let mut r = RunResult {
            pid: s.pid(),
            rss_idle_kib: proc_status_kib(s.pid(), "VmRSS"),
            ..Default::default()
        };
        s.warm_up(w)?;
        r.rtt_small = s.round_trips(w.small_bytes, w.rtt_small, w.phase_cap)?;
        r.rtt_large = s.round_trips(w.large_bytes, w.rtt_large, w.phase_cap)?;
        r.pipe_small = s.pipelined(w.small_bytes, w.pipe_small, w.window_small, w.phase_cap)?;
        r.pipe_large = s.pipelined(w.large_bytes, w.pipe_large, w.window_large, w.phase_cap)?;
        std::thread::sleep(w.idle_settle);
        r.rss_after_kib = proc_status_kib(s.pid(), "VmRSS");
        r.rss_peak_kib = proc_status_kib(s.pid(), "VmHWM");
        Ok(r)
    })();
    match res {
        Ok(r) => {
            s.shutdown()?;
            Ok(r)
        }
        Err(e) => {
            drop(s);
            let tail = std::fs::read_to_string(stderr_log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Err(e.context(format!(
                "target `{}`; stderr tail:\n{tail}",
                target.display()
            )))
        }
    }
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// Formats `v` right-aligned in `buf` and returns the digits.
fn fmt_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}
