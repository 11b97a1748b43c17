//! The managed-shim wire format (see the module above for the frames).

use std::ops::Range;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::frame::Frame;
use crate::guard::{Act, Direction};

/// Where the daemon listens, and where a shim looks for it.
pub const DEFAULT_SOCKET: &str = "/run/mcp-guard/mcp-guard.sock";
/// File name of the socket in the daemon's run directory.
pub const SOCKET_NAME: &str = "mcp-guard.sock";

pub const HELLO: u8 = 0;
pub const WELCOME: u8 = 1;
pub const JUDGE: u8 = 2;
pub const PLAN: u8 = 3;
pub const END: u8 = 4;

/// Largest frame accepted: a message at the largest limit, twice, and headers.
pub const MAX_FRAME: usize = 160 << 20;

/// Largest frame the daemon reads from a shim whose messages are at most `max_message`
/// bytes: a read's worth of lines (the shim reads 256 KiB at a time) plus one whole
/// message, with framing.
pub fn max_judge_frame(max_message: usize) -> usize {
    (max_message + (1 << 20)).min(MAX_FRAME)
}

/// Hellos only: small.
pub const MAX_HELLO: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub v: u32,
    /// The server's name in the host config.
    pub name: String,
    /// The server process; the daemon checks it is the shim's child.
    pub server_pid: u32,
    /// The shim's own policy text (it can only add denials), and where it came from.
    pub policy: Option<String>,
    pub policy_origin: Option<String>,
    /// The shim is reconnecting: answers to requests made before may arrive.
    pub resumed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Welcome {
    pub ok: bool,
    pub error: Option<String>,
    pub session: Option<String>,
    pub policy_sha256: Option<String>,
    /// The longest message the daemon judges; longer lines are sent as over-long.
    #[serde(default)]
    pub max_message: Option<usize>,
}

