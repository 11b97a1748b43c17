//! Reading a shim's audit log, to check that it records what it reads.

use std::collections::HashSet;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use super::procs;

/// How far back from the end the log is read when a shim is first seen: its
/// `session_start` record was written just before it read its first request.
const LOOK_BACK: u64 = 256 * 1024;

pub struct ShimLog {
    path: PathBuf,
    offset: u64,
    /// An incomplete last line, kept for the next read.
    partial: Vec<u8>,
    session: Option<String>,
    recorded: HashSet<String>,
}

impl ShimLog {
    /// The audit log shim `pid` writes: its `--audit`, else the default under its own
    /// `XDG_STATE_HOME` or `HOME`, resolved against its working directory.
    pub fn of(pid: u32) -> Option<ShimLog> {
        let argv = procs::cmdline(pid);
        let flag = argv
            .iter()
            .take_while(|a| *a != "--")
            .enumerate()
            .find_map(|(i, a)| {
                a.strip_prefix("--audit=")
                    .map(str::to_string)
                    .or_else(|| (a == "--audit").then(|| argv.get(i + 1).cloned()).flatten())
            });
        let path = match flag {
            Some(p) => PathBuf::from(p),
            None => {
                let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                let var = |name: &str| {
                    env.split(|&b| b == 0)
                        .find_map(|kv| kv.strip_prefix(format!("{name}=").as_bytes()))
                        .filter(|v| !v.is_empty())
                        .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
                };
                var("XDG_STATE_HOME")
                    .or_else(|| var("HOME").map(|h| h.join(".local/state")))?
                    .join("mcp-guard/audit.jsonl")
            }
        };
        let path = if path.is_relative() {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()?
                .join(path)
        } else {
            path
        };
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let offset = len.saturating_sub(LOOK_BACK);
        Some(ShimLog {
            path,
            offset,
            partial: Vec::new(),
            session: None,
            recorded: HashSet::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call: the shim's session, then the request
    /// ids it recorded.
    pub fn read_new(&mut self, shim_pid: u32) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Rotated: the new file starts the rest of the chain.
            self.offset = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = std::mem::take(&mut self.partial);
        let before = buf.len();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += (buf.len() - before) as u64;
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.partial = buf.split_off(complete);
        for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(rec) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let session = rec.get("session").and_then(|s| s.as_str());
            if self.session.is_none()
                && rec.get("kind").and_then(|k| k.as_str()) == Some("session_start")
                && rec.pointer("/detail/shim_pid").and_then(|p| p.as_u64())
                    == Some(u64::from(shim_pid))
            {
                self.session = session.map(str::to_string);
            }
            if self.session.as_deref().is_some_and(|s| Some(s) == session)
                && let Some(id) = rec.get("request_id").and_then(|i| i.as_str())
            {
                self.recorded.insert(id.to_string());
            }
        }
    }

    pub fn recorded(&self, id: &str) -> bool {
        self.recorded.contains(id)
    }
}
