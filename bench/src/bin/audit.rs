//! `cargo xtask bench audit`: the audit log's throughput and latency, against the disk's
//! own `fdatasync` rate measured in the same run.
//!
//! 1. Throughput: W threads commit one record at a time as fast as they can, durable
//!    (written, chained, signed, `fdatasync`ed before the commit returns); concurrent
//!    commits share `fdatasync`s. Baseline: one thread doing append + `fdatasync`.
//! 2. Latency: one writer paced at 1,000 commits/s; p50/p99 commit latency.
//! 3. Verification: `mcp-guard audit verify` over the log just written, records/s.

use mcp_guard_bench::stats::percentile;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use mcp_guard::audit::{Audit, Context, Durability, Record};
use serde_json::value::RawValue;

#[derive(Parser)]
struct Args {
    /// Directory for the logs (on the filesystem to measure).
    #[arg(long, default_value = "target/bench/audit")]
    work_dir: PathBuf,
    /// Concurrent committers in the throughput phase.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Length of the throughput phase.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Commits in the paced latency phase (at 1,000/s).
    #[arg(long, default_value_t = 3000)]
    paced: usize,
    /// The mcp-guard binary, for the verification phase.
    #[arg(long)]
    mcp_guard: PathBuf,
}

fn ctx() -> Result<Arc<Context>> {
    let raw = |s: &str| RawValue::from_string(s.to_string()).context("raw JSON");
    Ok(Arc::new(Context {
        session: mcp_guard::audit::random_id().into(),
        transport: mcp_guard::audit::Transport::Shim,
        policy_sha256: "ab".repeat(32),
        mode: mcp_guard::policy::Mode::Enforce,
        principal: raw(r#"{"uid":1000,"euid":1000,"user":"alice","gid":1000,"groups":[1000,27]}"#)?,
        agent_host: raw(
            r#"{"pid":4242,"comm":"claude","exe":"/usr/bin/node","exec_id":"b00t:100:4242","cmdline":["claude"]}"#,
        )?,
        chain: raw(
            r#"[{"pid":4242,"comm":"claude","exe":"/usr/bin/node"},{"pid":4000,"comm":"bash","exe":"/usr/bin/bash"}]"#,
        )?,
        server: raw(
            r#"{"name":"filesystem","pid":4300,"exe":"/usr/bin/node","argv":["mcp-server-filesystem","/home/alice"],"exec_id":"b00t:120:4300"}"#,
        )?,
    }))
}

fn record(ctx: &Arc<Context>, n: u64) -> Record {
    let mut r = Record::new(mcp_guard::audit::Kind::Request, ctx);
    r.direction = Some(mcp_guard::audit::Flow::ClientToServer);
    r.decision = Some(mcp_guard::audit::Decision::Allow);
    r.rule = Some("default".into());
    r.method = Some("tools/call".into());
    r.tool = Some("read_text_file".into());
    r.request_id = Some(n.to_string());
    r.args_sha256 = Some("cd".repeat(32));
    r.bytes = Some(180);
    r
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Append 256 bytes + fdatasync in a loop: what the disk allows one writer.
fn fsync_baseline(dir: &Path, secs: f64) -> Result<f64> {
    let path = dir.join("fsync-baseline");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)?;
    let line = [b'x'; 256];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&line)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// A fresh log at `path`: the log, its head file and the files it was rotated into by an
/// earlier run removed.
fn fresh(path: &Path) {
    let _ = std::fs::remove_file(path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn throughput(
    dir: &Path,
    writers: usize,
    secs: f64,
    durability: Durability,
) -> Result<(f64, PathBuf)> {
    let path = dir.join(format!("throughput-{durability:?}.jsonl").to_lowercase());
    fresh(&path);
    let (audit, thread) = Audit::open(&path, durability)?;
    let ctx = ctx()?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                let audit = audit.clone();
                let ctx = ctx.clone();
                s.spawn(move || -> Result<u64> {
                    let rt = tokio::runtime::Builder::new_current_thread().build()?;
                    let mut n = 0;
                    while Instant::now() < deadline {
                        rt.block_on(audit.commit(vec![record(&ctx, n)]))?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("writer panicked"))
                    .and_then(|r| r)
            })
            .sum::<Result<u64>>()
    })?;
    let rate = total as f64 / start.elapsed().as_secs_f64();
    audit.close(thread);
    Ok((rate, path))
}

fn paced(dir: &Path, count: usize) -> Result<Vec<Duration>> {
    let path = dir.join("paced.jsonl");
    fresh(&path);
    let (audit, thread) = Audit::open(&path, Durability::Durable)?;
    let ctx = ctx()?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let mut lat = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let due = start + Duration::from_millis(i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        rt.block_on(audit.commit(vec![record(&ctx, i as u64)]))?;
        lat.push(t.elapsed());
    }
    audit.close(thread);
    lat.sort();
    Ok(lat)
}

/// Verifies the log with the files it was rotated into (`<log>.<first>-<last>`, oldest
/// first): the whole chain written, not only what the live file kept.
fn verify(bin: &Path, log: &Path) -> Result<(f64, u64)> {
    let name = log
        .file_name()
        .map(|n| format!("{}.", n.to_string_lossy()))
        .unwrap_or_default();
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(log.parent().unwrap_or(Path::new(".")))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let rest = path.file_name()?.to_str()?.strip_prefix(&name)?.to_string();
            let (first, last) = rest.split_once('-')?;
            last.parse::<u64>().ok()?;
            Some((first.parse().ok()?, path))
        })
        .collect();
    files.sort();
    let mut files: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
    files.push(log.to_path_buf());
    let mut lines = 0;
    for f in &files {
        lines += std::fs::read_to_string(f)?.lines().count() as u64;
    }
    let start = Instant::now();
    let out = std::process::Command::new(bin)
        .args(["audit", "verify"])
        .args(&files)
        .output()?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "audit verify failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok((lines as f64 / secs, lines))
}

