//! The four measurements and the summary table.

use mcp_guard_bench::stats::median;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::daemon::{Counters, Daemon, Spec, proc_mem, terminate};
use crate::roles::{self, RateReport};
use crate::{RunArgs, Step};

/// The agent host name the daemon watches in steps 2 and 3: a symlink to this
/// executable, so it is also the process's comm (at most 15 bytes).
const HOST: &str = "mcpg-bench-host";
/// The Python agent host of step 4: a symlink to the peers' interpreter.
const PY_HOST: &str = "mcpg-bench-py";
/// The host list of step 1: no process has this name.
const NO_HOST: &str = "mcpg-no-host";

const ALLOW: &str = "default = \"allow\"\n";
const KILL_ON_DENY: &str = "default = \"allow\"\n\n[observer]\ndenied = \"kill\"\n\n[[rule]]\nid = \"no-writes\"\ntool = \"write_file\"\naction = \"deny\"\n";

/// One line of the summary.
struct Row {
    measure: String,
    figure: String,
    baseline: String,
    ratio: String,
    target: String,
    /// `None`: no target, or the step failed.
    pass: Option<bool>,
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISSED" }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Thousands separators, for message counts.
fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// CPU time (user + system, all threads) of `pid`, in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the comm, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .with_context(|| format!("parsing {path}"))?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("parsing {path}"))
    };
    // USER_HZ is 100 in the Linux user ABI.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Kills and reaps a child process when dropped, unless it was taken back.
struct Reaped(Option<Child>);

impl Reaped {
    fn child(&mut self) -> Result<&mut Child> {
        self.0.as_mut().context("the process was already reaped")
    }

