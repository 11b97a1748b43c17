//! The audit log: one JSON object per line, hash-chained, committed before decisions act.
//!
//! One thread owns the file. Callers hand it batches of records; it takes everything that
//! is waiting, appends it under an exclusive `flock` (several shims may share one file),
//! chains each record to the one before it in the file, calls `fdatasync` once for the
//! whole group (in durable mode), then acknowledges every batch in the group.
//!
//! Only commits (decisions, which wait for their record) pay for `fdatasync`. Appended
//! observations (responses) are written at once and made durable by the next commit, or
//! within [`FLUSH_INTERVAL`] when no commit comes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use tokio::sync::oneshot;

use crate::policy::{hex, sha256_hex};

/// Version of the record format.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest time an appended record stays only in the page cache (durable mode).
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// How far back from the end of the file the previous record is looked for.
const TAIL_WINDOW: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open audit log {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write audit log {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("the audit writer has stopped")]
    Stopped,
}

/// When a record counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// After `fdatasync` returns (the default).
    Durable,
    /// After `write` returns: survives a crash of the shim, not of the machine.
    PageCache,
}

impl Durability {
    /// From `$MCP_GUARD_AUDIT_DURABILITY`, defaulting to durable.
    pub fn from_env() -> Result<Durability, String> {
        match std::env::var("MCP_GUARD_AUDIT_DURABILITY").as_deref() {
            Err(_) | Ok("") | Ok("durable") => Ok(Durability::Durable),
            Ok("page-cache") => Ok(Durability::PageCache),
            Ok(other) => Err(format!("MCP_GUARD_AUDIT_DURABILITY: unknown value `{other}` (durable or page-cache)")),
        }
    }
}

/// Who and what a session is about; the same on every decision record of the session.
#[derive(Debug, Serialize)]
pub struct Context {
    #[serde(skip)]
    pub session: Arc<str>,
    pub transport: &'static str,
    pub policy_sha256: String,
    pub mode: &'static str,
    pub principal: Box<RawValue>,
    pub agent_host: Box<RawValue>,
    /// Process ancestry above the shim, nearest first.
    pub chain: Box<RawValue>,
    pub server: Box<RawValue>,
}

/// The outcome of a request, on `response` records.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outcome {
    pub error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    pub bytes: usize,
    pub latency_us: u64,
}

/// One audit record. The writer fills in `seq`, `prev` and `hash`.
#[derive(Debug, Serialize)]
pub struct Record {
    pub v: u32,
    pub seq: u64,
    pub time: String,
    pub id: String,
    pub kind: &'static str,
    pub session: Arc<str>,
    /// Identity, on every record but responses (whose `links` names the request record that has it).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Arc<Context>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_sha256: Option<String>,
    /// The record id of the request a response answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Size of the message in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    /// What the peer says about itself (`clientInfo`, `protocolVersion`): a claim, not identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Value>,
    /// Free-form facts for session and notice records (exit status, counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    pub prev: String,
}

impl Record {
    /// A response record: linked to its request's record, which carries the identity.
    pub fn response(ctx: &Arc<Context>) -> Record {
        Record { ctx: None, ..Record::new("response", ctx) }
    }

    /// A new record of `kind` in the session `ctx`, stamped now.
    pub fn new(kind: &'static str, ctx: &Arc<Context>) -> Record {
        // Unique without a system call per record: the session id is random, the counter is not.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Record {
            v: SCHEMA_VERSION,
            seq: 0,
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            id: format!("{}-{:x}", ctx.session, NEXT.fetch_add(1, Ordering::Relaxed)),
            kind,
            session: ctx.session.clone(),
            ctx: Some(ctx.clone()),
            direction: None,
            decision: None,
            rule: None,
            reason: None,
            method: None,
            tool: None,
            request_id: None,
            args_sha256: None,
            links: None,
            outcome: None,
            bytes: None,
            claims: None,
            detail: None,
            prev: String::new(),
        }
    }
}

/// 128 random bits as hex.
pub fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // The system RNG does not fail on Linux once booted; an all-zero id would still be unique per seq.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex(&b)
}

struct Job {
    records: Vec<Record>,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

/// A handle to the audit writer thread.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::SyncSender<Job>,
    path: Arc<PathBuf>,
}

/// A commit on its way to disk.
pub struct Ticket {
    done: Option<oneshot::Receiver<Result<(), String>>>,
    path: Arc<PathBuf>,
}

impl Ticket {
    /// Waits until the records are committed (or failed to be).
    pub async fn wait(self) -> Result<(), Error> {
        let Some(done) = self.done else { return Ok(()) };
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Write { path: self.path.to_path_buf(), reason }),
            Err(_) => Err(Error::Stopped),
        }
    }
}

/// The writer thread; joined by [`Audit::close`].
pub struct WriterThread(std::thread::JoinHandle<()>);

