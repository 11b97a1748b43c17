//! Starting, reading and stopping `mcp-guard daemon` for one step of the benchmark.
//!
//! A [`Daemon`] is stopped with SIGTERM when it is dropped, so a step that fails half-way
//! never leaves the eBPF programs attached.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub use mcp_guard::daemon::Counters;

/// The counters a watched session moves. `events` is left out: it also counts the exec and
/// exit of every process on the machine.
fn session_part(c: &Counters) -> Counters {
    Counters { events: 0, ..*c }
}

/// How one daemon is configured.
pub struct Spec<'a> {
    /// Subdirectory of the work directory for its files (config, policy, audit, run dir).
    pub name: &'a str,
    /// The policy file's text.
    pub policy: &'a str,
    /// Agent host names.
    pub hosts: &'a [&'a str],
    /// `durable` or `page-cache`.
    pub durability: &'a str,
    /// `any` (the default) or `hosts`.
    pub detect: &'a str,
}

/// Memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// How long a daemon may take to exit after SIGTERM before it is killed (and the step fails).
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Daemon {
    child: Option<Child>,
    pid: u32,
    name: String,
    status_path: PathBuf,
    log: PathBuf,
}

/// A TOML basic string: JSON string syntax is a subset of it.
fn toml_str(s: &str) -> Result<String> {
    serde_json::to_string(s).context("quoting a TOML string")
}

fn toml_path(p: &Path) -> Result<String> {
    toml_str(
        p.to_str()
            .with_context(|| format!("{} is not UTF-8", p.display()))?,
    )
}

impl Daemon {
    /// Writes the configuration and policy under `work/spec.name`, starts the daemon and
    /// waits for its first `status.json` (written once the programs are attached).
    pub fn start(bin: &Path, bpf_object: &Path, work: &Path, spec: &Spec<'_>) -> Result<Daemon> {
        let dir = work.join(spec.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, spec.policy)
            .with_context(|| format!("writing {}", policy.display()))?;
        let run_dir = dir.join("run");
        let hosts = spec
            .hosts
            .iter()
            .map(|h| toml_str(h))
            .collect::<Result<Vec<_>>>()?
            .join(", ");
        let config = format!(
            "policy = {}\naudit = {}\naudit_key = {}\nrun_dir = {}\nbpf_object = {}\nhosts = [{hosts}]\ndurability = {}\ndetect = {}\n",
            toml_path(&policy)?,
            toml_path(&dir.join("audit.jsonl"))?,
            toml_path(&dir.join("audit.key"))?,
            toml_path(&run_dir)?,
            toml_path(bpf_object)?,
            toml_str(spec.durability)?,
            toml_str(spec.detect)?,
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = dir.join("daemon.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .arg("daemon")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start `{} daemon`", bin.display()))?;
        let mut d = Daemon {
            pid: child.id(),
            child: Some(child),
            name: spec.name.to_string(),
            status_path: run_dir.join("status.json"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = d.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                d.child = None;
                bail!(
                    "the daemon ({}) exited during start-up ({status}):\n{}",
                    d.name,
                    d.log_tail()
                );
            }
            if let Ok(v) = d.status()
                && v.get("pid").and_then(Value::as_u64) == Some(u64::from(d.pid))
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon ({}) wrote no {} within 30 s:\n{}",
                    d.name,
                    d.status_path.display(),
                    d.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn status_path(&self) -> &Path {
        &self.status_path
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("--- daemon log, last lines ---\n{tail}")
    }

    /// Fails when the daemon is no longer running.
    fn alive(&mut self) -> Result<()> {
        match self.child.as_mut() {
            Some(child) => {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "the daemon ({}) exited unexpectedly ({status}):\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
                Ok(())
            }
            None => bail!("the daemon ({}) is not running", self.name),
        }
    }

    pub fn status(&self) -> Result<Value> {
        let bytes = std::fs::read(&self.status_path)
            .with_context(|| format!("reading {}", self.status_path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", self.status_path.display()))
    }

    pub fn counters(&mut self) -> Result<Counters> {
        self.alive()?;
        let v = self.status()?;
        serde_json::from_value(v.get("counters").cloned().unwrap_or_default())
            .with_context(|| format!("`counters` in {}", self.status_path.display()))
    }

    /// Waits until `ok` holds for the status, checking that the daemon still runs.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            self.alive()?;
            if let Ok(v) = self.status()
                && ok(&v)
            {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon ({}): {what} not seen within {:.0} s",
                    self.name,
                    timeout.as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the session counters stop changing (for `quiet`), so every event the
    /// kernel sent about watched processes has been handled and reported; returns them.
    pub fn settled(&mut self, quiet: Duration, timeout: Duration) -> Result<Counters> {
        let deadline = Instant::now() + timeout;
        let mut last = self.counters()?;
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.counters()?;
            if session_part(&now) != session_part(&last) {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon ({})'s counters still change after {:.0} s",
                    self.name,
                    timeout.as_secs_f64()
                );
            }
        }
    }

    pub fn mem(&mut self) -> Result<Mem> {
        self.alive()?;
        proc_mem(self.pid)
    }

    /// SIGTERM, and the daemon must exit 0 within [`STOP_GRACE`].
    pub fn stop(mut self) -> Result<()> {
        let Some(child) = self.child.take() else {
            bail!("the daemon ({}) is not running", self.name);
        };
        let status = terminate(child, STOP_GRACE)
            .with_context(|| format!("stopping the daemon ({})", self.name))?;
        if !status.success() {
            bail!(
                "the daemon ({}) exited with {status} after SIGTERM:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take()
            && let Err(e) = terminate(child, STOP_GRACE)
        {
            eprintln!("warning: stopping the daemon ({}): {e:#}", self.name);
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited after `grace`.
pub fn terminate(mut child: Child, grace: Duration) -> Result<ExitStatus> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    if child.try_wait()?.is_none() {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait()?;
            bail!(
                "pid {pid} did not exit within {:.0} s of SIGTERM; killed ({status})",
                grace.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// VmRSS and VmHWM of `pid`.
pub fn proc_mem(pid: u32) -> Result<Mem> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}