    fn take(&mut self) -> Result<Child> {
        self.0.take().context("the process was already reaped")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` with its stdout captured (stderr inherited), failing after `timeout`.
fn output_within(cmd: &mut Command, what: &str, timeout: Duration) -> Result<Output> {
    let mut child = Reaped(Some(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?,
    ));
    let mut out = child.child()?.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.child()?.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not finish within {:.0} s (killed)",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.take()?;
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(Output {
        status,
        stdout,
        stderr: Vec::new(),
    })
}

pub fn run(a: &RunArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the observer benchmark starts `mcp-guard daemon`, which loads eBPF programs: run it as root"
        );
    }
    for (what, p) in [
        ("mcp-guard binary", &a.mcp_guard),
        ("eBPF object", &a.bpf_object),
    ] {
        if !p.is_file() {
            bail!("the {what} {} does not exist", p.display());
        }
    }
    if a.runs == 0
        || a.syscalls == 0
        || a.rate == 0
        || a.secs <= 0.0
        || a.sessions == 0
        || a.deny_runs == 0
    {
        bail!("--runs, --syscalls, --rate, --secs, --sessions and --deny-runs must be positive");
    }
    let mcp_guard = std::path::absolute(&a.mcp_guard)?;
    let bpf_object = std::path::absolute(&a.bpf_object)?;
    let ctx = Ctx::new(a, mcp_guard, bpf_object)?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "observer benchmark: kernel {}, {cpus} CPUs, work directory {}",
        kernel.trim(),
        ctx.work().display()
    );

    let started = Instant::now();
    let want = |s: Step| a.only.is_empty() || a.only.contains(&s);
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    // A step adds its rows as it measures them, so a late failure (the daemon not
    // stopping) keeps what was measured, with an error row after it.
    type StepFn = fn(&Ctx, &mut Vec<Row>) -> Result<()>;
    let plan: [(Step, &str, StepFn); 4] = [
        (Step::Overhead, "1. overhead on unwatched work", overhead),
        (Step::Session, "2. watched session", session),
        (Step::Rss, "3. daemon RSS with concurrent sessions", rss),
        (Step::Kill, "4. kill on deny", kill_on_deny),
    ];
    for (which, measure, f) in plan {
        if !want(which) {
            continue;
        }
        if let Err(e) = f(&ctx, &mut rows) {
            let name = format!("{which:?}").to_lowercase();
            eprintln!("error: step `{name}` failed: {e:#}");
            failed.push(name);
            rows.push(Row {
                measure: measure.to_string(),
                figure: format!("ERROR: {e:#}").replace('\n', " "),
                baseline: "-".into(),
                ratio: "-".into(),
                target: "-".into(),
                pass: None,
            });
        }
    }

    let mut table = String::new();
    table.push_str(
        "| measure | figure | baseline (same run) | ratio | target |\n|---|---|---|---|---|\n",
    );
    for r in &rows {
        let cells = [&r.measure, &r.figure, &r.baseline, &r.ratio, &r.target]
            .map(|c| c.replace('|', "\\|"));
        table.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    let missed = rows.iter().filter(|r| r.pass == Some(false)).count();
    println!(
        "\n== mcp-guard observer benchmark: summary ({:.0} s; kernel {}, {cpus} CPUs)\n\n{table}",
        started.elapsed().as_secs_f64(),
        kernel.trim()
    );
    if let Some(path) = &a.results {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
        println!("table saved to {}", path.display());
    }
    ctx.close()?;
    if !failed.is_empty() {
        bail!("steps failed: {}", failed.join(", "));
    }
    if missed > 0 {
        println!("{missed} target(s) missed");
        if a.strict {
            bail!("{missed} target(s) missed (--strict)");
        }
    }
    Ok(())
}

/// What every step needs: arguments, binaries, and the temporary work directory
/// (removed at the end, also on error).
struct Ctx<'a> {
    a: &'a RunArgs,
    mcp_guard: PathBuf,
    bpf_object: PathBuf,
    tmp: tempfile::TempDir,
    host: PathBuf,
}

impl<'a> Ctx<'a> {
    fn new(a: &'a RunArgs, mcp_guard: PathBuf, bpf_object: PathBuf) -> Result<Ctx<'a>> {
        let tmp = tempfile::Builder::new()
            .prefix("mcp-bench-observer-")
            .tempdir()
            .context("creating a work directory")?;
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        let exe = std::env::current_exe().context("locating this executable")?;
        let host = bin.join(HOST);
        std::os::unix::fs::symlink(&exe, &host)
            .with_context(|| format!("linking {} to {}", host.display(), exe.display()))?;
        Ok(Ctx {
            a,
            mcp_guard,
            bpf_object,
            tmp,
            host,
        })
    }

    fn work(&self) -> &Path {
        self.tmp.path()
    }

    fn daemon(&self, name: &str, policy: &str, hosts: &[&str], durability: &str) -> Result<Daemon> {
        self.daemon_detecting(name, policy, hosts, durability, "any")
    }

    fn daemon_detecting(
        &self,
        name: &str,
        policy: &str,
        hosts: &[&str],
        durability: &str,
        detect: &str,
    ) -> Result<Daemon> {
        Daemon::start(
            &self.mcp_guard,
            &self.bpf_object,
            self.work(),
            &Spec {
                name,
                policy,
                hosts,
                durability,
                detect,
            },
        )
        .with_context(|| format!("starting the daemon for `{name}`"))
    }

    fn close(self) -> Result<()> {
        let path = self.tmp.path().to_path_buf();
        self.tmp
            .close()
            .with_context(|| format!("removing {}", path.display()))
    }
}

// ---------------------------------------------------------------------------------
// 1. Overhead on unwatched work
// ---------------------------------------------------------------------------------

struct Sample {
    workload_s: f64,
    devnull_ns: f64,
    pipe_ns: f64,
    exec_us: f64,
}

fn measure_once(a: &RunArgs) -> Result<Sample> {
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(&a.workload)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running `{}`", a.workload))?;
    let workload_s = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("the workload `{}` failed: {status}", a.workload);
    }
    Ok(Sample {
        workload_s,
        devnull_ns: roles::writes_devnull(a.syscalls)?,
        pipe_ns: roles::writes_pipe(a.syscalls)?,
        exec_us: roles::exec_storm(a.execs)?,
    })
}

/// Whether `pid` holds eBPF programs (attached ones are held open by their links).
fn holds_bpf_programs(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|t| t.as_os_str() == "anon_inode:bpf_link" || t.as_os_str() == "anon_inode:bpf-prog")
}

/// Other `mcp-guard daemon` processes holding eBPF programs: with theirs attached,
/// "without the daemon" would not be without one. (A daemon hung in its shutdown after
/// detaching its programs does not count.)
fn other_daemons(ours: Option<u32>) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| Some(pid) != ours)
        .filter(|pid| {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv: Vec<&[u8]> = argv.split(|&b| b == 0).collect();
            let prog = argv.first().map(|a| {
                Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(a))
            });
            prog.and_then(Path::file_name)
                .is_some_and(|n| n == "mcp-guard")
                && argv.iter().skip(1).any(|a| *a == b"daemon")
                && holds_bpf_programs(*pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn overhead(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let a = ctx.a;
    println!(
        "\n== 1. overhead on unwatched work: {} runs each without and with the daemon (hosts = [\"{NO_HOST}\"]), alternating",
        a.runs
    );
    // Page cache and CPU frequency settle; not counted.
    measure_once(a).context("warm-up run")?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut foreign = std::collections::BTreeSet::new();
    for round in 0..a.runs {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let s = if with {
                let d = ctx.daemon(
                    &format!("overhead-{round}"),
                    ALLOW,
                    &[NO_HOST],
                    "page-cache",
                )?;
                foreign.extend(other_daemons(Some(d.pid())));
                let s = measure_once(a)?;
                foreign.extend(other_daemons(Some(d.pid())));
                d.stop()?;
                s
            } else {
                foreign.extend(other_daemons(None));
                let s = measure_once(a)?;
                foreign.extend(other_daemons(None));
                s
            };
            println!(
                "  run {}/{} {:<15} workload {:.3} s, /dev/null {:.0} ns/write, pipe {:.0} ns/write, exec {:.0} µs",
                round + 1,
                a.runs,
                if with {
                    "with daemon:"
                } else {
                    "without daemon:"
                },
                s.workload_s,
                s.devnull_ns,
                s.pipe_ns,
                s.exec_us
            );
            if with { on.push(s) } else { off.push(s) }
        }
    }
    // The exec storm again with `detect = "hosts"` (nothing probed): what probing itself
    // costs, against what the daemon costs every exec in any case (it reads /proc for each
    // to find agent hosts).
    let (mut plain, mut hosts_only) = (Vec::new(), Vec::new());
    for round in 0..a.runs {
        for with in [round % 2 == 0, round % 2 != 0] {
            if with {
                let d = ctx.daemon_detecting(
                    &format!("exec-hosts-{round}"),
                    ALLOW,
                    &[NO_HOST],
                    "page-cache",
                    "hosts",
                )?;
                hosts_only.push(roles::exec_storm(a.execs)?);
                d.stop()?;
            } else {
                plain.push(roles::exec_storm(a.execs)?);
            }
        }
    }
    println!(
        "  exec storm with detect = \"hosts\": {:.0} µs/exec with daemon, {:.0} without (medians)",
        median(&hosts_only),
        median(&plain)
    );
    let unjudged = if foreign.is_empty() {
        None
    } else {
        let pids: Vec<String> = foreign.iter().map(u32::to_string).collect();
        eprintln!(
            "warning: other `mcp-guard daemon` processes with eBPF programs ran during this step (pids {}): their programs were attached in the runs \"without daemon\" too",
            pids.join(", ")
        );
        Some(format!(
            "not judged: other mcp-guard daemons with eBPF programs were running (pids {})",
            pids.join(", ")
        ))
    };
    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let row = |measure: String, unit: &str, prec: usize, f: fn(&Sample) -> f64, limit: f64| {
        let (w, b) = (med(&on, f), med(&off, f));
        let ratio = w / b;
        Row {
            measure,
            figure: format!("{w:.prec$} {unit} with daemon"),
            baseline: format!("{b:.prec$} {unit} without"),
            ratio: format!("{ratio:.3}x"),
            target: match &unjudged {
                None => format!("≤ {limit:.2}x: {}", verdict(ratio <= limit)),
                Some(why) => format!("≤ {limit:.2}x: {why}"),
            },
            pass: if unjudged.is_none() {
                Some(ratio <= limit)
            } else {
                None
            },
        }
    };
    let n = num(a.syscalls);
    rows.extend([
        row(
            format!(
                "1a. unwatched `{}`, wall time, median of {} runs",
                a.workload, a.runs
            ),
            "s",
            3,
            |s| s.workload_s,
            1.02,
        ),
        row(
            format!(
                "1b. unwatched one-byte write(2) to /dev/null ({n} calls in 10 blocks, median block), median of {} runs",
                a.runs
            ),
            "ns/call",
            1,
            |s| s.devnull_ns,
            1.15,
        ),
        row(
            format!(
                "1c. unwatched one-byte write(2) into a pipe drained by a thread on the same CPU ({n} calls in 10 blocks, median block), median of {} runs",
                a.runs
            ),
            "ns/call",
            1,
            |s| s.pipe_ns,
            1.15,
        ),
        row(
            format!(
                "1d. exec storm: {} programs started with pipes for stdin and stdout (each probed), fork+exec+exit of /bin/true (10 blocks, median block), median of {} runs",
                num(a.execs),
                a.runs
            ),
            "µs/exec",
            1,
            |s| s.exec_us,
            1.10,
        ),
    ]);
    let (w, b) = (median(&hosts_only), median(&plain));
    rows.push(Row {
        measure: format!(
            "1e. the same exec storm with detect = \"hosts\" (no probing; the daemon still reads /proc for every exec to find hosts), median of {} runs",
            a.runs
        ),
        figure: format!("{w:.1} µs/exec with daemon"),
        baseline: format!("{b:.1} µs/exec without"),
        ratio: format!("{:.3}x", w / b),
        target: "- (reference for 1d)".into(),
        pass: None,
    });
    Ok(())
}

// ---------------------------------------------------------------------------------
// 2. A watched session at a fixed rate
// ---------------------------------------------------------------------------------

fn host_rate(ctx: &Ctx, status: Option<&Path>, socket: Option<&Path>) -> Result<RateReport> {
    let a = ctx.a;
    // The baseline runs the same program under its own name, so no daemon could watch it.
    let program = if status.is_some() {
        ctx.host.clone()
    } else {
        std::env::current_exe()?
    };
    let mut cmd = Command::new(&program);
    cmd.arg("host-rate").args([
        "--rate",
        &a.rate.to_string(),
        "--secs",
        &a.secs.to_string(),
        "--size",
        &a.size.to_string(),
    ]);
    if let Some(s) = status {
        cmd.arg("--status").arg(s);
    }
    if let Some(s) = socket {
        cmd.arg("--socket").arg(s);
    }
    let out = output_within(
        &mut cmd,
        "the rate host",
        Duration::from_secs_f64(a.secs * 3.0 + 60.0),
    )?;
    if !out.status.success() {
        bail!("the rate host failed ({})", out.status);
    }
    serde_json::from_slice(out.stdout.trim_ascii()).with_context(|| {
        format!(
            "parsing the rate host's report `{}`",
            String::from_utf8_lossy(&out.stdout).trim()
        )
    })
}

fn session(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let a = ctx.a;
    println!(
        "\n== 2. one watched session: {} requests/s of {} B host -> server for {} s, each answered",
        num(a.rate),
        a.size,
        a.secs
    );
    let base = host_rate(ctx, None, None).context("the session without the daemon")?;
    let base_rate = base.paced as f64 / base.paced_secs;
    println!(
        "  without daemon: {:.0} requests/s, {} answers to {} requests",
        base_rate,
        num(base.responses),
        num(base.requests)
    );
    // (audit durability, socket lines mixed in): the last is the mix that once made the
    // daemon drop stdio messages for gaps that were not there.
    let mut modes = vec![("page-cache", false)];
    if !a.no_durable {
        modes.push(("durable", false));
    }
    modes.push(("page-cache", true));
    for (durability, mixed) in modes {
        let name = format!("session-{durability}{}", if mixed { "-mixed" } else { "" });
        let mut d = ctx.daemon(&name, ALLOW, &[HOST], durability)?;
        let sink = if mixed {
            Some(Sink::start(&ctx.work().join(format!("{name}.sock")))?)
        } else {
            None
        };
        let cpu0 = cpu_secs(d.pid())?;
        let t0 = Instant::now();
        let r = host_rate(
            ctx,
            Some(d.status_path()),
            sink.as_ref().map(|s| s.path.as_path()),
        )
        .with_context(|| format!("the session with the daemon ({name})"))?;
        let received = sink.map(Sink::stop).transpose()?.unwrap_or(0);
        // Daemon CPU while the host ran (start-up wait, handshake and paced phase).
        let cpu = cpu_secs(d.pid())? - cpu0;
        let wall = t0.elapsed().as_secs_f64();
        let host_done = Instant::now();
        // Each socket line is one message of the host's socket session.
        let expected = r.requests + r.notifications + r.responses + r.socket_lines;
        // How far behind the daemon was: until it has counted every message (or stops
        // counting); status.json is rewritten every 0.5 s.
        let caught_up = d
            .wait_for("every message counted", Duration::from_secs(30), |v| {
                v.pointer("/counters/messages")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| m >= expected)
            })
            .is_ok()
            .then(|| host_done.elapsed().as_secs_f64());
        let c = d.settled(Duration::from_millis(1500), Duration::from_secs(120))?;
        let mem = d.mem()?;
        let rate = r.paced as f64 / r.paced_secs;
        let complete = r.responses == r.requests;
        let rate_ok = rate >= 0.98 * a.rate as f64;
        let pass = c.lost_kernel == 0
            && c.lost_sequence == 0
            && c.messages >= expected
            && complete
            && rate_ok
            && received == r.socket_lines;
        let mix = if mixed {
            format!(
                ", with a unix-socket line after each request ({} sent, {} received)",
                num(r.socket_lines),
                num(received)
            )
        } else {
            String::new()
        };
        println!(
            "  with daemon ({durability}{mix}): {rate:.0} requests/s; daemon counted {} of {} messages, lost {} (kernel) / {} (sequence), {} sessions; daemon CPU {:.2} s ({:.0}% of one CPU), peak RSS {}; {}",
            num(c.messages),
            num(expected),
            c.lost_kernel,
            c.lost_sequence,
            c.sessions_seen,
            cpu,
            cpu / wall * 100.0,
            mib(mem.hwm_kib),
            match caught_up {
                Some(s) => format!(
                    "every message counted within {s:.1} s of the host's end (status.json every 0.5 s)"
                ),
                None => "not every message counted 30 s after the host's end".into(),
            }
        );
        rows.push(Row {
            measure: format!(
                "2. watched session, {} req/s × {} B for {} s host→server, each answered; audit {durability}{mix}",
                num(a.rate),
                a.size,
                a.secs
            ),
            figure: format!(
                "{rate:.0} req/s achieved; daemon counted {} of {} messages (both directions); lost {} kernel / {} sequence; {} of {} answered; daemon CPU {:.0}% of one CPU, peak RSS {}",
                num(c.messages),
                num(expected),
                c.lost_kernel,
                c.lost_sequence,
                num(r.responses),
                num(r.requests),
                cpu / wall * 100.0,
                mib(mem.hwm_kib)
            ),
            baseline: format!("{base_rate:.0} req/s, {} of {} answered without daemon", num(base.responses), num(base.requests)),
            ratio: format!("{:.3}x rate", rate / base_rate),
            target: format!("0 lost, all counted, rate ≥ 98% of {}: {}", num(a.rate), verdict(pass)),
            pass: Some(pass),
        });
        d.stop()?;
    }
    Ok(())
}

/// A unix socket that takes and counts lines until stopped.
struct Sink {
    path: PathBuf,
    thread: std::thread::JoinHandle<std::io::Result<u64>>,
}

impl Sink {
    fn start(path: &Path) -> Result<Sink> {
        let _ = std::fs::remove_file(path);
        let l = std::os::unix::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        let thread = std::thread::spawn(move || {
            use std::io::BufRead as _;
            let (conn, _) = l.accept()?;
            let mut r = std::io::BufReader::new(conn);
            let mut line = Vec::new();
            let mut n = 0;
            while r.read_until(b'\n', &mut line)? > 0 {
                n += 1;
                line.clear();
            }
            Ok(n)
        });
        Ok(Sink {
            path: path.to_path_buf(),
            thread,
        })
    }

    /// Lines received; the host has exited, so its end is closed.
    fn stop(self) -> Result<u64> {
        let n = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the socket sink panicked"))??;
        let _ = std::fs::remove_file(&self.path);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------
// 3. RSS with concurrent sessions
// ---------------------------------------------------------------------------------

fn sessions_in(v: &Value) -> usize {
    v.get("sessions")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

fn rss(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let n = ctx.a.sessions;
    println!("\n== 3. daemon RSS: idle, then with {n} concurrent watched sessions");
    let mut d = ctx.daemon("rss", ALLOW, &[HOST], "page-cache")?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = d.mem()?;
    println!(
        "  idle: RSS {} (peak {})",
        mib(idle.rss_kib),
        mib(idle.hwm_kib)
    );

    let mut host = Reaped(Some(
        Command::new(&ctx.host)
            .arg("host-many")
            .args(["--sessions", &n.to_string()])
            .arg("--status")
            .arg(d.status_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the host of many sessions")?,
    ));
    let out = host.child()?.stdout.take().context("host stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(60))
        .context("the host did not report its sessions ready within 60 s")?
        .context("reading the host's output")?;
    if ready.trim() != format!("ready {n}") {
        bail!("the host reported `{ready}` instead of `ready {n}`");
    }
    let v = d
        .wait_for(
            &format!("{n} sessions in status.json"),
            Duration::from_secs(30),
            |v| sessions_in(v) >= n,
        )
        .with_context(|| {
            format!(
                "{} of {n} sessions listed",
                d.status().map_or(0, |v| sessions_in(&v))
            )
        })?;
    d.settled(Duration::from_secs(1), Duration::from_secs(30))?;
    let busy = d.mem()?;
    let listed = sessions_in(&v);
    println!(
        "  {listed} sessions listed: RSS {} (peak {})",
        mib(busy.rss_kib),
        mib(busy.hwm_kib)
    );

    // End the sessions: the host closes every server's stdin when its own closes.
    let mut child = host.take()?;
    drop(child.stdin.take());
    let status = terminate_after(child, Duration::from_secs(30))?;
    if !status.success() {
        bail!("the host of many sessions exited with {status}");
    }
    let limit_kib = 64 * 1024;
    let pass = busy.rss_kib < limit_kib;
    rows.push(Row {
        measure: format!(
            "3. daemon RSS with {n} concurrent watched sessions (initialize + 3 calls each, held open)"
        ),
        figure: format!(
            "{} ({listed} sessions listed; peak {})",
            mib(busy.rss_kib),
            mib(busy.hwm_kib)
        ),
        baseline: format!("{} idle", mib(idle.rss_kib)),
        ratio: format!("{:.2}x idle", busy.rss_kib as f64 / idle.rss_kib as f64),
        target: format!("< 64 MiB: {}", verdict(pass)),
        pass: Some(pass),
    });
    d.stop()
}

/// Waits up to `grace` for a child to exit on its own, then SIGTERM (and SIGKILL).
fn terminate_after(mut child: Child, grace: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(child, Duration::from_secs(5)).context("the host did not exit after its stdin closed")
}

// ---------------------------------------------------------------------------------
// 4. Kill on deny
// ---------------------------------------------------------------------------------

/// The Python agent host of the e2e suite and what it needs.
struct PyHost {
    link: PathBuf,
    site_packages: PathBuf,
    script: PathBuf,
}

impl PyHost {
    fn find(ctx: &Ctx) -> Result<PyHost> {
        let repo = std::path::absolute(&ctx.a.repo)?;
        let setup = "run `cargo xtask setup` to install the test peers";
        let server = repo.join(".peers/node/node_modules/.bin/mcp-server-filesystem");
        if !server.exists() {
            bail!("{} is missing: {setup}", server.display());
        }
        let script = repo.join("tests/e2e/observer_host.py");
        if !script.is_file() {
            bail!("{} is missing", script.display());
        }
        let venv_python = repo.join(".peers/venv/bin/python");
        // The interpreter the venv was made from, so its compiled packages fit.
        let python = venv_python
            .canonicalize()
            .with_context(|| format!("{} is missing: {setup}", venv_python.display()))?;
        let lib = repo.join(".peers/venv/lib");
        let site_packages = std::fs::read_dir(&lib)
            .with_context(|| format!("reading {}: {setup}", lib.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages"))
            .find(|p| p.is_dir())
            .with_context(|| {
                format!("no python*/site-packages under {}: {setup}", lib.display())
            })?;
        let link = ctx.work().join("bin").join(PY_HOST);
        if !link.exists() {
            std::os::unix::fs::symlink(&python, &link)
                .with_context(|| format!("linking {} to {}", link.display(), python.display()))?;
        }
        Ok(PyHost {
            link,
            site_packages,
            script,
        })
    }

    /// Runs `count` hosts, `parallel` at a time, each asking the filesystem server under
    /// `root` to write its own file; returns how many files exist afterwards.
    fn write_files(
        &self,
        root: &Path,
        count: usize,
        parallel: usize,
        logs: &Path,
    ) -> Result<usize> {
        std::fs::create_dir_all(root)?;
        std::fs::create_dir_all(logs)?;
        let root = root.canonicalize()?;
        let path_of = |i: usize| root.join(format!("f-{i}.txt"));
        let mut next = 0;
        while next < count {
            let wave: Vec<usize> = (next..count.min(next + parallel.max(1))).collect();
            next += wave.len();
            let mut running = Vec::new();
            for &i in &wave {
                let spec = serde_json::json!({
                    "server": "filesystem",
                    "root": root,
                    "calls": [["write_file", {"path": path_of(i), "content": "written despite the deny rule\n"}]],
                });
                let out = std::fs::File::create(logs.join(format!("host-{i}.log")))?;
                let err = out.try_clone()?;
                let child = Command::new(&self.link)
                    .arg(&self.script)
                    .arg(spec.to_string())
                    .env("PYTHONPATH", &self.site_packages)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .with_context(|| {
                        format!(
                            "cannot start {} {}",
                            self.link.display(),
                            self.script.display()
                        )
                    })?;
                running.push((i, Reaped(Some(child))));
            }
            let deadline = Instant::now() + Duration::from_secs(90);
            for (i, mut child) in running {
                let status = loop {
                    if let Some(s) = child.child()?.try_wait()? {
                        break s;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "host {i} did not finish within 90 s; see {}",
                            logs.join(format!("host-{i}.log")).display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                child.take()?;
                if !status.success() {
                    let log = std::fs::read_to_string(logs.join(format!("host-{i}.log")))
                        .unwrap_or_default();
                    bail!("host {i} exited with {status}:\n{log}");
                }
            }
        }
        Ok((0..count).filter(|&i| path_of(i).exists()).count())
    }
}

fn kill_on_deny(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let a = ctx.a;
    let n = a.deny_runs;
    println!(
        "\n== 4. kill on deny: {n} sessions of mcp-server-filesystem, each asked to write_file (denied by rule `no-writes`), {} at a time",
        a.deny_parallel
    );
    let py = PyHost::find(ctx)?;
    let t = Instant::now();
    let base = py.write_files(
        &ctx.work().join("fs-baseline"),
        n,
        a.deny_parallel,
        &ctx.work().join("logs-baseline"),
    )?;
    println!(
        "  without daemon: {base} of {n} writes executed ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    let mut d = ctx.daemon("kill", KILL_ON_DENY, &[PY_HOST], "page-cache")?;
    let before: Counters = d.counters()?;
    let t = Instant::now();
    let executed = py.write_files(
        &ctx.work().join("fs-kill"),
        n,
        a.deny_parallel,
        &ctx.work().join("logs-kill"),
    )?;
    let secs = t.elapsed().as_secs_f64();
    let after = d.settled(Duration::from_secs(1), Duration::from_secs(30))?;
    let rss = proc_mem(d.pid())?;
    let seen = after.sessions_seen - before.sessions_seen;
    let killed = after.killed - before.killed;
    println!(
        "  with daemon (denied = \"kill\"): {executed} of {n} writes executed; {seen} sessions observed, {killed} servers killed ({secs:.1} s; daemon RSS {})",
        mib(rss.rss_kib)
    );
    let pass = executed == 0 && base == n;
    let mut figure = format!(
        "denied calls that still executed: {executed} of {n} ({seen} sessions observed, {killed} servers killed)"
    );
    if seen < n as u64 {
        figure.push_str(&format!(
            "; {} sessions were not seen by the daemon",
            n as u64 - seen
        ));
    }
    rows.push(Row {
        measure: format!(
            "4. kill on deny: write_file to the real filesystem MCP server, {n} sessions, {} at a time",
            a.deny_parallel
        ),
        figure,
        baseline: format!("{base} of {n} executed without daemon"),
        ratio: "-".into(),
        target: format!("0 of {n} (baseline {n} of {n}): {}", verdict(pass)),
        pass: Some(pass),
    });
    d.stop()
}
