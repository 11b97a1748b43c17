//! The managed decision round trip: a client speaking the shim's protocol to a running
//! `mcp-guard daemon` sends one `tools/call` per `JUDGE` and waits for the `PLAN`, as a
//! managed shim does before it forwards a request. Baseline, same run: the same frames
//! bounced off an echo thread over a unix socket pair (the cost of the IPC alone).
//!
//! `mcp-bench-managed --socket /run/.../mcp-guard.sock [--iterations N]`; run by
//! `cargo xtask bench managed`, which starts the daemon with page-cache durability (the
//! figure excludes the fsync, as durable mode adds one per commit).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use mcp_guard::frame::Frame;
use mcp_guard::guard::Direction;
use mcp_guard::managed::{self, Hello, Welcome};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    /// Decisions timed. Each is answered too, so a run writes two records per decision:
    /// (warmup + iterations) × 2 stays inside a session's audit budget (10,000 at once).
    #[arg(long, default_value_t = 4_000)]
    iterations: usize,
    #[arg(long, default_value_t = 500)]
    warmup: usize,
}

fn read_frame(s: &mut UnixStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > managed::MAX_FRAME {
        bail!("bad frame length {len}");
    }
    let mut buf = vec![0; len];
    s.read_exact(&mut buf)?;
    let kind = buf.remove(0);
    Ok((kind, buf))
}

fn send(s: &mut UnixStream, kind: u8, payload: &[u8]) -> anyhow::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    managed::frame(&mut out, kind, payload);
    s.write_all(&out)?;
    Ok(())
}

fn judge_payload(seq: u64) -> Vec<u8> {
    let line = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{seq},\"method\":\"tools/call\",\"params\":{{\"name\":\"read_file\",\"arguments\":{{\"path\":\"/srv/data/report-{seq}.txt\"}}}}}}\n"
    );
    line_payload(seq, Direction::ToServer, &line)
}

/// The server's answer to request `id`, as the shim sends it to be judged (frame `seq`).
fn answer_payload(seq: u64, id: u64) -> Vec<u8> {
    let line = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"ok\"}}]}}}}\n"
    );
    line_payload(seq, Direction::ToClient, &line)
}

/// A JUDGE frame of one newline-ended line.
fn line_payload(seq: u64, dir: Direction, line: &str) -> Vec<u8> {
    let frames = [Frame::Line {
        msg: 0..line.len() - 1,
        raw: 0..line.len(),
    }];
    managed::encode_judge(seq, dir, line.as_bytes(), &frames)
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len().max(1) as u32;
    Stats {
        p50: v[v.len() / 2],
        p99: v[v.len() * 99 / 100],
        mean,
    }
}

