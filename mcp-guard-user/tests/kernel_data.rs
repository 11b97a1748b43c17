//! Real kernel, as root: the data capture of the `sys_exit` program. This test's own
//! process is watched as an agent host; its children are captured. Each test picks
//! its child's events by pid.
//!
//! Skips (printing why) when not root or when no object is found, unless
//! `MCP_GUARD_REQUIRE_KERNEL=1`, where a skip is a failure. Run with `--test-threads=1`.

mod kernel;

use std::{
    io::Write as _,
    process::{Child, Command, Stdio},
};

use kernel::observer_or_skip;
use mcp_guard::ebpf::{Data, Event, Events, Observer};
use mcp_guard_common::watch;

/// Not a PATH lookup: a shim on PATH would be the child instead of Python.
const PYTHON: &str = "/usr/bin/python3";

/// Each test loads its own programs and watches this same process: with flags of its own
/// (a gate!) that would apply to the other tests' children too. One at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The observer with this process watched as an agent host with `flags`, and its events.
fn watch_self(flags: u32) -> Option<(Observer, Events)> {
    let mut observer = observer_or_skip()?;
    observer
        .watch(std::process::id(), flags)
        .expect("watch self");
    let events = observer.events().expect("events");
    Some((observer, events))
}

/// `python3 -c script` with pipes for stdin and stdout.
fn python(script: &str) -> Child {
    Command::new(PYTHON)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Collects `pid`'s chunks until `want_in` bytes read and `want_out` bytes written
/// arrived; returns (read, written).
async fn collect(
    events: &mut Events,
    pid: u32,
    want_in: usize,
    want_out: usize,
) -> (Vec<Data>, Vec<Data>) {
    let (mut read, mut written) = (Vec::new(), Vec::new());
    let bytes = |v: &Vec<Data>| v.iter().map(|d| d.payload.len()).sum::<usize>();
    let what = format!("{want_in}/{want_out} bytes from {pid}");
    kernel::first_event(events, &what, |e| {
        if let Event::Data(d) = e
            && d.tgid == pid
        {
            if d.inbound {
                read.push(d)
            } else {
                written.push(d)
            }
        }
        (bytes(&read) >= want_in && bytes(&written) >= want_out).then_some(())
    })
    .await;
    (read, written)
}

fn joined(chunks: &[Data]) -> Vec<u8> {
    chunks
        .iter()
        .flat_map(|d| d.payload.iter().copied())
        .collect()
}

#[tokio::test]
async fn one_mebibyte_write_arrives_whole_in_ordered_chunks() {
    let _serial = SERIAL.lock().await;
    let Some((observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    // One write(2) of 1 MiB + newline on fd 1.
    let script = "import os,sys\nb=bytes((i*7)%251 for i in range(1<<20))+b'\\n'\nn=0\nwhile n<len(b): n+=os.write(1,b[n:])\n";
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).expect("read");
        v
    });
    let (_, chunks) = collect(&mut events, pid, 0, (1 << 20) + 1).await;
    let sent = reader.join().expect("reader");
    assert!(child.wait().expect("wait").success());
    assert_eq!(
        joined(&chunks),
        sent,
        "captured bytes differ from what the pipe carried"
    );
    assert!(chunks.iter().all(|d| d.fd == 1 && !d.incomplete()));
    // Within each call the offsets follow each other; the last chunk says so.
    for d in &chunks {
        assert!(d.payload.len() <= mcp_guard_common::CHUNK);
    }
    assert!(chunks.last().expect("chunks").last());
    let seqs: Vec<u64> = chunks
        .iter()
        .filter(|d| d.cpu == chunks[0].cpu)
        .map(|d| d.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "per-CPU sequence numbers increase"
    );
    assert_eq!(observer.lost(), 0);
}

