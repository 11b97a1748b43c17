//! All configurations, medians over runs, the table and the targets.

use mcp_guard_bench::stats::median;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::client::{Latency, RunResult, Target, Throughput, Workload, run_target};

#[derive(clap::Args, Debug)]
pub struct SuiteArgs {
    /// The native echo server (default: `mcp-bench-echo` next to this binary).
    #[arg(long)]
    pub echo: Option<PathBuf>,
    /// The mcp-guard binary; without it the wrapped configurations are skipped.
    #[arg(long)]
    pub mcp_guard: Option<PathBuf>,
    /// A third-party stdio proxy: the FastMCP CLI (`fastmcp run <mcp.json>`).
    #[arg(long)]
    pub fastmcp: Option<PathBuf>,
    /// How to name the third-party proxy in the table.
    #[arg(long, default_value = "FastMCP proxy")]
    pub fastmcp_label: String,
    /// Scratch directory: audit files, stderr logs, results JSON.
    #[arg(long, default_value = "target/bench/shim")]
    pub work_dir: PathBuf,
    /// Whole-suite repetitions; the table shows the median of each figure.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Request line size of the small messages (bytes).
    #[arg(long, default_value_t = 200)]
    pub small_bytes: usize,
    /// Request line size of the large messages (bytes).
    #[arg(long, default_value_t = 1 << 20)]
    pub large_bytes: usize,
    /// Sequential round trips with small messages.
    #[arg(long, default_value_t = 5000)]
    pub rtt_small: usize,
    /// Sequential round trips with large messages.
    #[arg(long, default_value_t = 300)]
    pub rtt_large: usize,
    /// Pipelined small messages.
    #[arg(long, default_value_t = 200_000)]
    pub pipe_small: u64,
    /// Pipelined large messages.
    #[arg(long, default_value_t = 500)]
    pub pipe_large: u64,
    /// Most unanswered small requests in flight while pipelining.
    #[arg(long, default_value_t = 512)]
    pub window_small: u64,
    /// Most unanswered large requests in flight while pipelining.
    #[arg(long, default_value_t = 8)]
    pub window_large: u64,
    /// Cap on one phase's wall time (seconds); a slower configuration sends fewer messages.
    #[arg(long, default_value_t = 2.0)]
    pub phase_secs: f64,
    /// Fail a configuration after this many seconds without progress.
    #[arg(long, default_value_t = 30.0)]
    pub stall_secs: f64,
    /// Idle time after the handshake before the RSS sample (milliseconds).
    #[arg(long, default_value_t = 300)]
    pub idle_ms: u64,
    /// Appends + fdatasyncs for the fsync baseline.
    #[arg(long, default_value_t = 200)]
    pub fsync_iterations: usize,
    /// Skip the zero-logic relay row.
    #[arg(long)]
    pub no_relay: bool,
    /// Only these configurations (comma-separated keys: direct, relay, wrapped-page-cache,
    /// wrapped-durable, third-party).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Keep the audit files.
    #[arg(long)]
    pub keep_audit: bool,
    /// Exit non-zero when a target fails (configuration errors always do).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Direct,
    Relay,
    WrappedPageCache,
    WrappedDurable,
    ThirdParty,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Relay => "relay",
            Kind::WrappedPageCache => "wrapped-page-cache",
            Kind::WrappedDurable => "wrapped-durable",
            Kind::ThirdParty => "third-party",
        }
    }
    fn wrapped(self) -> bool {
        matches!(self, Kind::WrappedPageCache | Kind::WrappedDurable)
    }
}

struct Config {
    kind: Kind,
    label: String,
    /// Builds the target for one run (the audit file is per run).
    make: Box<dyn Fn(&Path) -> Target>,
}

#[derive(Serialize, Default, Clone)]
struct Summary {
    key: &'static str,
    label: String,
    command: String,
    runs_ok: usize,
    errors: Vec<String>,
    rss_idle_kib: Option<f64>,
    rss_after_kib: Option<f64>,
    rss_peak_kib: Option<f64>,
    audit_bytes: Option<f64>,
    rtt_small: Latency,
    rtt_large: Latency,
    pipe_small: Throughput,
    pipe_large: Throughput,
    raw: Vec<RunResult>,
}

