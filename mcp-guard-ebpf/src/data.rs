//! Data on watched descriptors, from the raw `sys_exit` tracepoint: one program for
//! every system call that moves bytes, run when the call has returned, so the
//! bytes are in the caller's buffer and the return value says how many.
//!
//! The raw tracepoint gets the caller's saved registers, which still hold the
//! call's arguments (x86-64: rdi, rsi, rdx; the number in orig_ax): no entry
//! program and no per-thread argument map are needed, and no tracefs either.
//!
//! A call's bytes are sent in [`CHUNK`]-sized ring records, each a [`DataHeader`]
//! and its payload, copied through a per-CPU scratch buffer so that a record takes
//! only the room its payload needs.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_smp_processor_id, bpf_loop, bpf_probe_read_user, bpf_send_signal},
    },
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use mcp_guard_common::{
    CHUNK, DataHeader, MAX_CAPTURE, MAX_CHUNKS, SocketEvent, UnfollowedEvent, Watch, config, data,
    dir, fd_key, kind, nr, origin, regs, watch,
};

use crate::{CONFIG, EVENTS, FDS, WATCHED, files, lost, mark_watched, maybe_watched};

/// `struct msghdr` (user ABI): `msg_iov` at 16, `msg_iovlen` at 24.
const MSG_IOV: usize = 16;
const MSG_IOVLEN: usize = 24;

/// iovecs of one readv/writev/sendmsg/recvmsg followed; data beyond them is cut.
const MAX_IOV: u64 = 16;

/// fcntl commands that duplicate a descriptor.
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

/// A ring record under construction: header and payload, contiguous.
#[repr(C)]
pub struct Scratch {
    header: DataHeader,
    payload: [u8; CHUNK],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU chunk counter, for [`DataHeader::seq`].
#[map]
static SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_exit(&ctx);
    0
}

/// Where the bytes of one call are: one buffer, or an array of iovecs.
#[derive(Clone, Copy)]
enum Source {
    Buf(u64),
    Iov { iov: u64, count: u64 },
}

/// What descriptor `fd` of a watched process carries, used in `direction`, if it is
/// captured: by its number ([`origin_by_number`]), else by what it is (the process's stdin
/// or stdout pipe reached through another descriptor: `/proc/self/fd/0` reopened, a copy
/// received over a socket).
#[inline(always)]
fn origin_of(tgid: u32, fd: u32, w: &Watch, direction: u8) -> Option<u8> {
    if let Some(o) = origin_by_number(tgid, fd, w) {
        return Some(o);
    }
    if w.flags & (watch::CAPTURE | watch::PROBE) == 0 {
        return None;
    }
    files::origin_by_file(tgid, fd, direction, || {
        (
            origin_by_number(tgid, 0, w) == Some(origin::STDIN),
            origin_by_number(tgid, 1, w) == Some(origin::STDOUT),
        )
    })
}

/// What descriptor `fd` of a watched process carries by its number, as dup, close and
/// fork moved stdio.
///
/// A forked child shares its parent's descriptors: a copy of the stdio the parent moved to a
/// high descriptor (dup to fd 5, then fork) is captured in the child too, from the
/// parent's entry, until the child closes or replaces it.
#[inline(always)]
fn origin_by_number(tgid: u32, fd: u32, w: &Watch) -> Option<u8> {
    // SAFETY: copied out at once.
    match unsafe { FDS.get(fd_key(tgid, fd)) }.copied() {
        Some(origin::NONE) => None,
        Some(o) => Some(o),
        None if fd <= 1 && w.flags & (watch::CAPTURE | watch::PROBE) != 0 => Some(fd as u8),
        None => inherited(fd, w),
    }
}

/// The parent's stdio copy at `fd`, for a captured child.
#[inline(always)]
fn inherited(fd: u32, w: &Watch) -> Option<u8> {
    if fd <= 1 || w.parent == 0 || w.flags & watch::CAPTURE == 0 {
        return None;
    }
    // SAFETY: copied out at once.
    match unsafe { FDS.get(fd_key(w.parent, fd)) }.copied() {
        Some(o @ (origin::STDIN | origin::STDOUT)) => Some(o),
        _ => None,
    }
}

