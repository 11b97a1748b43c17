//! Process lifecycle, from the `sched` tracepoints: fork spreads the watch to
//! children, exec reports, exit forgets.
//!
//! Field offsets come from `/sys/kernel/tracing/events/sched/<event>/format` on
//! Linux 6.18; each read below names its line.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::bpf_probe_read_kernel_str,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use core::ptr::addr_of_mut;
use mcp_guard_common::{ExecEvent, ExitEvent, FILENAME_LEN, Watch, config, fd_key, kind, watch};

use crate::{CONFIG, EVENTS, FDS, WATCHED, files, lost, mark_watched};

/// A record field's offset, as user space read it from this kernel's tracepoint `format`
/// file (`mcp_guard_common::config`); an error when it is not set.
fn offset(index: u32) -> Result<usize, u32> {
    match CONFIG.get(index) {
        Some(&o) if o != 0 && o != config::ABSENT => Ok(o as usize),
        _ => Err(1),
    }
}

/// The current task's (tid, tgid).
fn current() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

/// Fires in the parent. A child of a watched process is watched, and captured, so
/// the whole tree under a watched root is seen, and a new server's first message
/// caught, without user space racing the fork.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    match try_sched_process_fork(&ctx) {
        Ok(r) => r,
        Err(r) => r,
    }
}

fn try_sched_process_fork(ctx: &TracePointContext) -> Result<u32, u32> {
    let (_, tgid) = current();
    // SAFETY: copied out at once; a concurrent update can at worst give stale flags.
    let Some(parent) = (unsafe { WATCHED.get(tgid) }).copied() else {
        return Ok(0);
    };
    // SAFETY: offset and type from this kernel's format file, checked at load.
    let child: i32 = unsafe { ctx.read_at(offset(config::FORK_CHILD_PID)?) }.map_err(|_| 1u32)?;
    let flags = if parent.flags & (watch::HOST | watch::CAPTURE | watch::PROBE) == watch::PROBE {
        // A process not known yet: its child shares its stdio and is probed the same way.
        parent.flags
    } else {
        (parent.flags & !(watch::HOST | watch::PROBE)) | watch::CAPTURE
    };
    // The child's stdio are its parent's, unless the parent is a host (which gives its
    // children pipes of their own): entries left by an earlier process with this pid
    // (a stale "fd 0 carries nothing") must not outlive it.
    let shares = parent.flags & watch::HOST == 0;
    let mut fd = 0;
    while fd < 2 {
        // SAFETY: copied out at once.
        match unsafe { FDS.get(fd_key(tgid, fd)) }.copied() {
            Some(o) if shares => {
                let _ = FDS.insert(fd_key(child as u32, fd), o, 0);
            }
            _ => {
                let _ = FDS.remove(fd_key(child as u32, fd));
            }
        }
        fd += 1;
    }
    files::forked(tgid, child as u32, shares);
    mark_watched(child as u32, true);
    // For a new thread `child` is a tid; exit removes it again.
    WATCHED
        .insert(
            child as u32,
            Watch {
                parent: tgid,
                flags,
            },
            0,
        )
        .map_err(|_| 1u32)?;
    Ok(0)
}

/// Fires in the task that exec'd, after the new image is in place.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_sched_process_exec(&ctx) {
        Ok(r) => r,
        Err(r) => r,
    }
}

