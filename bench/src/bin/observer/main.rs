//! `mcp-bench-observer`: the benchmark of the eBPF observer daemon (`mcp-guard daemon`),
//! run by `cargo xtask bench observer`. Every figure is printed next to a baseline
//! measured in the same run:
//!
//! 1. Overhead on work the daemon does not watch: a tar + gzip pipeline, two system-call
//!    loops (one-byte writes to /dev/null and into a drained pipe) and an exec storm
//!    (`/bin/true` started with pipes for stdin and stdout, so every one is probed), without
//!    the daemon and with it loaded (hosts set to a name no process has, `detect = "any"`),
//!    alternating.
//! 2. One watched session at a fixed rate (default 20,000 requests/s of 1 KiB, host to
//!    server, for 10 s): the daemon must count every message and lose none. Baseline:
//!    the same session without the daemon.
//! 3. Daemon RSS with 100 concurrent watched sessions; baseline: the idle daemon.
//! 4. Kill on deny: the real filesystem MCP server asked to write a file the policy
//!    denies, N times; how many writes still happen. Baseline: the same without the daemon.
//!
//! The other subcommands are the processes it starts: `server`, `host-rate`, `host-many`.

mod daemon;
mod roles;
mod steps;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "mcp-bench-observer",
    about = "mcp-guard observer daemon benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark and print the summary table (needs root).
    Run(Box<RunArgs>),
    /// An MCP server on fd 0/1 (the daemon captures those descriptors only).
    Server,
    /// An agent host with one session at a fixed request rate; prints a JSON report.
    HostRate(roles::HostRateArgs),
    /// An agent host holding many sessions until its stdin closes.
    HostMany(roles::HostManyArgs),
    /// The two system-call loops once, without anything else.
    Syscalls {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Step {
    Overhead,
    Session,
    Rss,
    Kill,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The `mcp-guard` binary.
    #[arg(long)]
    pub mcp_guard: PathBuf,
    /// The eBPF object (`cargo xtask build-ebpf`).
    #[arg(long)]
    pub bpf_object: PathBuf,
    /// The repository: `.peers/` (filesystem server, Python SDK) and `tests/e2e/observer_host.py`.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Runs of each overhead workload, with and without the daemon (medians reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The realistic workload, run with `sh -c`.
    #[arg(
        long,
        default_value = "tar -C /usr -cf - include | gzip -1 > /dev/null"
    )]
    pub workload: String,
    /// One-byte write(2) calls per system-call loop.
    #[arg(long, default_value_t = 1_000_000)]
    pub syscalls: u64,
    /// Programs started (fork, exec, exit) in the exec storm.
    #[arg(long, default_value_t = 2_000)]
    pub execs: u64,
    /// Watched session: requests per second, host to server.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Watched session: seconds.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Watched session: bytes per request, newline included.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Skip the watched session with durable audit records (page-cache only).
    #[arg(long)]
    pub no_durable: bool,
    /// Concurrent sessions for the RSS step.
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Denied calls (one host process each) in the kill step.
    #[arg(long, default_value_t = 20)]
    pub deny_runs: usize,
    /// How many of those host processes run at once.
    #[arg(long, default_value_t = 4)]
    pub deny_parallel: usize,
    /// Only these steps (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Step>,
    /// Also write the summary table (markdown) to this file.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Exit non-zero when a target is missed.
    #[arg(long)]
    pub strict: bool,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(args) => steps::run(&args),
        Cmd::Server => roles::server(),
        Cmd::HostRate(a) => roles::host_rate(&a),
        Cmd::HostMany(a) => roles::host_many(&a),
        Cmd::Syscalls { count } => {
            println!(
                "write(2) of 1 byte to /dev/null: {:.0} ns",
                roles::writes_devnull(count)?
            );
            println!(
                "write(2) of 1 byte into a drained pipe: {:.0} ns",
                roles::writes_pipe(count)?
            );
            Ok(())
        }
    }
}
