//! mcp-guard: guards Model Context Protocol traffic on Linux hosts.

pub mod observer;
