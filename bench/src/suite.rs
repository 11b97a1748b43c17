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
    /// A third-party stdio proxy as `<key>=<executable>` (repeatable). Keys: `fastmcp`
    /// (the FastMCP CLI: `fastmcp run <mcp.json> --transport stdio`), `mcp-firewall`
    /// (`mcp-firewall wrap --config <yaml> -- <echo>`, audit log on, per run in the work
    /// directory).
    #[arg(long = "peer", value_name = "KEY=EXE")]
    pub peers: Vec<String>,
    /// How to name a third-party proxy in the table, as `<key>=<label>` (repeatable).
    #[arg(long = "peer-label", value_name = "KEY=LABEL")]
    pub peer_labels: Vec<String>,
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
    /// wrapped-durable, fastmcp, mcp-firewall; third-party selects every peer). The direct
    /// row always runs.
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
    FastMcp,
    McpFirewall,
}

/// The third-party proxies `--peer` knows.
const PEERS: [Kind; 2] = [Kind::FastMcp, Kind::McpFirewall];

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Relay => "relay",
            Kind::WrappedPageCache => "wrapped-page-cache",
            Kind::WrappedDurable => "wrapped-durable",
            Kind::FastMcp => "fastmcp",
            Kind::McpFirewall => "mcp-firewall",
        }
    }
    fn peer(self) -> bool {
        PEERS.contains(&self)
    }
    /// Rows that write an audit file at the per-run path (its size is reported).
    fn audited(self) -> bool {
        matches!(
            self,
            Kind::WrappedPageCache | Kind::WrappedDurable | Kind::McpFirewall
        )
    }
    fn default_label(self) -> &'static str {
        match self {
            Kind::FastMcp => "FastMCP proxy",
            Kind::McpFirewall => "mcp-firewall wrap",
            _ => self.key(),
        }
    }
    fn selected_by(self, only: &str) -> bool {
        only == self.key() || (only == "third-party" && self.peer())
    }
}

/// Writes what one run needs before it starts (given the run's audit path).
type Prepare = Box<dyn Fn(&Path) -> Result<()>>;

struct Config {
    kind: Kind,
    label: String,
    /// Called before each run with the run's audit path.
    prepare: Option<Prepare>,
    /// Builds the target for one run (the audit file is per run).
    make: Box<dyn Fn(&Path) -> Target>,
    /// Shown under the command line in the report.
    note: Option<String>,
}

