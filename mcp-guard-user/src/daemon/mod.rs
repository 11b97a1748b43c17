//! `mcp-guard daemon`: the observer. It loads the kernel programs, watches agent hosts
//! (and, in the kernel, everything they start), reassembles what their children read on
//! stdin and write on stdout, and runs every stdio MCP session it finds through the same
//! guard pipeline as the shim, in monitor mode, with transport `stdio-observed`.
//!
//! Sessions under `mcp-guard wrap` are the shim's to record; the observer only checks
//! that what reaches a wrapped server came through its shim. A server nobody wrapped
//! raises an alert, and policy (`[observer]`) can have it killed on sight or when a
//! denied call goes into it. For the latter the kernel stops the server (SIGSTOP) as the
//! read returns, before it runs again; the daemon judges the read and continues it, or
//! kills it.
//!
//! The work is split in a core and drivers. [`core::Core`] decides: events in; records,
//! alerts and kernel actions out, through the [`world::Kernel`] and [`world::Procs`]
//! traits. The drivers here feed it: one thread handles ring-buffer events in order (and
//! so releases gated readers); a scanner thread walks /proc for agent hosts and parses
//! host configs every `rescan_ms`; another thread commits records, one signed write per
//! batch of events.

pub mod config;
mod core;
mod hostcfg;
mod http;
pub mod metrics;
mod procs;
mod shimlog;
mod shims;
pub mod status;
pub(crate) mod world;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

pub use self::core::Counters;
use self::core::{Core, Scan};
use crate::audit::{self, Audit, Record};
use crate::ebpf::{self, Observer, Settings};
use crate::policy::Policy;
use config::Config;
use world::{LiveProcs, Procs as _};

/// Events handled per turn of the loop; their records share one signed write.
const BATCH: usize = 1024;
/// Batches of records waiting for the committer before the event loop waits for it.
const COMMIT_QUEUE: usize = 64;
/// How long events already in the ring buffer are still handled after SIGTERM.
const DRAIN_ON_STOP: Duration = Duration::from_millis(300);

/// Runs the daemon until SIGTERM or SIGINT. Needs root.
pub fn run(cfg: Config) -> anyhow::Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "the daemon loads eBPF programs and reads every process's /proc entries: run it as root"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(serve(cfg))
}

/// `mcp-guard daemon --check-config`: what a start would use, checked without starting.
pub fn check(cfg: &Config) -> anyhow::Result<i32> {
    let policy = load_enforced(cfg)?;
    println!(
        "policy: {} ({} rules, sha256 {})",
        policy.origin(),
        policy.len(),
        policy.sha256()
    );
    let object = bpf_object(cfg)?;
    let bytes = object.bytes()?;
    ebpf::check_object(&object, &bytes)?;
    println!("eBPF object: {object} ({} bytes)", bytes.len());
    println!(
        "audit log: {} (signing key {})",
        cfg.audit.display(),
        cfg.audit_key.display()
    );
    if let Some(o) = &cfg.otlp {
        if let Some(ca) = &o.ca_file {
            audit::forward::otlp::load_roots(ca)?;
        }
        let names: Vec<&str> = o.headers.iter().map(|h| h.name.as_str()).collect();
        let ca = o
            .ca_file
            .as_ref()
            .map_or("built-in roots".to_string(), |p| p.display().to_string());
        println!(
            "OTLP export: {} and {} (headers: {}; CA: {ca}; timeout {} ms; cursor {})",
            o.endpoint.logs(),
            o.endpoint.traces(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
            o.timeout_ms,
            o.cursor.display()
        );
    }
    println!("configuration: ok");
    Ok(0)
}

/// Exports the audit log to the `[otlp]` collector on a thread of its own, as
/// `audit forward --follow` does: blocking, at least once, from the cursor on. The thread
/// ends with the process; what it had not sent yet is sent by the next start.
fn spawn_otlp(o: &config::Otlp, log: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = o.cursor.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (`[otlp] cursor`)", dir.display()))?;
    }
    let args = audit::forward::Args {
        to: audit::forward::Destination::Otlp(o.endpoint.clone()),
        headers: o.headers.clone(),
        ca_file: o.ca_file.clone(),
        timeout_ms: o.timeout_ms,
        format: audit::forward::Format::Json,
        cursor: Some(o.cursor.clone()),
        follow: true,
        facility: audit::forward::syslog::Facility::Authpriv,
        app_name: "mcp-guard".into(),
        hostname: None,
        settle_ms: 0,
        poll_ms: 250,
        file: log.to_path_buf(),
    };
    tracing::info!(endpoint = %o.endpoint, cursor = %o.cursor.display(), "exporting the audit log over OTLP");
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            loop {
                // With --follow the forwarder returns only on an error of its own (the
                // cursor unreadable, the log gone): said loudly, then tried again.
                match audit::forward::run(&args) {
                    Ok(_) => {}
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "OTLP export stopped; restarting it in 30 s"
                    ),
                }
                std::thread::sleep(std::time::Duration::from_secs(30));
            }
        })
        .context("cannot start the OTLP export thread")?;
    Ok(())
}

