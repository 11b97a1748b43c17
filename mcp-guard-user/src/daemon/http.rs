//! Messages in HTTP/1.1 byte streams, as the observer captures them from local
//! Streamable HTTP connections: request bodies, JSON response bodies, and the events of
//! `text/event-stream` responses, with `Content-Length` or chunked transfer coding.
//!
//! One [`HttpStream`] per direction of a connection; bytes go in as they were captured,
//! JSON-RPC message bodies come out.

/// A head larger than this is not HTTP the observer follows.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug)]
enum Body {
    /// Waiting for a head.
    Head,
    /// `remaining` bytes of a body with a length.
    Length {
        remaining: usize,
    },
    /// Chunked: the size line of the next chunk, or `left` bytes of the current one.
    ChunkSize,
    ChunkData {
        left: usize,
    },
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailers up to an empty line.
    Trailers,
    /// Until the connection closes (a response without length or chunking).
    UntilClose,
}

#[derive(Debug)]
pub struct HttpStream {
    response: bool,
    buf: Vec<u8>,
    body: Body,
    /// The current message is an event stream: its body is parsed as SSE.
    sse: bool,
    /// The body of the current message so far (JSON), or the SSE lines not yet complete.
    content: Vec<u8>,
    /// `data:` lines of the SSE event being read.
    event: Vec<u8>,
    max: usize,
    /// Not HTTP after all, or a message beyond `max`: nothing more is read.
    pub broken: Option<String>,
}

impl HttpStream {
    pub fn new(response: bool, max: usize) -> HttpStream {
        HttpStream {
            response,
            buf: Vec::new(),
            body: Body::Head,
            sse: false,
            content: Vec::new(),
            event: Vec::new(),
            max,
            broken: None,
        }
    }

    /// Feeds captured bytes; complete JSON bodies (and SSE event data) are pushed to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Vec<u8>>) {
        if self.broken.is_some() {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            let used = match self.body {
                Body::Head => match self.head(rest) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(why) => {
                        self.broken = Some(why);
                        return;
                    }
                },
                Body::Length { remaining } => {
                    let n = remaining.min(rest.len());
                    let piece = rest[..n].to_vec();
                    self.body_bytes(&piece, out);
                    if n == remaining {
                        self.end_message(out);
                    } else {
                        self.body = Body::Length {
                            remaining: remaining - n,
                        };
                    }
                    if n == 0 {
                        break;
                    }
                    n
                }
                Body::UntilClose => {
                    let piece = rest.to_vec();
                    self.body_bytes(&piece, out);
                    if piece.is_empty() {
                        break;
                    }
                    piece.len()
                }
                Body::ChunkSize => {
                    let Some(nl) = memchr::memchr(b'\n', rest) else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&rest[..nl]);
                    let size = line
                        .trim()
                        .split(';')
                        .next()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok());
                    match size {
                        Some(0) => self.body = Body::Trailers,
                        Some(n) => self.body = Body::ChunkData { left: n },
                        None => {
                            self.broken = Some("bad chunk size".into());
                            return;
                        }
                    }
                    nl + 1
                }
                Body::ChunkData { left } => {
                    let n = left.min(rest.len());
                    if n == 0 {
                        break;
                    }
                    let piece = rest[..n].to_vec();
                    self.body_bytes(&piece, out);
                    self.body = if n == left {
                        Body::ChunkEnd
                    } else {
                        Body::ChunkData { left: left - n }
                    };
                    n
                }
                Body::ChunkEnd => {
                    let Some(nl) = memchr::memchr(b'\n', rest) else {
                        break;
                    };
                    self.body = Body::ChunkSize;
                    nl + 1
                }
                Body::Trailers => {
                    let Some(nl) = memchr::memchr(b'\n', rest) else {
                        break;
                    };
                    if rest[..nl].iter().all(|b| b.is_ascii_whitespace()) {
                        self.end_message(out);
                    }
                    nl + 1
                }
            };
            at += used;
            if self.broken.is_some() {
                return;
            }
        }
        buf.drain(..at);
        self.buf = buf;
    }

    /// Parses a head at the start of `rest`; returns the bytes it took.
    fn head(&mut self, rest: &[u8]) -> Result<Option<usize>, String> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let (n, headers, status) = if self.response {
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(rest) {
                Ok(httparse::Status::Complete(n)) => (n, r.headers.to_vec(), r.code.unwrap_or(0)),
                Ok(httparse::Status::Partial) => return self.partial(rest),
                Err(e) => return Err(format!("not an HTTP/1.1 response: {e}")),
            }
        } else {
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(rest) {
                Ok(httparse::Status::Complete(n)) => (n, r.headers.to_vec(), 0),
                Ok(httparse::Status::Partial) => return self.partial(rest),
                Err(e) => return Err(format!("not an HTTP/1.1 request: {e}")),
            }
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
        self.sse = header("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
        self.content.clear();
        self.event.clear();
        let no_body = self.response && (status / 100 == 1 || status == 204 || status == 304);
        self.body = if no_body {
            Body::Head
        } else if chunked {
            Body::ChunkSize
        } else if let Some(len) = length {
            if len == 0 {
                Body::Head
            } else {
                Body::Length { remaining: len }
            }
        } else if self.response {
            Body::UntilClose
        } else {
            Body::Head
        };
        Ok(Some(n))
    }

    fn partial(&self, rest: &[u8]) -> Result<Option<usize>, String> {
        if rest.len() > MAX_HEAD {
            Err("HTTP head too long".into())
        } else {
            Ok(None)
        }
    }

    fn body_bytes(&mut self, piece: &[u8], out: &mut Vec<Vec<u8>>) {
        self.content.extend_from_slice(piece);
        if self.sse {
            self.sse_lines(out);
        } else if self.content.len() > self.max {
            self.broken = Some(format!("a message longer than {} bytes", self.max));
        }
    }

    /// Complete SSE lines of `content`: `data:` lines gather into the event, an empty line
    /// ends it.
    fn sse_lines(&mut self, out: &mut Vec<Vec<u8>>) {
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &self.content[start..]) {
            let mut line = &self.content[start..start + i];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if !self.event.is_empty() {
                    out.push(std::mem::take(&mut self.event));
                }
            } else if let Some(d) = line.strip_prefix(b"data:") {
                if !self.event.is_empty() {
                    self.event.push(b'\n');
                }
                self.event
                    .extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
            }
            start += i + 1;
        }
        self.content.drain(..start);
        if self.event.len() > self.max || self.content.len() > self.max {
            self.broken = Some(format!("an event longer than {} bytes", self.max));
        }
    }

    fn end_message(&mut self, out: &mut Vec<Vec<u8>>) {
        if self.sse {
            // A last event without its blank line.
            if !self.event.is_empty() {
                out.push(std::mem::take(&mut self.event));
            }
        } else if !self.content.iter().all(|b| b.is_ascii_whitespace()) {
            out.push(std::mem::take(&mut self.content));
        }
        self.content.clear();
        self.body = Body::Head;
    }
}

