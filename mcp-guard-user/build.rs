//! Embeds the eBPF object in the binary when `MCP_GUARD_EMBED_BPF` names one (as
//! `cargo xtask package` and `cargo xtask build-ebpf` builds do), so that installing never
//! needs the BPF toolchain. Without it the binary builds as before (the shim needs no
//! object) and the daemon looks for the object on disk.

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=MCP_GUARD_EMBED_BPF");
    println!("cargo::rustc-check-cfg=cfg(embedded_bpf)");
    let Some(object) = std::env::var_os("MCP_GUARD_EMBED_BPF").filter(|v| !v.is_empty()) else {
        return;
    };
    let object = PathBuf::from(object);
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(e) = std::fs::copy(&object, out.join("mcp-guard-ebpf.o")) {
        // A named object that cannot be read is a broken build, not a build without one.
        panic!("MCP_GUARD_EMBED_BPF={}: {e}", object.display());
    }
    println!("cargo::rustc-cfg=embedded_bpf");
}
