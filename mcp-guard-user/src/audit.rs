//! The audit log: one JSON object per line, hash-chained, committed before decisions act.
//!
//! Records are appended under an exclusive `flock` (several shims may share one file), each
//! chained to the one before it in the file. The write happens on the caller's thread; in
//! durable mode a commit then waits for the sync thread, which runs one `fdatasync` for all
//! the commits waiting at that moment (group commit) and acknowledges them together.
//!
//! Only commits (decisions, which wait for their record) wait for `fdatasync`. Appended
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

/// A handle to the audit log. Records are written, and in durable mode synced, on the
/// caller's thread: a commit is one read's worth of decisions, so one `fdatasync` covers
/// them all (group commit), and no other thread has to be woken and waited for. A flusher
/// thread makes appended records durable within [`FLUSH_INTERVAL`].
#[derive(Clone)]
pub struct Audit {
    writer: Arc<std::sync::Mutex<Writer>>,
    /// Durable mode: the file to `fdatasync` and the flusher's stop signal.
    sync: Option<(Arc<Syncer>, mpsc::SyncSender<()>)>,
    dirty: Arc<std::sync::atomic::AtomicBool>,
    path: Arc<PathBuf>,
}

/// A commit on its way to disk.
pub struct Ticket {
    done: Option<oneshot::Receiver<Result<(), String>>>,
    path: Arc<PathBuf>,
}

impl Ticket {
    fn ready(res: Result<(), String>, path: &Arc<PathBuf>) -> Ticket {
        let (ack, done) = oneshot::channel();
        let _ = ack.send(res);
        Ticket { done: Some(done), path: path.clone() }
    }

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

/// The sync thread (durable mode); joined by [`Audit::close`].
pub struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Audit {
    /// Opens (creating with mode 0600, and its directory with 0700) the log at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<(Audit, WriterThread), Error> {
        let err = |source| Error::Open { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
        }
        let file =
            OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path).map_err(err)?;
        let dirty = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sync, thread) = match durability {
            Durability::PageCache => (None, None),
            Durability::Durable => {
                let (stop, stopped) = mpsc::sync_channel(0);
                let syncer =
                    Arc::new(Syncer {
                    file: file.try_clone().map_err(err)?,
                    path: path.to_path_buf(),
                    dirty: dirty.clone(),
                    syncing: std::sync::Mutex::new(()),
                });
                let flusher = syncer.clone();
                let thread = std::thread::Builder::new()
                    .name("audit-flush".into())
                    .spawn(move || flusher.run(stopped))
                    .map_err(err)?;
                (Some((syncer, stop)), Some(thread))
            }
        };
        let writer = Writer { file, known_end: None, last: Tail::default() };
        Ok((
            Audit { writer: Arc::new(std::sync::Mutex::new(writer)), sync, dirty, path: Arc::new(path.to_path_buf()) },
            WriterThread(thread),
        ))
    }

    /// Appends `records` and waits until they are committed.
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), Error> {
        self.submit(records).wait().await
    }

    /// Writes `records` now; the ticket tells when they are committed.
    pub fn submit(&self, records: Vec<Record>) -> Ticket {
        if records.is_empty() {
            return Ticket { done: None, path: self.path.clone() };
        }
        let res = self.write(records).and_then(|()| match &self.sync {
            Some((syncer, _)) => syncer.sync(),
            None => Ok(()),
        });
        Ticket::ready(res, &self.path)
    }

    /// Writes `records` without waiting for `fdatasync`: the next commit, or the sync
    /// thread within [`FLUSH_INTERVAL`], makes them durable.
    pub fn append(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.write(records) {
            tracing::error!(error = %e, path = %self.path.display(), "audit records lost");
        }
    }

    fn write(&self, mut records: Vec<Record>) -> Result<(), String> {
        // A poisoned lock means a writer panicked mid-write; the file state is re-read.
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let res = w.write(&mut records).map_err(|e| e.to_string());
        drop(w);
        match &res {
            Ok(()) => self.dirty.store(true, std::sync::atomic::Ordering::Release),
            Err(e) => tracing::error!(error = %e, path = %self.path.display(), "audit write failed"),
        }
        res
    }

    /// Waits for what was written to be synced, and stops the sync thread.
    pub fn close(self, thread: WriterThread) {
        drop(self.sync);
        if let Some(t) = thread.0 {
            let _ = t.join();
        }
    }
}

#[derive(Default, Clone)]
struct Tail {
    seq: u64,
    hash: String,
}

struct Writer {
    file: File,
    /// File length after our last write; if it still matches, `last` is current.
    known_end: Option<u64>,
    last: Tail,
}

/// Runs `fdatasync` when something was written since the last one.
struct Syncer {
    file: File,
    path: PathBuf,
    dirty: Arc<std::sync::atomic::AtomicBool>,
    /// Held across check-and-sync, so a commit that finds nothing dirty because the flusher
    /// took it waits for the flusher's `fdatasync` to finish.
    syncing: std::sync::Mutex<()>,
}

impl Syncer {
    /// The flusher: syncs appended records every [`FLUSH_INTERVAL`] until told to stop.
    fn run(&self, stop: mpsc::Receiver<()>) {
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(FLUSH_INTERVAL) {
            let _ = self.sync();
        }
        let _ = self.sync();
    }

    /// Syncs everything written so far (one `fdatasync` covers the whole file).
    fn sync(&self) -> Result<(), String> {
        let _held = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| {
            self.dirty.store(true, std::sync::atomic::Ordering::Release);
            tracing::error!(error = %e, path = %self.path.display(), "audit fdatasync failed");
            e.to_string()
        })
    }
}

impl Writer {
    fn write(&mut self, records: &mut [Record]) -> io::Result<()> {
        let lock = nix::fcntl::Flock::lock(self.file.try_clone()?, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io::Error::from(e))?;
        let start = self.file.metadata()?.len();
        let mut out = Vec::with_capacity(1024 * records.len());
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
        for rec in records.iter_mut() {
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
        if let Err(e) = self.file.write_all(&out) {
            // Leave no partial line behind; the records were not written.
            let _ = self.file.set_len(start);
            self.known_end = None;
            drop(lock);
            return Err(e);
        }
        self.known_end = Some(start + out.len() as u64);
        self.last = last;
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