#[tokio::test]
async fn small_reads_and_vectored_writes_are_captured() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    // Reads stdin 3 bytes at a time, echoes each read with writev of two iovecs.
    let script =
        "import os\nwhile True:\n  b=os.read(0,3)\n  if not b: break\n  os.writev(1,[b'<',b])\n";
    let mut child = python(script);
    let pid = child.id();
    let message = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n";
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(message)
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    let (inbound, outbound) = collect(&mut events, pid, message.len(), output.stdout.len()).await;
    assert_eq!(joined(&inbound), message);
    assert!(inbound.len() > 1, "many small reads");
    assert_eq!(joined(&outbound), output.stdout);
}

#[tokio::test]
async fn gated_read_stops_the_reader_until_continued() {
    gated_read_stops("import os\nb=os.read(0,100)\nos.write(1,b'after:'+b)\n").await;
}

/// Runs `script` gated, with `hello` on its stdin: its read returns data and stops it (state
/// T, nothing written yet) until continued; then it writes `after:` and what it read.
async fn gated_read_stops(script: &str) {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST | watch::GATE) else {
        return;
    };
    let mut child = python(script);
    let pid = child.id();
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("write");
    let (chunks, _) = collect(&mut events, pid, 6, 0).await;
    assert!(chunks.last().expect("chunk").gated());
    assert!(
        kernel::continue_when_stopped(pid),
        "the reader was not stopped"
    );
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.stdout, b"after:hello\n");
}

/// What the MCP Python SDK does: keep the protocol on copies of fds 0 and 1 and point
/// fd 0 at /dev/null and fd 1 at stderr, so stray prints cannot corrupt the stream.
#[tokio::test]
async fn stdio_moved_to_other_descriptors_is_followed() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    let script = "import os, fcntl\n\
        i = os.dup(0); o = fcntl.fcntl(1, 1030, 10)\n\
        os.dup2(os.open('/dev/null', os.O_RDONLY), 0); os.dup2(2, 1)\n\
        os.write(1, b'noise on the old stdout\\n')\n\
        b = os.read(i, 100)\n\
        os.write(o, b'answer:' + b)\n";
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"{\"q\":1}\n")
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.stdout, b"answer:{\"q\":1}\n");
    assert_eq!(output.stderr, b"noise on the old stdout\n");
    let (inbound, outbound) = collect(&mut events, pid, 8, output.stdout.len()).await;
    assert_eq!(joined(&inbound), b"{\"q\":1}\n");
    assert!(
        inbound
            .iter()
            .all(|d| d.fd != 0 && d.origin == mcp_guard_common::origin::STDIN)
    );
    assert_eq!(
        joined(&outbound),
        output.stdout,
        "the noise on fd 1 (now stderr) is not captured"
    );
    assert!(
        outbound
            .iter()
            .all(|d| d.fd >= 10 && d.origin == mcp_guard_common::origin::STDOUT)
    );
}

/// `preadv2`/`pwritev2` with offset -1 move bytes on a pipe as read/write do: captured the
/// same way (a server cannot slip a request past by choosing another call).
#[tokio::test]
async fn positional_vectored_calls_on_a_pipe_are_captured() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    let script = "import ctypes\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        class Iov(ctypes.Structure):\n  _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n\
        buf = ctypes.create_string_buffer(100)\n\
        iov = Iov(ctypes.cast(buf, ctypes.c_void_p), 100)\n\
        libc.preadv2.argtypes = libc.pwritev2.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_int]\n\
        n = libc.preadv2(0, ctypes.byref(iov), 1, -1, 0)\n\
        assert n > 0, ctypes.get_errno()\n\
        out = ctypes.create_string_buffer(b'answer:' + buf.raw[:n], 7 + n)\n\
        iov = Iov(ctypes.cast(out, ctypes.c_void_p), 7 + n)\n\
        assert libc.pwritev2(1, ctypes.byref(iov), 1, -1, 0) == 7 + n, ctypes.get_errno()\n";
    let mut child = python(script);
    let pid = child.id();
    let message = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}\n";
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(message)
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "{output:?}");
    let (inbound, outbound) = collect(&mut events, pid, message.len(), output.stdout.len()).await;
    assert_eq!(joined(&inbound), message);
    assert_eq!(joined(&outbound), output.stdout);
}

