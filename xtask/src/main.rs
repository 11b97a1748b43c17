//! `cargo xtask`: the one entry point for setting up, building, demonstrating, testing and
//! benchmarking mcp-guard. Every step installs what it needs, idempotently, and says so.

mod bench;
mod bench_managed;
mod bench_observer;
mod demo;
mod ebpf;
mod package;
mod peers;
mod siem;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build and the tests need (apt packages, bpf-linker, test peers).
    Setup,
    /// Build the eBPF object (installs the toolchain first if missing).
    BuildEbpf,
    /// Wrap a real MCP server with the demo policy: one allowed call, one denied, their audit records.
    Demo,
    /// Run every test: unit, integration, kernel (as root), and end to end with real MCP servers.
    Test,
    /// Build the Debian package: target/debian/mcp-guard_<version>_<arch>.deb (the binary
    /// carries its eBPF object; units, default configuration, man pages, completions).
    Package {
        /// Then install it, start the daemon, remove and purge it, checking each step (root;
        /// refuses a host where mcp-guard is installed).
        #[arg(long)]
        test: bool,
    },
    /// Only the kernel matrix of `test`: the kernel tests and the observer's end-to-end tests
    /// in a QEMU VM on Debian 12's 6.1 kernel (as root).
    Vm,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Fuzz the policy loader, the framing/JSON-RPC parser and the managed wire with cargo-fuzz (libFuzzer).
    Fuzz {
        /// `policy_loader`, `jsonrpc_framing` or `managed_wire`; all three when omitted.
        target: Option<String>,
        /// How long to fuzz each target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The stdio shim: round trips and throughput, direct vs byte relay vs wrapped vs third-party proxies.
    Shim(bench::ShimArgs),
    /// The audit log: durable records/s with group commit, commit latency, verification speed.
    Audit {
        /// Further arguments for `mcp-bench-audit` (see its --help), after `--`.
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// The eBPF observer daemon: overhead on unwatched work, a watched session at 20,000
    /// messages/s, RSS with 100 sessions, kill on deny (as root).
    Observer(bench_observer::ObserverArgs),
    /// Managed shims: the daemon's decision round trip, next to the unix socket floor (as root).
    Managed,
}

fn main() -> Result<()> {
    let root = root();
    match Cli::parse().command {
        Cmd::Setup => {
            ebpf::ensure_toolchain()?;
            siem::ensure_rsyslog()?;
            siem::ensure_systemd_analyze()?;
            vm::ensure_vm()?;
            peers::ensure_peers(&root)
        }
        Cmd::BuildEbpf => {
            ebpf::ensure_toolchain()?;
            let obj = ebpf::build_ebpf()?;
            println!("eBPF object: {}", obj.display());
            Ok(())
        }
        Cmd::Demo => {
            peers::ensure_peers(&root)?;
            demo::run(&root)
        }
        Cmd::Test => test(&root),
        Cmd::Package { test } => {
            let deb = package::package(&root)?;
            if test {
                package::test_package(&deb)?;
            }
            Ok(())
        }
        Cmd::Vm => {
            if !nix_is_root() {
                bail!("the kernel matrix loads eBPF programs in the VM: run it as root");
            }
            let object = ensure_ebpf(true)?;
            peers::ensure_peers(&root)?;
            step(
                "cargo build",
                Command::new(cargo())
                    .current_dir(&root)
                    .args(["build", "-p", "mcp-guard"]),
            )?;
            vm::run_matrix(
                &root,
                &object.display().to_string(),
                &root.join("target/debug/mcp-guard"),
                &peers::venv_python(&root),
            )
        }
        Cmd::Bench(BenchCmd::Shim(args)) => {
            peers::ensure_peers(&root)?;
            bench::bench_shim(&root, &args)
        }
        Cmd::Bench(BenchCmd::Observer(args)) => bench_observer::bench_observer(&root, &args),
        Cmd::Bench(BenchCmd::Managed) => bench_managed::bench_managed(&root),
        Cmd::Fuzz { target, seconds } => fuzz(&root, target.as_deref(), seconds),
        Cmd::Bench(BenchCmd::Audit { extra }) => {
            step(
                "cargo build --release",
                Command::new(cargo()).current_dir(&root).args([
                    "build",
                    "--release",
                    "-p",
                    "mcp-guard",
                    "-p",
                    "mcp-guard-bench",
                ]),
            )?;
            let release = root.join("target/release");
            step(
                "audit benchmark",
                Command::new(release.join("mcp-bench-audit"))
                    .current_dir(&root)
                    .arg("--mcp-guard")
                    .arg(release.join("mcp-guard"))
                    .args(extra),
            )
        }
    }
}

fn test(root: &Path) -> Result<()> {
    // Style and lints first: seconds, where the tests take minutes.
    step(
        "cargo fmt --check",
        Command::new(cargo())
            .current_dir(root)
            .args(["fmt", "--all", "--check"]),
    )
    .context("the tree is not formatted: run `cargo fmt --all`")?;
    // The eBPF crate is a workspace of its own.
    step(
        "cargo fmt --check (eBPF crate)",
        Command::new(cargo())
            .current_dir(root.join("mcp-guard-ebpf"))
            .args(["fmt", "--check"]),
    )
    .context("the eBPF crate is not formatted: run `cargo fmt` in mcp-guard-ebpf")?;
    step(
        "cargo clippy",
        Command::new(cargo()).current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )
    .context("clippy found something: fix it, or allow it where it is with a reason")?;
    let root_user = nix_is_root();
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let mut env: Vec<(&str, String)> = Vec::new();
    if in_ci {
        // In CI a kernel test that cannot run is a failure, not a skip.
        env.push(("MCP_GUARD_REQUIRE_KERNEL", "1".into()));
    }
    match ensure_ebpf(root_user) {
        Ok(obj) => env.push(("MCP_GUARD_BPF_OBJECT", obj.display().to_string())),
        Err(e) if !root_user && !in_ci => {
            println!(
                "xtask: no eBPF object ({e:#}); kernel tests will skip (run as root to include them)"
            )
        }
        Err(e) => return Err(e),
    }
    peers::ensure_peers(root)?;
    if root_user {
        // The SIEM forwarder is tested against a real syslog daemon.
        siem::ensure_rsyslog()?;
        siem::ensure_systemd_analyze()?;
    }

    step(
        "cargo build",
        Command::new(cargo())
            .current_dir(root)
            .args(["build", "--workspace", "--all-targets"]),
    )?;
    let mut failed = Vec::new();
    let have_ebpf = env.iter().any(|(k, _)| *k == "MCP_GUARD_BPF_OBJECT");
    if let Err(e) = check_aarch64(root, root_user, have_ebpf) {
        println!("xtask: {e:#}");
        failed.push("aarch64 build");
    }
    let mut cargo_test = Command::new(cargo());
    cargo_test
        .current_dir(root)
        .args(["test", "--workspace"])
        .envs(env.iter().map(|(k, v)| (k, v)));
    if step("cargo test", &mut cargo_test).is_err() {
        failed.push("cargo test");
    }
    let bin = root.join("target/debug/mcp-guard");
    let mut pytest = Command::new(peers::venv_python(root));
    pytest
        .current_dir(root)
        .args(["-m", "pytest", "tests/e2e"])
        .env("MCP_GUARD_BIN", &bin)
        .envs(env.iter().map(|(k, v)| (k, v)));
    if step("end-to-end tests (pytest)", &mut pytest).is_err() {
        failed.push("end-to-end tests");
    }
    // The package as an admin installs it: dpkg -i, first start, dpkg -r, dpkg -P.
    if root_user {
        if let Err(e) = package::package(root).and_then(|deb| package::test_package(&deb)) {
            println!("xtask: {e:#}");
            failed.push("package");
        }
    } else if in_ci {
        failed.push("package: needs root");
    }
    // The same kernel tests and observer tests on Debian 12's own kernel, in a VM.
    match env.iter().find(|(k, _)| *k == "MCP_GUARD_BPF_OBJECT") {
        Some((_, object)) if root_user => {
            println!("xtask: kernel matrix: Debian 12's 6.1 kernel in QEMU");
            if let Err(e) = vm::run_matrix(root, object, &bin, &peers::venv_python(root)) {
                println!("xtask: {e:#}");
                failed.push("kernel matrix (6.1 VM)");
            }
        }
        _ if in_ci => failed.push("kernel matrix (6.1 VM): needs root and the eBPF object"),
        _ => println!("xtask: kernel matrix skipped (needs root and the eBPF object)"),
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    println!("xtask: all tests passed");
    Ok(())
}

fn fuzz(root: &Path, target: Option<&str>, seconds: u32) -> Result<()> {
    let have = Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        step(
            "cargo install cargo-fuzz",
            Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]),
        )?;
    }
    let targets = match target {
        Some(t) => vec![t],
        None => vec!["policy_loader", "jsonrpc_framing", "managed_wire"],
    };
    for t in targets {
        // cargo-fuzz passes -Z flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
        step(
            &format!("fuzz {t} for {seconds} s"),
            Command::new(cargo())
                .current_dir(root.join("fuzz"))
                .env("RUSTC_BOOTSTRAP", "1")
                .args([
                    "fuzz",
                    "run",
                    t,
                    "--",
                    &format!("-max_total_time={seconds}"),
                ]),
        )?;
    }
    Ok(())
}