/// `fd` of `tgid` no longer carries what it did: it is forgotten, or marked as carrying
/// nothing where a default (fds 0 and 1) or the parent's entry would otherwise apply.
#[inline(always)]
fn forget(tgid: u32, fd: u32, w: &Watch) {
    if fd <= 1 || inherited(fd, w).is_some() {
        let _ = FDS.insert(fd_key(tgid, fd), origin::NONE, 0);
    } else {
        let _ = FDS.remove(fd_key(tgid, fd));
    }
}

#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    // Unwatched processes (nearly all) cost one array read, inlined by the verifier.
    let id = bpf_get_current_pid_tgid();
    let (tid, tgid) = (id as u32, (id >> 32) as u32);
    if !maybe_watched(tgid) {
        return Ok(());
    }
    // SAFETY: copied out at once.
    let Some(mut w) = (unsafe { WATCHED.get(tgid) }).copied() else {
        return Ok(());
    };
    let probing = w.flags & watch::PROBE != 0;
    let ret: i64 = ctx.arg(1);
    let regs: *const u64 = ctx.arg(0);
    let reg = |i: usize| -> Result<u64, i64> {
        // SAFETY: `regs` is the tracepoint's `struct pt_regs *`; `i` is a field of it.
        unsafe { bpf_probe_read_kernel(regs.add(i)) }.map_err(i64::from)
    };
    let number = reg(regs::NR)? & regs::NR_MASK;
    let direction = match number {
        // Positional variants: on a pipe or socket, preadv2/pwritev2 with offset -1 move
        // bytes as read/write do (pread64 and friends fail there, and cost nothing).
        nr::READ
        | nr::READV
        | nr::RECVFROM
        | nr::RECVMSG
        | nr::PREAD64
        | nr::PREADV
        | nr::PREADV2 => dir::IN,
        nr::WRITE
        | nr::WRITEV
        | nr::SENDTO
        | nr::SENDMSG
        | nr::PWRITE64
        | nr::PWRITEV
        | nr::PWRITEV2 => dir::OUT,
        nr::SPLICE
        | nr::TEE
        | nr::SENDFILE
        | nr::COPY_FILE_RANGE
        | nr::VMSPLICE
        | nr::RECVMMSG
        | nr::SENDMMSG
            if ret > 0 && !probing =>
        {
            if number == nr::SENDMMSG && w.flags & watch::CAPTURE != 0 {
                passes_stdio_mmsg(tgid, &w, reg(regs::ARG1)?, ret as u64);
            }
            return unfollowed(tgid, &w, number, &reg);
        }
        // Channels the program cannot see into: a ring that reads and writes any descriptor
        // (stdin included) without read(2), or another process's descriptor taken over.
        nr::IO_URING_SETUP | nr::PIDFD_GETFD if ret >= 0 && !probing => {
            return unfollowed_channel(tgid, &w, number, ret as u32);
        }
        // Not known yet: its sockets are its own business until it is found to speak MCP.
        nr::CONNECT | nr::ACCEPT | nr::ACCEPT4 if probing => return Ok(()),
        nr::CONNECT | nr::ACCEPT | nr::ACCEPT4 => return socket(tgid, number, ret, &reg),
        nr::CLOSE | nr::DUP | nr::DUP2 | nr::DUP3 | nr::FCNTL if ret >= 0 => {
            return fd_table(tgid, &w, number, ret as u64, &reg);
        }
        _ => return Ok(()),
    };
    if ret <= 0 {
        return Ok(());
    }
    let fd = reg(regs::ARG0)? as u32;
    if number == nr::SENDMSG && w.flags & watch::CAPTURE != 0 {
        passes_stdio(tgid, &w, reg(regs::ARG1)?);
    }
    let Some(o) = origin_of(tgid, fd, &w, direction) else {
        return Ok(());
    };
    let wanted = match o {
        origin::STDIN => direction == dir::IN,
        origin::STDOUT => direction == dir::OUT,
        _ => true,
    };
    if !wanted {
        return Ok(());
    }
    let source = match number {
        nr::READ | nr::WRITE | nr::RECVFROM | nr::SENDTO | nr::PREAD64 | nr::PWRITE64 => {
            Source::Buf(reg(regs::ARG1)?)
        }
        nr::READV | nr::WRITEV | nr::PREADV | nr::PWRITEV | nr::PREADV2 | nr::PWRITEV2 => {
            Source::Iov {
                iov: reg(regs::ARG1)?,
                count: reg(regs::ARG2)?,
            }
        }
        _ => {
            let msg = reg(regs::ARG1)? as *const u8;
            // SAFETY: reads of user memory through the checked helper; a bad pointer is an error.
            let iov: u64 =
                unsafe { aya_ebpf::helpers::bpf_probe_read_user(msg.add(MSG_IOV).cast()) }
                    .map_err(i64::from)?;
            let count: u64 =
                unsafe { aya_ebpf::helpers::bpf_probe_read_user(msg.add(MSG_IOVLEN).cast()) }
                    .map_err(i64::from)?;
            Source::Iov { iov, count }
        }
    };
    if probing {
        // Only what it reads from its stdin says what a process not known yet is.
        if o != origin::STDIN || direction != dir::IN {
            return Ok(());
        }
        match first_byte(source, ret as u64) {
            // JSON, an object or a batch: a possible server, captured from this read on.
            Some(b'{' | b'[') => {
                w.flags = (w.flags & !watch::PROBE) | watch::CAPTURE;
                WATCHED.insert(tgid, w, 0).map_err(i64::from)?;
            }
            // Only white space so far: wait for more.
            None => return Ok(()),
            Some(_) => {
                let _ = WATCHED.remove(tgid);
                mark_watched(tgid, false);
                return Ok(());
            }
        }
    }
    let gate = direction == dir::IN && o == origin::STDIN && w.flags & watch::GATE != 0;
    let sent = send(tgid, tid, fd, direction, o, ret as u64, source, gate);
    if gate {
        // Stopped before it returns to user space with the request; user space judges
        // it and continues or kills it. Unsent, it cannot be judged: fail closed.
        // SAFETY: plain helper calls on the current task.
        unsafe { bpf_send_signal(if sent { SIGSTOP } else { SIGKILL }) };
    }
    Ok(())
}