impl Audit {
    /// Opens (creating with mode 0600, and its directory with 0700) the log at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<(Audit, WriterThread), Error> {
        let err = |source| Error::Open { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
        }
        let file =
            OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path).map_err(err)?;
        let (tx, rx) = mpsc::sync_channel(1024);
        let mut writer =
            Writer { file, path: path.to_path_buf(), durability, known_end: None, last: Tail::default(), dirty: false };
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer.run(rx))
            .map_err(err)?;
        Ok((Audit { tx, path: Arc::new(path.to_path_buf()) }, WriterThread(thread)))
    }

    /// Appends `records` and waits until they are committed.
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), Error> {
        self.submit(records).wait().await
    }

    /// Hands `records` to the writer now; the ticket tells when they are committed.
    pub fn submit(&self, records: Vec<Record>) -> Ticket {
        if records.is_empty() {
            return Ticket { done: None, path: self.path.clone() };
        }
        let (ack, done) = oneshot::channel();
        // Blocks only while 1024 batches are queued; the writer drains on its own thread.
        let done = match self.tx.send(Job { records, ack: Some(ack) }) {
            Ok(()) => Some(done),
            Err(_) => {
                let (ack, done) = oneshot::channel();
                let _ = ack.send(Err("the audit writer has stopped".to_string()));
                Some(done)
            }
        };
        Ticket { done, path: self.path.clone() }
    }

    /// Appends `records` without waiting; they are committed in order with the next group.
    pub fn append(&self, records: Vec<Record>) {
        if !records.is_empty() && self.tx.send(Job { records, ack: None }).is_err() {
            tracing::error!("audit writer stopped; records lost");
        }
    }

    /// Stops accepting records and waits for the writer to commit what it has.
    pub fn close(self, thread: WriterThread) {
        drop(self.tx);
        let _ = thread.0.join();
    }
}

#[derive(Default, Clone)]
struct Tail {
    seq: u64,
    hash: String,
}

struct Writer {
    file: File,
    path: PathBuf,
    durability: Durability,
    /// File length after our last commit; if it still matches, `last` is current.
    known_end: Option<u64>,
    last: Tail,
    /// Records written since the last `fdatasync`.
    dirty: bool,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::new();
        loop {
            let job = match rx.recv_timeout(FLUSH_INTERVAL) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_if_dirty();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            jobs.push(job);
            while let Ok(job) = rx.try_recv() {
                jobs.push(job);
            }
            let res = self.write_group(&mut jobs).map_err(|e| e.to_string());
            if let Err(e) = &res {
                tracing::error!(error = %e, path = %self.path.display(), "audit commit failed");
            }
            for job in jobs.drain(..) {
                if let Some(ack) = job.ack {
                    let _ = ack.send(res.clone());
                }
            }
        }
        self.sync_if_dirty();
    }

    fn sync_if_dirty(&mut self) {
        if self.dirty && self.durability == Durability::Durable {
            match self.file.sync_data() {
                Ok(()) => self.dirty = false,
                Err(e) => tracing::error!(error = %e, path = %self.path.display(), "audit fdatasync failed"),
            }
        }
    }

    fn write_group(&mut self, jobs: &mut [Job]) -> io::Result<()> {
        let lock = nix::fcntl::Flock::lock(self.file.try_clone()?, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io::Error::from(e))?;
        let start = self.file.metadata()?.len();
        let mut out = Vec::with_capacity(4096);
        if self.known_end != Some(start) {
            let (tail, torn) = read_tail(&mut self.file, start)?;
            self.last = tail;
            if torn {
                // A writer died mid-line. Close that line so it stays visible on its own, and
                // leave it out of the chain; verification reports it.
                out.push(b'\n');
            }
        }
        let mut last = self.last.clone();
        for job in jobs.iter_mut() {
            for rec in job.records.iter_mut() {
                last.seq += 1;
                rec.seq = last.seq;
                rec.prev = std::mem::take(&mut last.hash);
                let body = serde_json::to_vec(rec).map_err(io::Error::other)?;
                last.hash = chain_hash(&rec.prev, &body);
                out.extend_from_slice(&body[..body.len() - 1]);
                out.extend_from_slice(b",\"hash\":\"");
                out.extend_from_slice(last.hash.as_bytes());
                out.extend_from_slice(b"\"}\n");
            }
        }
        let must_sync = self.durability == Durability::Durable && jobs.iter().any(|j| j.ack.is_some());
        let res = self.file.write_all(&out).and_then(|()| if must_sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            // Leave no partial line behind; the records were not committed.
            let _ = self.file.set_len(start);
            self.known_end = None;
            drop(lock);
            return Err(e);
        }
        self.known_end = Some(start + out.len() as u64);
        self.last = last;
        self.dirty = !must_sync;
        drop(lock);
        Ok(())
    }
}

/// SHA-256 over the previous record's hash and this record's bytes (without `hash`).
pub fn chain_hash(prev: &str, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(body);
    hex(ctx.finish().as_ref())
}

#[derive(Deserialize)]
struct TailRecord {
    seq: u64,
    hash: String,
}

/// The last complete record of the file, and whether the file ends mid-line.
fn read_tail(file: &mut File, len: u64) -> io::Result<(Tail, bool)> {
    if len == 0 {
        return Ok((Tail::default(), false));
    }
    let from = len.saturating_sub(TAIL_WINDOW);
    let mut buf = Vec::with_capacity((len - from) as usize);
    file.seek(SeekFrom::Start(from))?;
    Read::by_ref(file).take(len - from).read_to_end(&mut buf)?;
    let torn = buf.last() != Some(&b'\n');
    let complete = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => &buf[..i],
        None => return Ok((Tail::default(), torn)),
    };
    let line = complete.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    let tail = serde_json::from_slice::<TailRecord>(line)
        .map(|r| Tail { seq: r.seq, hash: r.hash })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("last audit record unreadable: {e}")))?;
    Ok((tail, torn))
}

/// Where a standalone shim writes its audit log: `$XDG_STATE_HOME/mcp-guard/audit.jsonl`.
pub fn default_path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("mcp-guard/audit.jsonl"))
}

/// SHA-256 of a JSON value's canonical form (object keys sorted, no whitespace).
pub fn canonical_sha256(v: &serde_json::Value) -> String {
    // serde_json's default map is ordered by key, so this serialization is canonical.
    sha256_hex(&serde_json::to_vec(v).unwrap_or_default())
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

#[cfg(test)]
mod tests;
