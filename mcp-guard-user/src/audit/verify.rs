//! `mcp-guard audit verify`: proves a log (or a sequence of rotated logs) was not edited.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{Tail, TailRecord, chain_hash};

/// Verifies `files` as one chain; prints `FILE: OK, N records` or the first bad record.
pub fn run(_key: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<i32> {
    let mut failed = false;
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        match verify_chain(&text) {
            Ok(n) => println!("{}: OK, {n} records", f.display()),
            Err(e) => {
                failed = true;
                println!("{}: {e}", f.display());
            }
        }
    }
    Ok(i32::from(failed))
}

/// Checks the hash chain of a log's text: every line's `hash` must follow from the
/// previous line's and its own bytes, and `seq` must count up by one. Returns the count.
pub fn verify_chain(text: &str) -> Result<u64, String> {
    let mut prev = Tail::default();
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}", i + 1);
        let rec: TailRecord = serde_json::from_str(line).map_err(|e| at(format!("unreadable record: {e}")))?;
        let suffix = format!(",\"hash\":\"{}\"}}", rec.hash);
        let body = line.strip_suffix(&suffix).ok_or_else(|| at("`hash` is not the last field".into()))?;
        let body = format!("{body}}}");
        let prev_field = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("prev").and_then(|p| p.as_str()).map(str::to_string))
            .ok_or_else(|| at("no `prev`".into()))?;
        if prev_field != prev.hash || (n > 0 && rec.seq != prev.seq + 1) {
            return Err(at(format!("seq {} does not follow seq {}", rec.seq, prev.seq)));
        }
        if chain_hash(&prev.hash, body.as_bytes()) != rec.hash {
            return Err(at(format!("seq {}: content does not match its hash", rec.seq)));
        }
        prev = Tail { seq: rec.seq, hash: rec.hash };
        n += 1;
    }
    Ok(n)
}

