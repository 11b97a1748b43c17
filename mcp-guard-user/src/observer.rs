//! eBPF loading and attaching; aya types stay in this module.