/// The process was killed (SIGKILL) before it wrote anything: it never acted.
fn assert_killed_before_acting(output: &std::process::Output, what: &str) {
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&output.status),
        Some(9),
        "killed"
    );
    assert_eq!(output.stdout, b"", "{what}");
}

/// `pid`'s `Unfollowed` event.
async fn unfollowed_of(events: &mut Events, pid: u32) -> mcp_guard::ebpf::Unfollowed {
    kernel::first_event(
        events,
        &format!("unfollowed event from {pid}"),
        |e| match e {
            Event::Unfollowed(u) if u.tgid == pid => Some(u),
            _ => None,
        },
    )
    .await
}

/// `splice` moves stdin's bytes to another pipe without passing them through memory the
/// program can read. Gated, the reader is killed before the call returns: it never acts on
/// what it read unseen.
#[tokio::test]
async fn splice_from_a_gated_stdin_kills_the_reader_before_it_returns() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST | watch::GATE) else {
        return;
    };
    let script = "import os\nr, w = os.pipe()\nn = os.splice(0, w, 100)\nos.write(1, b'acted on:' + os.read(r, n))\n";
    let mut child = python(script);
    let pid = child.id();
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}\n")
        .expect("write");
    let u = unfollowed_of(&mut events, pid).await;
    let output = child.wait_with_output().expect("wait");
    assert_eq!(
        (u.call(), u.inbound, u.fd, u.killed),
        ("splice", true, 0, true)
    );
    assert_killed_before_acting(&output, "it never acted on what it read");
}

/// An io_uring ring reads and writes any descriptor, stdin included, without read(2): a gated
/// process that sets one up is killed before the call returns, and that is said.
#[tokio::test]
async fn io_uring_setup_by_a_gated_process_kills_it_before_it_returns() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST | watch::GATE) else {
        return;
    };
    let script = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nparams = ctypes.create_string_buffer(120)\nfd = libc.syscall(425, 8, params)\nos.write(1, b'ring %d' % fd)\n";
    let child = python(script);
    let pid = child.id();
    let output = child.wait_with_output().expect("wait");
    let u = unfollowed_of(&mut events, pid).await;
    assert_eq!(
        (u.call(), u.inbound, u.origin, u.killed),
        (
            "io_uring_setup",
            true,
            mcp_guard_common::origin::STDIN,
            true
        )
    );
    assert_killed_before_acting(&output, "it never used the ring");
}

/// `pidfd_getfd` takes over another process's descriptor (its stdin, say): reported; without
/// a gate nothing is killed here (the daemon kills under `denied = "kill"`).
#[tokio::test]
async fn pidfd_getfd_is_reported() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    let script = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\npfd = os.pidfd_open(os.getpid())\nfd = libc.syscall(438, pfd, 0, 0)\nassert fd >= 0, ctypes.get_errno()\nos.write(1, b'took %d' % fd)\n";
    let child = python(script);
    let pid = child.id();
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "{output:?}");
    let u = unfollowed_of(&mut events, pid).await;
    assert_eq!(
        (u.call(), u.inbound, u.killed),
        ("pidfd_getfd", true, false)
    );
    assert_eq!(
        format!("took {}", u.fd).as_bytes(),
        output.stdout.as_slice(),
        "the event names the descriptor taken"
    );
}

/// `sendfile` to stdout: the answer is not seen, and that is said; nothing is killed (what a
/// server writes cannot carry a request to it).
#[tokio::test]
async fn sendfile_to_stdout_is_reported_not_killed() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST | watch::GATE) else {
        return;
    };
    let script =
        "import os\nfd = os.open('/etc/hostname', os.O_RDONLY)\nos.sendfile(1, fd, 0, 4096)\n";
    let child = Command::new(PYTHON)
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let u = unfollowed_of(&mut events, pid).await;
    assert_eq!(
        (u.call(), u.inbound, u.fd, u.killed),
        ("sendfile", false, 1, false)
    );
}

