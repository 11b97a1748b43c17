//! The managed protocol's decoders, on whatever bytes arrive, however split: the daemon's
//! side (any local user can reach its socket: frames, hello, `JUDGE`, `END`) and the
//! shim's (frames, welcome, `PLAN`, forwards mapped back into the shim's buffer). They
//! never panic, and what they accept stays within the bytes they were given.
#![no_main]

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use mcp_guard::frame::Frame;
use mcp_guard::managed::{self, End, Hello, Welcome};
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out the bytes `split` at a time (always ready), as a socket may.
struct Pieces<'a> {
    data: &'a [u8],
    split: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.split).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits (its reader is always ready).
fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let daemon_side = head & 1 == 0;
    let split = usize::from(head >> 1).max(1);
    // Small limits too, so that the size checks are reached.
    let max = if head & 0x80 != 0 {
        64
    } else {
        managed::MAX_FRAME
    };
    let mut r = Pieces { data: rest, split };
    loop {
        let frame = match now(managed::read_frame(&mut r, max)) {
            Some(Ok(Some(f))) => f,
            Some(Ok(None) | Err(_)) => return,
            None => panic!("a read from a ready reader waited"),
        };
        assert!(frame.1.len() < max.min(managed::MAX_FRAME));
        match (daemon_side, frame) {
            (true, (managed::HELLO, p)) => {
                let _ = serde_json::from_slice::<Hello>(&p);
            }
            (true, (managed::JUDGE, p)) => {
                if let Ok(j) = managed::decode_judge(&p) {
                    for f in &j.frames {
                        if let Frame::Line { msg, raw } = f {
                            assert!(
                                msg.start == raw.start
                                    && msg.end <= raw.end
                                    && raw.end <= j.data.len()
                            );
                            let _ = mcp_guard::jsonrpc::parse(&j.data[msg.clone()]);
                        }
                    }
                }
            }
            (true, (managed::END, p)) => {
                let _ = serde_json::from_slice::<End>(&p);
            }
            (false, (managed::WELCOME, p)) => {
                let _ = serde_json::from_slice::<Welcome>(&p);
            }
            (false, (managed::PLAN, p)) => {
                // The shim's buffer: lines at the offsets a `JUDGE` of them would give.
                let lines = [
                    Frame::Line {
                        msg: 3..9,
                        raw: 3..10,
                    },
                    Frame::TooLong {
                        prefix: vec![b'{'],
                        seen: 99,
                    },
                    Frame::Line {
                        msg: 12..20,
                        raw: 12..22,
                    },
                ];
                let map = managed::line_map(&lines);
                let total = map.last().map_or(0, |(s, r)| s + r.len());
                if let Ok((_, acts)) = managed::decode_plan(&p, total) {
                    for a in acts {
                        if let mcp_guard::guard::Act::Forward(range) = a {
                            assert!(range.start <= range.end && range.end <= total);
                            for back in managed::map_forward(&map, &range) {
                                assert!(back.start < back.end && back.end <= 22);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
});