fn try_sched_process_exec(ctx: &TracePointContext) -> Result<u32, u32> {
    let (pid, tgid) = current();
    // Every exec is reported, watched or not: user space looks for agent hosts, and
    // stops probing a program whose stdio are not pipes or sockets.
    // SAFETY: the value is copied out at once; a concurrent remove can at worst
    // give a stale parent, never an invalid read.
    let watched = (unsafe { WATCHED.get(tgid) }).copied();
    if watched.is_some() {
        // A non-leader thread that execs takes the leader's pid; its old tid entry
        // would otherwise outlive it.
        // SAFETY: offset and type from this kernel's format file, checked at load.
        let old_pid: i32 =
            unsafe { ctx.read_at(offset(config::EXEC_OLD_PID)?) }.map_err(|_| 1u32)?;
        if old_pid as u32 != tgid {
            let _ = WATCHED.remove(old_pid as u32);
        }
        // Whatever the forked child did to fds 0 and 1 before exec set up the new
        // program's stdio; only what the program does from now on can move it.
        let _ = FDS.remove(fd_key(tgid, 0));
        let _ = FDS.remove(fd_key(tgid, 1));
    }
    // A child that user space took for something else (`sh -c 'echo hi; exec server'`)
    // runs a new program now: capture it again from its first byte, before user space hears
    // of the exec. Its gate, if any, was left in place.
    let watched = match watched {
        Some(w) if w.flags & (watch::HOST | watch::CAPTURE | watch::PROBE) == 0 => {
            let w = Watch {
                parent: w.parent,
                flags: w.flags | watch::CAPTURE,
            };
            let _ = WATCHED.insert(tgid, w, 0);
            Some(w)
        }
        // Probing on: whoever started it, a new program is watched until its first read
        // of stdin says whether it speaks JSON. Marked first, as user space does.
        None => match CONFIG.get(config::PROBE) {
            Some(&flags) if flags & watch::PROBE != 0 => {
                let w = Watch { parent: 0, flags };
                // Entries of an earlier process with this pid do not apply.
                let _ = FDS.remove(fd_key(tgid, 0));
                let _ = FDS.remove(fd_key(tgid, 1));
                mark_watched(tgid, true);
                WATCHED.insert(tgid, w, 0).ok().map(|()| w)
            }
            _ => None,
        },
        w => w,
    };
    let (ppid, flags) = watched.map_or((0, 0), |w| (w.parent, w.flags));
    // The new program's stdin and stdout, as files: reaching them through any other
    // descriptor later is reading or writing them all the same.
    if flags & (watch::CAPTURE | watch::PROBE) != 0 && flags & watch::HOST == 0 {
        files::remember(tgid, true, true);
    }
    // __data_loc: low 16 bits are the string's offset from the record start.
    // SAFETY: offset and type from this kernel's format file, checked at load.
    let loc: u32 = unsafe { ctx.read_at(offset(config::EXEC_FILENAME)?) }.map_err(|_| 1u32)?;
    let filename = unsafe { ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize) };

    let uid_gid = bpf_get_current_uid_gid();
    let comm = bpf_get_current_comm().map_err(|_| 1u32)?;
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        // Ring buffer full: user space is behind; drop rather than block the exec.
        lost();
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable ExecEvent; fields are written
    // through raw pointers so no reference to uninitialised memory is made.
    unsafe {
        addr_of_mut!((*ev).kind).write(kind::EXEC);
        addr_of_mut!((*ev).pid).write(pid);
        addr_of_mut!((*ev).tgid).write(tgid);
        addr_of_mut!((*ev).ppid).write(ppid);
        addr_of_mut!((*ev).uid).write(uid_gid as u32);
        addr_of_mut!((*ev).gid).write((uid_gid >> 32) as u32);
        addr_of_mut!((*ev).watch).write(flags);
        addr_of_mut!((*ev)._pad).write(0);
        addr_of_mut!((*ev).ktime_ns).write(bpf_ktime_get_ns());
        addr_of_mut!((*ev).comm).write(comm);
        let dst = addr_of_mut!((*ev).filename).cast::<u8>();
        // Always NUL-terminates, truncating at FILENAME_LEN - 1; on failure the
        // helper leaves an empty string.
        bpf_probe_read_kernel_str(dst.cast(), FILENAME_LEN as u32, filename.cast());
    }
    entry.submit(0);
    Ok(0)
}

/// Fires for every exiting thread; the last one of a group has `group_dead` set.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    match try_sched_process_exit(&ctx) {
        Ok(r) => r,
        Err(r) => r,
    }
}

fn try_sched_process_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let (pid, tgid) = current();
    if pid != tgid {
        let _ = WATCHED.remove(pid);
    }
    let group_dead = match CONFIG.get(config::EXIT_GROUP_DEAD) {
        // No such field on this kernel: the leader's exit stands for the process's.
        Some(&config::ABSENT) => pid == tgid,
        // SAFETY: offset and type from this kernel's format file, checked at load.
        Some(&o) if o != 0 => unsafe { ctx.read_at::<u8>(o as usize) }.map_err(|_| 1u32)? != 0,
        _ => return Err(1),
    };
    if !group_dead {
        return Ok(0);
    }
    files::forget(tgid);
    // SAFETY: copied out at once.
    let Some(w) = (unsafe { WATCHED.get(tgid) }).copied() else {
        return Ok(0);
    };
    let _ = WATCHED.remove(tgid);
    mark_watched(tgid, false);
    // A program still on probation never spoke: user space holds nothing for it.
    if w.flags & watch::PROBE == 0 {
        // SAFETY: a helper without arguments.
        let ktime_ns = unsafe { bpf_ktime_get_ns() };
        let event = ExitEvent {
            kind: kind::EXIT,
            tgid,
            ktime_ns,
        };
        if EVENTS.output::<ExitEvent>(&event, 0).is_err() {
            lost();
        }
    }
    Ok(0)
}
