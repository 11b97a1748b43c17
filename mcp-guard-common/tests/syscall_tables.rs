//! The system call tables against the kernel headers the C library was built with: a
//! number copied wrong would make the programs follow (or miss) the wrong call.

use std::collections::HashMap;

#[allow(dead_code)]
#[path = "../src/arch/x86_64.rs"]
mod x86_64;

#[allow(dead_code)]
#[path = "../src/arch/aarch64.rs"]
mod aarch64;

/// `#define __NR_name N` (and the generic table's `__NR3264_name N`) in a header.
fn defines(path: &str) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == "#define").then_some(())?;
                let name = w.next()?;
                let name = name
                    .strip_prefix("__NR3264_")
                    .or_else(|| name.strip_prefix("__NR_"))?;
                Some((name.to_string(), w.next()?.parse().ok()?))
            })
            .collect(),
    )
}

/// Every constant of a table, by its lower-case name.
macro_rules! table {
    ($m:ident) => {{
        use $m::nr::*;
        [
            ("read", READ),
            ("write", WRITE),
            ("close", CLOSE),
            ("dup", DUP),
            ("dup2", DUP2),
            ("fcntl", FCNTL),
            ("connect", CONNECT),
            ("accept", ACCEPT),
            ("accept4", ACCEPT4),
            ("dup3", DUP3),
            ("readv", READV),
            ("writev", WRITEV),
            ("sendto", SENDTO),
            ("recvfrom", RECVFROM),
            ("sendmsg", SENDMSG),
            ("recvmsg", RECVMSG),
            ("pread64", PREAD64),
            ("pwrite64", PWRITE64),
            ("preadv", PREADV),
            ("pwritev", PWRITEV),
            ("preadv2", PREADV2),
            ("pwritev2", PWRITEV2),
            ("sendfile", SENDFILE),
            ("splice", SPLICE),
            ("tee", TEE),
            ("vmsplice", VMSPLICE),
            ("recvmmsg", RECVMMSG),
            ("sendmmsg", SENDMMSG),
            ("copy_file_range", COPY_FILE_RANGE),
            ("io_uring_setup", IO_URING_SETUP),
            ("pidfd_getfd", PIDFD_GETFD),
        ]
    }};
}

fn check(header: &str, table: &[(&str, u64)]) {
    let Some(defs) = defines(header) else {
        // The tests run where `cargo xtask test` installed both (linux-libc-dev comes with
        // gcc; the aarch64 one with gcc-aarch64-linux-gnu).
        assert!(
            std::env::var_os("CI").is_none(),
            "{header} is missing: the table cannot be checked"
        );
        return;
    };
    for &(name, nr) in table {
        match defs.get(name) {
            Some(&want) => assert_eq!(nr, want, "{name} in {header}"),
            None => assert!(nr > 1 << 32, "{name} is not a system call in {header}"),
        }
    }
    let mut seen = std::collections::HashSet::new();
    assert!(
        table.iter().all(|(_, nr)| seen.insert(nr)),
        "two calls share a number"
    );
}

#[test]
fn the_x86_64_table_is_the_kernels() {
    check(
        "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
        &table!(x86_64),
    );
}

#[test]
fn the_aarch64_table_is_the_kernels() {
    check(
        "/usr/aarch64-linux-gnu/include/asm-generic/unistd.h",
        &table!(aarch64),
    );
}
