//! mcp-guard: guards Model Context Protocol traffic on Linux hosts.

pub mod audit;
pub mod cli;
pub mod daemon;
pub mod digest;
pub mod ebpf;
pub mod events;
pub mod frame;
pub mod guard;
pub mod hosts;
pub mod identity;
pub mod jsonrpc;
pub mod managed;
pub mod own_files;
pub mod pins;
pub mod policy;
pub mod redact;
pub mod service;
pub mod shim;
