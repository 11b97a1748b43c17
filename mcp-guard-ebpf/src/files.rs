//! Which pipe or socket a descriptor is, whatever its number.
//!
//! Capture follows descriptors by number ([`crate::FDS`]) as stdio moves through dup and
//! close. A process can also reach its stdin through a descriptor no such call made:
//! `/proc/self/fd/0` or `/dev/stdin` reopened, a copy received over a unix socket. So a
//! captured process's stdin and stdout are remembered as files ([`FileId`], the inode's
//! device and number, in [`STDIO`]) when it starts, and a descriptor with no entry of its
//! own is compared with them: the same pipe is the same channel, however it was opened.
//!
//! The walk from the task to the inode uses offsets user space read from this kernel's
//! BTF ([`LAYOUT`]); every read is a checked `bpf_probe_read_kernel`, so a descriptor
//! closed under the walk yields nothing, never a fault.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task},
    macros::map,
    maps::{Array, HashMap},
};
use mcp_guard_common::{FileId, Layout, Stdio, dir, origin};

/// This kernel's structure offsets. Named by `mcp_guard_common::LAYOUT_MAP`.
#[map]
static LAYOUT: Array<Layout> = Array::with_max_entries(1, 0);

/// tgid -> the files its stdin and stdout were at exec (or when first needed). Named by
/// `mcp_guard_common::STDIO_MAP`.
#[map]
static STDIO: HashMap<u32, Stdio> = HashMap::with_max_entries(64 * 1024, 0);

const S_IFMT: u16 = 0o170000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;

/// Reads a `T` at kernel address `at`.
#[inline(always)]
fn kread<T>(at: u64) -> Option<T> {
    // SAFETY: the checked helper; a bad address is an error, not a fault.
    unsafe { bpf_probe_read_kernel(at as *const T) }.ok()
}

/// The pipe or socket behind the current task's descriptor `fd`; `None` for anything else
/// (a file, a terminal), a closed descriptor, or when the layout is not known.
#[inline(always)]
pub fn file_id(fd: u32) -> Option<FileId> {
    let l = LAYOUT.get(0)?;
    if l.known == 0 {
        return None;
    }
    // SAFETY: a helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task + l.task_files as u64)?;
    if files == 0 {
        return None;
    }
    let fdt: u64 = kread(files + l.files_fdt as u64)?;
    let max: u32 = kread(fdt + l.fdt_max_fds as u64)?;
    if fd >= max {
        return None;
    }
    let array: u64 = kread(fdt + l.fdt_fd as u64)?;
    let file: u64 = kread(array + fd as u64 * 8)?;
    if file == 0 {
        return None;
    }
    let inode: u64 = kread(file + l.file_inode as u64)?;
    if inode == 0 {
        return None;
    }
    let mode: u16 = kread(inode + l.inode_mode as u64)?;
    if mode & S_IFMT != S_IFIFO && mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let ino: u64 = kread(inode + l.inode_ino as u64)?;
    let sb: u64 = kread(inode + l.inode_sb as u64)?;
    let dev: u32 = kread(sb + l.sb_dev as u64)?;
    Some(FileId { dev, _pad: 0, ino })
}

/// Remembers what the current task's fds 0 and 1 are, for `tgid`: `stdin` and `stdout`
/// say whether each still carries the process's stdio. An entry is made even when
/// neither is a pipe or socket, so that this is done once.
#[inline(always)]
pub fn remember(tgid: u32, stdin: bool, stdout: bool) -> Stdio {
    let none = FileId::default();
    let stdio = Stdio {
        stdin: if stdin {
            file_id(0).unwrap_or(none)
        } else {
            none
        },
        stdout: if stdout {
            file_id(1).unwrap_or(none)
        } else {
            none
        },
    };
    let _ = STDIO.insert(tgid, stdio, 0);
    stdio
}

/// What the current task's descriptor `fd`, used in `direction`, carries by what it is:
/// the process's stdin pipe read, or its stdout pipe written, through any descriptor.
/// `stdio` says whether fds 0 and 1 still carry stdio, for a process with no entry yet.
#[inline(always)]
pub fn origin_by_file(
    tgid: u32,
    fd: u32,
    direction: u8,
    stdio: impl Fn() -> (bool, bool),
) -> Option<u8> {
    // SAFETY: copied out at once.
    let known = match unsafe { STDIO.get(tgid) } {
        Some(s) => *s,
        None => {
            let (stdin, stdout) = stdio();
            remember(tgid, stdin, stdout)
        }
    };
    let (want, o) = if direction == dir::IN {
        (known.stdin, origin::STDIN)
    } else {
        (known.stdout, origin::STDOUT)
    };
    if want.ino == 0 {
        return None;
    }
    let id = file_id(fd)?;
    (id == want).then_some(o)
}

/// A forked child shares its parent's stdio files (`shares`), or gets its own at exec.
#[inline(always)]
pub fn forked(parent: u32, child: u32, shares: bool) {
    // SAFETY: copied out at once.
    match unsafe { STDIO.get(parent) } {
        Some(s) if shares => {
            let s = *s;
            let _ = STDIO.insert(child, s, 0);
        }
        _ => {
            let _ = STDIO.remove(child);
        }
    }
}

/// `tgid` is gone: its pid may come back as another process.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = STDIO.remove(tgid);
}