fn main() -> Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.work_dir)?;
    let dir = a.work_dir.canonicalize()?;
    println!(
        "audit benchmark in {} ({} writers, {:.0} s per phase)",
        dir.display(),
        a.writers,
        a.secs
    );

    let baseline = fsync_baseline(&dir, a.secs)?;
    let (one, _) = throughput(&dir, 1, a.secs, Durability::Durable)?;
    let (durable, log) = throughput(&dir, a.writers, a.secs, Durability::Durable)?;
    let (page_cache, _) = throughput(&dir, a.writers, a.secs, Durability::PageCache)?;
    let lat = paced(&dir, a.paced)?;
    let (verify_rate, verified) = verify(&a.mcp_guard, &log)?;

    let p99 = percentile(&lat, 0.99);
    let rows = [
        (
            "append + fdatasync, 1 writer (disk baseline)",
            format!("{baseline:.0} /s"),
            "-".to_string(),
        ),
        (
            "durable records, 1 writer",
            format!("{one:.0} /s"),
            format!("{:.2}x baseline", one / baseline),
        ),
        (
            "durable records, group commit",
            format!("{durable:.0} /s"),
            format!(
                "{:.1}x baseline; target ≥ 20000/s: {}",
                durable / baseline,
                if durable >= 20_000.0 { "PASS" } else { "FAIL" }
            ),
        ),
        (
            "page-cache records, same writers",
            format!("{page_cache:.0} /s"),
            format!("{:.2}x durable", page_cache / durable),
        ),
        (
            "commit latency at 1,000/s (durable)",
            format!("p50 {} p99 {}", us(percentile(&lat, 0.5)), us(p99)),
            format!(
                "target p99 < 5 ms: {}",
                if p99 < Duration::from_millis(5) {
                    "PASS"
                } else {
                    "FAIL"
                }
            ),
        ),
        (
            "audit verify",
            format!("{verify_rate:.0} records/s ({verified} records)"),
            format!(
                "target ≥ 100000/s: {}",
                if verify_rate >= 100_000.0 {
                    "PASS"
                } else {
                    "FAIL"
                }
            ),
        ),
    ];
    println!("\n| measure | figure | against |\n|---|---:|---|");
    for (m, f, t) in rows {
        println!("| {m} | {f} | {t} |");
    }
    Ok(())
}
