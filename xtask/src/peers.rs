//! Installs the end-to-end test peers (real MCP servers and the official
//! Python `mcp` SDK client) inside the checkout, under `.peers/` (gitignored):
//!
//! * `.peers/node`  — `npm ci` of `tests/peers/package.json` + `package-lock.json`
//!   (server-everything, server-filesystem, server-memory);
//! * `.peers/venv`  — a Python venv with `tests/peers/requirements.txt`
//!   (`mcp`, `mcp-server-time`, `mcp-server-git`, `pytest`, `pytest-timeout`).
//!
//! Idempotent: `.peers/stamp` holds a copy of every input file (plus the
//! node/python versions used); when it matches and the expected entry points
//! exist, nothing is done. No hashing crate is needed: the stamp *is* the inputs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Files in `tests/peers/` whose content decides what is installed.
const INPUTS: &[&str] = &["package.json", "package-lock.json", "requirements.txt"];

/// Bumped when the install procedure itself changes, to force a reinstall.
const STAMP_VERSION: &str = "mcp-guard test peers stamp v1";

/// Entry points the e2e suite relies on, relative to `.peers/`.
const EXPECTED: &[&str] = &[
    "node/node_modules/.bin/mcp-server-everything",
    "node/node_modules/.bin/mcp-server-filesystem",
    "node/node_modules/.bin/mcp-server-memory",
    // The YAML reader the host-config tests check edits against (Continue reads with it).
    "node/node_modules/yaml/package.json",
    "venv/bin/python",
    "venv/bin/mcp-server-time",
    "venv/bin/mcp-server-git",
];

/// `.peers/` under the checkout.
pub fn peers_dir(root: &Path) -> PathBuf {
    root.join(".peers")
}

/// The venv's interpreter, to run `python -m pytest tests/e2e` with.
pub fn venv_python(root: &Path) -> PathBuf {
    peers_dir(root).join("venv/bin/python")
}

/// Python used to create the venv: `$MCP_GUARD_PEERS_PYTHON`, else `python3`.
fn host_python() -> String {
    std::env::var("MCP_GUARD_PEERS_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn tool_version(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).output() {
        Ok(out) => {
            let mut v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if v.is_empty() {
                v = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            }
            v
        }
        Err(e) => format!("<{program} unavailable: {e}>"),
    }
}

/// The stamp content for the current inputs: a header, tool versions, and a
/// verbatim copy of every input file.
fn expected_stamp(src: &Path) -> Result<String> {
    let mut stamp = String::new();
    stamp.push_str(STAMP_VERSION);
    stamp.push('\n');
    stamp.push_str(&format!("node: {}\n", tool_version("node", "--version")));
    stamp.push_str(&format!(
        "python: {}\n",
        tool_version(&host_python(), "--version")
    ));
    for name in INPUTS {
        let path = src.join(name);
        let content =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        stamp.push_str(&format!("=== {name} ({} bytes) ===\n", content.len()));
        stamp.push_str(&content);
        stamp.push('\n');
    }
    Ok(stamp)
}

fn run(cmd: &mut Command) -> Result<()> {
    println!("peers: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Make sure `.peers/` holds exactly the peers pinned in `tests/peers/`.
pub fn ensure_peers(root: &Path) -> Result<()> {
    let src = root.join("tests/peers");
    let dest = peers_dir(root);
    let stamp_path = dest.join("stamp");
    let want = expected_stamp(&src)?;

    let missing: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|p| !dest.join(p).exists())
        .collect();
    let have = fs::read_to_string(&stamp_path).ok();
    if have.as_deref() == Some(want.as_str()) && missing.is_empty() {
        println!(
            "peers: {} is up to date (stamp matches tests/peers/*)",
            dest.display()
        );
        return Ok(());
    }
    match (&have, missing.is_empty()) {
        (None, _) => println!("peers: no stamp at {}; installing", stamp_path.display()),
        (Some(h), _) if h != &want => {
            println!("peers: tests/peers/* or tool versions changed; reinstalling")
        }
        _ => println!("peers: missing {missing:?}; reinstalling"),
    }

    fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    // A half-finished install must never look complete.
    if stamp_path.exists() {
        fs::remove_file(&stamp_path)
            .with_context(|| format!("removing {}", stamp_path.display()))?;
    }

    // Node servers: npm ci from a copy of package.json + lock (npm ci wipes node_modules itself).
    let node_dir = dest.join("node");
    fs::create_dir_all(&node_dir)?;
    for name in ["package.json", "package-lock.json"] {
        fs::copy(src.join(name), node_dir.join(name))
            .with_context(|| format!("copying tests/peers/{name} to {}", node_dir.display()))?;
    }
    println!("peers: installing npm servers into {}", node_dir.display());
    run(Command::new("npm")
        .arg("ci")
        .arg("--prefix")
        .arg(&node_dir)
        .args(["--no-audit", "--no-fund", "--loglevel=error"]))?;

    // Python: a fresh venv, so no package from an older requirements.txt survives.
    let venv = dest.join("venv");
    if venv.exists() {
        println!("peers: removing old venv {}", venv.display());
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    println!("peers: creating venv {}", venv.display());
    run(Command::new(host_python()).args(["-m", "venv"]).arg(&venv))?;
    println!("peers: installing tests/peers/requirements.txt into the venv");
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-r",
        ])
        .arg(src.join("requirements.txt")))?;
    // The OTLP receiver of the export tests (tests/peers/otlp_receiver.py) needs these.
    run(Command::new(venv.join("bin/python")).args([
        "-c",
        "import opentelemetry.proto.collector.logs.v1.logs_service_pb2, opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    ]))?;

    let missing: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|p| !dest.join(p).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "peers: install finished but {missing:?} are missing under {}",
            dest.display()
        );
    }
    fs::write(&stamp_path, want).with_context(|| format!("writing {}", stamp_path.display()))?;
    println!(
        "peers: installed; stamp written to {}",
        stamp_path.display()
    );
    Ok(())
}
