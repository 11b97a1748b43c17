//! Managed shims: `mcp-guard wrap` asking the daemon for its decisions over the daemon's
//! unix socket. The daemon identifies the shim itself (SO_PEERCRED and /proc), judges
//! with the system policy (plus the shim's own policy, which can only add denials),
//! commits the records to the system audit log, and answers with what to do.
//!
//! Wire format: frames of `u32` little-endian length, one type byte, payload.
//! - `HELLO` (shim): JSON [`Hello`]; answered by `WELCOME`: JSON [`Welcome`].
//! - `JUDGE` (shim): `u64` sequence, direction byte, `u32` count, then per frame a kind
//!   byte, two `u32`s and bytes: a line (raw length, message length, raw bytes) or an
//!   over-long line (bytes seen, prefix length, prefix).
//! - `PLAN` (daemon): `u64` sequence, `u32` count, then per act a kind byte, two `u32`s and
//!   bytes: forward (start, end into the concatenated raw lines of the `JUDGE`), or a
//!   message to the client or to the server (length, 0, bytes).
//! - `END` (shim): JSON [`End`]; answered by a `PLAN` with sequence 0: errors for the
//!   requests still in flight.
//!
//! Frames on one connection are answered in order.
//!
//! [`wire`] is the format both ends speak; [`client`] is the shim's end; the daemon's end is
//! `crate::daemon::shims`.

pub mod client;
pub mod wire;

pub use wire::*;
