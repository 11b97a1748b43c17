//! Newline framing for stdio JSON-RPC: one message per line, `\n` or `\r\n` endings.
//!
//! Memory is bounded by the maximum message length plus one read: a line that grows past
//! the maximum is reported once, as [`Frame::TooLong`] with a short prefix (enough to find
//! its id), and the rest of it is discarded as it arrives.

/// How much of an over-long line is kept, to recover its JSON-RPC id.
pub const PREFIX_LEN: usize = 4096;

/// The default maximum message length: 64 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

use std::ops::Range;

/// One unit the framer hands out. Ranges index [`Framer::data`] and stay valid until the
/// next call to [`Framer::spare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line. `msg` has no line ending; `raw` is exactly the bytes received,
    /// ending included (or none, for a last line cut off by end of input).
    Line {
        msg: Range<usize>,
        raw: Range<usize>,
    },
    /// A line longer than the maximum. `seen` bytes had arrived when it was cut off.
    TooLong { prefix: Vec<u8>, seen: usize },
}

/// Splits a byte stream into lines.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the unconsumed data.
    start: usize,
    /// End of the data read so far.
    end: usize,
    /// Bytes after `start` known not to contain a newline (avoids rescanning big lines).
    scanned: usize,
    max: usize,
    /// Inside an over-long line: drop everything up to the next newline.
    discarding: bool,
}

