//! The daemon's status file and `mcp-guard status`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Counters;

/// What the daemon writes to `run_dir/status.json` twice a second.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub started: String,
    pub updated: String,
    pub programs: Vec<String>,
    pub policy: String,
    pub policy_sha256: String,
    pub audit: PathBuf,
    pub hosts: Vec<Host>,
    pub sessions: Vec<Session>,
    pub counters: Counters,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Host {
    pub pid: u32,
    pub comm: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub pid: u32,
    pub server: String,
    pub host: Option<String>,
    pub user: Option<String>,
    pub wrapped: bool,
    pub messages: u64,
}

/// Replaces `path` atomically (readable by all: it names no secrets).
pub fn write(path: &Path, status: &Status) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(status)?)?;
    // Readable by `mcp-guard status` of any user, whatever the service's umask.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// Exit status of `mcp-guard status` when no daemon runs (as LSB `status` actions do).
pub const NOT_RUNNING: i32 = 3;

/// `mcp-guard status`: prints what the running daemon reports; exit 3 if none runs.
pub fn run(config: Option<&Path>, json: bool) -> anyhow::Result<i32> {
    let cfg = super::config::Config::load(config)?;
    let path = cfg.status_path();
    let status: Status = match std::fs::read(&path) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "mcp-guard: the daemon is not running (no {})",
                path.display()
            );
            return Ok(NOT_RUNNING);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())));
        }
    };
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(status.pid as i32), None).is_ok()
        && std::fs::read(format!("/proc/{}/cmdline", status.pid))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"daemon"));
    if !alive {
        eprintln!(
            "mcp-guard: the daemon is not running (pid {} in {} is gone)",
            status.pid,
            path.display()
        );
        return Ok(NOT_RUNNING);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    let c = &status.counters;
    println!(
        "daemon     pid {} since {} (updated {})",
        status.pid, status.started, status.updated
    );
    println!("programs   {}", status.programs.join(", "));
    println!(
        "policy     {} (sha256 {})",
        status.policy,
        &status.policy_sha256[..status.policy_sha256.len().min(16)]
    );
    println!("audit      {}", status.audit.display());
    println!(
        "hosts      {}",
        if status.hosts.is_empty() {
            "none running".to_string()
        } else {
            status
                .hosts
                .iter()
                .map(|h| format!("{} ({})", h.comm, h.pid))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!(
        "events     {} ({} bytes, {} messages); lost: {} in the kernel, {} chunks by sequence",
        c.events, c.bytes, c.messages, c.lost_kernel, c.lost_sequence
    );
    println!("alerts     {} ({} servers killed)", c.alerts, c.killed);
    println!("sessions   {}", status.sessions.len());
    if !status.sessions.is_empty() {
        println!(
            "  {:<8} {:<28} {:<14} {:<12} {:<9} MESSAGES",
            "PID", "SERVER", "HOST", "USER", "WRAPPED"
        );
        for s in &status.sessions {
            println!(
                "  {:<8} {:<28} {:<14} {:<12} {:<9} {}",
                s.pid,
                s.server,
                s.host.as_deref().unwrap_or("-"),
                s.user.as_deref().unwrap_or("-"),
                if s.wrapped { "yes" } else { "NO" },
                s.messages
            );
        }
    }
    Ok(0)
}
