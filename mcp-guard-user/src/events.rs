//! `mcp-guard events`: what the guard decides, as it happens, one line per event.
//!
//! Reads an audit log (the daemon's, a shim's) and prints its records, compact or as
//! JSON, filtered; `-f` follows the log as it grows and across rotation. Responses and
//! seals are left out unless asked for (`--kind response`, `--kind seal`): a request's line
//! says what was decided, and a seal only signs the chain.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

/// How often a followed log is looked at for new records.
pub const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per event: time, kind or decision, user, host, server, method, tool, rule.
    Compact,
    /// The record as written in the log.
    Json,
}

/// `mcp-guard events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The audit log [default: the daemon's (`audit` in /etc/mcp-guard/config.toml) when it
    /// can be read, else this user's shim log].
    pub file: Option<PathBuf>,
    /// Keep printing new records as they are written, after the last `--lines` records
    /// already there.
    #[arg(short, long)]
    pub follow: bool,
    /// With `-f`: how many of the records already in the log to show first.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub lines: usize,
    #[arg(short, long, value_enum, default_value_t = Output::Compact)]
    pub output: Output,
    /// Only records with this decision (allow, deny).
    #[arg(long)]
    pub decision: Option<String>,
    /// Only records of this server (its name).
    #[arg(long)]
    pub server: Option<String>,
    /// Only records of this user (name or uid).
    #[arg(long)]
    pub user: Option<String>,
    /// Only records of this kind (request, alert, session_start, gap, response, ...).
    #[arg(long)]
    pub kind: Option<String>,
}

impl Args {
    fn wants(&self, r: &Value) -> bool {
        let kind = text(r, &["kind"]);
        let kind_ok = match &self.kind {
            Some(k) => kind == *k,
            None => kind != "response" && kind != "seal",
        };
        let eq = |want: &Option<String>, got: &[String]| {
            want.as_ref().is_none_or(|w| got.iter().any(|g| g == w))
        };
        kind_ok
            && eq(&self.decision, &[text(r, &["decision"])])
            && eq(&self.server, &[server(r)])
            && eq(
                &self.user,
                &[
                    text(r, &["principal", "user"]),
                    text(r, &["principal", "uid"]),
                ],
            )
    }
}

/// A field as text (strings bare, numbers and booleans as JSON); empty when absent.
fn text(r: &Value, path: &[&str]) -> String {
    let mut v = r;
    for key in path {
        match v.get(key) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn server(r: &Value) -> String {
    let name = text(r, &["server", "name"]);
    if name.is_empty() {
        text(r, &["detail", "server"])
    } else {
        name
    }
}

/// One compact line for record `r`; `colour` wraps the verdict in ANSI colours.
pub fn compact(r: &Value, colour: bool) -> String {
    let kind = text(r, &["kind"]);
    let decision = text(r, &["decision"]);
    let alert = text(r, &["detail", "alert"]);
    let (verdict, paint) = match (kind.as_str(), decision.as_str()) {
        ("alert", _) => (format!("ALERT {alert}"), "1;33"),
        (_, "deny") => ("deny".to_string(), "1;31"),
        (_, "allow") => ("allow".to_string(), "32"),
        (_, "ask") => ("ask".to_string(), "1;35"),
        _ => (kind.clone(), "2"),
    };
    let verdict = if colour {
        format!("\x1b[{paint}m{verdict}\x1b[0m")
    } else {
        verdict
    };
    let mut line = format!("{} {verdict}", text(r, &["time"]));
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            line.push_str(&format!(" {name}={value}"));
        }
    };
    let user = text(r, &["principal", "user"]);
    field("user", user);
    field("host", text(r, &["agent_host", "comm"]));
    field("server", server(r));
    field("method", text(r, &["method"]));
    field("tool", text(r, &["tool"]));
    field("rule", text(r, &["rule"]));
    if kind == "alert" {
        field("pid", text(r, &["detail", "pid"]));
        field("action", text(r, &["detail", "action"]));
        field("killed", text(r, &["detail", "killed"]));
    }
    line
}

/// The log `events` reads when none is named.
fn default_log() -> anyhow::Result<PathBuf> {
    let daemon = crate::daemon::config::Config::load(None)
        .map(|c| c.audit)
        .unwrap_or_else(|_| crate::daemon::config::Config::default().audit);
    if File::open(&daemon).is_ok() {
        return Ok(daemon);
    }
    crate::audit::default_path()
        .filter(|p| p.exists())
        .with_context(|| {
            format!(
                "no audit log to read: {} cannot be read (run as root for the daemon's) and this user has no shim log; name one",
                daemon.display()
            )
        })
}