impl Framer {
    /// A framer for messages of at most `max` bytes (line ending excluded).
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            scanned: 0,
            max,
            discarding: false,
        }
    }

    /// Space to read into; call [`Framer::filled`] with the count read.
    pub fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`Framer::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }

    /// Bytes held that do not yet form a complete line.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let from = self.start + self.scanned;
            match memchr::memchr(b'\n', &self.buf[from..self.end]) {
                Some(i) => {
                    let nl = from + i;
                    let line_start = self.start;
                    self.start = nl + 1;
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    let frame = self.line(line_start..nl + 1);
                    if let Frame::Line { msg, .. } = &frame
                        && msg.len() > self.max
                    {
                        let prefix =
                            self.buf[msg.start..msg.start + PREFIX_LEN.min(msg.len())].to_vec();
                        return Some(Frame::TooLong {
                            prefix,
                            seen: msg.len(),
                        });
                    }
                    return Some(frame);
                }
                None => {
                    self.scanned = self.end - self.start;
                    if self.discarding {
                        self.start = self.end;
                        self.scanned = 0;
                        return None;
                    }
                    // `max` counts the message without its ending; a trailing `\r` may
                    // still turn out to be part of `\r\n`.
                    let held = self.end - self.start;
                    let slack = usize::from(held > 0 && self.buf[self.end - 1] == b'\r');
                    if held > self.max + slack {
                        let prefix =
                            self.buf[self.start..self.start + held.min(PREFIX_LEN)].to_vec();
                        self.start = self.end;
                        self.scanned = 0;
                        self.discarding = true;
                        return Some(Frame::TooLong { prefix, seen: held });
                    }
                    return None;
                }
            }
        }
    }

    /// At end of input: the last line if it had no newline.
    pub fn finish(&mut self) -> Option<Frame> {
        if self.discarding || self.start == self.end {
            self.start = self.end;
            return None;
        }
        let s = self.start;
        self.start = self.end;
        self.scanned = 0;
        Some(self.line(s..self.end))
    }
}

impl Frame {
    /// The bytes received for this frame, if it has them.
    pub fn raw(&self) -> Option<&Range<usize>> {
        match self {
            Frame::Line { raw, .. } => Some(raw),
            Frame::TooLong { .. } => None,
        }
    }

    /// The same frame with its ranges moved down by `by`.
    pub fn shifted(&self, by: usize) -> Frame {
        match self {
            Frame::Line { msg, raw } => Frame::Line {
                msg: msg.start - by..msg.end - by,
                raw: raw.start - by..raw.end - by,
            },
            other => other.clone(),
        }
    }
}

impl Framer {
    /// The buffer that frame ranges index.
    pub fn data(&self) -> &[u8] {
        &self.buf
    }

    fn line(&self, raw: Range<usize>) -> Frame {
        let mut end = raw.end;
        if end > raw.start && self.buf[end - 1] == b'\n' {
            end -= 1;
        }
        if end > raw.start && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        Frame::Line {
            msg: raw.start..end,
            raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(f: &mut Framer, data: &[u8]) -> Vec<String> {
        let buf = f.spare(data.len());
        buf[..data.len()].copy_from_slice(data);
        f.filled(data.len());
        let mut out = Vec::new();
        while let Some(frame) = f.next_frame() {
            out.push(show(f.data(), frame));
        }
        out
    }

    fn show(data: &[u8], frame: Frame) -> String {
        match frame {
            Frame::Line { msg, raw } => {
                format!("{}|{}", String::from_utf8_lossy(&data[msg]), raw.len())
            }
            Frame::TooLong { prefix, seen } => format!("too-long {} {}", prefix.len(), seen),
        }
    }

    #[test]
    fn many_messages_in_one_read() {
        let mut f = Framer::new(100);
        assert_eq!(
            feed(&mut f, b"{\"a\":1}\n{\"b\":2}\r\n{\"c\""),
            ["{\"a\":1}|8", "{\"b\":2}|9"]
        );
        assert_eq!(feed(&mut f, b":3}\n"), ["{\"c\":3}|8"]);
    }

    #[test]
    fn one_message_split_over_many_reads() {
        let mut f = Framer::new(100);
        let msg = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\n";
        let mut got = Vec::new();
        for b in msg.chunks(1) {
            got.extend(feed(&mut f, b));
        }
        assert_eq!(
            got,
            [format!(
                "{}|{}",
                std::str::from_utf8(&msg[..msg.len() - 2]).unwrap(),
                msg.len()
            )]
        );
    }

    #[test]
    fn over_long_line_is_reported_once_and_the_stream_resyncs() {
        let mut f = Framer::new(10);
        assert_eq!(feed(&mut f, b"0123456789"), Vec::<String>::new());
        assert_eq!(feed(&mut f, b"ab"), ["too-long 12 12"]);
        assert_eq!(feed(&mut f, &[b'x'; 1000]), Vec::<String>::new());
        assert_eq!(feed(&mut f, b"yy\nok\n"), ["ok|3"]);
    }

    #[test]
    fn over_long_line_arriving_whole_in_one_read_is_refused() {
        let mut f = Framer::new(4);
        assert_eq!(feed(&mut f, b"abcdef\nok\n"), ["too-long 6 6", "ok|3"]);
    }

    #[test]
    fn max_length_excludes_the_line_ending() {
        let mut f = Framer::new(4);
        assert_eq!(feed(&mut f, b"abcd\r"), Vec::<String>::new());
        assert_eq!(feed(&mut f, b"\n"), ["abcd|6"]);
        assert_eq!(feed(&mut f, b"abcde"), ["too-long 5 5"]);
    }

    #[test]
    fn eof_mid_line_yields_the_partial_line() {
        let mut f = Framer::new(100);
        assert_eq!(feed(&mut f, b"{}\n{\"x\""), ["{}|3"]);
        let last = f.finish().unwrap();
        assert_eq!(show(f.data(), last), "{\"x\"|4");
        assert_eq!(f.finish(), None);
    }

    #[test]
    fn memory_stays_bounded_by_the_maximum() {
        let mut f = Framer::new(1 << 16);
        for _ in 0..1000 {
            feed(&mut f, &[b'z'; 8192]);
        }
        assert!(
            f.buf.len() <= (1 << 16) + 2 * 8192,
            "buffer grew to {}",
            f.buf.len()
        );
    }

    proptest::proptest! {
        #[test]
        fn framing_round_trips_under_any_split(
            lines in proptest::collection::vec("[a-z{}\":,0-9 ]{0,40}", 0..20),
            crlf in proptest::bool::ANY,
            cuts in proptest::collection::vec(1usize..17, 1..50),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let stream: String = lines.iter().map(|l| format!("{l}{end}")).collect();
            let mut f = Framer::new(1000);
            let mut got = Vec::new();
            let mut rest = stream.as_bytes();
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                i += 1;
                let buf = f.spare(n);
                buf[..n].copy_from_slice(&rest[..n]);
                f.filled(n);
                rest = &rest[n..];
                while let Some(Frame::Line { msg, .. }) = f.next_frame() {
                    got.push(String::from_utf8(f.data()[msg].to_vec()).unwrap());
                }
            }
            proptest::prop_assert_eq!(got, lines);
        }
    }
}