#[derive(Serialize)]
struct Verdict {
    target: String,
    measured: String,
    pass: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    host: String,
    fsync: Latency,
    small_bytes: usize,
    large_bytes: usize,
    runs: usize,
    configs: Vec<Summary>,
    verdicts: Vec<Verdict>,
}

fn median_opt(v: impl Iterator<Item = Option<u64>>) -> Option<f64> {
    let v: Vec<f64> = v.flatten().map(|x| x as f64).collect();
    (!v.is_empty()).then(|| median(&v))
}

fn med_lat(rs: &[RunResult], f: impl Fn(&RunResult) -> Latency) -> Latency {
    Latency {
        n: rs.iter().map(|r| f(r).n).sum(),
        p50_us: median(&rs.iter().map(|r| f(r).p50_us).collect::<Vec<_>>()),
        p99_us: median(&rs.iter().map(|r| f(r).p99_us).collect::<Vec<_>>()),
    }
}

fn med_thr(rs: &[RunResult], f: impl Fn(&RunResult) -> Throughput) -> Throughput {
    Throughput {
        msgs: rs.iter().map(|r| f(r).msgs).sum(),
        secs: rs.iter().map(|r| f(r).secs).sum(),
        msgs_per_s: median(&rs.iter().map(|r| f(r).msgs_per_s).collect::<Vec<_>>()),
        mb_per_s: median(&rs.iter().map(|r| f(r).mb_per_s).collect::<Vec<_>>()),
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(name))
}

fn abs(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

fn configs(a: &SuiteArgs, work: &Path) -> Result<(Vec<Config>, Vec<String>)> {
    let echo = abs(&match &a.echo {
        Some(p) => p.clone(),
        None => sibling("mcp-bench-echo")?,
    })?;
    if !echo.is_file() {
        bail!("echo server not found at {}", echo.display());
    }
    let echo_s = echo.to_string_lossy().to_string();
    let mut notes = Vec::new();
    let mut out: Vec<Config> = Vec::new();
    {
        let echo_s = echo_s.clone();
        out.push(Config {
            kind: Kind::Direct,
            label: "direct".into(),
            make: Box::new(move |_| Target {
                program: echo_s.clone(),
                args: vec![],
                env: vec![],
            }),
        });
    }
    if !a.no_relay {
        let me = std::env::current_exe()?.to_string_lossy().to_string();
        let echo_s = echo_s.clone();
        out.push(Config {
            kind: Kind::Relay,
            label: "byte relay (floor)".into(),
            make: Box::new(move |_| Target {
                program: me.clone(),
                args: vec!["relay".into(), echo_s.clone()],
                env: vec![],
            }),
        });
    }
    match &a.mcp_guard {
        Some(g) if g.is_file() => {
            let g = abs(g)?.to_string_lossy().to_string();
            for (kind, mode) in [
                (Kind::WrappedPageCache, "page-cache"),
                (Kind::WrappedDurable, "durable"),
            ] {
                let (g, echo_s) = (g.clone(), echo_s.clone());
                out.push(Config {
                    kind,
                    label: format!("mcp-guard wrap, {mode} audit"),
                    make: Box::new(move |audit| Target {
                        program: g.clone(),
                        args: vec![
                            "wrap".into(),
                            "--name".into(),
                            "bench".into(),
                            "--audit".into(),
                            audit.to_string_lossy().to_string(),
                            "--".into(),
                            echo_s.clone(),
                        ],
                        env: vec![("MCP_GUARD_AUDIT_DURABILITY".into(), mode.into())],
                    }),
                });
            }
        }
        Some(g) => notes.push(format!(
            "mcp-guard not found at {}: wrapped rows skipped",
            g.display()
        )),
        None => notes.push("no --mcp-guard given: wrapped rows skipped".into()),
    }
    match &a.fastmcp {
        Some(f) if f.is_file() => {
            let f = abs(f)?.to_string_lossy().to_string();
            let cfg = work.join("fastmcp-mcp.json");
            std::fs::write(
                &cfg,
                serde_json::to_vec_pretty(&serde_json::json!({
                    "mcpServers": {"bench": {"command": echo_s, "args": []}}
                }))?,
            )?;
            let cfg = cfg.to_string_lossy().to_string();
            out.push(Config {
                kind: Kind::ThirdParty,
                label: a.fastmcp_label.clone(),
                make: Box::new(move |_| Target {
                    program: f.clone(),
                    args: vec![
                        "run".into(),
                        cfg.clone(),
                        "--transport".into(),
                        "stdio".into(),
                        "--no-banner".into(),
                        "--log-level".into(),
                        "WARNING".into(),
                    ],
                    env: vec![],
                }),
            });
        }
        Some(f) => notes.push(format!(
            "third-party proxy not found at {}: row skipped",
            f.display()
        )),
        None => notes.push("no --fastmcp given: third-party row skipped".into()),
    }
    if !a.only.is_empty() {
        out.retain(|c| c.kind == Kind::Direct || a.only.iter().any(|o| o == c.kind.key()));
    }
    Ok((out, notes))
}

fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "—".into()
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn fmt_mib(kib: Option<f64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1} MiB", k / 1024.0))
}