/// Prints the records of the log, following it with `-f`. Returns when the log ends
/// (without `-f`) or the output is closed.
pub fn run(args: &Args) -> anyhow::Result<i32> {
    let path = match &args.file {
        Some(p) => p.clone(),
        None => default_log()?,
    };
    let colour = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = io::stdout().lock();
    let mut follower = Follower::open(&path)?;
    // Following: what is there already is cut to its last `--lines` records.
    let mut backlog = args.follow.then(std::collections::VecDeque::new);
    loop {
        let mut printed = false;
        while let Some(line) = follower.next_line()? {
            let Ok(record) = serde_json::from_str::<Value>(&line) else {
                // A torn last line of a crashed writer: `audit verify` reports it.
                continue;
            };
            if !args.wants(&record) {
                continue;
            }
            let shown = match args.output {
                Output::Compact => compact(&record, colour),
                Output::Json => line.trim_end().to_string(),
            };
            if let Some(b) = backlog.as_mut() {
                b.push_back(shown);
                if b.len() > args.lines {
                    b.pop_front();
                }
                continue;
            }
            if writeln!(out, "{shown}").is_err() {
                return Ok(0);
            }
            printed = true;
        }
        for shown in backlog.take().into_iter().flatten() {
            if writeln!(out, "{shown}").is_err() {
                return Ok(0);
            }
            printed = true;
        }
        if printed && out.flush().is_err() {
            return Ok(0);
        }
        if !args.follow {
            return Ok(0);
        }
        std::thread::sleep(POLL);
        follower.check_rotation()?;
    }
}

/// Reads whole lines from a log, from where it was opened, and reopens it when it was
/// rotated (another file at the path) or truncated.
struct Follower {
    path: PathBuf,
    reader: BufReader<File>,
    inode: u64,
    partial: String,
}

impl Follower {
    fn open(path: &Path) -> anyhow::Result<Follower> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let inode = file.metadata()?.ino();
        Ok(Follower {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            inode,
            partial: String::new(),
        })
    }

    /// The next whole line, or None until more is written.
    fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        let n = self.reader.read_line(&mut self.partial)?;
        if n == 0 || !self.partial.ends_with('\n') {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut self.partial)))
    }

    fn check_rotation(&mut self) -> anyhow::Result<()> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Ok(()); // between the rename and the new file
        };
        let position = self.reader.stream_position()?;
        if meta.ino() != self.inode || meta.len() < position {
            // A new file: read it from its start.
            *self = Follower::open(&self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: serde_json::Value) -> Value {
        v
    }

    #[test]
    fn a_denied_request_is_one_line_with_who_what_and_why() {
        let r = rec(serde_json::json!({
            "time": "2026-12-05T10:00:00Z", "kind": "request", "decision": "deny",
            "rule": "no-writes", "method": "tools/call", "tool": "write_file",
            "principal": {"user": "alice", "uid": 1000}, "agent_host": {"comm": "claude"},
            "server": {"name": "filesystem"}
        }));
        assert_eq!(
            compact(&r, false),
            "2026-12-05T10:00:00Z deny user=alice host=claude server=filesystem method=tools/call tool=write_file rule=no-writes"
        );
        assert!(compact(&r, true).contains("\x1b[1;31mdeny\x1b[0m"));
    }

    #[test]
    fn filters_match_decision_server_user_and_kind() {
        let r = rec(serde_json::json!({
            "kind": "request", "decision": "deny", "principal": {"user": "alice", "uid": 1000},
            "server": {"name": "fs"}
        }));
        let args = |decision: Option<&str>,
                    server: Option<&str>,
                    user: Option<&str>,
                    kind: Option<&str>| Args {
            file: None,
            follow: false,
            lines: 10,
            output: Output::Compact,
            decision: decision.map(Into::into),
            server: server.map(Into::into),
            user: user.map(Into::into),
            kind: kind.map(Into::into),
        };
        assert!(args(None, None, None, None).wants(&r));
        assert!(args(Some("deny"), Some("fs"), Some("1000"), Some("request")).wants(&r));
        assert!(!args(Some("allow"), None, None, None).wants(&r));
        assert!(!args(None, Some("git"), None, None).wants(&r));
        assert!(!args(None, None, Some("bob"), None).wants(&r));
        assert!(!args(None, None, None, Some("alert")).wants(&r));
        let response = rec(serde_json::json!({"kind": "response"}));
        assert!(
            !args(None, None, None, None).wants(&response),
            "responses only when asked"
        );
        assert!(args(None, None, None, Some("response")).wants(&response));
    }
}
