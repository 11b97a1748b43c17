//! `cargo xtask package`: the Debian package, and its install/remove/purge test.
//!
//! Built with `dpkg-deb` from a staged tree rather than cargo-deb: every file, mode and
//! maintainer script is written here, in plain sight, and nothing more is installed to
//! build it. The binary carries its eBPF object (`MCP_GUARD_EMBED_BPF`), so the package
//! needs no BPF toolchain on the machines that install it; it ships stripped, with the
//! debug symbols in a file of their own beside the .deb.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, ebpf, step};

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    install -d -m 0750 /var/log/mcp-guard
    install -d -m 0700 /var/lib/mcp-guard
    install -d -m 0755 /etc/mcp-guard/policy.d
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        systemctl enable mcp-guard.service >/dev/null || true
        systemctl restart mcp-guard.service || \
            echo "mcp-guard: the daemon did not start: journalctl -u mcp-guard" >&2
    fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now mcp-guard.service mcp-guard-forward.service >/dev/null 2>&1 || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    # The daemon's socket outlives a stopped daemon on purpose (managed shims fail closed
    # until it is back); removed with the package, it is gone for good.
    rm -rf /run/mcp-guard
fi
if [ "$1" = purge ]; then
    # The audit log, the signing key, cursors and pins, and local policy: what purge means.
    rm -rf /var/log/mcp-guard /var/lib/mcp-guard /etc/mcp-guard
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
"#;

const CONFFILES: &[(&str, &str)] = &[
    ("config/config.toml", "etc/mcp-guard/config.toml"),
    ("policies/default.toml", "etc/mcp-guard/policy.toml"),
    ("config/forward.env", "etc/mcp-guard/forward.env"),
];

fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Builds `target/debian/mcp-guard_<version>_<arch>.deb`; returns its path.
pub fn package(root: &Path) -> Result<PathBuf> {
    ebpf::ensure_toolchain()?;
    let object = ebpf::build_ebpf()?;
    step(
        "cargo build --release (eBPF object built in)",
        Command::new(cargo())
            .current_dir(root)
            .args([
                "build",
                "--release",
                "-p",
                "mcp-guard",
                "--bin",
                "mcp-guard",
            ])
            .env("MCP_GUARD_EMBED_BPF", &object),
    )?;
    let version = run(
        "the version",
        Command::new(root.join("target/release/mcp-guard")).arg("--version"),
    )?
    .rsplit(' ')
    .next()
    .unwrap_or_default()
    .to_string();
    let arch = run(
        "dpkg --print-architecture",
        Command::new("dpkg").arg("--print-architecture"),
    )?;
    let out = root.join("target/debian");
    let stage = out.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).context("cannot clear the staging tree")?;
    }
    fs::create_dir_all(stage.join("usr/bin"))?;

    // The binary, stripped; its debug symbols apart, linked by name.
    let bin = stage.join("usr/bin/mcp-guard");
    let debug = out.join(format!("mcp-guard_{version}_{arch}.debug"));
    let built = root.join("target/release/mcp-guard");
    run(
        "objcopy --only-keep-debug",
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&built)
            .arg(&debug),
    )?;
    run(
        "strip",
        Command::new("strip")
            .args(["--strip-debug", "--strip-unneeded", "-o"])
            .arg(&bin)
            .arg(&built),
    )?;
    run(
        "objcopy --add-gnu-debuglink",
        Command::new("objcopy")
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(&bin),
    )?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;

    // Manual pages (gzipped, as Debian wants them) and completions, from the binary itself.
    let man = stage.join("usr/share/man/man1");
    run(
        "mcp-guard generate man",
        Command::new(&bin)
            .args(["generate", "man", "--out"])
            .arg(&man),
    )?;
    for page in fs::read_dir(&man)? {
        run("gzip", Command::new("gzip").arg("-9n").arg(page?.path()))?;
    }
    let completions = out.join("completions");
    run(
        "mcp-guard generate completions",
        Command::new(&bin)
            .args(["generate", "completions", "--out"])
            .arg(&completions),
    )?;
    for (file, dest) in [
        (
            "mcp-guard.bash",
            "usr/share/bash-completion/completions/mcp-guard",
        ),
        ("_mcp-guard", "usr/share/zsh/vendor-completions/_mcp-guard"),
        (
            "mcp-guard.fish",
            "usr/share/fish/vendor_completions.d/mcp-guard.fish",
        ),
    ] {
        write(&stage.join(dest), &fs::read(completions.join(file))?, 0o644)?;
    }

    for unit in ["mcp-guard.service", "mcp-guard-forward.service"] {
        let text = fs::read(root.join("config").join(unit))?;
        write(
            &stage.join("usr/lib/systemd/system").join(unit),
            &text,
            0o644,
        )?;
    }
    for (src, dest) in CONFFILES {
        write(&stage.join(dest), &fs::read(root.join(src))?, 0o644)?;
    }
    fs::create_dir_all(stage.join("etc/mcp-guard/policy.d"))?;
    write(
        &stage.join("usr/share/doc/mcp-guard/copyright"),
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
          Upstream-Name: mcp-guard\n\nFiles: *\nLicense: Apache-2.0\n \
          On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )?;

    let size_kib = du_kib(&stage)?;
    let control = format!(
        "Package: mcp-guard\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: mcp-guard developers <mcp-guard@localhost>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6 (>= 2.34)\n\
         Section: admin\n\
         Priority: optional\n\
         Homepage: https://github.com/mcp-guard/mcp-guard\n\
         Description: guards Model Context Protocol traffic on this host\n \
         A stdio shim that enforces a per-tool policy on MCP servers, an eBPF daemon\n \
         that sees every stdio MCP session on the host, and a signed, hash-chained\n \
         audit log ready for a SIEM.\n"
    );
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    let conffiles: String = CONFFILES.iter().map(|(_, d)| format!("/{d}\n")).collect();
    write(&debian.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    write(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;

    let deb = out.join(format!("mcp-guard_{version}_{arch}.deb"));
    run(
        "dpkg-deb --build",
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    let bin_size = fs::metadata(&bin)?.len();
    println!(
        "package: {} ({:.1} MiB; /usr/bin/mcp-guard {:.1} MiB with its eBPF object; debug symbols: {})",
        deb.display(),
        fs::metadata(&deb)?.len() as f64 / 1048576.0,
        bin_size as f64 / 1048576.0,
        debug.display()
    );
    Ok(deb)
}

fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du_kib(&entry.path())?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(total)
}

/// Installs the package, starts the daemon as a new user would (no environment, nothing
/// else set up), checks it records `daemon_start` and answers `status`, then removes and
/// purges the package, checking what each leaves. Root only; refuses a host where
/// mcp-guard is already installed.
pub fn test_package(deb: &Path) -> Result<()> {
    let present = [
        "/usr/bin/mcp-guard",
        "/etc/mcp-guard",
        "/var/lib/mcp-guard",
        "/run/mcp-guard",
    ]
    .iter()
    .find(|p| Path::new(p).exists());
    if let Some(p) = present {
        bail!(
            "{p} exists: the package test installs and purges mcp-guard, so it runs only where it is not installed"
        );
    }
    let result = install_and_run(deb);
    // Whatever happened, the host is left as it was.
    let _ = Command::new("dpkg").args(["-P", "mcp-guard"]).output();
    let _ = fs::remove_dir_all("/run/mcp-guard");
    result
}

fn install_and_run(deb: &Path) -> Result<()> {
    run("dpkg -i", Command::new("dpkg").arg("-i").arg(deb))?;
    for file in [
        "/usr/bin/mcp-guard",
        "/usr/lib/systemd/system/mcp-guard.service",
        "/usr/lib/systemd/system/mcp-guard-forward.service",
        "/etc/mcp-guard/config.toml",
        "/etc/mcp-guard/policy.toml",
        "/usr/share/man/man1/mcp-guard.1.gz",
        "/usr/share/bash-completion/completions/mcp-guard",
    ] {
        if !Path::new(file).is_file() {
            bail!("dpkg -i left no {file}");
        }
    }
    if Path::new("/var/lib/mcp-guard/audit.key").exists() {
        bail!("the package brought a signing key: every host would share it");
    }
    let check = run(
        "mcp-guard daemon --check-config",
        Command::new("/usr/bin/mcp-guard")
            .args(["daemon", "--check-config"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    )?;
    if !check.contains("built into this binary") {
        bail!("the installed binary does not carry its eBPF object: {check}");
    }
    let daemon = Command::new("/usr/bin/mcp-guard")
        .arg("daemon")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the installed daemon")?;
    let started = wait_until(Duration::from_secs(30), || {
        fs::read_to_string("/var/log/mcp-guard/audit.jsonl")
            .is_ok_and(|log| log.contains("\"daemon_start\""))
            && Command::new("/usr/bin/mcp-guard")
                .arg("status")
                .output()
                .is_ok_and(|o| o.status.success())
    });
    let _ = nix_kill(daemon.id());
    let out = daemon.wait_with_output()?;
    if !started {
        bail!(
            "the installed daemon did not record daemon_start and answer status within 30 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = fs::metadata("/var/lib/mcp-guard/audit.key")
        .context("the daemon made no signing key at first start")?;
    if key.permissions().mode() & 0o777 != 0o600 {
        bail!("the signing key is not 0600");
    }
    run(
        "mcp-guard audit verify",
        Command::new("/usr/bin/mcp-guard").args([
            "audit",
            "verify",
            "/var/log/mcp-guard/audit.jsonl",
        ]),
    )?;

    run("dpkg -r", Command::new("dpkg").args(["-r", "mcp-guard"]))?;
    for gone in ["/usr/bin/mcp-guard", "/run/mcp-guard"] {
        if Path::new(gone).exists() {
            bail!("dpkg -r left {gone}");
        }
    }
    for kept in [
        "/etc/mcp-guard/config.toml",
        "/var/log/mcp-guard/audit.jsonl",
        "/var/lib/mcp-guard/audit.key",
    ] {
        if !Path::new(kept).exists() {
            bail!("dpkg -r removed {kept}, which only purge removes");
        }
    }
    run("dpkg -P", Command::new("dpkg").args(["-P", "mcp-guard"]))?;
    for gone in ["/etc/mcp-guard", "/var/log/mcp-guard", "/var/lib/mcp-guard"] {
        if Path::new(gone).exists() {
            bail!("dpkg -P left {gone}");
        }
    }
    println!("package: installed, started, answered status, removed and purged cleanly");
    Ok(())
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn nix_kill(pid: u32) -> Result<()> {
    run(
        "kill -TERM",
        Command::new("kill").args(["-TERM", &pid.to_string()]),
    )
    .map(drop)
}