fn fmt_size(b: usize) -> String {
    if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

fn host_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}

pub fn run(a: &SuiteArgs) -> Result<()> {
    let work = abs(&a.work_dir)?;
    std::fs::create_dir_all(&work)?;
    let (configs, notes) = configs(a, &work)?;
    let w = Workload {
        small_bytes: a.small_bytes,
        large_bytes: a.large_bytes,
        rtt_small: a.rtt_small,
        rtt_large: a.rtt_large,
        pipe_small: a.pipe_small,
        pipe_large: a.pipe_large,
        window_small: a.window_small,
        window_large: a.window_large,
        phase_cap: Duration::from_secs_f64(a.phase_secs),
        stall_timeout: Duration::from_secs_f64(a.stall_secs),
        idle_settle: Duration::from_millis(a.idle_ms),
    };
    for n in &notes {
        eprintln!("note: {n}");
    }

    let mut fsyncs = Vec::new();
    let mut results: Vec<Vec<RunResult>> = configs.iter().map(|_| Vec::new()).collect();
    let mut audit_sizes: Vec<Vec<u64>> = configs.iter().map(|_| Vec::new()).collect();
    let mut errors: Vec<Vec<String>> = configs.iter().map(|_| Vec::new()).collect();
    for run in 0..a.runs.max(1) {
        let f = crate::fsync::measure(&work, a.fsync_iterations)?;
        eprintln!(
            "run {}/{}: fdatasync p50 {}",
            run + 1,
            a.runs.max(1),
            fmt_us(f.p50_us)
        );
        fsyncs.push(f);
        for (i, c) in configs.iter().enumerate() {
            let audit = work.join(format!("audit-{}-{run}.jsonl", c.kind.key()));
            let _ = std::fs::remove_file(&audit);
            let target = (c.make)(&audit);
            let log = work.join(format!("stderr-{}-{run}.log", c.kind.key()));
            let t0 = std::time::Instant::now();
            match run_target(&target, &w, &log) {
                Ok(r) => {
                    eprintln!(
                        "  {:<34} {:>5.1}s  rtt {} / {}  pipe {:.0} msg/s / {:.0} MB/s",
                        c.label,
                        t0.elapsed().as_secs_f64(),
                        fmt_us(r.rtt_small.p50_us),
                        fmt_us(r.rtt_large.p50_us),
                        r.pipe_small.msgs_per_s,
                        r.pipe_large.mb_per_s
                    );
                    results[i].push(r);
                }
                Err(e) => {
                    eprintln!("  {:<34} ERROR: {e:#}", c.label);
                    errors[i].push(format!("{e:#}"));
                }
            }
            if c.kind.wrapped() {
                if let Ok(m) = std::fs::metadata(&audit) {
                    audit_sizes[i].push(m.len());
                }
                if !a.keep_audit {
                    let _ = std::fs::remove_file(&audit);
                }
            }
        }
    }

    let fsync = Latency {
        n: fsyncs.iter().map(|f| f.n).sum(),
        p50_us: median(&fsyncs.iter().map(|f| f.p50_us).collect::<Vec<_>>()),
        p99_us: median(&fsyncs.iter().map(|f| f.p99_us).collect::<Vec<_>>()),
    };
    let summaries: Vec<Summary> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let rs = &results[i];
            Summary {
                key: c.kind.key(),
                label: c.label.clone(),
                command: (c.make)(&work.join(format!("audit-{}-N.jsonl", c.kind.key()))).display(),
                runs_ok: rs.len(),
                errors: errors[i].clone(),
                rss_idle_kib: median_opt(rs.iter().map(|r| r.rss_idle_kib)),
                rss_after_kib: median_opt(rs.iter().map(|r| r.rss_after_kib)),
                rss_peak_kib: median_opt(rs.iter().map(|r| r.rss_peak_kib)),
                audit_bytes: median_opt(audit_sizes[i].iter().map(|&b| Some(b))),
                rtt_small: med_lat(rs, |r| r.rtt_small),
                rtt_large: med_lat(rs, |r| r.rtt_large),
                pipe_small: med_thr(rs, |r| r.pipe_small),
                pipe_large: med_thr(rs, |r| r.pipe_large),
                raw: rs.clone(),
            }
        })
        .collect();

    let get = |k: Kind| summaries.iter().find(|s| s.key == k.key() && s.runs_ok > 0);
    let direct = get(Kind::Direct);
    let verdicts = judge(
        direct,
        get(Kind::WrappedPageCache),
        get(Kind::WrappedDurable),
        &fsync,
        a,
    );

    // The table.
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Host: {}. fdatasync (small append) on the audit filesystem: p50 {}, p99 {}. \
         Median of {} run(s).\n",
        host_line(),
        fmt_us(fsync.p50_us),
        fmt_us(fsync.p99_us),
        a.runs.max(1)
    );
    let _ = writeln!(
        t,
        "| config | message | rtt p50 | rtt p99 | p50 vs direct | pipelined msg/s | MB/s | msg/s vs direct | RSS idle / peak (spawned process) |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in &summaries {
        if s.runs_ok == 0 {
            let _ = writeln!(t, "| {} | — | error | | | | | | |", s.label);
            continue;
        }
        for (size, lat, thr, dl, dt) in [
            (
                a.small_bytes,
                s.rtt_small,
                s.pipe_small,
                direct.map(|d| d.rtt_small),
                direct.map(|d| d.pipe_small),
            ),
            (
                a.large_bytes,
                s.rtt_large,
                s.pipe_large,
                direct.map(|d| d.rtt_large),
                direct.map(|d| d.pipe_large),
            ),
        ] {
            let rl = dl.map_or("—".into(), |d| format!("{:.2}x", lat.p50_us / d.p50_us));
            let rt = dt.map_or("—".into(), |d| {
                format!("{:.2}x", thr.msgs_per_s / d.msgs_per_s)
            });
            let rss = if size == a.small_bytes {
                format!("{} / {}", fmt_mib(s.rss_idle_kib), fmt_mib(s.rss_peak_kib))
            } else {
                String::new()
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
                s.label,
                fmt_size(size),
                fmt_us(lat.p50_us),
                fmt_us(lat.p99_us),
                rl,
                thr.msgs_per_s,
                if thr.mb_per_s < 10.0 {
                    format!("{:.2}", thr.mb_per_s)
                } else {
                    format!("{:.0}", thr.mb_per_s)
                },
                rt,
                rss
            );
        }
    }
    let _ = writeln!(t, "\n| target | measured | result |\n|---|---|---|");
    for v in &verdicts {
        let r = match v.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a",
        };
        let _ = writeln!(t, "| {} | {} | {} |", v.target, v.measured, r);
    }
    for s in &summaries {
        let _ = writeln!(t, "\n`{}`: `{}`", s.label, s.command);
        if let Some(b) = s.audit_bytes {
            let _ = writeln!(
                t,
                "(audit file after one run: {:.1} MiB)",
                b / (1024.0 * 1024.0)
            );
        }
        for e in s.errors.iter().take(1) {
            let _ = writeln!(t, "error: {}", e.lines().next().unwrap_or_default());
        }
    }
    for n in &notes {
        let _ = writeln!(t, "\nnote: {n}");
    }
    println!("\n{t}");

    let report = Report {
        host: host_line(),
        fsync,
        small_bytes: a.small_bytes,
        large_bytes: a.large_bytes,
        runs: a.runs.max(1),
        configs: summaries.clone(),
        verdicts,
    };
    let json = work.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(work.join("results.md"), &t)?;
    eprintln!(
        "results: {} and {}",
        json.display(),
        work.join("results.md").display()
    );

    let essential_failed = summaries.iter().any(|s| {
        s.runs_ok == 0 && matches!(s.key, "direct" | "wrapped-page-cache" | "wrapped-durable")
    });
    if essential_failed {
        bail!("a direct or wrapped configuration failed (see above)");
    }
    if a.strict && report.verdicts.iter().any(|v| v.pass == Some(false)) {
        bail!("a target failed");
    }
    Ok(())
}

