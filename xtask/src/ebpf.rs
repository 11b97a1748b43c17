//! The eBPF toolchain and build, as shared/TOOLCHAIN.md verified them: Debian's
//! rustc-web (it ships a prebuilt `core` for bpfel-unknown-none), LLVM dev files of
//! the same major version, and bpf-linker built against them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian's rustc-web; rustup's proxies cannot build for the BPF target here.
const RUSTC: &str = "/usr/bin/rustc";
const CARGO: &str = "/usr/bin/cargo";
const BPF_LINKER_VERSION: &str = "0.13.0";
const TARGET: &str = "bpfel-unknown-none";

/// Installs what building the eBPF crate needs, skipping what is already there.
pub fn ensure_toolchain() -> anyhow::Result<()> {
    let mut apt_updated = false;
    let mut apt_install = |packages: &[&str]| -> anyhow::Result<()> {
        if !apt_updated {
            run(Command::new("apt-get").arg("update"))?;
            apt_updated = true;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };

    if Path::new(CARGO).is_file() && bpf_core_present()? {
        println!("ok: {RUSTC} with the {TARGET} core library, {CARGO}");
    } else {
        apt_install(&["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"])?;
    }

    let llvm = llvm_major()?;
    let llvm_prefix = format!("/usr/lib/llvm-{llvm}");
    if Path::new(&llvm_prefix).join("bin/llvm-config").is_file() {
        println!("ok: LLVM {llvm} development files in {llvm_prefix}");
    } else {
        apt_install(&[&format!("llvm-{llvm}-dev")])?;
    }

    match bpf_linker_version() {
        Some(version) if version.contains(BPF_LINKER_VERSION) => {
            println!("ok: {version}");
        }
        found => {
            if let Some(version) = found {
                println!("replacing {version} with bpf-linker {BPF_LINKER_VERSION}");
            }
            // `cargo` from PATH (rustup's): bpf-linker is a host tool.
            run(Command::new("cargo")
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--locked", "--force", "--no-default-features", "--features"])
                .arg(format!("llvm-{llvm}"))
                // /usr/bin/llvm-config may be another LLVM version.
                .env("LLVM_PREFIX", &llvm_prefix))?;
        }
    }
    Ok(())
}

/// Builds the eBPF crate (release) for this machine and returns the path of the object file.
pub fn build_ebpf() -> anyhow::Result<PathBuf> {
    build_for(std::env::consts::ARCH, None)
}

/// Builds the eBPF object for another architecture's kernels (its system call table and
/// register layout) in its own target directory: that it builds is the check.
pub fn build_ebpf_for(arch: &str) -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join(format!("target/ebpf-{arch}"));
    build_for(arch, Some(&dir))
}

fn build_for(arch: &str, target_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("mcp-guard-ebpf");
    let mut cargo = Command::new(CARGO);
    cargo
        .args(["build", "--release", "--target", TARGET])
        .current_dir(&dir)
        .env("RUSTC", RUSTC)
        // aya-ebpf uses #![feature(asm_experimental_arch)].
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                // The system call table and register layout of the kernels it runs on.
                &format!("--cfg=bpf_target_arch=\"{arch}\""),
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        )
        // Settings meant for the host build must not reach this one.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR");
    if let Some(t) = target_dir {
        cargo.arg("--target-dir").arg(t);
    }
    run(&mut cargo)?;
    let object = target_dir
        .map_or_else(|| dir.join("target"), Path::to_path_buf)
        .join(TARGET)
        .join("release/mcp-guard-ebpf");
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    println!("built {}", object.display());
    Ok(object)
}

fn workspace_root() -> &'static Path {
    // xtask sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
}

/// Whether Debian's rustc is there and has `core` for the BPF target.
fn bpf_core_present() -> anyhow::Result<bool> {
    if !Path::new(RUSTC).is_file() {
        return Ok(false);
    }
    let sysroot = output(Command::new(RUSTC).args(["--print", "sysroot"]))?;
    Ok(Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(TARGET)
        .is_dir())
}

/// The LLVM major version Debian's rustc was built with: bpf-linker must match it.
fn llvm_major() -> anyhow::Result<String> {
    let version = output(Command::new(RUSTC).arg("-vV"))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
        .with_context(|| format!("no `LLVM version` in `{RUSTC} -vV`:\n{version}"))
}

/// `bpf-linker --version`, or `None` if it does not run.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    println!("$ {}", shown(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{}`", shown(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", shown(cmd));
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start `{}`", shown(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", shown(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
