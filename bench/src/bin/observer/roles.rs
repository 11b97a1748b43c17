//! The processes the benchmark runs besides the daemon: an MCP server on fd 0/1, two
//! agent hosts (run through a symlink whose name the daemon watches), and the
//! system-call micro-benchmarks.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a str>,
}

/// An MCP server that reads requests with read(2) on fd 0 and writes each answer with
/// one write(2) on fd 1, as the daemon expects of a stdio server (`mcp-bench-echo`
/// duplicates its descriptors, so the daemon would not see it). `initialize` gets a
/// server info, every other request a small text result; notifications no answer.
pub fn server() -> Result<()> {
    let mut input = std::io::stdin().lock();
    // A line writer: one write(2) per answer.
    let mut output = std::io::stdout().lock();
    let mut line = Vec::with_capacity(4096);
    let mut answer = Vec::with_capacity(256);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let Ok(msg) = serde_json::from_slice::<Msg>(line.trim_ascii()) else {
            output.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"parse error\"}}\n")?;
            continue;
        };
        let (Some(id), Some(method)) = (msg.id, msg.method) else {
            continue;
        };
        answer.clear();
        answer.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        answer.extend_from_slice(id.get().as_bytes());
        if method == "initialize" {
            answer.extend_from_slice(
                b",\"result\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{\"tools\":{}},\"serverInfo\":{\"name\":\"mcp-bench-observer\",\"version\":\"0\"}}}\n",
            );
        } else {
            answer.extend_from_slice(b",\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}],\"isError\":false}}\n");
        }
        output.write_all(&answer)?;
    }
}

// ---------------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------------

/// Waits until the daemon whose status file is `status` lists this process among its
/// agent hosts: children started before that would not be watched.
fn wait_watched(status: &Path) -> Result<()> {
    let me = u64::from(std::process::id());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = std::fs::read(status)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("hosts").and_then(Value::as_array).cloned())
            .is_some_and(|hosts| {
                hosts
                    .iter()
                    .any(|h| h.get("pid").and_then(Value::as_u64) == Some(me))
            });
        if listed {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon did not list this host (pid {me}) in {} within 15 s",
                status.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_server() -> Result<(Child, ChildStdin, ChildStdout)> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut child = Command::new(&exe)
        .arg("server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} server", exe.display()))?;
    let stdin = child.stdin.take().context("server stdin")?;
    let stdout = child.stdout.take().context("server stdout")?;
    Ok((child, stdin, stdout))
}

const INITIALIZE: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},\"clientInfo\":{\"name\":\"mcp-bench-observer\",\"version\":\"0\"}}}\n";
const INITIALIZED: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n";

/// A `tools/call` request with id `id`, padded to exactly `size` bytes, newline included
/// (or as short as it can be, if `size` is smaller).
fn request(buf: &mut Vec<u8>, id: u64, size: usize) {
    const HEAD: &str = "{\"jsonrpc\":\"2.0\",\"id\":";
    const MID: &str =
        ",\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"pad\":\"";
    const TAIL: &str = "\"}}}\n";
    buf.clear();
    buf.extend_from_slice(HEAD.as_bytes());
    buf.extend_from_slice(id.to_string().as_bytes());
    buf.extend_from_slice(MID.as_bytes());
    let pad = size.saturating_sub(buf.len() + TAIL.len());
    buf.resize(buf.len() + pad, b'x');
    buf.extend_from_slice(TAIL.as_bytes());
}

#[derive(clap::Args, Debug)]
pub struct HostRateArgs {
    /// Requests per second, host to server.
    #[arg(long)]
    pub rate: u64,
    #[arg(long)]
    pub secs: f64,
    /// Bytes per request, newline included.
    #[arg(long)]
    pub size: usize,
    /// The daemon's status file: wait to be listed as a host before starting the server.
    #[arg(long)]
    pub status: Option<PathBuf>,
    /// A unix socket to connect to: one JSON-RPC notification line is written to it after
    /// each request, so socket and stdio chunks interleave in the kernel's sequence.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// What `host-rate` prints, one JSON line.
#[derive(Debug, Serialize, Deserialize)]
pub struct RateReport {
    pub server_pid: u32,
    /// Host to server: requests (`initialize` included) and notifications.
    pub requests: u64,
    pub notifications: u64,
    /// Server to host.
    pub responses: u64,
    /// The paced phase: `tools/call` requests sent and how long it took.
    pub paced: u64,
    pub paced_secs: f64,
    pub bytes: u64,
    /// Lines written to `--socket`.
    #[serde(default)]
    pub socket_lines: u64,
}

/// Counts the server's answer lines; the first one (to `initialize`) is signalled.
fn count_answers(out: ChildStdout, first: mpsc::Sender<()>) -> std::io::Result<u64> {
    let mut out = BufReader::with_capacity(1 << 16, out);
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        if out.read_until(b'\n', &mut line)? == 0 {
            return Ok(n);
        }
        n += 1;
        if n == 1 {
            let _ = first.send(());
        }
    }
}

