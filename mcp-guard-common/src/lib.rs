//! Types shared by the kernel programs and user space. `#[repr(C)]`, integers and
//! fixed arrays only, no implicit padding; sizes are asserted at compile time.
#![no_std]
