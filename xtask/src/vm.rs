//! The kernel matrix: the kernel tests and end-to-end observer tests run again in a QEMU VM
//! booted on Debian 12's stock kernel (6.1) over this machine's root file system
//! (virtme-ng, software emulation), so the observer is tested on a kernel people run and
//! not only on the one it was built on.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// virtme-ng, from PyPI, in a venv of its own.
const VNG_VENV: &str = "/opt/vng";

/// The observer tests run in the VM (under emulation everything is about ten times
/// slower): a session recorded with kernel identity, and a denied call stopped by the
/// gate behind a wrapper script's banner.
const E2E: &str = "unwrapped_filesystem_server_is_recorded or banner_or_a_wrapper_script or unlisted_host or not_its_hosts or another_descriptor or seen_before_it_execs";

/// Installs QEMU, Debian's generic kernel (it has the 9p modules virtme-ng needs),
/// busybox (for virtme-ng's initramfs) and virtme-ng, skipping what is there; returns
/// the kernel image to boot.
pub fn ensure_vm() -> Result<PathBuf> {
    let have_packages = Path::new("/usr/bin/qemu-system-x86_64").is_file()
        && Path::new("/bin/busybox").is_file()
        && kernel_image().is_some();
    if have_packages {
        println!(
            "ok: qemu-system-x86, busybox, Debian kernel {}",
            kernel_image().unwrap_or_default().display()
        );
    } else {
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "qemu-system-x86",
                "linux-image-amd64",
                "busybox-static",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let vng = Path::new(VNG_VENV).join("bin/vng");
    if vng.is_file() {
        println!("ok: {}", vng.display());
    } else {
        run(Command::new("python3").args(["-m", "venv", VNG_VENV]))?;
        run(Command::new(Path::new(VNG_VENV).join("bin/pip")).args([
            "install",
            "--quiet",
            "virtme-ng",
        ]))?;
    }
    kernel_image().context("no /boot/vmlinuz-6.1.* after installing linux-image-amd64")
}

/// The newest Debian 6.1 kernel image in /boot.
fn kernel_image() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-6.1."))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The kernel test binaries, built.
fn kernel_test_binaries(root: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new(crate::cargo())
        .current_dir(root)
        .args([
            "test",
            "-p",
            "mcp-guard",
            "--test",
            "kernel_exec",
            "--test",
            "kernel_data",
            "--test",
            "kernel_probe",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot build the kernel tests")?;
    if !out.status.success() {
        bail!("building the kernel tests failed");
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && let Some(exe) = v["executable"].as_str()
            && v["target"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kernel_"))
        {
            exes.push(PathBuf::from(exe));
        }
    }
    if exes.len() != 3 {
        bail!(
            "expected the kernel_exec, kernel_data and kernel_probe test binaries, found {exes:?}"
        );
    }
    Ok(exes)
}

/// Boots the VM once and runs the kernel tests and the observer tests in it.
pub fn run_matrix(root: &Path, object: &str, bin: &Path, python: &Path) -> Result<()> {
    let kernel = ensure_vm()?;
    let exes = kernel_test_binaries(root)?;
    let mut script = String::from(
        "mkdir -p /run/e2e && mount -t tmpfs tmpfs /run/e2e && mkdir /run/e2e/tmp\n\
         echo \"vm kernel: $(uname -r)\"\nrc=0\n",
    );
    script += &format!("cd {}/mcp-guard-user\n", root.display());
    for exe in &exes {
        script += &format!(
            "TMPDIR=/run/e2e/tmp CI=true MCP_GUARD_BPF_OBJECT={object} {} --test-threads=1 || rc=1\n",
            exe.display()
        );
    }
    // Unix sockets cannot be made on the 9p root: the tests' files go to a tmpfs. Under
    // software emulation a test runs several times slower than on the host: a longer
    // per-test timeout than pytest.ini's.
    script += &format!(
        "cd {root}/tests/e2e\nTMPDIR=/run/e2e/tmp MCP_GUARD_REQUIRE_KERNEL=1 MCP_GUARD_BIN={bin} MCP_GUARD_BPF_OBJECT={object} \
         {python} -m pytest -q -p no:cacheprovider --timeout 600 --basetemp=/run/e2e/pt test_observer.py -k '{E2E}' || rc=1\n\
         echo \"vm result: $rc\"\n",
        root = root.display(),
        bin = bin.display(),
        python = python.display(),
    );
    // The script goes to the guest as a file in the checkout: passed inline it would ride on
    // the kernel command line, which x86 cuts at 2048 bytes (the guest then waits forever).
    let script_file = root.join("target/vm/run.sh");
    std::fs::create_dir_all(script_file.parent().expect("a parent"))?;
    std::fs::write(&script_file, &script)
        .with_context(|| format!("cannot write {}", script_file.display()))?;
    let mut child = Command::new(Path::new(VNG_VENV).join("bin/vng"))
        .args(["--run"])
        .arg(&kernel)
        .args([
            "--memory",
            "4G",
            "--cpus",
            "2",
            "--disable-kvm",
            // Only the checkout is writable from the VM: the tests' temporary files stay
            // in the VM's tmpfs, and nothing in this machine's /tmp is touched.
            "--rwdir",
        ])
        .arg(root)
        .arg("--")
        .arg(format!("sh {}", script_file.display()))
        .env(
            "PATH",
            format!(
                "{VNG_VENV}/bin:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdout(Stdio::piped())
        // Piped, not inherited: QEMU reopens its output through /proc/self/fd and
        // truncates a log file the caller redirected it to.
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start virtme-ng")?;
    let errors = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[vm] {line}");
            }
        })
    });
    let mut result = None;
    let mut booted = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("[vm] {line}");
            if let Some(k) = line.strip_prefix("vm kernel: ") {
                booted = Some(k.to_string());
            }
            if let Some(rc) = line.strip_prefix("vm result: ") {
                result = Some(rc.trim().to_string());
            }
        }
    }
    child.wait()?;
    if let Some(t) = errors {
        let _ = t.join();
    }
    match (booted, result.as_deref()) {
        (Some(k), Some("0")) => {
            println!("xtask: kernel tests and observer tests passed on {k} (VM) as well");
            Ok(())
        }
        (Some(k), _) => bail!("tests failed in the VM on kernel {k}"),
        (None, _) => bail!("the VM on {} did not boot", kernel.display()),
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
