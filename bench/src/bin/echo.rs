//! `mcp-bench-echo`: a minimal, fast MCP server over stdio for benchmarks.
//!
//! Reads newline-delimited JSON-RPC on stdin and answers on stdout:
//! - `initialize`: server info, `tools` capability, echoes the requested protocol version;
//! - `tools/list`: one tool, `echo`, taking `{"data": string}`;
//! - `tools/call`: a text content block whose text is `params.arguments.data`;
//! - `ping`: `{}`; other requests: JSON-RPC error -32601; notifications: ignored.
//!
//! The hot path does no per-message allocation: the line buffer is reused, `id` and
//! `data` are borrowed as raw JSON and copied into the output verbatim (so a 1 MiB
//! payload is scanned once by the parser and written once). Output is buffered and
//! flushed only when no further input is already buffered, so pipelined requests are
//! answered in batches while a lone request is answered at once.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::fd::AsFd;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default, rename = "protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Args<'a>>,
}

#[derive(Deserialize)]
struct Args<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

const DEFAULT_PROTOCOL: &str = "2025-06-18";

fn main() -> std::io::Result<()> {
    let stdin = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut input = BufReader::with_capacity(1 << 20, stdin);
    let mut out = BufWriter::with_capacity(1 << 16, stdout);
    let mut line = Vec::with_capacity(1 << 16);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.trim_ascii();
        if !text.is_empty() {
            handle(text, &mut out)?;
        }
        if input.buffer().is_empty() {
            out.flush()?;
        }
    }
    out.flush()
}

fn handle(text: &[u8], out: &mut impl Write) -> std::io::Result<()> {
    let msg: Msg = match serde_json::from_slice(text) {
        Ok(m) => m,
        Err(_) => {
            return out.write_all(
                b"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"parse error\"}}\n",
            );
        }
    };
    // Notifications and responses carry no id (or no method): nothing to answer.
    let (Some(id), Some(method)) = (msg.id, msg.method.as_deref()) else {
        return Ok(());
    };
    out.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":")?;
    out.write_all(id.get().as_bytes())?;
    match method {
        "tools/call" => {
            let params = msg.params.as_ref();
            let name = params.and_then(|p| p.name.as_deref());
            let data = params
                .and_then(|p| p.arguments.as_ref())
                .and_then(|a| a.data);
            match (name, data) {
                (Some("echo"), Some(data)) => {
                    out.write_all(b",\"result\":{\"content\":[{\"type\":\"text\",\"text\":")?;
                    let raw = data.get();
                    if raw.starts_with('"') {
                        out.write_all(raw.as_bytes())?;
                    } else {
                        // Not a string: echo its JSON text as a string.
                        serde_json::to_writer(&mut *out, raw)?;
                    }
                    out.write_all(b"}],\"isError\":false}}\n")
                }
                _ => out.write_all(
                    b",\"error\":{\"code\":-32602,\"message\":\"unknown tool or missing arguments.data\"}}\n",
                ),
            }
        }
        "initialize" => {
            let version = msg
                .params
                .as_ref()
                .and_then(|p| p.protocol_version.as_deref())
                .unwrap_or(DEFAULT_PROTOCOL);
            out.write_all(b",\"result\":{\"protocolVersion\":")?;
            serde_json::to_writer(&mut *out, version)?;
            out.write_all(
                concat!(
                    ",\"capabilities\":{\"tools\":{}},",
                    "\"serverInfo\":{\"name\":\"mcp-bench-echo\",\"version\":\"",
                    env!("CARGO_PKG_VERSION"),
                    "\"}}}\n"
                )
                .as_bytes(),
            )
        }
        "tools/list" => out.write_all(
            concat!(
                ",\"result\":{\"tools\":[{\"name\":\"echo\",",
                "\"description\":\"Returns arguments.data as text\",",
                "\"inputSchema\":{\"type\":\"object\",",
                "\"properties\":{\"data\":{\"type\":\"string\"}},\"required\":[\"data\"]}}]}}\n"
            )
            .as_bytes(),
        ),
        "ping" => out.write_all(b",\"result\":{}}\n"),
        _ => out.write_all(b",\"error\":{\"code\":-32601,\"message\":\"method not found\"}}\n"),
    }
}
