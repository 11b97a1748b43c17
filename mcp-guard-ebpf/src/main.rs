//! mcp-guard kernel programs. They filter, user space decides: an event is kept only
//! for a process in [`WATCHED`], a map the daemon fills.
#![no_std]
#![no_main]

mod process;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, RingBuf},
};

/// Watched processes: tgid (or tid of a thread a watched process created) -> tgid
/// of the process that forked it, `0` for a root put there by user space.
/// Named by `mcp_guard_common::WATCHED_MAP`.
#[map]
static WATCHED: HashMap<u32, u32> = HashMap::with_max_entries(16 * 1024, 0);

/// Every event, each record starting with its `mcp_guard_common::kind`.
/// Named by `mcp_guard_common::EVENTS_MAP`.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

// bpf_probe_read_kernel and friends are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
