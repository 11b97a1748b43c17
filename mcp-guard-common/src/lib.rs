//! Types shared by the kernel programs and user space. `#[repr(C)]`, integers and
//! fixed arrays only, no implicit padding; sizes are asserted at compile time.
#![no_std]

/// Length of `comm` in the kernel's `task_struct` (`TASK_COMM_LEN`), NUL included.
pub const COMM_LEN: usize = 16;

/// Bytes of an exec'd file name kept in an [`ExecEvent`], NUL included; longer
/// names are cut to `FILENAME_LEN - 1` bytes.
pub const FILENAME_LEN: usize = 256;

/// Name of the hash map of watched processes: key is a tgid (or, for a thread
/// created by a watched process, its tid), value a [`Watch`].
pub const WATCHED_MAP: &str = "WATCHED";

/// Name of the array, indexed by pid, that says cheaply who may be watched: non-zero for
/// every pid in [`WATCHED_MAP`] (and possibly for some that left it). A non-zero, or a pid
/// beyond its end, is looked up in [`WATCHED_MAP`]; a zero means not watched, with no hash
/// lookup on the system-call path. User space sizes it to `kernel.pid_max` at load.
pub const MAYBE_WATCHED_MAP: &str = "MAYBE_WATCHED";

/// Name of the hash map of descriptors whose role differs from their number: key
/// [`fd_key`], value an [`origin`]. The kernel fills it as watched processes dup their
/// stdio elsewhere (the MCP Python SDK moves its protocol stream off fds 0 and 1) or
/// replace fds 0 and 1; user space adds what it finds in /proc at start-up.
pub const FDS_MAP: &str = "FDS";

/// What a descriptor carries, for capture: values of [`FDS_MAP`] and [`DataHeader::origin`].
pub mod origin {
    /// The process's original stdin (reads captured).
    pub const STDIN: u8 = 0;
    /// The process's original stdout (writes captured).
    pub const STDOUT: u8 = 1;
    /// A local socket user space chose (both directions captured).
    pub const SOCKET: u8 = 2;
    /// Not captured, whatever its number (fd 0 or 1 replaced by something else).
    pub const NONE: u8 = 0xff;
}

/// Name of the ring buffer every event goes to.
pub const EVENTS_MAP: &str = "EVENTS";

/// Name of the per-CPU array (one `u64`) counting events that did not fit in the ring.
pub const LOST_MAP: &str = "LOST";

/// Name of the array of `u32` settings user space writes; indexes in [`config`].
pub const CONFIG_MAP: &str = "CONFIG";

/// Indexes into [`CONFIG_MAP`].
pub mod config {
    /// Most bytes of one read or write captured; the rest is reported as cut.
    /// `0` means [`super::MAX_CAPTURE`].
    pub const MAX_CAPTURE: u32 = 0;
    /// Offset of `child_pid` in `sched_process_fork` records (`pid_t`). The offsets below
    /// differ between kernels (6.1 has `char[16]` comms where later kernels have
    /// `__data_loc`): user space reads them from the tracepoints' `format` files at load.
    /// `0`: not set yet, the program does nothing.
    pub const FORK_CHILD_PID: u32 = 1;
    /// Offset of `filename` (`__data_loc char[]`) in `sched_process_exec` records.
    pub const EXEC_FILENAME: u32 = 2;
    /// Offset of `old_pid` (`pid_t`) in `sched_process_exec` records.
    pub const EXEC_OLD_PID: u32 = 3;
    /// Offset of `group_dead` (`bool`) in `sched_process_exit` records, or [`ABSENT`]
    /// (kernels before 6.5 do not have it: the thread-group leader's exit stands for the
    /// process's).
    pub const EXIT_GROUP_DEAD: u32 = 4;
    /// [`super::Watch::flags`] given at exec to every process not watched yet (with
    /// [`super::watch::PROBE`] set), so that a stdio MCP server is found by what it reads,
    /// whoever started it. `0`: only children of agent hosts are watched.
    pub const PROBE: u32 = 5;
    /// Number of entries.
    pub const LEN: u32 = 6;
    /// The kernel has no such field.
    pub const ABSENT: u32 = u32::MAX;
}

/// Payload bytes in one [`DataEvent`] chunk.
pub const CHUNK: usize = 16 * 1024;

/// Chunks one system call's data may take: the capture limit cannot exceed
/// `MAX_CHUNKS * CHUNK` bytes.
pub const MAX_CHUNKS: usize = 512;

/// The largest capture limit: 8 MiB per system call.
pub const MAX_CAPTURE: usize = MAX_CHUNKS * CHUNK;

/// What an event is: the first `u32` of every record in [`EVENTS_MAP`].
///
/// Numbers are never reused or renumbered; a retired kind stays here as a comment.
pub mod kind {
    /// [`super::ExecEvent`].
    pub const EXEC: u32 = 1;
    /// [`super::DataHeader`] followed by its payload.
    pub const DATA: u32 = 2;
    /// [`super::ExitEvent`].
    pub const EXIT: u32 = 3;
    /// [`super::SocketEvent`].
    pub const SOCKET: u32 = 4;
    /// [`super::UnfollowedEvent`].
    pub const UNFOLLOWED: u32 = 5;
}