/// The first byte other than JSON white space among the first bytes of what one read
/// returned; `None` when they are all white space (or cannot be read).
#[inline(always)]
fn first_byte(source: Source, total: u64) -> Option<u8> {
    const PEEK: usize = 16;
    let (base, len) = match source {
        Source::Buf(base) => (base, total),
        Source::Iov { iov, count } => {
            if count == 0 {
                return None;
            }
            let at = iov as *const u64;
            // SAFETY: user memory through the checked helper; `struct iovec` is two words.
            let base = unsafe { aya_ebpf::helpers::bpf_probe_read_user(at) }.ok()?;
            let len: u64 = unsafe { aya_ebpf::helpers::bpf_probe_read_user(at.add(1)) }.ok()?;
            (base, if len < total { len } else { total })
        }
    };
    // A whole window when it can be read; a read that ended near the end of a mapping
    // falls back to its first byte.
    // SAFETY: user memory through the checked helper.
    let window: [u8; PEEK] =
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(base as *const [u8; PEEK]) } {
            Ok(w) => w,
            Err(_) => {
                let b: u8 =
                    unsafe { aya_ebpf::helpers::bpf_probe_read_user(base as *const u8) }.ok()?;
                let mut w = [b' '; PEEK];
                w[0] = b;
                w
            }
        };
    let mut i = 0;
    while i < PEEK && (i as u64) < len {
        match window[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b => return Some(b),
        }
    }
    None
}

