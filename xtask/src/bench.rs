//! `cargo xtask bench shim`: builds the shim and the bench crate in release, installs the
//! third-party proxies (pinned) into `.peers/bench/`, and runs `mcp-bench suite`, which
//! prints the comparison table and judges the targets.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A third-party stdio proxy from PyPI, pinned with its whole dependency tree in
/// `bench/peers/<key>-requirements.txt` and installed into
/// `.peers/bench/<key>-<version>/`.
struct Peer {
    /// The row's key in `mcp-bench suite` (`--peer <key>=<exe>`, `--only <key>`).
    key: &'static str,
    /// Human name, for messages and the label.
    name: &'static str,
    version: &'static str,
    /// The console script in the venv's `bin/`.
    exe: &'static str,
    /// What the row runs, after the name and version in the table's label.
    what: &'static str,
}

const PEERS: &[Peer] = &[
    // `fastmcp run mcp.json --transport stdio`: a proxy server for an `mcpServers` file.
    Peer {
        key: "fastmcp",
        name: "FastMCP",
        version: "2.14.7",
        exe: "fastmcp",
        what: "proxy (Python)",
    },
    // `mcp-firewall wrap --config FILE -- CMD`: a policy proxy with an audit log.
    Peer {
        key: "mcp-firewall",
        name: "mcp-firewall",
        version: "0.1.0",
        exe: "mcp-firewall",
        what: "wrap (Python)",
    },
];

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ShimArgs {
    /// One repetition instead of three (about 1 min instead of about 3 min).
    #[arg(long)]
    pub quick: bool,
    /// Skip the third-party proxy rows (no Python environment is installed).
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

/// Installs `peer` into `.peers/bench/<key>-<version>/` once; later calls find the stamp
/// (a copy of the requirements file) and do nothing. Returns the peer's executable.
fn install_peer(root: &Path, peer: &Peer) -> Result<PathBuf> {
    let dir = root
        .join(".peers/bench")
        .join(format!("{}-{}", peer.key, peer.version));
    let bin = dir.join("bin").join(peer.exe);
    let stamp = dir.join(".mcp-bench-installed");
    let reqs = root
        .join("bench/peers")
        .join(format!("{}-requirements.txt", peer.key));
    let want =
        std::fs::read_to_string(&reqs).with_context(|| format!("reading {}", reqs.display()))?;
    if bin.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(bin);
    }
    eprintln!(
        "installing {} {} into {}",
        peer.name,
        peer.version,
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
    if !bin.is_file() {
        bail!("{} was not installed by {}", bin.display(), reqs.display());
    }
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
        for peer in PEERS {
            match install_peer(root, peer) {
                Ok(bin) => {
                    let mut spec = OsString::from(format!("{}=", peer.key));
                    spec.push(bin);
                    suite
                        .arg("--peer")
                        .arg(spec)
                        .arg("--peer-label")
                        .arg(format!(
                            "{}={} {} {}",
                            peer.key, peer.name, peer.version, peer.what
                        ));
                }
                Err(e) => eprintln!(
                    "warning: {} {} unavailable, row skipped: {e:#}",
                    peer.name, peer.version
                ),
            }
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
