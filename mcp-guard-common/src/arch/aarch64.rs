//! aarch64: system call numbers (include/uapi/asm-generic/unistd.h) and where a system
//! call's number and arguments sit in `struct pt_regs` (arch/arm64/include/asm/ptrace.h)
//! when it returns.

/// System call numbers the kernel programs act on.
pub mod nr {
    pub const READ: u64 = 63;
    pub const WRITE: u64 = 64;
    pub const CLOSE: u64 = 57;
    pub const DUP: u64 = 23;
    /// aarch64 has no `dup2` (C libraries call `dup3`): a number no system call has.
    pub const DUP2: u64 = u64::MAX - 1;
    pub const FCNTL: u64 = 25;
    pub const CONNECT: u64 = 203;
    pub const ACCEPT: u64 = 202;
    pub const ACCEPT4: u64 = 242;
    pub const DUP3: u64 = 24;
    pub const READV: u64 = 65;
    pub const WRITEV: u64 = 66;
    pub const SENDTO: u64 = 206;
    pub const RECVFROM: u64 = 207;
    pub const SENDMSG: u64 = 211;
    pub const RECVMSG: u64 = 212;
    pub const PREAD64: u64 = 67;
    pub const PWRITE64: u64 = 68;
    pub const PREADV: u64 = 69;
    pub const PWRITEV: u64 = 70;
    pub const PREADV2: u64 = 286;
    pub const PWRITEV2: u64 = 287;
    pub const SENDFILE: u64 = 71;
    pub const SPLICE: u64 = 76;
    pub const TEE: u64 = 77;
    pub const VMSPLICE: u64 = 75;
    pub const RECVMMSG: u64 = 243;
    pub const SENDMMSG: u64 = 269;
    /// Numbered alike on every architecture from here on.
    pub const IO_URING_SETUP: u64 = 425;
    pub const PIDFD_GETFD: u64 = 438;
    pub const COPY_FILE_RANGE: u64 = 285;
}

/// Offsets in `struct pt_regs`, in 8-byte words, of the system call's number and its
/// first three arguments, as they are at `sys_exit`: x0 holds the return value by then,
/// the first argument is kept in `orig_x0`.
pub mod regs {
    pub const NR: usize = 35; // s32 syscallno, then u32 padding
    pub const ARG0: usize = 34; // orig_x0
    pub const ARG1: usize = 1; // regs[1]
    pub const ARG2: usize = 2; // regs[2]
    /// The bits of the word at [`NR`] that hold the number.
    pub const NR_MASK: u64 = 0xffff_ffff;
}