fn judge(
    direct: Option<&Summary>,
    pc: Option<&Summary>,
    durable: Option<&Summary>,
    fsync: &Latency,
    a: &SuiteArgs,
) -> Vec<Verdict> {
    let mut v = Vec::new();
    let sizes = [(a.small_bytes, true), (a.large_bytes, false)];
    let lat = |s: &Summary, small: bool| if small { s.rtt_small } else { s.rtt_large };
    let thr = |s: &Summary, small: bool| if small { s.pipe_small } else { s.pipe_large };
    for (size, small) in sizes {
        let target = format!(
            "page-cache audit: wrapped p50 ≤ 1.2x direct ({})",
            fmt_size(size)
        );
        v.push(match (direct, pc) {
            (Some(d), Some(w)) => {
                let (dv, wv) = (lat(d, small).p50_us, lat(w, small).p50_us);
                Verdict {
                    target,
                    measured: format!("{} vs {} ({:.2}x)", fmt_us(wv), fmt_us(dv), wv / dv),
                    pass: Some(wv <= 1.2 * dv),
                }
            }
            _ => Verdict {
                target,
                measured: "not measured".into(),
                pass: None,
            },
        });
    }
    for (size, small) in sizes {
        let target = format!(
            "durable audit: wrapped p50 ≤ direct + one fdatasync ({})",
            fmt_size(size)
        );
        v.push(match (direct, durable) {
            (Some(d), Some(w)) => {
                let (dv, wv) = (lat(d, small).p50_us, lat(w, small).p50_us);
                let bound = dv + fsync.p50_us;
                Verdict {
                    target,
                    measured: format!(
                        "{} vs {} + {} = {}",
                        fmt_us(wv),
                        fmt_us(dv),
                        fmt_us(fsync.p50_us),
                        fmt_us(bound)
                    ),
                    pass: Some(wv <= bound),
                }
            }
            _ => Verdict {
                target,
                measured: "not measured".into(),
                pass: None,
            },
        });
    }
    for (size, small, min) in [(a.small_bytes, true, 0.8), (a.large_bytes, false, 0.9)] {
        let target = format!(
            "durable audit: pipelined msg/s ≥ {min}x direct ({})",
            fmt_size(size)
        );
        v.push(match (direct, durable) {
            (Some(d), Some(w)) => {
                let (dv, wv) = (thr(d, small).msgs_per_s, thr(w, small).msgs_per_s);
                Verdict {
                    target,
                    measured: format!("{wv:.0} vs {dv:.0} msg/s ({:.2}x)", wv / dv),
                    pass: Some(wv >= min * dv),
                }
            }
            _ => Verdict {
                target,
                measured: "not measured".into(),
                pass: None,
            },
        });
    }
    let target = "shim RSS idle < 16 MiB".to_string();
    let rss: Vec<f64> = [pc, durable]
        .into_iter()
        .flatten()
        .filter_map(|s| s.rss_idle_kib)
        .collect();
    v.push(if rss.is_empty() {
        Verdict {
            target,
            measured: "not measured".into(),
            pass: None,
        }
    } else {
        let max = rss.iter().copied().fold(0.0, f64::max);
        Verdict {
            target,
            measured: format!("{} (largest of the wrapped rows)", fmt_mib(Some(max))),
            pass: Some(max < 16.0 * 1024.0),
        }
    });
    v
}
