//! Types shared by the kernel programs and user space. `#[repr(C)]`, integers and
//! fixed arrays only, no implicit padding; sizes are asserted at compile time.
#![no_std]

/// Length of `comm` in the kernel's `task_struct` (`TASK_COMM_LEN`), NUL included.
pub const COMM_LEN: usize = 16;

/// Bytes of an exec'd file name kept in an [`ExecEvent`], NUL included; longer
/// names are cut to `FILENAME_LEN - 1` bytes.
pub const FILENAME_LEN: usize = 256;

/// Name of the hash map of watched processes: key is a tgid (or, for a thread
/// created by a watched process, its tid), value the tgid of the process that
/// forked it, `0` when user space put it there.
pub const WATCHED_MAP: &str = "WATCHED";

/// Name of the ring buffer every event goes to.
pub const EVENTS_MAP: &str = "EVENTS";

/// What an event is: the first `u32` of every record in [`EVENTS_MAP`].
///
/// Numbers are never reused or renumbered; a retired kind stays here as a comment.
pub mod kind {
    /// [`super::ExecEvent`].
    pub const EXEC: u32 = 1;
}

/// A watched process finished `execve`: `sched/sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// Always [`kind::EXEC`].
    pub kind: u32,
    /// Thread id after the exec (equal to `tgid`: exec makes the caller the leader).
    pub pid: u32,
    pub tgid: u32,
    /// tgid of the process that forked this one, `0` if user space watched it directly.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC, nanoseconds.
    pub ktime_ns: u64,
    /// New `comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Path passed to `execve`, NUL terminated.
    pub filename: [u8; FILENAME_LEN],
}

const _: () = assert!(core::mem::size_of::<ExecEvent>() == 6 * 4 + 8 + COMM_LEN + FILENAME_LEN);
// Ring buffer records are 8-byte aligned; a larger alignment could not be honoured.
const _: () = assert!(core::mem::align_of::<ExecEvent>() == 8);

// SAFETY: plain `#[repr(C)]` integers and byte arrays, no padding (asserted above),
// so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecEvent {}
