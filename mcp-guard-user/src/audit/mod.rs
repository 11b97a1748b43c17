//! The audit log: one JSON object per line, hash-chained, committed before decisions act.
//!
//! Records are appended under an exclusive `flock` (several shims may share one file), each
//! chained to the one before it in the file. The write, and in durable mode the
//! `fdatasync`, happen on the caller's thread. Concurrent committers share syncs: one that
//! finds its records already covered by another's `fdatasync` (in progress or done) does
//! not sync again (group commit).
//!
//! Only commits (decisions, which wait for their record) wait for `fdatasync`. Appended
//! observations (responses) are written at once and made durable by the next commit, or
//! within [`FLUSH_INTERVAL`] when no commit comes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use std::sync::mpsc::{self, RecvTimeoutError};
use tokio::sync::oneshot;

use crate::policy::hex;

pub mod forward;
mod record;
pub mod verify;
pub use record::{Context, Outcome, Record, SCHEMA_VERSION, canonical_sha256, random_id};


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
pub(crate) struct Tail {
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
pub(crate) struct TailRecord {
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

#[cfg(test)]
mod tests;
