//! What the kernel tests share: the real eBPF object, or a skip that says why (a failure
//! under `MCP_GUARD_REQUIRE_KERNEL=1`, which CI sets).

use std::path::{Path, PathBuf};

use mcp_guard::observer::{self, Observer};

/// The loaded observer, or `None` after printing why the test cannot run here.
#[allow(dead_code, reason = "not every kernel test binary uses it")]
pub fn observer_or_skip() -> Option<Observer> {
    observer_with_or_skip(observer::Settings::default())
}

/// [`observer_or_skip`], loaded with `settings`.
pub fn observer_with_or_skip(settings: observer::Settings) -> Option<Observer> {
    let why = if !nix::unistd::geteuid().is_root() {
        "not root".to_owned()
    } else {
        match object_path() {
            Ok(path) => {
                return Some(
                    Observer::load_with(&path, settings)
                        .unwrap_or_else(|err| panic!("{:#}", anyhow::Error::from(err))),
                );
            }
            Err(why) => why,
        }
    };
    if std::env::var_os("MCP_GUARD_REQUIRE_KERNEL").is_some_and(|v| v == "1") {
        panic!("MCP_GUARD_REQUIRE_KERNEL=1 but the kernel test cannot run: {why}");
    }
    println!("skipping: {why}");
    None
}

/// `$MCP_GUARD_BPF_OBJECT`, the observer's usual places, then the eBPF crate's own build.
fn object_path() -> Result<PathBuf, String> {
    let err = match observer::find_object() {
        Ok(path) => return Ok(path),
        Err(err) => err,
    };
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mcp-guard-ebpf/target/bpfel-unknown-none/release/mcp-guard-ebpf");
    if std::env::var_os(observer::OBJECT_ENV).is_none() && built.is_file() {
        return Ok(built);
    }
    Err(format!("{err}; build it with `cargo xtask build-ebpf`"))
}