/// A captured process moved bytes on a captured descriptor without passing them through
/// a buffer the program can read: user space is told which descriptor and how. Gated, a
/// read of its stdin that nobody saw cannot be judged: the kernel kills it before the call
/// returns (fail closed, as for a read it could not send).
#[inline(always)]
fn unfollowed(
    tgid: u32,
    w: &Watch,
    number: u64,
    reg: &impl Fn(usize) -> Result<u64, i64>,
) -> Result<(), i64> {
    // (descriptor read from, descriptor written to); u64::MAX: none.
    let (from, to) = match number {
        nr::SPLICE | nr::COPY_FILE_RANGE => (reg(regs::ARG0)?, reg(regs::ARG2)?),
        nr::TEE => (reg(regs::ARG0)?, reg(regs::ARG1)?),
        nr::SENDFILE => (reg(regs::ARG1)?, reg(regs::ARG0)?),
        nr::SENDMMSG => (u64::MAX, reg(regs::ARG0)?),
        // recvmmsg reads; vmsplice reads a pipe's read end, writes its write end: both
        // are reported as reads, which is what can carry a request.
        _ => (reg(regs::ARG0)?, u64::MAX),
    };
    let mut i = 0;
    while i < 2 {
        let (fd, direction) = if i == 0 {
            (from, dir::IN)
        } else {
            (to, dir::OUT)
        };
        i += 1;
        if fd > u32::MAX as u64 {
            continue;
        }
        let fd = fd as u32;
        let Some(o) = origin_of(tgid, fd, w, direction) else {
            continue;
        };
        let unseen_request = direction == dir::IN && o != origin::STDOUT;
        let kill = unseen_request && o == origin::STDIN && w.flags & watch::GATE != 0;
        report_unfollowed(tgid, fd, number, direction, o, kill);
    }
    Ok(())
}

/// `struct msghdr`: `msg_control` at 32, `msg_controllen` at 40; `struct cmsghdr`:
/// `cmsg_len` (8 bytes), `cmsg_level`, `cmsg_type`, then the data, 8-byte aligned.
const MSG_CONTROL: u64 = 32;
const MSG_CONTROLLEN: u64 = 40;
const CMSG_HEADER: u64 = 16;
const SOL_SOCKET: u32 = 1;
const SCM_RIGHTS: u32 = 1;
/// Control messages and descriptors per message looked at; a message with more is taken
/// to carry stdio (it cannot be checked in bounded time).
const MAX_CMSGS: u64 = 3;
const MAX_PASSED: u64 = 8;

/// A captured process sent descriptors over a unix socket (`SCM_RIGHTS`) in the `sendmsg`
/// whose `struct msghdr` is at `msg`: if one is its stdin, another process can read what
/// the host sends without being captured. Reported as an unfollowed channel; gated, the
/// sender is killed before the call returns.
#[inline(always)]
fn passes_stdio(tgid: u32, w: &Watch, msg: u64) {
    if let Some(fd) = stdio_passed(tgid, w, msg) {
        let kill = w.flags & watch::GATE != 0;
        report_unfollowed(tgid, fd, nr::SENDMSG, dir::PASS, origin::STDIN, kill);
    }
}

/// `sendmmsg`: the first message is looked into as `sendmsg`'s is; any of the next ones
/// (up to [`MAX_MMSG`]) that carries control data, or more messages than that, counts as
/// passing stdio (fail closed: their descriptors are not checked one by one). Messages
/// without control data (a resolver's parallel DNS queries) pass.
#[inline(always)]
fn passes_stdio_mmsg(tgid: u32, w: &Watch, vec: u64, sent: u64) {
    let mut passed = stdio_passed(tgid, w, vec);
    if sent > MAX_MMSG {
        passed = Some(u32::MAX);
    }
    let mut k = 1;
    while k < MAX_MMSG && passed.is_none() {
        if k >= sent {
            break;
        }
        let at = vec + k * MMSGHDR + MSG_CONTROLLEN;
        // SAFETY: user memory through the checked helper.
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(at as *const u64) } {
            Ok(0) => {}
            _ => passed = Some(u32::MAX),
        }
        k += 1;
    }
    if let Some(fd) = passed {
        let kill = w.flags & watch::GATE != 0;
        report_unfollowed(tgid, fd, nr::SENDMMSG, dir::PASS, origin::STDIN, kill);
    }
}

/// `struct mmsghdr`: a `struct msghdr` (56 bytes) and `msg_len`, padded to 64.
const MMSGHDR: u64 = 64;
/// Messages of one `sendmmsg` looked at.
const MAX_MMSG: u64 = 16;

