//! `mcp-bench`: load driver and report for the mcp-guard stdio shim benchmark.
//!
//! `mcp-bench suite ...` runs every configuration (direct, a zero-logic relay, the
//! wrapped shim with page-cache and durable audit, third-party stdio proxies: FastMCP, mcp-firewall) against the
//! native echo server (`mcp-bench-echo`) and prints one table with the targets judged.
//! `cargo xtask bench shim` builds everything and calls it.

mod client;
mod fsync;
mod relay;
mod suite;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mcp-bench", version, about = "mcp-guard stdio shim benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run all configurations and print the comparison table.
    Suite(Box<suite::SuiteArgs>),
    /// A zero-logic byte relay in front of a command (the floor for any stdio proxy).
    Relay {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Median cost of a small append + fdatasync in a directory.
    Fsync {
        #[arg(default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        iterations: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Suite(args) => suite::run(&args),
        Cmd::Relay { command } => relay::run(&command),
        Cmd::Fsync { dir, iterations } => {
            let f = fsync::measure(&dir, iterations)?;
            println!(
                "fdatasync in {}: p50 {:.1} us, p99 {:.1} us ({} iterations)",
                dir.display(),
                f.p50_us,
                f.p99_us,
                f.n
            );
            Ok(())
        }
    }
}