#[derive(Serialize, Default, Clone)]
struct Summary {
    key: &'static str,
    label: String,
    command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
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
            prepare: None,
            note: None,
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
            prepare: None,
            note: None,
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
                    prepare: None,
                    note: None,
                    make: Box::new(move |audit| Target {
                        program: g.clone(),
                        args: vec![
                            "wrap".into(),
                            "--name".into(),
                            "bench".into(),
                            "--audit".into(),
                            audit.to_string_lossy().to_string(),
                            // The benchmark sends far more than a session's default
                            // audit budget allows; the budget is a flood guard, not a cost.
                            "--audit-burst".into(),
                            "0".into(),
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
    let mut peers: Vec<(Kind, PathBuf)> = Vec::new();
    for spec in &a.peers {
        let (kind, exe) = parse_peer(spec)?;
        peers.retain(|(k, _)| *k != kind);
        peers.push((kind, PathBuf::from(exe)));
    }
    let mut labels: Vec<(Kind, String)> = Vec::new();
    for spec in &a.peer_labels {
        let (kind, label) = parse_peer(spec)?;
        labels.push((kind, label.to_string()));
    }
    for kind in PEERS {
        let Some((_, exe)) = peers.iter().find(|(k, _)| *k == kind) else {
            notes.push(format!(
                "no --peer {}=<exe> given: {} row skipped",
                kind.key(),
                kind.default_label()
            ));
            continue;
        };
        if !exe.is_file() {
            notes.push(format!(
                "{} not found at {}: row skipped",
                kind.key(),
                exe.display()
            ));
            continue;
        }
        let exe = abs(exe)?.to_string_lossy().to_string();
        let label = labels
            .iter()
            .rev()
            .find(|(k, _)| *k == kind)
            .map_or_else(|| kind.default_label().to_string(), |(_, l)| l.clone());
        out.push(match kind {
            Kind::FastMcp => fastmcp_config(label, exe, &echo_s, work)?,
            Kind::McpFirewall => mcp_firewall_config(label, exe, &echo_s),
            _ => unreachable!("not a peer: {kind:?}"),
        });
    }
    if !a.only.is_empty() {
        out.retain(|c| c.kind == Kind::Direct || a.only.iter().any(|o| c.kind.selected_by(o)));
    }
    Ok((out, notes))
}

/// `<key>=<value>` with a known peer key.
fn parse_peer(spec: &str) -> Result<(Kind, &str)> {
    let (key, value) = spec
        .split_once('=')
        .with_context(|| format!("`{spec}`: expected <key>=<value>"))?;
    let kind = PEERS
        .into_iter()
        .find(|k| k.key() == key)
        .with_context(|| {
            format!(
                "`{spec}`: unknown peer `{key}` (known: {})",
                PEERS.map(Kind::key).join(", ")
            )
        })?;
    Ok((kind, value))
}

/// FastMCP's proxy server for a standard `mcpServers` file naming the echo server.
fn fastmcp_config(label: String, exe: String, echo: &str, work: &Path) -> Result<Config> {
    let cfg = work.join("fastmcp-mcp.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec_pretty(&serde_json::json!({
            "mcpServers": {"bench": {"command": echo, "args": []}}
        }))?,
    )?;
    let cfg = cfg.to_string_lossy().to_string();
    Ok(Config {
        kind: Kind::FastMcp,
        label,
        prepare: None,
        note: None,
        make: Box::new(move |_| Target {
            program: exe.clone(),
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
    })
}

/// The YAML config of one mcp-firewall run: written next to the run's audit file.
fn mcp_firewall_yaml_path(audit: &Path) -> PathBuf {
    audit.with_extension("yaml")
}

/// mcp-firewall's stdio wrapper: every policy check at its default except the global
/// rate limit, audit log on, at the run's audit path.
fn mcp_firewall_config(label: String, exe: String, echo: &str) -> Config {
    let echo = echo.to_string();
    Config {
        kind: Kind::McpFirewall,
        label,
        prepare: Some(Box::new(|audit| {
            // A JSON string is a valid YAML double-quoted scalar.
            let path = serde_json::to_string(&audit.to_string_lossy())?;
            let yaml = format!(
                "# mcp-bench suite: mcp-firewall for one run.\n\
                 version: 1\n\
                 defaultAction: allow\n\
                 # The default global limit (200 calls a minute) would deny most of the\n\
                 # benchmark's calls; the flood guard is off, like --audit-burst 0 for mcp-guard.\n\
                 globalRateLimit:\n  enabled: false\n\
                 audit:\n  enabled: true\n  path: {path}\n"
            );
            let cfg = mcp_firewall_yaml_path(audit);
            std::fs::write(&cfg, yaml).with_context(|| format!("writing {}", cfg.display()))
        })),
        note: Some(
            "config (written per run next to the audit file): `defaultAction: allow`, \
             `globalRateLimit: {enabled: false}`, `audit: {enabled: true, path: <audit file>}`; \
             its other checks at their defaults"
                .into(),
        ),
        make: Box::new(move |audit| Target {
            program: exe.clone(),
            args: vec![
                "wrap".into(),
                "--config".into(),
                mcp_firewall_yaml_path(audit).to_string_lossy().to_string(),
                "--".into(),
                echo.clone(),
            ],
            env: vec![],
        }),
    }
}

/// The audit file and what its writer keeps beside it under the same name
/// (`<name>.<suffix>`: rotated segments, a head file).
fn audit_files(audit: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (audit.parent(), audit.file_name().and_then(|n| n.to_str()))
    else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == name || n.starts_with(&prefix))
        })
        .collect()
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
    // The wrapped rows pin the echo server's tools beside their audit files; a rebuilt echo
    // server is a changed program, whose tools a pin left by an earlier build would withhold.
    for f in ["pins.json", "pins.json.lock"] {
        let _ = std::fs::remove_file(work.join(f));
    }
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
            for f in audit_files(&audit) {
                let _ = std::fs::remove_file(f);
            }
            if let Some(prepare) = &c.prepare
                && let Err(e) = prepare(&audit)
            {
                eprintln!("  {:<34} ERROR: {e:#}", c.label);
                errors[i].push(format!("{e:#}"));
                continue;
            }
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
            if c.kind.audited() {
                let files = audit_files(&audit);
                if !files.is_empty() {
                    let bytes = files
                        .iter()
                        .filter_map(|f| std::fs::metadata(f).ok())
                        .map(|m| m.len())
                        .sum();
                    audit_sizes[i].push(bytes);
                }
                if !a.keep_audit {
                    for f in files {
                        let _ = std::fs::remove_file(f);
                    }
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
                note: c.note.clone(),
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
    let relay = get(Kind::Relay);
    let verdicts = judge(
        direct,
        relay,
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
        "| config | message | rtt p50 | rtt p99 | p50 vs direct | p50 vs relay | pipelined msg/s | MB/s | msg/s vs direct | msg/s vs relay | RSS idle / peak (spawned process) |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |x: f64, base: Option<f64>| base.map_or("—".into(), |b| format!("{:.2}x", x / b));
    for s in &summaries {
        if s.runs_ok == 0 {
            let _ = writeln!(t, "| {} | — | error | | | | | | | | |", s.label);
            continue;
        }
        for (size, small) in [(a.small_bytes, true), (a.large_bytes, false)] {
            let lat = |s: &Summary| if small { s.rtt_small } else { s.rtt_large };
            let thr = |s: &Summary| if small { s.pipe_small } else { s.pipe_large };
            let (lat_s, thr_s) = (lat(s), thr(s));
            let p50 = |b: Option<&Summary>| ratio(lat_s.p50_us, b.map(|b| lat(b).p50_us));
            let tput = |b: Option<&Summary>| ratio(thr_s.msgs_per_s, b.map(|b| thr(b).msgs_per_s));
            let rss = if small {
                format!("{} / {}", fmt_mib(s.rss_idle_kib), fmt_mib(s.rss_peak_kib))
            } else {
                String::new()
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                s.label,
                fmt_size(size),
                fmt_us(lat_s.p50_us),
                fmt_us(lat_s.p99_us),
                p50(direct),
                p50(relay),
                thr_s.msgs_per_s,
                if thr_s.mb_per_s < 10.0 {
                    format!("{:.2}", thr_s.mb_per_s)
                } else {
                    format!("{:.0}", thr_s.mb_per_s)
                },
                tput(direct),
                tput(relay),
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
        if let Some(n) = &s.note {
            let _ = writeln!(t, "({n})");
        }
        if let Some(b) = s.audit_bytes {
            let _ = writeln!(
                t,
                "(audit written in one run: {:.1} MiB)",
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

/// One target per message size: `f` gets the size's latency and throughput pickers and
/// returns the measured text and the verdict, or `None` when a row is missing.
fn per_size(
    v: &mut Vec<Verdict>,
    a: &SuiteArgs,
    target: impl Fn(&str) -> String,
    f: impl Fn(&dyn Fn(&Summary) -> Latency, &dyn Fn(&Summary) -> Throughput) -> Option<(String, bool)>,
) {
    for (size, small) in [(a.small_bytes, true), (a.large_bytes, false)] {
        let lat = move |s: &Summary| if small { s.rtt_small } else { s.rtt_large };
        let thr = move |s: &Summary| if small { s.pipe_small } else { s.pipe_large };
        let (measured, pass) = match f(&lat, &thr) {
            Some((m, p)) => (m, Some(p)),
            None => ("not measured".into(), None),
        };
        v.push(Verdict {
            target: target(&fmt_size(size)),
            measured,
            pass,
        });
    }
}

/// The targets, each against baselines measured in the same run: the byte relay (the
/// floor of any second process on the path), the direct pair and the fdatasync cost.
fn judge(
    direct: Option<&Summary>,
    relay: Option<&Summary>,
    pc: Option<&Summary>,
    durable: Option<&Summary>,
    fsync: &Latency,
    a: &SuiteArgs,
) -> Vec<Verdict> {
    let mut v = Vec::new();
    per_size(
        &mut v,
        a,
        |size| format!("page-cache audit: wrapped rtt p50 ≤ 1.25x relay p50 ({size})"),
        |lat, _| {
            let (rv, wv) = (lat(relay?).p50_us, lat(pc?).p50_us);
            Some((
                format!("{} vs {} ({:.2}x)", fmt_us(wv), fmt_us(rv), wv / rv),
                wv <= 1.25 * rv,
            ))
        },
    );
    per_size(
        &mut v,
        a,
        |size| {
            format!("durable audit: wrapped rtt p50 ≤ direct p50 + fdatasync p50 + 15 µs ({size})")
        },
        |lat, _| {
            let (dv, wv) = (lat(direct?).p50_us, lat(durable?).p50_us);
            let bound = dv + fsync.p50_us + 15.0;
            Some((
                format!(
                    "{} vs {} + {} + 15 µs = {}",
                    fmt_us(wv),
                    fmt_us(dv),
                    fmt_us(fsync.p50_us),
                    fmt_us(bound)
                ),
                wv <= bound,
            ))
        },
    );
    per_size(
        &mut v,
        a,
        |size| format!("durable audit: wrapped rtt p99 ≤ direct p99 + 2 × fdatasync p99 ({size})"),
        |lat, _| {
            let (dv, wv) = (lat(direct?).p99_us, lat(durable?).p99_us);
            let bound = dv + 2.0 * fsync.p99_us;
            Some((
                format!(
                    "{} vs {} + 2 × {} = {}",
                    fmt_us(wv),
                    fmt_us(dv),
                    fmt_us(fsync.p99_us),
                    fmt_us(bound)
                ),
                wv <= bound,
            ))
        },
    );
    for (mode, wrapped) in [("durable", durable), ("page-cache", pc)] {
        per_size(
            &mut v,
            a,
            |size| format!("{mode} audit: pipelined msg/s ≥ 0.9x relay ({size})"),
            |_, thr| {
                let (rv, wv) = (thr(relay?).msgs_per_s, thr(wrapped?).msgs_per_s);
                Some((
                    format!("{wv:.0} vs {rv:.0} msg/s ({:.2}x)", wv / rv),
                    wv >= 0.9 * rv,
                ))
            },
        );
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