/// Stdin copied to a high descriptor, then a fork: the child reading that copy (not fd 0)
/// is captured, as its parent would be.
#[tokio::test]
async fn a_forked_child_reading_its_parents_stdin_copy_is_captured() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    let script = "import os\n\
        i = os.dup(0); os.dup2(os.open('/dev/null', os.O_RDONLY), 0)\n\
        pid = os.fork()\n\
        if pid == 0:\n  b = os.read(i, 100); os.write(1, str(os.getpid()).encode() + b' ' + b); os._exit(0)\n\
        os.waitpid(pid, 0)\n";
    let mut child = python(script);
    let message = b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\"}\n";
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(message)
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let (grandchild, echoed) = text.split_once(' ').expect("pid and bytes");
    assert_eq!(echoed.as_bytes(), message);
    let grandchild: u32 = grandchild.parse().expect("pid");
    let (inbound, _) = collect(&mut events, grandchild, message.len(), 0).await;
    assert_eq!(joined(&inbound), message);
    assert!(
        inbound
            .iter()
            .all(|d| d.fd > 1 && d.origin == mcp_guard_common::origin::STDIN)
    );
}

/// A pid reused by a new watched process forked without exec: what the kernel knew of the
/// old process's descriptors (its fd 0 closed: "carries nothing") does not apply to the
/// new one, whose stdin is captured as its parent's is.
#[tokio::test]
async fn a_reused_pid_does_not_inherit_the_old_processes_descriptors() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    let old = Command::new(PYTHON)
        .args(["-c", "import os\nos.close(0)\n"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = old.id();
    assert!(old.wait_with_output().expect("wait").status.success());
    // A captured parent forks (no exec) until its child gets `pid` again; that child reads
    // the stdin it shares with its parent.
    let script = format!(
        "import os, sys\n\
         for _ in range(200):\n\
         \x20 open('/proc/sys/kernel/ns_last_pid', 'w').write(str({pid} - 1))\n\
         \x20 c = os.fork()\n\
         \x20 if c == 0:\n\
         \x20   if os.getpid() != {pid}: os._exit(3)\n\
         \x20   os.write(1, os.read(0, 100)); os._exit(0)\n\
         \x20 if os.waitstatus_to_exitcode(os.waitpid(c, 0)[1]) == 0: sys.exit(0)\n\
         sys.exit('pid {pid} was not handed out again')\n"
    );
    let mut child = python(&script);
    let message = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n";
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(message)
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, message);
    let (inbound, _) = collect(&mut events, pid, message.len(), 0).await;
    assert_eq!(joined(&inbound), message);
}

/// `script` with `message` written to its stdin; its output once it exited.
fn run_with_input(script: &str, message: &[u8]) -> (u32, std::process::Output) {
    let mut child = python(script);
    let pid = child.id();
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(message)
        .expect("write");
    (pid, child.wait_with_output().expect("wait"))
}

