//! The cost of one durable audit commit on a filesystem: small append + fdatasync.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::Latency;
use mcp_guard_bench::stats::percentile;

pub fn measure(dir: &Path, iterations: usize) -> Result<Latency> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(".mcp-bench-fsync-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let record = [b'x'; 255];
    let mut samples: Vec<Duration> = Vec::with_capacity(iterations);
    let res = (|| -> Result<()> {
        // One untimed commit allocates the first block.
        f.write_all(&record)?;
        f.write_all(b"\n")?;
        f.sync_data()?;
        for _ in 0..iterations.max(1) {
            let t0 = Instant::now();
            f.write_all(&record)?;
            f.write_all(b"\n")?;
            f.sync_data()?;
            samples.push(t0.elapsed());
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    res?;
    samples.sort_unstable();
    Ok(Latency {
        n: samples.len(),
        p50_us: percentile(&samples, 0.5).as_secs_f64() * 1e6,
        p99_us: percentile(&samples, 0.99).as_secs_f64() * 1e6,
    })
}