/// System call numbers and `struct pt_regs` offsets of the architecture the programs run
/// on. The kernel programs are built for `bpf`, so they name it with
/// `--cfg bpf_target_arch="..."` (xtask passes the host's); user space by its own target.
#[cfg(any(target_arch = "x86_64", bpf_target_arch = "x86_64"))]
#[path = "arch/x86_64.rs"]
pub mod arch;
#[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
#[path = "arch/aarch64.rs"]
pub mod arch;
#[cfg(not(any(
    target_arch = "x86_64",
    bpf_target_arch = "x86_64",
    target_arch = "aarch64",
    bpf_target_arch = "aarch64"
)))]
compile_error!(
    "mcp-guard supports x86_64 and aarch64; build the eBPF crate with --cfg bpf_target_arch"
);

pub use arch::{nr, regs};

/// The contract between the kernel programs and user space: the layouts of the events and
/// map values in this file, the map names and the meaning of their bits. Raise it with any
/// change to those; the object carries it in [`ABI_SECTION`] and user space refuses an
/// object whose number is not its own.
pub const ABI_VERSION: u32 = 2;

/// The ELF section of the eBPF object that holds [`ABI_VERSION`], 4 bytes little-endian.
pub const ABI_SECTION: &str = "mcp_guard_abi";

/// A captured process moved bytes on a captured descriptor with a system call whose bytes
/// the kernel program cannot copy (they go from descriptor to descriptor, or into an array
/// of message headers): `splice`, `tee`, `sendfile`, `copy_file_range`, `vmsplice`,
/// `recvmmsg`, `sendmmsg`. What it moved is not seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UnfollowedEvent {
    /// Always [`kind::UNFOLLOWED`].
    pub kind: u32,
    pub tgid: u32,
    pub fd: u32,
    /// The system call number on this architecture: an [`nr`] value.
    pub syscall: u32,
    /// [`dir`] value: the captured descriptor was read from ([`dir::IN`]) or written to.
    pub dir: u8,
    /// What the descriptor carries: an [`origin`] value.
    pub origin: u8,
    /// 1: the kernel killed the process before the call returned to it (it read its stdin
    /// unseen while gated: it cannot be judged).
    pub killed: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(core::mem::size_of::<UnfollowedEvent>() == 24);

/// A watched process connected to, or accepted, a local socket (unix, or TCP on a
/// loopback address); its reads and writes on `fd` are captured from now on.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SocketEvent {
    /// Always [`kind::SOCKET`].
    pub kind: u32,
    pub tgid: u32,
    pub fd: u32,
    /// 1: accepted (the process is the server side); 0: connected (the client side).
    pub accepted: u32,
    /// `AF_UNIX`, `AF_INET`, `AF_INET6`; 0 when the kernel did not see the address.
    pub family: u16,
    /// TCP port of the peer (connect) or 0, host byte order.
    pub port: u16,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SocketEvent>() == 24);

/// Bits of [`Watch::flags`].
pub mod watch {
    /// Capture reads of fd 0 and writes of fd 1 (a possible stdio server). Children of
    /// any watched process get it at fork.
    pub const CAPTURE: u32 = 1;
    /// Stop the process (SIGSTOP) when a read of its fd 0 returns data, until user space
    /// has judged that data and sends SIGCONT or SIGKILL. Inherited at fork.
    pub const GATE: u32 = 2;
    /// An agent host put there by user space: its children are watched.
    pub const HOST: u32 = 4;
    /// Not known yet: a process the kernel watched at exec because probing is on
    /// ([`super::config::PROBE`]). Nothing is captured until its first read of fd 0 that
    /// returns something other than white space: if that starts with `{` or `[` (JSON), the
    /// process is captured from that read on (`PROBE` becomes [`CAPTURE`]); anything else
    /// ends the watch. Inherited at fork by children of a process that has only this bit.
    pub const PROBE: u32 = 8;
}

/// A [`WATCHED_MAP`] value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Watch {
    /// tgid of the watched process that forked this one, `0` when user space put it there.
    pub parent: u32,
    /// [`watch`] bits.
    pub flags: u32,
}

/// Name of the one-entry array holding this kernel's [`Layout`], which user space reads
/// from the kernel's BTF (`/sys/kernel/btf/vmlinux`) at load.
pub const LAYOUT_MAP: &str = "LAYOUT";

