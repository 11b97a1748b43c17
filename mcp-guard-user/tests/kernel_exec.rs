//! Real kernel, as root: load the real eBPF object, watch this test's own tgid,
//! exec a child, and read its exec event from the ring buffer within a deadline.
//!
//! The sched tracepoints are system-wide; the kernel keeps only watched processes
//! and the tests below pick out their own children by pid.
//!
//! Skips (printing `skipping: why`) when not root or when no object is found,
//! unless `MCP_GUARD_REQUIRE_KERNEL=1`, where a skip is a failure.
//! Object: `$MCP_GUARD_BPF_OBJECT`, the observer's usual places, then the eBPF
//! crate's own release build. Run with `--test-threads=1`.

mod kernel;

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use kernel::observer_or_skip;
use mcp_guard::ebpf::{Event, Events, Exec};

const DEADLINE: Duration = Duration::from_secs(5);
/// `nobody`: the child runs as someone else, so uid/gid are really read.
const CHILD_ID: u32 = 65534;

/// Held from copying a probe until its process has exec'd: a child another test forks
/// meanwhile would inherit the copy's write descriptor, and exec'ing the probe would then
/// fail with ETXTBSY.
static FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A copy of /bin/true under a name no other process on the machine execs,
/// in a directory `nobody` can enter.
fn probe_binary(dir: &Path) -> PathBuf {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    let probe = dir.join("mcpg-exec-probe");
    fs::copy("/bin/true", &probe).expect("copy /bin/true");
    probe
}

/// The first exec event matching `wanted`, or a panic after [`DEADLINE`].
async fn exec_where(events: &mut Events, what: &str, wanted: impl Fn(&Exec) -> bool) -> Exec {
    let found = async {
        loop {
            match events.next().await.expect("read ring buffer") {
                Event::Exec(exec) if wanted(&exec) => return exec,
                _ => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, found)
        .await
        .map(|exec| {
            println!("{what}: {exec:?}");
            exec
        })
        .unwrap_or_else(|_| panic!("no exec event for {what} within {DEADLINE:?}"))
}

#[tokio::test]
async fn exec_of_watched_process_child_is_reported() {
    let Some(mut observer) = observer_or_skip() else {
        return;
    };
    let me = std::process::id();
    observer.watch_tgid(me).expect("watch own tgid");
    let mut events = observer.events().expect("event stream");

    let dir = tempfile::tempdir().expect("tempdir");
    let forking = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let probe = probe_binary(dir.path());
    let mut child = Command::new(&probe)
        .uid(CHILD_ID)
        .gid(CHILD_ID)
        .spawn()
        .expect("spawn probe");
    drop(forking);
    let pid = child.id();

    let exec = exec_where(&mut events, "the child", |exec| exec.pid == pid).await;
    assert!(child.wait().expect("wait probe").success());
    assert_eq!(exec.tgid, pid);
    assert_eq!(exec.ppid, me);
    assert_eq!((exec.uid, exec.gid), (CHILD_ID, CHILD_ID));
    assert_eq!(exec.filename, probe);
    assert_eq!(exec.comm, "mcpg-exec-probe");
    assert_ne!(exec.ktime_ns, 0);
}

#[tokio::test]
async fn grandchild_inherits_the_watch_in_the_kernel() {
    let Some(mut observer) = observer_or_skip() else {
        return;
    };
    let me = std::process::id();
    observer.watch_tgid(me).expect("watch own tgid");
    let mut events = observer.events().expect("event stream");

    let dir = tempfile::tempdir().expect("tempdir");
    // Held until the probe has run: the shell execs it after spawn returns.
    let forking = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let probe = probe_binary(dir.path());
    // `; exit 0` keeps the shell from exec'ing the probe in its own process.
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("'{}'; exit 0", probe.display()))
        .spawn()
        .expect("spawn sh");
    let sh = shell.id();
    // The events wait in the ring buffer meanwhile.
    assert!(shell.wait().expect("wait sh").success());
    drop(forking);

    let exec = exec_where(&mut events, "the probe under sh", |exec| exec.ppid == sh).await;
    assert_eq!(exec.filename, probe);
    assert_ne!(exec.pid, sh);
}

#[tokio::test]
async fn exec_outside_the_watch_is_reported_as_unwatched() {
    let Some(mut observer) = observer_or_skip() else {
        return;
    };
    let mut events = observer.events().expect("event stream");

    let dir = tempfile::tempdir().expect("tempdir");
    let forking = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let probe = probe_binary(dir.path());
    let mut child = Command::new(&probe).spawn().expect("spawn probe");
    drop(forking);
    let pid = child.id();
    assert!(child.wait().expect("wait probe").success());

    // Every exec is reported (user space looks for agent hosts among them), with no
    // watch flags and no parent for a process nobody watches.
    let exec = exec_where(&mut events, "the unwatched probe", |exec| exec.pid == pid).await;
    assert_eq!((exec.watch, exec.ppid), (0, 0));
    assert_eq!(exec.filename, probe);
}

#[tokio::test]
async fn child_of_a_watched_host_is_captured_from_its_exec() {
    let Some(mut observer) = observer_or_skip() else {
        return;
    };
    let me = std::process::id();
    observer.watch_tgid(me).expect("watch own tgid");
    let mut events = observer.events().expect("event stream");

    let dir = tempfile::tempdir().expect("tempdir");
    let forking = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let probe = probe_binary(dir.path());
    let mut child = Command::new(&probe).spawn().expect("spawn probe");
    drop(forking);
    let pid = child.id();
    assert!(child.wait().expect("wait probe").success());
    let exec = exec_where(&mut events, "the child", |exec| exec.pid == pid).await;
    assert_eq!(
        exec.watch,
        mcp_guard_common::watch::CAPTURE,
        "host flag is not inherited, capture is"
    );
}