/// Frames as the daemon is to see them: a line longer than `max` becomes an over-long
/// frame (its start only), which is refused and never forwarded, as in a standalone shim.
pub fn cap_frames(frames: Vec<Frame>, data: &[u8], max: usize) -> Vec<Frame> {
    frames
        .into_iter()
        .map(|f| match f {
            Frame::Line { msg, .. } if msg.len() > max => {
                let prefix =
                    data[msg.start..msg.start + crate::frame::PREFIX_LEN.min(msg.len())].to_vec();
                Frame::TooLong {
                    prefix,
                    seen: msg.len(),
                }
            }
            other => other,
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct End {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// Appends one frame to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Reads one frame of at most `max` bytes: its type and payload. `Ok(None)` at a clean end
/// of stream.
pub async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Option<(u8, Vec<u8>)>, Error> {
    let mut len = [0u8; 4];
    // The end of the stream is clean only between frames; inside one it is an error.
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 {
        return Err(Error::Malformed("empty frame"));
    }
    if len > max.min(MAX_FRAME) {
        return Err(Error::TooLarge(len));
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind).await?;
    // Memory follows the bytes that arrive, not the length a peer claims.
    let mut buf = Vec::with_capacity((len - 1).min(1 << 16));
    let got = (&mut *r)
        .take((len - 1) as u64)
        .read_to_end(&mut buf)
        .await?;
    if got != len - 1 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some((kind[0], buf)))
}

fn put(out: &mut Vec<u8>, kind: u8, a: usize, b: usize, bytes: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(a as u32).to_le_bytes());
    out.extend_from_slice(&(b as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A `JUDGE` payload for `frames` over `data`.
pub fn encode_judge(seq: u64, dir: Direction, data: &[u8], frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        16 + frames
            .iter()
            .filter_map(|f| f.raw().map(|r| r.len() + 9))
            .sum::<usize>(),
    );
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(u8::from(dir == Direction::ToClient));
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    for f in frames {
        match f {
            Frame::Line { msg, raw } => put(&mut out, 0, raw.len(), msg.len(), &data[raw.clone()]),
            Frame::TooLong { prefix, seen } => put(&mut out, 1, *seen, prefix.len(), prefix),
        }
    }
    out
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<usize, Error> {
        Ok(u32::from_le_bytes(
            self.take(4)?
                .try_into()
                .map_err(|_| Error::Malformed("u32"))?,
        ) as usize)
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.take(8)?
                .try_into()
                .map_err(|_| Error::Malformed("u64"))?,
        ))
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
}

/// A decoded `JUDGE`: the raw lines concatenated, and frames indexing them.
pub struct Judge {
    pub seq: u64,
    pub dir: Direction,
    pub data: Vec<u8>,
    pub frames: Vec<Frame>,
}

pub fn decode_judge(payload: &[u8]) -> Result<Judge, Error> {
    let mut c = Cursor(payload);
    let seq = c.u64()?;
    let dir = if c.u8()? == 0 {
        Direction::ToServer
    } else {
        Direction::ToClient
    };
    let n = c.u32()?;
    let mut data = Vec::new();
    let mut frames = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let kind = c.u8()?;
        let (a, b) = (c.u32()?, c.u32()?);
        match kind {
            0 => {
                if b > a {
                    return Err(Error::Malformed("message longer than its line"));
                }
                let start = data.len();
                data.extend_from_slice(c.take(a)?);
                frames.push(Frame::Line {
                    msg: start..start + b,
                    raw: start..start + a,
                });
            }
            1 => frames.push(Frame::TooLong {
                prefix: c.take(b)?.to_vec(),
                seen: a,
            }),
            _ => return Err(Error::Malformed("frame kind")),
        }
    }
    if !c.0.is_empty() {
        return Err(Error::Malformed("trailing bytes"));
    }
    Ok(Judge {
        seq,
        dir,
        data,
        frames,
    })
}

/// A `PLAN` payload.
pub fn encode_plan(seq: u64, acts: &[Act]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(acts.len() as u32).to_le_bytes());
    for a in acts {
        match a {
            Act::Forward(r) => put(&mut out, 0, r.start, r.end, &[]),
            Act::ToClient(b) => put(&mut out, 1, b.len(), 0, b),
            Act::ToServer(b) => put(&mut out, 2, b.len(), 0, b),
        }
    }
    out
}

/// Decodes a `PLAN`; forwards must lie within `data_len` bytes.
pub fn decode_plan(payload: &[u8], data_len: usize) -> Result<(u64, Vec<Act>), Error> {
    let mut c = Cursor(payload);
    let seq = c.u64()?;
    let n = c.u32()?;
    let mut acts = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let kind = c.u8()?;
        let (a, b) = (c.u32()?, c.u32()?);
        acts.push(match kind {
            0 if a <= b && b <= data_len => Act::Forward(Range { start: a, end: b }),
            1 => Act::ToClient(c.take(a)?.to_vec()),
            2 => Act::ToServer(c.take(a)?.to_vec()),
            _ => return Err(Error::Malformed("act")),
        });
    }
    Ok((seq, acts))
}

/// Offsets of the raw lines of `frames` in the concatenation a `JUDGE` makes of them,
/// mapped back to `data`: (start in the concatenation, range in `data`).
pub fn line_map(frames: &[Frame]) -> Vec<(usize, Range<usize>)> {
    let mut at = 0;
    frames
        .iter()
        .filter_map(|f| f.raw().cloned())
        .map(|r| {
            let here = at;
            at += r.len();
            (here, r)
        })
        .collect()
}

