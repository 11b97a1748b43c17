//! What the kernel tests share: the real eBPF object, or a skip that says why (a failure
//! under `MCP_GUARD_REQUIRE_KERNEL=1`, which CI sets).

use std::path::Path;

use mcp_guard::ebpf::{self, Observer};

/// The loaded observer, or `None` after printing why the test cannot run here.
#[allow(dead_code, reason = "not every kernel test binary uses it")]
pub fn observer_or_skip() -> Option<Observer> {
    observer_with_or_skip(ebpf::Settings::default())
}

/// [`observer_or_skip`], loaded with `settings`.
pub fn observer_with_or_skip(settings: ebpf::Settings) -> Option<Observer> {
    let why = if !nix::unistd::geteuid().is_root() {
        "not root".to_owned()
    } else {
        match object() {
            Ok(object) => {
                return Some(
                    Observer::load_object(&object, settings)
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
fn object() -> Result<ebpf::Object, String> {
    let err = match ebpf::find_object() {
        Ok(object) => return Ok(object),
        Err(err) => err,
    };
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mcp-guard-ebpf/target/bpfel-unknown-none/release/mcp-guard-ebpf");
    if std::env::var_os(ebpf::OBJECT_ENV).is_none() && built.is_file() {
        return Ok(ebpf::Object::File(built));
    }
    Err(format!("{err}; build it with `cargo xtask build-ebpf`"))
}

/// How long a kernel test waits for an event.
pub const EVENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads events until `pick` returns something, and returns it; panics naming `what` when
/// nothing is picked within [`EVENT_DEADLINE`].
#[allow(dead_code, reason = "not every kernel test binary uses it")]
pub async fn first_event<T>(
    events: &mut ebpf::Events,
    what: &str,
    mut pick: impl FnMut(ebpf::Event) -> Option<T>,
) -> T {
    let found = async {
        let mut batch = Vec::new();
        loop {
            batch.clear();
            events.batch(&mut batch, 256).await.expect("read ring");
            for event in batch.drain(..) {
                if let Some(t) = pick(event) {
                    return t;
                }
            }
        }
    };
    tokio::time::timeout(EVENT_DEADLINE, found)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {EVENT_DEADLINE:?}"))
}

/// Waits (up to 10 s) until `pid` is stopped (state `T`), as a gated reader is, and lets
/// it go on with SIGCONT; false if it never stopped (it is sent SIGCONT anyway).
#[allow(dead_code, reason = "not every kernel test binary uses it")]
pub fn continue_when_stopped(pid: u32) -> bool {
    let stopped = (0..1000).any(|_| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if state != Some('T') {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        state == Some('T')
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .expect("SIGCONT");
    stopped
}