/// A process can reach its stdin and stdout through descriptors no dup made: reopened by
/// path (`/proc/self/fd/0`, `/dev/stdin`, `/proc/thread-self/fd/0`), with fds 0 and 1
/// pointed at /dev/null. The pipes are what is captured, whatever descriptor moves them.
#[tokio::test]
async fn stdio_reopened_by_path_is_captured_as_the_same_pipes() {
    let _serial = SERIAL.lock().await;
    let Some((observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    assert!(observer.follows_files, "this kernel's BTF was read");
    for (input, output) in [
        ("/proc/self/fd/0", "/proc/self/fd/1"),
        ("/dev/stdin", "/dev/stdout"),
        ("/proc/thread-self/fd/0", "/proc/thread-self/fd/1"),
    ] {
        let script = format!(
            "import os\n\
             i = os.open('{input}', os.O_RDONLY); o = os.open('{output}', os.O_WRONLY)\n\
             nul = os.open('/dev/null', os.O_RDWR); os.dup2(nul, 0); os.dup2(nul, 1)\n\
             b = os.read(i, 100)\n\
             os.write(o, b'answer:' + b)\n"
        );
        let message = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}\n";
        let (pid, out) = run_with_input(&script, message);
        assert!(out.status.success(), "{input}: {out:?}");
        let (inbound, outbound) = collect(&mut events, pid, message.len(), out.stdout.len()).await;
        assert_eq!(joined(&inbound), message, "{input}");
        assert_eq!(joined(&outbound), out.stdout, "{output}");
        assert!(
            inbound
                .iter()
                .all(|d| d.fd > 1 && d.origin == mcp_guard_common::origin::STDIN),
            "{input}: read through the reopened descriptor"
        );
        assert!(
            outbound
                .iter()
                .all(|d| d.fd > 1 && d.origin == mcp_guard_common::origin::STDOUT),
            "{output}"
        );
    }
}

/// Gated, a read of stdin through a reopened descriptor stops the reader as a read of fd 0
/// does: it cannot act on a request before it is judged.
#[tokio::test]
async fn a_gated_read_through_a_reopened_stdin_stops_the_reader() {
    gated_read_stops(
        "import os\n\
         i = os.open('/proc/self/fd/0', os.O_RDONLY)\n\
         os.dup2(os.open('/dev/null', os.O_RDONLY), 0)\n\
         b = os.read(i, 100)\n\
         os.write(1, b'after:' + b)\n",
    )
    .await;
}

/// Stdin handed over a unix socket (`SCM_RIGHTS`): whoever receives it could read the
/// host's requests uncaptured. The passing is reported; the receiver, when captured (here
/// the same process), is captured reading it.
#[tokio::test]
async fn stdin_passed_over_a_unix_socket_is_reported_and_followed() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    let script = "import os, socket\n\
        a, b = socket.socketpair()\n\
        socket.send_fds(a, [b'x'], [0])\n\
        _, fds, _, _ = socket.recv_fds(b, 10, 1)\n\
        os.dup2(os.open('/dev/null', os.O_RDONLY), 0)\n\
        os.write(1, b'answer:' + os.read(fds[0], 100))\n";
    let message = b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\"}\n";
    let (pid, out) = run_with_input(script, message);
    assert!(out.status.success(), "{out:?}");
    // The report and the data come in one pass: the passing precedes the read.
    let (mut passing, mut inbound) = (None, Vec::new());
    kernel::first_event(&mut events, "the passing and the read", |e| {
        match e {
            Event::Unfollowed(u) if u.tgid == pid => passing = Some(u),
            Event::Data(d) if d.tgid == pid && d.inbound => inbound.push(d),
            _ => {}
        }
        (passing.is_some() && joined(&inbound).len() >= message.len()).then_some(())
    })
    .await;
    let u = passing.expect("reported");
    assert_eq!(
        (u.call(), u.passed, u.inbound, u.fd, u.killed),
        ("sendmsg", true, true, 0, false)
    );
    assert_eq!(joined(&inbound), message);
    assert!(inbound.iter().all(|d| d.fd > 1));
}

/// Gated, a process that hands its stdin to another is killed before `sendmsg` returns:
/// the receiver never gets it.
#[tokio::test]
async fn a_gated_process_passing_its_stdin_is_killed_before_it_returns() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST | watch::GATE) else {
        return;
    };
    let script = "import os, socket\n\
        a, b = socket.socketpair()\n\
        socket.send_fds(a, [b'x'], [os.dup(0)])\n\
        os.write(1, b'passed')\n";
    let (pid, out) = run_with_input(script, b"");
    let u = unfollowed_of(&mut events, pid).await;
    assert_eq!((u.call(), u.passed, u.killed), ("sendmsg", true, true));
    assert_killed_before_acting(&out, "it never went on");
}

