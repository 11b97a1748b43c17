//! The SIEM test peer: Debian's rsyslog, which the `audit forward` tests start as a child
//! process with their own configuration (the system service is left alone).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// Installs rsyslog with apt-get unless `rsyslogd` is already there.
pub fn ensure_rsyslog() -> anyhow::Result<()> {
    if Path::new(RSYSLOGD).is_file() {
        println!("ok: {RSYSLOGD}");
        return Ok(());
    }
    println!("installing rsyslog (the syslog receiver of the audit forward tests)");
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "rsyslog"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // A fresh image may have no package lists yet.
    if install().is_err() {
        run(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    if !Path::new(RSYSLOGD).is_file() {
        bail!("rsyslog installed but {RSYSLOGD} is missing");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    println!("$ {shown}");
    let status = cmd.status().with_context(|| format!("failed to start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}
