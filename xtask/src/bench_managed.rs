//! `cargo xtask bench managed`: the managed decision round trip. Starts `mcp-guard daemon`
//! (page-cache audit: the figure excludes the fsync) with a throwaway configuration, runs
//! `mcp-bench-managed` against its socket, and stops it.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Stops the daemon when dropped, also on error.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bench_managed(root: &Path) -> Result<()> {
    if !crate::nix_is_root() {
        bail!(
            "`cargo xtask bench managed` runs `mcp-guard daemon`, which loads eBPF programs: run it as root"
        );
    }
    crate::ebpf::ensure_toolchain().context("installing the eBPF toolchain")?;
    let object = crate::ebpf::build_ebpf().context("building the eBPF object")?;
    crate::step(
        "cargo build --release -p mcp-guard -p mcp-guard-bench",
        Command::new(crate::cargo()).current_dir(root).args([
            "build",
            "--release",
            "-p",
            "mcp-guard",
            "-p",
            "mcp-guard-bench",
        ]),
    )?;
    let release = crate::bench::target_dir(root).join("release");
    let dir = std::env::temp_dir().join(format!("mcp-guard-bench-managed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run(&release, &object, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(release: &Path, object: &Path, dir: &Path) -> Result<()> {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"allow\"\n\n[[rule]]\nid = \"no-writes\"\ntool = \"write_file\"\naction = \"deny\"\n",
    )?;
    let run_dir = dir.join("run");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "policy = \"{}\"\naudit = \"{}\"\naudit_key = \"{}\"\nrun_dir = \"{}\"\nbpf_object = \"{}\"\n\
             durability = \"page-cache\"\nhosts = [\"mcpg-no-such-host\"]\nhost_configs = \"off\"\n",
            policy.display(),
            dir.join("audit.jsonl").display(),
            dir.join("audit.key").display(),
            run_dir.display(),
            object.display()
        ),
    )?;
    let daemon = Daemon(
        Command::new(release.join("mcp-guard"))
            .args(["daemon", "--config"])
            .arg(&config)
            .spawn()
            .context("cannot start the daemon")?,
    );
    let socket = run_dir.join("mcp-guard.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run_dir.join("status.json").exists() {
        if Instant::now() > deadline {
            bail!("the daemon did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new(release.join("mcp-bench-managed"))
        .arg("--socket")
        .arg(&socket)
        .status()
        .context("mcp-bench-managed")?;
    drop(daemon);
    if !status.success() {
        bail!("mcp-bench-managed failed: {status}");
    }
    Ok(())
}