/// Fork without exec, then dup2 onto fd 0 of a descriptor the kernel never saw made (stdin
/// reopened by path in the parent): the child's fd 0 is known to carry "nothing" by number,
/// and is still captured, as the pipe it is.
#[tokio::test]
async fn a_forked_child_dup2ing_a_reopened_stdin_onto_fd_0_is_captured() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST) else {
        return;
    };
    let script = "import os\n\
        i = os.open('/proc/self/fd/0', os.O_RDONLY)\n\
        os.dup2(os.open('/dev/null', os.O_RDONLY), 0)\n\
        pid = os.fork()\n\
        if pid == 0:\n  os.dup2(i, 0); b = os.read(0, 100); os.write(1, str(os.getpid()).encode() + b' ' + b); os._exit(0)\n\
        os.waitpid(pid, 0)\n";
    let message = b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\"}\n";
    let (_, out) = run_with_input(script, message);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (child, echoed) = text.split_once(' ').expect("pid and bytes");
    assert_eq!(echoed.as_bytes(), message);
    let child: u32 = child.parse().expect("pid");
    let (inbound, _) = collect(&mut events, child, message.len(), 0).await;
    assert_eq!(joined(&inbound), message);
    assert!(
        inbound
            .iter()
            .all(|d| d.fd == 0 && d.origin == mcp_guard_common::origin::STDIN)
    );
}

/// `sendmmsg` on a socket the kernel does not capture: a batch of plain messages (a
/// resolver's parallel queries) goes by; stdin passed in the second message of a batch kills
/// a gated sender before the call returns.
#[tokio::test]
async fn sendmmsg_passing_stdin_in_a_later_message_kills_a_gated_sender() {
    let _serial = SERIAL.lock().await;
    let Some((_observer, mut events)) = watch_self(watch::HOST | watch::GATE) else {
        return;
    };
    let script = "import ctypes, os, socket, struct, sys\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        class Iov(ctypes.Structure):\n  _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n\
        class Msg(ctypes.Structure):\n  _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint), ('iov', ctypes.POINTER(Iov)), ('iovlen', ctypes.c_size_t), ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t), ('flags', ctypes.c_int)]\n\
        class MMsg(ctypes.Structure):\n  _fields_ = [('hdr', Msg), ('len', ctypes.c_uint)]\n\
        a, b = socket.socketpair()\n\
        buf = ctypes.create_string_buffer(b'x'); iov = Iov(ctypes.cast(buf, ctypes.c_void_p), 1)\n\
        cm = ctypes.create_string_buffer(struct.pack('QiiI', 20, 1, 1, 0) + bytes(4), 24)\n\
        msgs = (MMsg * 2)()\n\
        for m in msgs:\n  m.hdr.iov = ctypes.pointer(iov); m.hdr.iovlen = 1\n\
        if sys.argv[1] == 'pass':\n  msgs[1].hdr.control = ctypes.cast(cm, ctypes.c_void_p); msgs[1].hdr.controllen = 24\n\
        n = libc.sendmmsg(a.fileno(), msgs, 2, 0)\n\
        assert n == 2, ctypes.get_errno()\n\
        os.write(1, b'sent')\n";
    let run = |how: &str| {
        Command::new(PYTHON)
            .args(["-c", script, how])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let plain = run("plain").wait_with_output().expect("wait");
    assert!(plain.status.success(), "{plain:?}");
    assert_eq!(plain.stdout, b"sent", "plain messages go by");
    let passing = run("pass");
    let pid = passing.id();
    let out = passing.wait_with_output().expect("wait");
    let u = unfollowed_of(&mut events, pid).await;
    assert_eq!((u.call(), u.passed, u.killed), ("sendmmsg", true, true));
    assert_killed_before_acting(&out, "it never went on");
}