/// Maps a forward range of the concatenation back to ranges of the original buffer.
pub fn map_forward(map: &[(usize, Range<usize>)], r: &Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for (start, orig) in map {
        let end = start + orig.len();
        let lo = r.start.max(*start);
        let hi = r.end.min(end);
        if lo < hi {
            out.push(orig.start + (lo - start)..orig.start + (hi - start));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_round_trips() {
        let data = b"xx{\"a\":1}\n{\"b\":2}\r\n";
        let frames = vec![
            Frame::Line {
                msg: 2..9,
                raw: 2..10,
            },
            Frame::TooLong {
                prefix: b"{\"id\":7".to_vec(),
                seen: 99,
            },
            Frame::Line {
                msg: 10..17,
                raw: 10..19,
            },
        ];
        let j = decode_judge(&encode_judge(5, Direction::ToClient, data, &frames)).unwrap();
        assert_eq!((j.seq, j.dir), (5, Direction::ToClient));
        assert_eq!(j.data, b"{\"a\":1}\n{\"b\":2}\r\n");
        assert_eq!(
            j.frames[0],
            Frame::Line {
                msg: 0..7,
                raw: 0..8
            }
        );
        assert_eq!(
            j.frames[1],
            Frame::TooLong {
                prefix: b"{\"id\":7".to_vec(),
                seen: 99
            }
        );
        assert_eq!(
            j.frames[2],
            Frame::Line {
                msg: 8..15,
                raw: 8..17
            }
        );
        let map = line_map(&frames);
        assert_eq!(map_forward(&map, &(0..17)), vec![2..10, 10..19]);
        assert_eq!(map_forward(&map, &(8..17)), vec![10..19]);
    }

    #[test]
    fn plan_round_trips_and_bounds_are_checked() {
        let acts = vec![
            Act::Forward(0..8),
            Act::ToClient(b"err\n".to_vec()),
            Act::ToServer(b"x\n".to_vec()),
        ];
        let (seq, back) = decode_plan(&encode_plan(9, &acts), 8).unwrap();
        assert_eq!((seq, back), (9, acts));
        assert!(decode_plan(&encode_plan(1, &[Act::Forward(0..9)]), 8).is_err());
    }

    #[test]
    fn lines_over_the_limit_become_over_long_frames() {
        let data = b"{\"a\":1}\n{\"long\":\"xxxxxxxx\"}\n";
        let frames = vec![
            Frame::Line {
                msg: 0..7,
                raw: 0..8,
            },
            Frame::Line {
                msg: 8..27,
                raw: 8..28,
            },
        ];
        let capped = cap_frames(frames.clone(), data, 10);
        assert_eq!(capped[0], frames[0]);
        assert_eq!(
            capped[1],
            Frame::TooLong {
                prefix: data[8..27].to_vec(),
                seen: 19
            }
        );
        assert_eq!(cap_frames(frames.clone(), data, 100), frames);
    }

    /// A reader that hands out `data` in pieces ending at `cuts`, one piece per read, as a
    /// socket may (the pieces are always ready: no read waits).
    struct Pieces {
        data: Vec<u8>,
        cuts: Vec<usize>,
        pos: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let pos = self.pos;
            let end = self
                .cuts
                .iter()
                .copied()
                .find(|&c| c > pos)
                .unwrap_or(self.data.len())
                .min(self.data.len());
            let n = (end - pos).min(buf.remaining());
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Every frame of the stream, as the daemon or the shim reads them.
    async fn read_all(r: &mut (impl AsyncRead + Unpin)) -> Result<Vec<(u8, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        while let Some(f) = read_frame(r, MAX_FRAME).await? {
            out.push(f);
        }
        Ok(out)
    }

    /// One frame of each type, in both directions' order.
    fn conversation() -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
        let hello = serde_json::to_vec(&Hello {
            v: 1,
            name: "fs".into(),
            server_pid: 42,
            policy: None,
            policy_origin: None,
            resumed: false,
        })
        .unwrap();
        let data = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n{\"b\":2}\r\n";
        let frames = [
            Frame::Line {
                msg: 0..40,
                raw: 0..41,
            },
            Frame::Line {
                msg: 41..48,
                raw: 41..50,
            },
        ];
        let judge = encode_judge(7, Direction::ToServer, data, &frames);
        let plan = encode_plan(
            7,
            &[
                Act::Forward(0..41),
                Act::ToClient(b"{\"error\":1}\n".to_vec()),
            ],
        );
        let end = serde_json::to_vec(&End {
            exit_code: Some(0),
            signal: None,
        })
        .unwrap();
        let want = vec![(HELLO, hello), (JUDGE, judge), (PLAN, plan), (END, end)];
        let mut stream = Vec::new();
        for (kind, payload) in &want {
            frame(&mut stream, *kind, payload);
        }
        (stream, want)
    }

    #[test]
    fn frames_split_across_reads_at_every_byte_boundary_are_read_whole() {
        let (stream, want) = conversation();
        block_on(async {
            for cut in 0..=stream.len() {
                let mut r = Pieces {
                    data: stream.clone(),
                    cuts: vec![cut],
                    pos: 0,
                };
                assert_eq!(read_all(&mut r).await.unwrap(), want, "cut at {cut}");
            }
            // And every frame in two cuts at once: one byte, then the rest, everywhere.
            for cut in 0..stream.len() {
                let mut r = Pieces {
                    data: stream.clone(),
                    cuts: vec![cut, cut + 1],
                    pos: 0,
                };
                assert_eq!(
                    read_all(&mut r).await.unwrap(),
                    want,
                    "cuts at {cut}, {}",
                    cut + 1
                );
            }
            let mut r = Pieces {
                data: stream.clone(),
                cuts: (1..stream.len()).collect(),
                pos: 0,
            };
            assert_eq!(read_all(&mut r).await.unwrap(), want, "one byte per read");
        });
        let j = decode_judge(&want[1].1).unwrap();
        assert_eq!(j.frames.len(), 2);
        let (seq, acts) = decode_plan(&want[2].1, j.data.len()).unwrap();
        assert_eq!((seq, acts.len()), (7, 2));
    }

    #[test]
    fn many_frames_in_one_read_are_each_read() {
        let (one, want) = conversation();
        let stream: Vec<u8> = std::iter::repeat_n(one, 250).flatten().collect();
        let got = block_on(async {
            let mut r = Pieces {
                data: stream.clone(),
                cuts: Vec::new(),
                pos: 0,
            };
            read_all(&mut r).await.unwrap()
        });
        assert_eq!(got.len(), 1000);
        assert!(got.chunks(4).all(|c| c == want.as_slice()));
        // Over a real socket: everything written at once, read as the daemon reads.
        let got = block_on(async {
            let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
            let writer = async move {
                tokio::io::AsyncWriteExt::write_all(&mut a, &stream)
                    .await
                    .unwrap();
            };
            let (_, got) = tokio::join!(writer, read_all(&mut b));
            got.unwrap()
        });
        assert_eq!(got.len(), 1000);
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_an_error_and_oversized_frames_are_refused_unread() {
        let (stream, _) = conversation();
        let first = 4 + u32::from_le_bytes(stream[..4].try_into().unwrap()) as usize;
        block_on(async {
            // Cut inside the length or the payload: an error, not a short frame or a clean end.
            for end in 1..first {
                let mut r = &stream[..end];
                assert!(read_frame(&mut r, MAX_FRAME).await.is_err(), "cut at {end}");
            }
            let mut r = &[0u8, 0, 0, 0][..];
            assert!(matches!(
                read_frame(&mut r, MAX_FRAME).await,
                Err(Error::Malformed(_))
            ));
            let mut big = Vec::new();
            frame(&mut big, JUDGE, &[0; 100]);
            let mut r = &big[..];
            assert!(matches!(
                read_frame(&mut r, 50).await,
                Err(Error::TooLarge(101))
            ));
        });
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode_judge(b"\x01\x02").is_err());
        let mut bad = encode_judge(
            1,
            Direction::ToServer,
            b"{}\n",
            &[Frame::Line {
                msg: 0..2,
                raw: 0..3,
            }],
        );
        bad.push(0);
        assert!(decode_judge(&bad).is_err());
    }
}