/// The descriptor of stdin among those the message at `msg` passes (`u32::MAX` when they
/// cannot all be checked), if any.
#[inline(always)]
fn stdio_passed(tgid: u32, w: &Watch, msg: u64) -> Option<u32> {
    let user = |at: u64| -> Option<u64> {
        // SAFETY: user memory through the checked helper.
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(at as *const u64) }.ok()
    };
    // The kernel just read all of this: what cannot be read now was unmapped under it.
    const UNCHECKED: Option<u32> = Some(u32::MAX);
    let (Some(control), Some(len)) = (user(msg + MSG_CONTROL), user(msg + MSG_CONTROLLEN)) else {
        return UNCHECKED;
    };
    if control == 0 || len < CMSG_HEADER {
        return None;
    }
    let mut at = 0u64;
    let mut passed = None;
    let mut i = 0;
    while i < MAX_CMSGS + 1 {
        i += 1;
        if at + CMSG_HEADER > len {
            break;
        }
        if i > MAX_CMSGS {
            passed = Some(u32::MAX);
            break;
        }
        let (Some(cmsg_len), Some(kind)) = (user(control + at), user(control + at + 8)) else {
            return UNCHECKED;
        };
        if cmsg_len < CMSG_HEADER {
            break;
        }
        if kind as u32 == SOL_SOCKET && (kind >> 32) as u32 == SCM_RIGHTS {
            let n = (cmsg_len - CMSG_HEADER) / 4;
            if n > MAX_PASSED {
                passed = Some(u32::MAX);
                break;
            }
            let mut j = 0;
            while j < MAX_PASSED {
                if j >= n {
                    break;
                }
                let at = control + at + CMSG_HEADER + j * 4;
                // SAFETY: user memory through the checked helper.
                let Ok(fd) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(at as *const u32) })
                else {
                    return UNCHECKED;
                };
                if origin_of(tgid, fd, w, dir::IN) == Some(origin::STDIN) {
                    passed = Some(fd);
                }
                j += 1;
            }
        }
        at += (cmsg_len + 7) & !7;
    }
    passed
}

/// Kills the calling process first when `kill`, then reports what it did.
#[inline(always)]
fn report_unfollowed(tgid: u32, fd: u32, number: u64, direction: u8, o: u8, kill: bool) {
    if kill {
        // SAFETY: a plain helper call on the current task.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    let event = UnfollowedEvent {
        kind: kind::UNFOLLOWED,
        tgid,
        fd,
        syscall: number as u32,
        dir: direction,
        origin: o,
        killed: kill as u8,
        _pad: [0; 5],
    };
    if EVENTS.output::<UnfollowedEvent>(&event, 0).is_err() {
        lost();
    }
}

/// A captured process opened a way to move bytes the program cannot follow (`fd` is the
/// ring or the descriptor taken): what comes through it may be a request nobody judged, as
/// from stdin. Gated, the process is killed before the call returns.
#[inline(always)]
fn unfollowed_channel(tgid: u32, w: &Watch, number: u64, fd: u32) -> Result<(), i64> {
    let kill = w.flags & watch::GATE != 0;
    report_unfollowed(tgid, fd, number, dir::IN, origin::STDIN, kill);
    Ok(())
}