/// An agent host with one session: `initialize`, then `rate` requests per second of
/// `size` bytes each for `secs`, each in its own write(2), while a thread counts answers.
pub fn host_rate(a: &HostRateArgs) -> Result<()> {
    if let Some(status) = &a.status {
        wait_watched(status)?;
    }
    let (mut child, mut to_server, from_server) = spawn_server()?;
    let (first_tx, first_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || count_answers(from_server, first_tx));
    to_server
        .write_all(INITIALIZE)
        .context("sending initialize")?;
    first_rx
        .recv_timeout(Duration::from_secs(10))
        .context("no answer to initialize within 10 s")?;
    to_server
        .write_all(INITIALIZED)
        .context("sending notifications/initialized")?;

    let mut socket = match &a.socket {
        Some(p) => Some(
            std::os::unix::net::UnixStream::connect(p)
                .with_context(|| format!("connecting to {}", p.display()))?,
        ),
        None => None,
    };
    let mut socket_lines = 0u64;
    let total = (a.rate as f64 * a.secs).round() as u64;
    let mut buf = Vec::with_capacity(a.size.max(256));
    let mut bytes = (INITIALIZE.len() + INITIALIZED.len()) as u64;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * a.rate as f64) as u64 + 1).min(total);
        while sent < due {
            sent += 1;
            request(&mut buf, sent, a.size);
            to_server.write_all(&buf).context("sending a request")?;
            bytes += buf.len() as u64;
            if let Some(s) = socket.as_mut() {
                let line = format!(
                    "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":\"b\",\"progress\":{sent}}}}}\n"
                );
                s.write_all(line.as_bytes())
                    .context("writing to the socket")?;
                socket_lines += 1;
            }
        }
        if sent < total {
            let next = Duration::from_secs_f64(sent as f64 / a.rate as f64);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let paced_secs = start.elapsed().as_secs_f64();
    drop(to_server);
    let responses = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    let status = child.wait()?;
    if !status.success() {
        bail!("the server exited with {status}");
    }
    let report = RateReport {
        server_pid: child.id(),
        requests: sent + 1,
        notifications: 1,
        responses,
        paced: sent,
        paced_secs,
        bytes,
        socket_lines,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct HostManyArgs {
    /// Concurrent sessions (server processes).
    #[arg(long)]
    pub sessions: usize,
    /// `tools/call` requests per session after `initialize`.
    #[arg(long, default_value_t = 3)]
    pub calls: u64,
    /// Bytes per request.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// The daemon's status file: wait to be listed as a host before starting servers.
    #[arg(long)]
    pub status: Option<PathBuf>,
}

/// An agent host with `sessions` servers at once: each gets `initialize` and `calls`
/// requests, and all of them are answered before `ready N` is printed. Then the host
/// holds every session open until its own stdin closes, and ends them.
pub fn host_many(a: &HostManyArgs) -> Result<()> {
    if let Some(status) = &a.status {
        wait_watched(status)?;
    }
    let mut sessions = Vec::with_capacity(a.sessions);
    for _ in 0..a.sessions {
        sessions.push(spawn_server()?);
    }
    let mut buf = Vec::new();
    let mut answers = Vec::with_capacity(a.sessions);
    for (_, to_server, from_server) in sessions.iter_mut() {
        to_server.write_all(INITIALIZE)?;
        to_server.write_all(INITIALIZED)?;
        for id in 1..=a.calls {
            request(&mut buf, id, a.size);
            to_server.write_all(&buf)?;
        }
        let mut reader = BufReader::new(from_server);
        let mut line = Vec::new();
        for _ in 0..=a.calls {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                bail!("a server closed its output before answering");
            }
        }
        answers.push(a.calls + 1);
    }
    println!("ready {}", answers.len());
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    let mut children = Vec::with_capacity(sessions.len());
    for (child, to_server, _) in sessions {
        drop(to_server);
        children.push(child);
    }
    for mut child in children {
        child.wait()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// System calls
// ---------------------------------------------------------------------------------

/// Blocks each system-call loop is timed in; the median block is reported, so a
/// moment of interference (another VM, a timer) does not move the figure.
const BLOCKS: u64 = 10;

/// Restricts the calling thread to one CPU: the first it may run on.
fn pin_to_one_cpu() -> Result<usize> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let cpu = (0..CpuSet::count())
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .context("no CPU allowed")?;
    let mut one = CpuSet::new();
    one.set(cpu).context("CpuSet::set")?;
    sched_setaffinity(Pid::from_raw(0), &one).context("sched_setaffinity")?;
    Ok(cpu)
}

/// Times `count` calls of `call` in [`BLOCKS`] blocks; ns per call of the median block.
fn timed(count: u64, mut call: impl FnMut() -> Result<()>) -> Result<f64> {
    let per_block = (count / BLOCKS).max(1);
    let mut ns = Vec::with_capacity(BLOCKS as usize);
    for _ in 0..BLOCKS {
        let start = Instant::now();
        for _ in 0..per_block {
            call()?;
        }
        ns.push(start.elapsed().as_secs_f64() * 1e9 / per_block as f64);
    }
    ns.sort_by(f64::total_cmp);
    Ok(ns[ns.len() / 2])
}

/// µs per program started and waited for (fork, exec of `/bin/true`, exit), over `count`
/// programs. stdin and stdout are pipes: what a server has, so the observer probes each.
pub fn exec_storm(count: u64) -> Result<f64> {
    let ns = timed(count, || {
        let status = std::process::Command::new("/bin/true")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .status()
            .context("starting /bin/true")?;
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
        Ok(())
    })?;
    Ok(ns / 1000.0)
}

/// ns per one-byte write(2) to /dev/null, over `count` calls, on a thread pinned to one CPU.
pub fn writes_devnull(count: u64) -> Result<f64> {
    std::thread::spawn(move || -> Result<f64> {
        pin_to_one_cpu()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .context("opening /dev/null")?;
        let byte = [b'x'];
        timed(count, || {
            if f.write(&byte)? != 1 {
                bail!("short write to /dev/null");
            }
            Ok(())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the /dev/null thread panicked"))?
}

/// ns per one-byte write(2) into a pipe that another thread drains (64 KiB reads), over
/// `count` calls. Both threads are pinned to the same CPU: the writer fills the pipe,
/// then the reader empties it, so the figure is the system call's cost rather than
/// cross-CPU wake-ups (which vary by tens of percent from run to run on a VM).
pub fn writes_pipe(count: u64) -> Result<f64> {
    let (mut r, mut w) = std::io::pipe().context("creating a pipe")?;
    let drain = std::thread::spawn(move || -> Result<u64> {
        pin_to_one_cpu()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match r.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let writer = std::thread::spawn(move || -> Result<(f64, u64)> {
        pin_to_one_cpu()?;
        let byte = [b'x'];
        let mut written = 0u64;
        let ns = timed(count, || {
            if w.write(&byte)? != 1 {
                bail!("short write to the pipe");
            }
            written += 1;
            Ok(())
        })?;
        Ok((ns, written))
    });
    let (ns, written) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    let drained = drain
        .join()
        .map_err(|_| anyhow::anyhow!("the drain thread panicked"))??;
    if drained != written {
        bail!("the drain thread read {drained} bytes of {written}");
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_asked_size_and_parse() {
        let mut buf = Vec::new();
        for id in [1, 42, 123_456] {
            request(&mut buf, id, 1024);
            assert_eq!(buf.len(), 1024);
            let v: Value = serde_json::from_slice(&buf).expect("valid JSON");
            assert_eq!(v["id"], id);
            assert_eq!(v["method"], "tools/call");
        }
    }
}
