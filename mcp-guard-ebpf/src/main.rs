//! mcp-guard kernel programs. They filter, user space decides: an event is kept only
//! for a process in [`WATCHED`], a map the daemon fills.
#![no_std]
#![no_main]

mod data;
mod files;
mod process;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use mcp_guard_common::{Watch, config};

/// The contract this object was built to (`mcp_guard_common::ABI_VERSION`), for user space
/// to check before it loads anything. Only read from the ELF file, never by a program.
#[unsafe(link_section = "mcp_guard_abi")]
#[unsafe(no_mangle)]
#[used]
static MCP_GUARD_ABI: [u8; 4] = mcp_guard_common::ABI_VERSION.to_le_bytes();

/// Watched processes: tgid (or tid of a thread a watched process created) -> its
/// [`Watch`]. Named by `mcp_guard_common::WATCHED_MAP`.
#[map]
static WATCHED: HashMap<u32, Watch> = HashMap::with_max_entries(64 * 1024, 0);

/// Non-zero for every pid in [`WATCHED`]: the system-call path's cheap first test.
/// Named by `mcp_guard_common::MAYBE_WATCHED_MAP`; user space sets its size.
#[map]
static MAYBE_WATCHED: Array<u8> = Array::with_max_entries(32768, 0);

/// Whether `pid` may be in [`WATCHED`]: false only when it surely is not.
#[inline(always)]
fn maybe_watched(pid: u32) -> bool {
    MAYBE_WATCHED.get(pid).is_none_or(|&v| v != 0)
}

/// Marks `pid` as possibly watched; done before it enters [`WATCHED`].
#[inline(always)]
fn mark_watched(pid: u32, on: bool) {
    if let Some(v) = MAYBE_WATCHED.get_ptr_mut(pid) {
        // SAFETY: an array element; a byte store is atomic.
        unsafe { *v = u8::from(on) };
    }
}

/// Descriptors whose role differs from their number, keyed by `mcp_guard_common::fd_key`,
/// valued by `mcp_guard_common::origin`.
/// Named by `mcp_guard_common::FDS_MAP`.
#[map]
static FDS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16 * 1024, 0);

/// Every event, each record starting with its `mcp_guard_common::kind`. User space
/// sets the size at load. Named by `mcp_guard_common::EVENTS_MAP`.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that did not fit in [`EVENTS`], per CPU. Named by `mcp_guard_common::LOST_MAP`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Settings from user space, indexed by `mcp_guard_common::config`.
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(config::LEN, 0);

/// Counts one event that could not be sent.
fn lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; this program cannot be preempted by itself on this CPU.
        unsafe { *n += 1 };
    }
}

// bpf_probe_read_kernel and friends are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