const EINPROGRESS: i64 = 115;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A watched process connected to or accepted a socket: a local one (unix, or TCP on a
/// loopback address) is captured from now on, and user space told.
#[inline(always)]
fn socket(
    tgid: u32,
    number: u64,
    ret: i64,
    reg: &impl Fn(usize) -> Result<u64, i64>,
) -> Result<(), i64> {
    let accepted = number != nr::CONNECT;
    // A non-blocking connect is under way when it returns EINPROGRESS.
    if (accepted && ret < 0) || (!accepted && ret != 0 && ret != -EINPROGRESS) {
        return Ok(());
    }
    let fd = if accepted {
        ret as u32
    } else {
        reg(regs::ARG0)? as u32
    };
    let addr = reg(regs::ARG1)? as *const u8;
    // The peer's address: given to connect, filled in by accept (when asked for).
    let (mut family, mut port, mut local) = (0u16, 0u16, accepted);
    if !addr.is_null() {
        // SAFETY: user memory through the checked helper.
        let head: [u8; 8] =
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr.cast()) }.map_err(i64::from)?;
        family = u16::from_ne_bytes([head[0], head[1]]);
        port = u16::from_be_bytes([head[2], head[3]]);
        local = match family {
            AF_UNIX => {
                port = 0;
                true
            }
            AF_INET => head[4] == 127,
            AF_INET6 => {
                // SAFETY: as above; sin6_addr is at 8..24.
                let a: [u8; 16] =
                    unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr.add(8).cast()) }
                        .map_err(i64::from)?;
                let loopback = a[..15].iter().all(|&b| b == 0) && a[15] == 1;
                let mapped = a[..10].iter().all(|&b| b == 0)
                    && a[10] == 0xff
                    && a[11] == 0xff
                    && a[12] == 127;
                loopback || mapped
            }
            _ => false,
        };
    }
    if !local {
        return Ok(());
    }
    let _ = FDS.insert(fd_key(tgid, fd), origin::SOCKET, 0);
    let event = SocketEvent {
        kind: kind::SOCKET,
        tgid,
        fd,
        accepted: accepted as u32,
        family,
        port,
        _pad: 0,
    };
    if EVENTS.output::<SocketEvent>(&event, 0).is_err() {
        lost();
    }
    Ok(())
}

/// Follows a watched process's stdio through dup, dup2, dup3, fcntl(F_DUPFD) and close:
/// a copy of a captured descriptor is captured too; a descriptor number that now names
/// something else (fd 1 pointed at stderr) is not.
#[inline(always)]
fn fd_table(
    tgid: u32,
    w: &Watch,
    number: u64,
    ret: u64,
    reg: &impl Fn(usize) -> Result<u64, i64>,
) -> Result<(), i64> {
    let fd = reg(regs::ARG0)? as u32;
    if number == nr::CLOSE {
        forget(tgid, fd, w);
        return Ok(());
    }
    if number == nr::FCNTL {
        let cmd = reg(regs::ARG1)?;
        if cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC {
            return Ok(());
        }
    }
    let new = ret as u32;
    if new == fd {
        return Ok(());
    }
    // A copy of a descriptor followed by what it is needs no entry: it is the same file.
    match origin_by_number(tgid, fd, w) {
        Some(o) => {
            let _ = FDS.insert(fd_key(tgid, new), o, 0);
        }
        None => forget(tgid, new, w),
    }
    Ok(())
}

/// The state of one call's copy, kept in [`COPY`] for [`chunk`]. In map memory, not
/// on the stack, so the verifier sees unknown values in the loop body and checks it once.
#[repr(C)]
pub struct Copy {
    /// The buffer being copied from, and how much of it is left.
    base: u64,
    left: u64,
    /// iovecs: the array, how many, the next one to take.
    iov_array: u64,
    iov_count: u64,
    next_iov: u64,
    /// Bytes sent so far, and bytes to send.
    offset: u64,
    wanted: u64,
    total: u64,
    gate: u64,
    lost: u64,
}

#[map]
static COPY: PerCpuArray<Copy> = PerCpuArray::with_max_entries(1, 0);