/// Per-decision cost inside one process: (judge alone, judge + commit).
fn in_process(args: &Args) -> anyhow::Result<(Stats, Stats)> {
    use mcp_guard::audit::{Audit, Context, Durability};
    use mcp_guard::guard::{Session, Subject};
    use std::sync::Arc;
    let dir = tempfile::tempdir()?;
    let (audit, writer) = Audit::open(&dir.path().join("audit.jsonl"), Durability::PageCache)?;
    let policy = Arc::new(mcp_guard::policy::Policy::parse(
        "default = \"allow\"\n\n[[rule]]\nid = \"no-writes\"\ntool = \"write_file\"\naction = \"deny\"\n",
        "bench",
    )?);
    let raw =
        |v: serde_json::Value| serde_json::value::to_raw_value(&v).map_err(anyhow::Error::from);
    let ctx = Arc::new(Context {
        session: "bench".into(),
        transport: mcp_guard::audit::Transport::Managed,
        policy_sha256: policy.sha256().to_string(),
        mode: mcp_guard::policy::Mode::Enforce,
        principal: raw(serde_json::json!({"uid": 0}))?,
        agent_host: raw(serde_json::json!(null))?,
        chain: raw(serde_json::json!([]))?,
        server: raw(serde_json::json!({"name": "bench"}))?,
    });
    let mut session = Session::new("bench".into(), policy, ctx, 4 << 20, Subject::default());
    // The calls are never answered here: no in-flight bound, no audit budget.
    session.set_limits(mcp_guard::guard::Limits::NONE);
    let (mut only, mut with_commit) = (Vec::new(), Vec::new());
    for i in 0..(args.warmup + args.iterations) {
        let line = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\",\"params\":{{\"name\":\"read_file\",\"arguments\":{{\"path\":\"/srv/data/report-{i}.txt\"}}}}}}\n"
        );
        let frames = [Frame::Line {
            msg: 0..line.len() - 1,
            raw: 0..line.len(),
        }];
        let t = Instant::now();
        let plan = session.judge(Direction::ToServer, line.as_bytes(), frames);
        let judged = t.elapsed();
        audit.commit_blocking(plan.commit)?;
        let total = t.elapsed();
        if i >= args.warmup {
            only.push(judged);
            with_commit.push(total);
        }
    }
    audit.close(writer);
    Ok((stats(only), stats(with_commit)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The "server": a child of this process, as the daemon requires.
    let mut child = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .context("spawn sleep")?;
    let result = run(&args, child.id());
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn run(args: &Args, server_pid: u32) -> anyhow::Result<()> {
    let mut s = UnixStream::connect(&args.socket)
        .with_context(|| format!("connect {}", args.socket.display()))?;
    let hello = Hello {
        v: 1,
        name: "bench".into(),
        server_pid,
        policy: None,
        policy_origin: None,
        resumed: false,
    };
    send(&mut s, managed::HELLO, &serde_json::to_vec(&hello)?)?;
    let (kind, payload) = read_frame(&mut s)?;
    let w: Welcome = serde_json::from_slice(&payload)?;
    if kind != managed::WELCOME || !w.ok {
        bail!("the daemon refused: {:?}", w.error);
    }
    let mut daemon = Vec::with_capacity(args.iterations);
    for i in 0..(args.warmup + args.iterations) {
        let payload = judge_payload(i as u64 + 1);
        let t = Instant::now();
        send(&mut s, managed::JUDGE, &payload)?;
        let (kind, plan) = read_frame(&mut s)?;
        let dt = t.elapsed();
        if kind != managed::PLAN {
            bail!("expected a plan, got frame type {kind}");
        }
        let (_, acts) = managed::decode_plan(&plan, payload.len())?;
        if !matches!(acts.as_slice(), [mcp_guard::guard::Act::Forward(_)]) {
            bail!("the request was not forwarded: {acts:?}");
        }
        if i >= args.warmup {
            daemon.push(dt);
        }
        // Answered, untimed, as a session goes on (requests in flight are bounded).
        send(
            &mut s,
            managed::JUDGE,
            &answer_payload(i as u64 + 1, i as u64 + 1),
        )?;
        let (kind, _) = read_frame(&mut s)?;
        if kind != managed::PLAN {
            bail!("expected a plan for the answer, got frame type {kind}");
        }
    }

    // Baseline: the same frame sizes over a unix socket pair to an echo thread.
    let (mut a, mut b) = UnixStream::pair()?;
    let reply_len = managed::encode_plan(1, &[mcp_guard::guard::Act::Forward(0..100)]).len();
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        let reply = vec![0u8; reply_len];
        while let Ok((_, _)) = read_frame(&mut b) {
            send(&mut b, managed::PLAN, &reply)?;
        }
        Ok(())
    });
    let mut floor = Vec::with_capacity(args.iterations);
    for i in 0..(args.warmup + args.iterations) {
        let payload = judge_payload(i as u64 + 1);
        let t = Instant::now();
        send(&mut a, managed::JUDGE, &payload)?;
        read_frame(&mut a)?;
        if i >= args.warmup {
            floor.push(t.elapsed());
        }
    }
    drop(a);
    let _ = echo.join();

    // The daemon's work without the IPC, in this process: judge, then commit the record
    // (chained, signed, page cache), as the daemon does per decision.
    let (judge_only, judge_commit) = in_process(args)?;

    let (d, f) = (stats(daemon), stats(floor));
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    println!(
        "managed decision round trip, {} requests (after {} warm-up):",
        args.iterations, args.warmup
    );
    println!(
        "  {:<44} p50 {:>7.1} us   p99 {:>7.1} us   mean {:>7.1} us",
        "unix socket echo (IPC floor)",
        us(f.p50),
        us(f.p99),
        us(f.mean)
    );
    println!(
        "  {:<44} p50 {:>7.1} us   p99 {:>7.1} us   mean {:>7.1} us",
        "daemon: judge + record (page cache) + answer",
        us(d.p50),
        us(d.p99),
        us(d.mean)
    );
    println!(
        "  {:<44} p50 {:>7.1} us",
        "in process: judge only",
        us(judge_only.p50)
    );
    println!(
        "  {:<44} p50 {:>7.1} us",
        "in process: judge + record (page cache)",
        us(judge_commit.p50)
    );
    let verdict = if d.p50 <= Duration::from_micros(100) {
        "PASS"
    } else {
        "FAIL"
    };
    println!(
        "  median {:.1} us vs target <= 100 us: {verdict}; {:.1}x the IPC floor",
        us(d.p50),
        us(d.p50) / us(f.p50).max(0.001)
    );
    Ok(())
}
