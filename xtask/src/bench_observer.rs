//! `cargo xtask bench observer`: the eBPF observer daemon's overhead, capacity, memory
//! and kill-on-deny efficacy, each next to a baseline measured in the same run.
//!
//! Builds what the benchmark needs (the eBPF object, `mcp-guard` and the bench crate in
//! release, the test peers for the filesystem server and the Python host), then runs
//! `mcp-bench-observer run`, which prints the table (see `bench/README.md`).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ObserverArgs {
    /// Exit non-zero when a target is missed.
    #[arg(long)]
    pub strict: bool,
    /// Further arguments for `mcp-bench-observer run` (`--only kill`, `--runs 3`,
    /// `--no-durable`, ...; see `target/release/mcp-bench-observer run --help`), after `--`.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

pub fn bench_observer(root: &Path, args: &ObserverArgs) -> Result<()> {
    if !crate::nix_is_root() {
        bail!(
            "`cargo xtask bench observer` runs `mcp-guard daemon`, which loads eBPF programs: run it as root"
        );
    }
    crate::ebpf::ensure_toolchain().context("installing the eBPF toolchain")?;
    let object = crate::ebpf::build_ebpf().context("building the eBPF object")?;
    crate::peers::ensure_peers(root)
        .context("installing the test peers (filesystem server, Python SDK)")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    crate::step(
        "cargo build --release -p mcp-guard -p mcp-guard-bench",
        Command::new(cargo).current_dir(root).args([
            "build",
            "--release",
            "-p",
            "mcp-guard",
            "-p",
            "mcp-guard-bench",
        ]),
    )?;
    let target = crate::bench::target_dir(root);
    let release = target.join("release");
    let mut run = Command::new(release.join("mcp-bench-observer"));
    run.current_dir(root)
        .arg("run")
        .arg("--mcp-guard")
        .arg(release.join("mcp-guard"))
        .arg("--bpf-object")
        .arg(&object)
        .arg("--repo")
        .arg(root)
        .arg("--results")
        .arg(target.join("bench/observer/results.md"));
    if args.strict {
        run.arg("--strict");
    }
    run.args(&args.extra);
    crate::step("observer benchmark", &mut run)
}
