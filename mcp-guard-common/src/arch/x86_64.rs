//! x86-64: system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) and where a
//! system call's number and arguments sit in `struct pt_regs`
//! (arch/x86/include/asm/ptrace.h) when it returns.

/// System call numbers the kernel programs act on.
pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const DUP: u64 = 32;
    pub const DUP2: u64 = 33;
    pub const FCNTL: u64 = 72;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const ACCEPT4: u64 = 288;
    pub const DUP3: u64 = 292;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const PREAD64: u64 = 17;
    pub const PWRITE64: u64 = 18;
    pub const PREADV: u64 = 295;
    pub const PWRITEV: u64 = 296;
    pub const PREADV2: u64 = 327;
    pub const PWRITEV2: u64 = 328;
    pub const SENDFILE: u64 = 40;
    pub const SPLICE: u64 = 275;
    pub const TEE: u64 = 276;
    pub const VMSPLICE: u64 = 278;
    pub const RECVMMSG: u64 = 299;
    pub const SENDMMSG: u64 = 307;
    /// Numbered alike on every architecture from here on.
    pub const IO_URING_SETUP: u64 = 425;
    pub const PIDFD_GETFD: u64 = 438;
    pub const COPY_FILE_RANGE: u64 = 326;
}

/// Offsets in `struct pt_regs`, in 8-byte words, of the system call's number and its
/// first three arguments, as they are at `sys_exit`.
pub mod regs {
    pub const NR: usize = 15; // orig_ax
    pub const ARG0: usize = 14; // di
    pub const ARG1: usize = 13; // si
    pub const ARG2: usize = 12; // dx
    /// The bits of the word at [`NR`] that hold the number.
    pub const NR_MASK: u64 = u64::MAX;
}
