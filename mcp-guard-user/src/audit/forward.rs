//! `mcp-guard audit forward`: sends audit records to a SIEM.

/// Where and how to forward.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The audit log to read.
    pub file: std::path::PathBuf,
}

/// Forwards records; returns the exit status.
pub fn run(_args: &Args) -> anyhow::Result<i32> {
    anyhow::bail!("audit forward is not available in this build")
}