/// The eBPF object: `bpf_object` in the configuration, else the usual places.
fn bpf_object(cfg: &Config) -> Result<ebpf::Object, ebpf::Error> {
    match &cfg.bpf_object {
        Some(p) => Ok(ebpf::Object::File(p.clone())),
        None => ebpf::find_object(),
    }
}

/// The system policy as written: what managed shims enforce.
///
/// No policy file at the default path (a first start, nothing configured yet) means the
/// built-in default, and the log says so (the `policy_loaded` record names its origin,
/// `built-in`); a policy file named in the configuration must exist.
fn load_enforced(cfg: &Config) -> anyhow::Result<Policy> {
    let dropins = cfg.policy.with_file_name("policy.d");
    let fix = || {
        format!(
            "cannot load the policy {}: fix it (`mcp-guard policy check {0}` says where), or point `policy` in the configuration at another file",
            cfg.policy.display()
        )
    };
    if cfg.policy == Config::default().policy && !cfg.policy.exists() {
        tracing::warn!(
            path = %cfg.policy.display(),
            "no policy installed: running on the built-in default policy"
        );
        return Policy::builtin_with_dropins(&dropins).with_context(fix);
    }
    Policy::load_with_dropins(&cfg.policy, &dropins).with_context(fix)
}

/// The system policy in monitor mode: what the observer judges with.
fn load_policy(cfg: &Config) -> anyhow::Result<Policy> {
    Ok(load_enforced(cfg)?.into_monitor())
}

async fn serve(cfg: Config) -> anyhow::Result<i32> {
    let policy = load_policy(&cfg)?;
    let object = bpf_object(&cfg)?;
    let max_capture = (cfg.max_message + 2).min(mcp_guard_common::MAX_CAPTURE) as u32;
    let mut obs = Observer::load_object(
        &object,
        Settings {
            ring_bytes: cfg.ring_bytes,
            max_capture,
            probe: self::core::probe_flags(&cfg, &policy),
        },
    )
    .with_context(|| format!("cannot load {object}"))?;
    let mut events = obs.events()?;
    let opts = audit::Options {
        max_bytes: cfg.max_bytes,
        retention: cfg.retention(),
        key: Some(cfg.audit_key.clone()),
        checkpoint: None,
        sign_commits: cfg.sign_commits,
    };
    let (audit, writer) = Audit::open_with(&cfg.audit, cfg.durability, &opts)?;
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("cannot create {}", cfg.run_dir.display()))?;
    // Metrics count what the log writes: one source for both.
    let metrics = match cfg.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot serve metrics on {addr} (`metrics` in the configuration)")
            })?;
            let m = metrics::Metrics::new();
            audit.set_tap(m.clone());
            tokio::spawn(metrics::serve(listener, m.clone()));
            tracing::info!(%addr, "serving metrics");
            Some(m)
        }
        None => None,
    };
    let committer = Committer::spawn(audit.clone())?;
    if let Some(o) = &cfg.otlp {
        spawn_otlp(o, &cfg.audit)?;
    }
    let shared = Arc::new(shims::Shared {
        policy: std::sync::RwLock::new(Arc::new(load_enforced(&cfg)?)),
        audit: audit.clone(),
        max_message: cfg.max_message,
        audit_path: cfg.audit.clone(),
        durable: cfg.durability == audit::Durability::Durable,
        live: Default::default(),
        per_user: Default::default(),
    });
    let socket = cfg.run_dir.join(crate::managed::SOCKET_NAME);
    let listener = shims::listen(&socket)?;
    let server = tokio::spawn(shims::serve(listener, shared.clone()));

    let status_path = cfg.status_path();
    let mut scans = Scanner::spawn(&cfg)?;
    let mut d = Core::new(cfg, obs, LiveProcs, policy);
    d.managed = Some(shared);
    d.started(&object.to_string());
    d.start();
    committer.send(d.take_records());
    write_status(&status_path, &d, metrics.as_deref());
    tracing::info!(programs = ?d.kernel.programs, "observer running");

    let (mut term, mut int, mut hup) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
        signal(SignalKind::hangup())?,
    );
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            r = events.batch(&mut batch, BATCH) => {
                r?;
                for event in batch.drain(..) {
                    d.handle(event);
                }
            }
            Some(scan) = scans.recv() => d.scanned(scan),
            _ = hup.recv() => {
                let loaded = load_enforced(&d.cfg).and_then(|e| Ok((e, load_policy(&d.cfg)?)));
                d.reload(loaded);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                d.tick();
                write_status(&status_path, &d, metrics.as_deref());
            }
        }
        committer.send(d.take_records());
    }
    drop(scans);
    // What the kernel sent before the signal is still judged (gated readers continued),
    // for a bounded time: exec events of the whole machine never stop arriving.
    let drain_until = tokio::time::Instant::now() + DRAIN_ON_STOP;
    while let Ok(Ok(())) =
        tokio::time::timeout_at(drain_until, events.batch(&mut batch, BATCH)).await
    {
        for event in batch.drain(..) {
            d.handle(event);
        }
    }
    // Connections end with the server task; their handles on the audit log with them. The
    // socket file stays: shims that find it and no daemon fail closed until it is back.
    server.abort();
    let _ = server.await;
    d.managed = None;
    tokio::time::sleep(Duration::from_millis(20)).await;
    d.stop();
    committer.send(d.take_records());
    let Core { kernel, .. } = d;
    // Detaches the programs: no process is stopped by a gate after this.
    drop(kernel);
    drop(events);
    committer.close();
    audit.close(writer);
    let _ = std::fs::remove_file(status_path);
    Ok(0)
}

