//! `cargo xtask bench shim`: builds the shim and the bench crate in release, installs the
//! third-party proxy (pinned) into `.peers/bench/`, and runs `mcp-bench suite`, which
//! prints the comparison table and judges the targets.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The third-party stdio proxy: FastMCP's `fastmcp run mcp.json` (PyPI), pinned with its
/// whole dependency tree in `bench/peers/fastmcp-requirements.txt`.
const FASTMCP_VERSION: &str = "2.14.7";

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ShimArgs {
    /// One repetition instead of three (about 25 s instead of about 75 s).
    #[arg(long)]
    pub quick: bool,
    /// Skip the third-party proxy row (no Python environment is installed).
    #[arg(long)]
    pub no_peer: bool,
    /// Exit non-zero when a target fails.
    #[arg(long)]
    pub strict: bool,
    /// Further arguments for `mcp-bench suite` (counts, sizes, `--only`, ...; see
    /// `target/release/mcp-bench suite --help`), after `--`.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Installs FastMCP into `.peers/bench/fastmcp-<version>/` once; later calls find the
/// stamp and do nothing. Returns the `fastmcp` executable.
fn install_fastmcp(root: &Path) -> Result<PathBuf> {
    let dir = root
        .join(".peers/bench")
        .join(format!("fastmcp-{FASTMCP_VERSION}"));
    let bin = dir.join("bin/fastmcp");
    let stamp = dir.join(".mcp-bench-installed");
    let reqs = root.join("bench/peers/fastmcp-requirements.txt");
    let want =
        std::fs::read_to_string(&reqs).with_context(|| format!("reading {}", reqs.display()))?;
    if bin.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(bin);
    }
    eprintln!(
        "installing FastMCP {FASTMCP_VERSION} into {}",
        dir.display()
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Same interpreter choice as the e2e peers (`xtask/src/peers.rs`).
    let python = std::env::var("MCP_GUARD_PEERS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    run(Command::new(python).arg("-m").arg("venv").arg(&dir))?;
    run(Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-r",
        ])
        .arg(&reqs))?;
    std::fs::write(&stamp, want)?;
    Ok(bin)
}

pub fn bench_shim(root: &Path, args: &ShimArgs) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    run(Command::new(&cargo).current_dir(root).args([
        "build",
        "--release",
        "-p",
        "mcp-guard",
        "-p",
        "mcp-guard-bench",
    ]))?;
    let release = target_dir(root).join("release");

    let mut suite = Command::new(release.join("mcp-bench"));
    suite
        .current_dir(root)
        .arg("suite")
        .arg("--echo")
        .arg(release.join("mcp-bench-echo"))
        .arg("--mcp-guard")
        .arg(release.join("mcp-guard"))
        .arg("--work-dir")
        .arg(target_dir(root).join("bench/shim"));
    if !args.no_peer {
        match install_fastmcp(root) {
            Ok(bin) => {
                suite
                    .arg("--fastmcp")
                    .arg(bin)
                    .arg("--fastmcp-label")
                    .arg(format!("FastMCP {FASTMCP_VERSION} proxy (Python)"));
            }
            Err(e) => eprintln!("warning: third-party proxy unavailable, row skipped: {e:#}"),
        }
    }
    if args.quick {
        suite.args(["--runs", "1"]);
    }
    if args.strict {
        suite.arg("--strict");
    }
    suite.args(&args.extra);
    run(&mut suite)
}