/// The other architecture the programs support: user space type-checks for it (with a
/// cross C compiler for ring's build script) and the eBPF object builds with its system
/// call table. Installs the rustup target and the compiler when root.
fn check_aarch64(root: &Path, root_user: bool, with_ebpf: bool) -> Result<()> {
    const TARGET: &str = "aarch64-unknown-linux-gnu";
    const CC: &str = "aarch64-linux-gnu-gcc";
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root)
        .output()
        .with_context(|| "cannot run rustup")?;
    if !String::from_utf8_lossy(&installed.stdout).contains(TARGET) {
        step(
            "rustup target add",
            Command::new("rustup")
                .args(["target", "add", TARGET])
                .current_dir(root),
        )?;
    }
    if !Path::new("/usr/bin").join(CC).is_file() {
        if !root_user {
            bail!("{CC} is missing (apt-get install gcc-aarch64-linux-gnu)");
        }
        step(
            "apt-get install gcc-aarch64-linux-gnu",
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "gcc-aarch64-linux-gnu",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    step(
        "cargo check (aarch64)",
        Command::new(cargo())
            .current_dir(root)
            .args([
                "check",
                "-p",
                "mcp-guard",
                "--all-targets",
                "--target",
                TARGET,
            ])
            .env("CC_aarch64_unknown_linux_gnu", CC),
    )?;
    if with_ebpf {
        ebpf::build_ebpf_for("aarch64")?;
    }
    Ok(())
}

fn ensure_ebpf(root_user: bool) -> Result<PathBuf> {
    if root_user {
        ebpf::ensure_toolchain()?;
    }
    ebpf::build_ebpf()
}

fn step(what: &str, cmd: &mut Command) -> Result<()> {
    println!("xtask: {what}");
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
