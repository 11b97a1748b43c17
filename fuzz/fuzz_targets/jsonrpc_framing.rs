//! Framing and JSON-RPC classification never panic, whatever bytes arrive, however split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::frame::{Frame, Framer};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut framer = Framer::new(4096);
    for chunk in rest.chunks(usize::from(split).max(1)) {
        let buf = framer.spare(chunk.len());
        buf[..chunk.len()].copy_from_slice(chunk);
        framer.filled(chunk.len());
        while let Some(frame) = framer.next_frame() {
            if let Frame::Line { msg, .. } = frame {
                let _ = mcp_guard::jsonrpc::parse(&framer.data()[msg]);
            }
        }
    }
});