/// Byte offsets of the kernel structure fields the programs follow from a task to the
/// file behind one of its descriptors: `task->files->fdt->fd[n]->f_inode`, and the
/// inode's identity (`i_mode`, `i_ino`, `i_sb->s_dev`). They differ between kernels and
/// builds, so they come from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Layout {
    /// `task_struct.files` (pointer).
    pub task_files: u32,
    /// `files_struct.fdt` (pointer).
    pub files_fdt: u32,
    /// `fdtable.max_fds` (`unsigned int`).
    pub fdt_max_fds: u32,
    /// `fdtable.fd` (pointer to an array of pointers).
    pub fdt_fd: u32,
    /// `file.f_inode` (pointer).
    pub file_inode: u32,
    /// `inode.i_mode` (`umode_t`, 16 bits).
    pub inode_mode: u32,
    /// `inode.i_ino` (`unsigned long`).
    pub inode_ino: u32,
    /// `inode.i_sb` (pointer).
    pub inode_sb: u32,
    /// `super_block.s_dev` (`dev_t`, 32 bits).
    pub sb_dev: u32,
    /// Non-zero once the offsets above are set; until then descriptors are followed by
    /// number only.
    pub known: u32,
}

/// Which pipe or socket an open descriptor is: its inode's device and number. Two
/// descriptors with one `FileId` are one channel, whatever their numbers or how they were
/// obtained (dup, `/proc/self/fd/N`, `/dev/stdin`, `SCM_RIGHTS`). All zero: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FileId {
    /// The kernel's `s_dev` of the inode's file system (pipefs, sockfs).
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Name of the map from tgid to the [`Stdio`] of a captured process: the pipes or sockets
/// its stdin and stdout were when it started. Written by the kernel only.
pub const STDIO_MAP: &str = "STDIO";

/// A [`STDIO_MAP`] value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Stdio {
    pub stdin: FileId,
    pub stdout: FileId,
}

/// The key of [`FDS_MAP`].
pub const fn fd_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// A process finished `execve`: `sched/sched_process_exec`. Sent for every process, so
/// user space sees agent hosts start.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ExecEvent {
    /// Always [`kind::EXEC`].
    pub kind: u32,
    /// Thread id after the exec (equal to `tgid`: exec makes the caller the leader).
    pub pid: u32,
    pub tgid: u32,
    /// tgid of the process that forked this one when watched, else `0`.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The process's [`Watch::flags`], `0` when it is not watched.
    pub watch: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC, nanoseconds.
    pub ktime_ns: u64,
    /// New `comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Path passed to `execve`, NUL terminated.
    pub filename: [u8; FILENAME_LEN],
}

const _: () = assert!(core::mem::size_of::<ExecEvent>() == 8 * 4 + 8 + COMM_LEN + FILENAME_LEN);
// Ring buffer records are 8-byte aligned; a larger alignment could not be honoured.
const _: () = assert!(core::mem::align_of::<ExecEvent>() == 8);

/// A watched process ended (its last thread exited): `sched/sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ExitEvent {
    /// Always [`kind::EXIT`].
    pub kind: u32,
    pub tgid: u32,
    pub ktime_ns: u64,
}

const _: () = assert!(core::mem::size_of::<ExitEvent>() == 16);

/// Which way data moved, from the process's point of view.
pub mod dir {
    /// read, readv, recvfrom, recvmsg.
    pub const IN: u8 = 0;
    /// write, writev, sendto, sendmsg.
    pub const OUT: u8 = 1;
    /// Handed to another process (`SCM_RIGHTS`): only in an [`super::UnfollowedEvent`].
    pub const PASS: u8 = 2;
}

/// Bits of [`DataHeader::flags`].
pub mod data {
    /// The last chunk of its system call.
    pub const LAST: u8 = 1;
    /// The call moved more bytes than the capture limit; `total` says how many.
    pub const CUT: u8 = 2;
    /// The payload could not be read from user memory; `len` bytes are missing.
    pub const FAULT: u8 = 4;
    /// The process was stopped after this read and waits for SIGCONT or SIGKILL.
    pub const GATED: u8 = 8;
}

/// One chunk of the data of one system call on a watched descriptor; `len` payload
/// bytes follow it in the same ring record.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DataHeader {
    /// Always [`kind::DATA`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// The CPU the chunk was produced on; `seq` counts per CPU.
    pub cpu: u32,
    /// Payload bytes following this header.
    pub len: u32,
    /// Bytes the system call moved (its return value, up to `u32::MAX`).
    pub total: u32,
    /// Offset of this chunk's payload in those bytes.
    pub offset: u32,
    /// Per-CPU chunk sequence number: a jump means chunks were lost.
    pub seq: u64,
    pub ktime_ns: u64,
    /// [`dir`] value.
    pub dir: u8,
    /// [`data`] bits.
    pub flags: u8,
    /// What the descriptor carries: an [`origin`] value.
    pub origin: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(core::mem::size_of::<DataHeader>() == 56);
const _: () = assert!(core::mem::align_of::<DataHeader>() == 8);

// SAFETY (all impls below): plain `#[repr(C)]` integers and byte arrays, no padding
// (asserted above), so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Watch {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Layout {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Stdio {}