/// Sends the `total` bytes of one call as chunks; false if any chunk was lost.
///
/// The chunks are sent by [`chunk`] under `bpf_loop`, which the verifier checks once
/// rather than once per iteration.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn send(
    tgid: u32,
    tid: u32,
    fd: u32,
    direction: u8,
    o: u8,
    total: u64,
    source: Source,
    gate: bool,
) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let limit = match CONFIG.get(config::MAX_CAPTURE) {
        Some(&n) if n != 0 && (n as usize) < MAX_CAPTURE => n as u64,
        _ => MAX_CAPTURE as u64,
    };
    let wanted = if total < limit { total } else { limit };
    // SAFETY: one in-flight program per CPU (tracing programs are not preempted here).
    let h = unsafe { &mut (*scratch).header };
    h.kind = kind::DATA;
    h.tgid = tgid;
    h.tid = tid;
    h.fd = fd;
    // SAFETY: helpers without arguments.
    h.cpu = unsafe { bpf_get_smp_processor_id() };
    h.total = if total > u32::MAX as u64 {
        u32::MAX
    } else {
        total as u32
    };
    h.ktime_ns = unsafe { bpf_ktime_get_ns() };
    h.dir = direction;
    h.origin = o;
    h._pad = [0; 5];
    let Some(copy) = COPY.get_ptr_mut(0) else {
        return false;
    };
    let state = match source {
        Source::Buf(buf) => Copy {
            base: buf,
            left: wanted,
            iov_array: 0,
            iov_count: 0,
            next_iov: 0,
            offset: 0,
            wanted,
            total,
            gate: gate as u64,
            lost: 0,
        },
        Source::Iov { iov, count } => Copy {
            base: 0,
            left: 0,
            iov_array: iov,
            iov_count: if count < MAX_IOV { count } else { MAX_IOV },
            next_iov: 0,
            offset: 0,
            wanted,
            total,
            gate: gate as u64,
            lost: 0,
        },
    };
    // SAFETY: a per-CPU value, one in-flight program per CPU.
    let copy = unsafe { &mut *copy };
    *copy = state;
    // SAFETY: `chunk` has the callback signature bpf_loop expects.
    let r = unsafe {
        bpf_loop(
            (MAX_CHUNKS as u64 + MAX_IOV) as u32,
            chunk as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    r >= 0 && copy.lost == 0 && copy.offset >= copy.wanted
}

/// One step of a copy: takes the next iovec, or sends the next chunk. Returns 1 to stop.
#[inline(never)]
extern "C" fn chunk(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(c) = COPY.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU value, one in-flight program per CPU.
    let c = unsafe { &mut *c };
    if c.offset >= c.wanted {
        return 1;
    }
    if c.left == 0 {
        if c.next_iov >= c.iov_count {
            return 1;
        }
        // struct iovec { void *iov_base; size_t iov_len; }
        let at = (c.iov_array + c.next_iov * 16) as *const u64;
        c.next_iov += 1;
        // SAFETY: user memory through the checked helper.
        let entry = unsafe {
            (
                aya_ebpf::helpers::bpf_probe_read_user(at),
                aya_ebpf::helpers::bpf_probe_read_user(at.add(1)),
            )
        };
        let (Ok(base), Ok(left)) = entry else {
            return 1;
        };
        c.base = base;
        c.left = left;
        return 0;
    }
    let (Some(scratch), Some(seq)) = (SCRATCH.get_ptr_mut(0), SEQ.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: per-CPU values, one in-flight program per CPU.
    let (scratch, seq) = unsafe { (&mut *scratch, &mut *seq) };
    let mut n = c.left;
    if c.wanted - c.offset < n {
        n = c.wanted - c.offset;
    }
    if n > CHUNK as u64 {
        n = CHUNK as u64;
    }
    let mut flags = 0;
    // SAFETY: `n <= CHUNK`, the payload's size; the source is user memory read
    // through the checked helper.
    let read = unsafe {
        bpf_probe_read_user(
            scratch.payload.as_mut_ptr().cast(),
            n as u32,
            c.base as *const _,
        )
    };
    if read != 0 {
        flags |= data::FAULT;
    }
    c.offset += n;
    c.base += n;
    c.left -= n;
    if c.offset >= c.wanted {
        flags |= data::LAST;
        if c.wanted < c.total {
            flags |= data::CUT;
        }
        if c.gate != 0 {
            flags |= data::GATED;
        }
    }
    let h = &mut scratch.header;
    h.offset = (c.offset - n) as u32;
    h.len = n as u32;
    h.flags = flags;
    h.seq = *seq;
    *seq += 1;
    let size = size_of::<DataHeader>() + n as usize;
    // SAFETY: `size` is at most the scratch entry's size, all of it initialised
    // (map values start zeroed).
    let record =
        unsafe { core::slice::from_raw_parts((scratch as *const Scratch).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(record, 0).is_err() {
        lost();
        c.lost += 1;
    }
    0
}