/// Whether `bytes` (the first of a connection's request direction) start an HTTP request.
pub fn looks_like_request(bytes: &[u8]) -> bool {
    ["POST ", "GET ", "DELETE ", "PUT ", "OPTIONS ", "HEAD "]
        .iter()
        .any(|m| bytes.starts_with(m.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(response: bool, pieces: &[&[u8]]) -> Vec<String> {
        let mut s = HttpStream::new(response, 1 << 20);
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        assert!(s.broken.is_none(), "{:?}", s.broken);
        out.into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect()
    }

    const REQ: &[u8] = b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 42\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\nPOST /mcp HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}";

    #[test]
    fn requests_with_length_in_any_split() {
        let whole = feed(false, &[REQ]);
        assert_eq!(
            whole,
            [
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\n",
                "{}"
            ]
        );
        for cut in 1..REQ.len() {
            assert_eq!(
                feed(false, &[&REQ[..cut], &REQ[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn chunked_sse_response_yields_each_event() {
        let body = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\nid: 2\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"method\":\"x\"}\n\n";
        let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.as_bytes().chunks(7) {
            raw.extend(format!("{:x}\r\n", piece.len()).as_bytes());
            raw.extend(piece);
            raw.extend(b"\r\n");
        }
        raw.extend(b"0\r\n\r\n");
        let got = feed(true, &[&raw]);
        assert_eq!(
            got,
            [
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
                "{\"jsonrpc\":\"2.0\",\n\"method\":\"x\"}"
            ]
        );
    }

    #[test]
    fn json_response_and_accepted_without_body() {
        let raw = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]";
        assert_eq!(feed(true, &[raw]), ["[]"]);
    }

    #[test]
    fn not_http_is_reported() {
        let mut s = HttpStream::new(false, 1024);
        s.push(b"\x16\x03\x01 tls hello\r\n\r\n", &mut Vec::new());
        assert!(s.broken.is_some());
    }

    proptest! {
        #[test]
        fn sse_any_split(cuts in proptest::collection::vec(0usize..200, 0..8)) {
            let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {\"a\":1}\r\n\r\ndata: {\"b\":2}\n\n";
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % raw.len()).collect();
            points.sort();
            let mut pieces = Vec::new();
            let mut last = 0;
            for p in points { pieces.push(&raw[last..p]); last = p; }
            pieces.push(&raw[last..]);
            prop_assert_eq!(feed(true, &pieces), vec!["{\"a\":1}".to_string(), "{\"b\":2}".to_string()]);
        }
    }
}
