//! Embeds the eBPF object in the binary when `MCP_GUARD_EMBED_BPF` names one (as
//! `cargo xtask package` and `cargo xtask build-ebpf` builds do), so that installing never
//! needs the BPF toolchain. Without it the binary builds as before (the shim needs no
//! object) and the daemon looks for the object on disk.

use std::path::PathBuf;

fn main() -> Result<(), String> {
    println!("cargo::rerun-if-env-changed=MCP_GUARD_EMBED_BPF");
    println!("cargo::rustc-check-cfg=cfg(embedded_bpf)");
    let Some(object) = std::env::var_os("MCP_GUARD_EMBED_BPF").filter(|v| !v.is_empty()) else {
        return Ok(());
    };
    let object = PathBuf::from(object);
    println!("cargo::rerun-if-changed={}", object.display());
    let out = std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set (run through cargo)")?;
    // A named object that cannot be read is a broken build, not a build without one.
    std::fs::copy(&object, PathBuf::from(out).join("mcp-guard-ebpf.o"))
        .map_err(|e| format!("MCP_GUARD_EMBED_BPF={}: {e}", object.display()))?;
    println!("cargo::rustc-cfg=embedded_bpf");
    Ok(())
}