fn write_status(
    path: &std::path::Path,
    d: &Core<Observer, LiveProcs>,
    metrics: Option<&metrics::Metrics>,
) {
    let status = d.status();
    if let Some(m) = metrics {
        let c = &status.counters;
        m.update(status.sessions.len(), c.lost_kernel + c.lost_sequence);
    }
    if let Err(e) = status::write(path, &status) {
        tracing::warn!(error = %e, "cannot write the status file");
    }
}

/// Walks /proc for agent hosts and checks host configs every `rescan_ms`, on its own
/// thread: the event loop, which releases gated readers, never waits for either.
struct Scanner {
    rx: tokio::sync::mpsc::Receiver<Scan>,
}

impl Scanner {
    fn spawn(cfg: &Config) -> anyhow::Result<Scanner> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let hosts = cfg.hosts.clone();
        let every = Duration::from_millis(cfg.rescan_ms.max(100));
        let mut configs = hostcfg::Check::new(cfg);
        std::thread::Builder::new()
            .name("observer-scan".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let me = LiveProcs.me();
                    let scan = Scan {
                        hosts: LiveProcs
                            .pids()
                            .into_iter()
                            .filter(|&p| p != me && LiveProcs.is_host(p, &hosts))
                            .collect(),
                        alerts: configs.run(),
                    };
                    // The daemon is stopping when nobody receives.
                    if tx.blocking_send(scan).is_err() {
                        break;
                    }
                }
            })
            .context("cannot start the scanner thread")?;
        Ok(Scanner { rx })
    }

    async fn recv(&mut self) -> Option<Scan> {
        self.rx.recv().await
    }
}

/// Commits batches of records on its own thread, so the event loop never waits on the disk.
struct Committer {
    tx: Option<mpsc::SyncSender<Vec<Record>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn spawn(audit: Audit) -> anyhow::Result<Committer> {
        let (tx, rx) = mpsc::sync_channel::<Vec<Record>>(COMMIT_QUEUE);
        let thread = std::thread::Builder::new()
            .name("observer-audit".into())
            .spawn(move || {
                while let Ok(mut records) = rx.recv() {
                    // Whatever queued meanwhile goes in the same write.
                    while let Ok(more) = rx.try_recv() {
                        records.extend(more);
                    }
                    if let Err(e) = audit.commit_blocking(records) {
                        // The writer records the gap itself once writes succeed again.
                        tracing::error!(error = %e, "observer records not written");
                    }
                }
            })
            .context("cannot start the audit thread")?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx
            && tx.send(records).is_err()
        {
            tracing::error!("the audit thread has stopped; observer records lost");
        }
    }

    fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first start with nothing installed runs on the built-in policy, and says so; a
    /// policy named elsewhere must exist.
    #[test]
    fn no_policy_at_the_default_path_means_the_built_in_one() {
        let cfg = Config::default();
        if cfg.policy.exists() {
            eprintln!("skipped: {} is installed here", cfg.policy.display());
        } else {
            assert_eq!(load_enforced(&cfg).expect("built-in").origin(), "built-in");
        }
        let named = Config {
            policy: std::path::PathBuf::from("/nonexistent/policy.toml"),
            ..Config::default()
        };
        let err = format!("{:#}", load_enforced(&named).expect_err("missing"));
        assert!(err.contains("/nonexistent/policy.toml"), "{err}");
    }
}
