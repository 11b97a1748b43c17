//! The policy loader never panics, and every error it reports names a place in the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Policy::parse(text, "fuzz.toml") {
        let message = e.to_string();
        assert!(message.contains("fuzz.toml"), "an error without its place: {message}");
    }
});
