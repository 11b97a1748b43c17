//! The SIEM test peer: Debian's rsyslog, which the `audit forward` tests start as a child
//! process with their own configuration (the system service is left alone).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

/// Installs rsyslog with apt-get unless `rsyslogd` is already there.
pub fn ensure_rsyslog() -> anyhow::Result<()> {
    ensure_package(
        RSYSLOGD,
        "rsyslog",
        "the syslog receiver of the audit forward tests",
    )
}

/// Installs systemd's tools (not the init) unless `systemd-analyze` is there: the service
/// tests verify the shipped unit with it.
pub fn ensure_systemd_analyze() -> anyhow::Result<()> {
    ensure_package(
        SYSTEMD_ANALYZE,
        "systemd",
        "`systemd-analyze verify` of the shipped unit",
    )
}

fn ensure_package(file: &str, package: &str, why: &str) -> anyhow::Result<()> {
    if Path::new(file).is_file() {
        println!("ok: {file}");
        return Ok(());
    }
    println!("installing {package} ({why})");
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // A fresh image may have no package lists yet.
    if install().is_err() {
        run(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    if !Path::new(file).is_file() {
        bail!("{package} installed but {file} is missing");
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
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}
