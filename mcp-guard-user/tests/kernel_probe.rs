//! Real kernel, as root: finding stdio servers by what they read, with probing on
//! (`Settings::probe`). Nothing is watched by hand: every program started after the load is
//! probed, and the test's children are told apart by pid.
//!
//! Skips (printing why) when not root or when no object is found, unless
//! `MCP_GUARD_REQUIRE_KERNEL=1`, where a skip is a failure. Run with `--test-threads=1`.

mod kernel;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdout, Command, Stdio},
};

use kernel::{first_event, observer_with_or_skip};
use mcp_guard::ebpf::{Event, Events, Observer, Settings};
use mcp_guard_common::watch;

/// Not a PATH lookup: a shim on PATH would be the child instead of Python.
const PYTHON: &str = "/usr/bin/python3";

/// Reads stdin one line at a time with `os.read`, answers `ok` after each: a stand-in for
/// a server, so the test knows when each read has returned.
const READER: &str =
    "import os\nwhile True:\n  b=os.read(0,4096)\n  if not b: break\n  os.write(1,b'ok\\n')\n";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn load(gate: bool) -> Option<Observer> {
    let gate = if gate { watch::GATE } else { 0 };
    observer_with_or_skip(Settings {
        probe: watch::PROBE | gate,
        ..Settings::default()
    })
}

fn spawn_reader() -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(PYTHON)
        .args(["-c", READER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    (child, out)
}

/// Writes `line` to the child and waits for its `ok`: the read has returned.
fn say(child: &mut Child, out: &mut BufReader<ChildStdout>, line: &[u8]) {
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(line)
        .expect("write");
    let mut answer = String::new();
    out.read_line(&mut answer).expect("read");
    assert_eq!(answer, "ok\n");
}

/// What the ring holds for `pid`, up to the first data event from `until` (a later
/// child's: the ring is one buffer, in order, so everything before it has arrived).
async fn data_of(events: &mut Events, pid: u32, until: u32) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    first_event(
        events,
        &format!("data from the sentinel {until}"),
        |e| match e {
            Event::Data(d) if d.tgid == until => Some(()),
            Event::Data(d) if d.tgid == pid => {
                got.push(d.payload.to_vec());
                None
            }
            _ => None,
        },
    )
    .await;
    got
}

/// `pid`'s exec event.
async fn exec_of(events: &mut Events, pid: u32) -> mcp_guard::ebpf::Exec {
    first_event(events, &format!("exec event from {pid}"), |e| match e {
        Event::Exec(e) if e.tgid == pid => Some(e),
        _ => None,
    })
    .await
}

/// A child that reads JSON, whose data ends [`data_of`].
fn sentinel() -> (Child, u32) {
    let (mut child, mut out) = spawn_reader();
    say(&mut child, &mut out, b"{\"sentinel\":1}\n");
    let pid = child.id();
    (child, pid)
}

fn finish(mut child: Child) {
    drop(child.stdin.take());
    assert!(child.wait().expect("wait").success());
}

#[tokio::test]
async fn a_program_whose_first_read_is_json_is_captured_from_that_read() {
    let _serial = SERIAL.lock().await;
    let Some(mut observer) = load(false) else {
        return;
    };
    let mut events = observer.events().expect("events");
    let (mut child, mut out) = spawn_reader();
    let pid = child.id();
    let first = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\"}\n";
    say(&mut child, &mut out, first);
    let w = observer.watched(pid).expect("still watched");
    assert_eq!(
        w.flags & (watch::PROBE | watch::CAPTURE),
        watch::CAPTURE,
        "probe became capture"
    );
    say(&mut child, &mut out, b"not json, but captured now\n");
    let (s, until) = sentinel();
    let got = data_of(&mut events, pid, until).await;
    finish(child);
    finish(s);
    // Both reads and both answers: nothing before the decision was lost.
    assert_eq!(
        got,
        [
            first.to_vec(),
            b"ok\n".to_vec(),
            b"not json, but captured now\n".to_vec(),
            b"ok\n".to_vec()
        ]
    );
}

#[tokio::test]
async fn a_program_whose_first_read_is_something_else_is_left_alone() {
    let _serial = SERIAL.lock().await;
    let Some(mut observer) = load(true) else {
        return;
    };
    let mut events = observer.events().expect("events");
    let (mut child, mut out) = spawn_reader();
    let pid = child.id();
    // spawn can return before the exec tracepoint has run; its event says it has.
    let exec = exec_of(&mut events, pid).await;
    assert_eq!(exec.watch, watch::PROBE | watch::GATE, "probed at exec");
    assert_eq!(observer.watched(pid).map(|w| w.flags), Some(exec.watch));
    // Under a gate too: a reader of something else is never stopped (`say` would hang).
    say(&mut child, &mut out, b"hello\n");
    assert_eq!(
        observer.watched(pid),
        None,
        "the watch ends at a non-JSON read"
    );
    say(
        &mut child,
        &mut out,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n",
    );
    // A sentinel that reads JSON first is gated: the gate works, and its gated read ends
    // the wait. The gate applies to every program started meanwhile: any other that reads
    // JSON first is let go at once.
    let (mut s, mut s_out) = spawn_reader();
    let spid = s.id();
    s.stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"{\"sentinel\":1}\n")
        .expect("write");
    first_event(&mut events, "the sentinel's gated read", |e| match e {
        Event::Data(d) => {
            assert_ne!(
                d.tgid, pid,
                "a program that read something else was captured"
            );
            if d.gated() && d.tgid != spid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(d.tgid as i32),
                    nix::sys::signal::Signal::SIGCONT,
                );
            }
            (d.gated() && d.tgid == spid).then_some(())
        }
        _ => None,
    })
    .await;
    kernel::continue_when_stopped(spid);
    let mut answer = String::new();
    s_out.read_line(&mut answer).expect("read");
    assert_eq!(answer, "ok\n");
    finish(child);
    finish(s);
}

#[tokio::test]
async fn white_space_first_keeps_the_probe_until_a_byte_decides() {
    let _serial = SERIAL.lock().await;
    let Some(mut observer) = load(false) else {
        return;
    };
    let mut events = observer.events().expect("events");
    let (mut child, mut out) = spawn_reader();
    let pid = child.id();
    exec_of(&mut events, pid).await;
    say(&mut child, &mut out, b"\n \r\n\t");
    assert!(
        observer
            .watched(pid)
            .is_some_and(|w| w.flags & watch::PROBE != 0),
        "white space decides nothing"
    );
    say(
        &mut child,
        &mut out,
        b"  [{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]\n",
    );
    assert!(
        observer
            .watched(pid)
            .is_some_and(|w| w.flags & watch::CAPTURE != 0),
        "a batch is JSON too"
    );
    finish(child);
}

#[tokio::test]
async fn a_wrapper_that_read_something_else_then_execs_a_server_is_probed_afresh() {
    let _serial = SERIAL.lock().await;
    let Some(observer) = load(false) else {
        return;
    };
    // `sh -c 'read x; exec server'`: the shell reads a line that is not JSON (its watch
    // ends), then the program it execs reads JSON first.
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("read x; echo ok; exec {PYTHON} -c \"$0\""),
            READER,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let pid = child.id();
    say(&mut child, &mut out, b"starting\n");
    say(&mut child, &mut out, b"{\"id\":1}\n");
    assert!(
        observer
            .watched(pid)
            .is_some_and(|w| w.flags & watch::CAPTURE != 0)
    );
    finish(child);
}
