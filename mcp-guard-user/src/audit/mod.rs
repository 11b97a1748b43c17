//! The audit log: one JSON object per line, hash-chained, signed, committed before
//! decisions act.
//!
//! Records are appended under an exclusive `flock` (several shims may share one file), each
//! chained to the one before it in the file ([`chain`]); the last record of every write
//! carries an Ed25519 signature over the chain head. The write, and in durable mode the
//! `fdatasync`, happen on the caller's thread. Concurrent committers in one process share
//! writes (one signature for all the records waiting) and all committers share syncs: one
//! that finds its records already covered by another's `fdatasync` (in progress or done)
//! does not sync again (group commit).
//!
//! Only commits (decisions, which wait for their record) wait for `fdatasync`. Appended
//! observations (responses) are written at once and made durable by the next commit, or
//! within [`FLUSH_INTERVAL`] when no commit comes.
//!
//! The writer also keeps `<log>.head` (the last signed chain head, so `verify` sees a cut
//! off end), seals a line torn by a crash with a `recovery` record, accounts for records
//! it could not write with a `gap` record, and rotates the file by size (see [`writer`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tokio::sync::oneshot;

mod alert;
pub mod chain;
pub mod checkpoint;
pub mod forward;
mod record;
pub mod verify;
mod writer;
pub use alert::Alert;
pub use chain::{chain_hash, link};
pub use record::{
    Context, Decision, Flow, Kind, Outcome, Record, SCHEMA_VERSION, Transport, canonical_sha256,
    random_id,
};

/// Longest time an appended record stays only in the page cache (durable mode).
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Size past which the log is rotated, by default.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

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
    #[error(transparent)]
    Key(#[from] chain::Error),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    #[error("the audit writer has stopped")]
    Stopped,
}

/// How the log is kept, beyond durability.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rotate the file once a write takes it past this size; 0: never.
    pub max_bytes: u64,
    /// The signing key (PKCS#8, created if missing); its public half goes next to it with
    /// the extension `.pub`. Default: `audit.key` in the log's directory.
    pub key: Option<PathBuf>,
    /// Where signed chain heads are copied, at most every [`checkpoint::INTERVAL`], to be
    /// kept away from the log (see [`checkpoint`]). None: no checkpoints.
    pub checkpoint: Option<PathBuf>,
    /// Which rotated files are kept; by default all.
    pub retention: Retention,
}

/// Which rotated files (`<log>.<first seq>-<last seq>`) are kept after a rotation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many; 0: no limit.
    pub keep_files: usize,
    /// None older than this (by modification time); None: no limit.
    pub keep_age: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_bytes: DEFAULT_MAX_BYTES,
            key: None,
            checkpoint: None,
            retention: Retention::default(),
        }
    }
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
    pub fn from_env() -> Result<Durability, UnknownDurability> {
        match std::env::var("MCP_GUARD_AUDIT_DURABILITY").as_deref() {
            Err(_) | Ok("") | Ok("durable") => Ok(Durability::Durable),
            Ok("page-cache") => Ok(Durability::PageCache),
            Ok(other) => Err(UnknownDurability(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("MCP_GUARD_AUDIT_DURABILITY: unknown value `{0}` (durable or page-cache)")]
pub struct UnknownDurability(String);

impl Durability {}

/// Told of what the log writes, for metrics: every batch written, and how long each
/// commit took to be on disk.
pub trait Tap: Send + Sync {
    fn written(&self, records: &[Record]);
    fn committed(&self, took: std::time::Duration);
}

/// A handle to the audit log. Records are written, and in durable mode synced, on the
/// caller's thread: a commit is one read's worth of decisions, so one `fdatasync` covers
/// them all (group commit), and no other thread has to be woken and waited for. A flusher
/// thread makes appended records durable within [`FLUSH_INTERVAL`].
#[derive(Clone)]
pub struct Audit {
    writer: Arc<Mutex<writer::Writer>>,
    /// Records waiting for the writer: whoever writes next writes them all in one go.
    queue: Arc<(Mutex<Queue>, Condvar)>,
    /// Durable mode: the file to `fdatasync` and the flusher's stop signal.
    sync: Option<(Arc<Syncer>, mpsc::SyncSender<()>)>,
    /// Generation of the last successful write (0: none yet). A commit waits until a sync
    /// has covered its own write's generation, not until nothing is unsynced: otherwise one
    /// thread's new record would cost the next waiter an `fdatasync` of its own.
    written: Arc<AtomicU64>,
    path: Arc<PathBuf>,
    /// The head file (and its checkpoint file), flushed when the log is closed.
    head_file: Arc<chain::HeadFile>,
    tap: Arc<OnceLock<Arc<dyn Tap>>>,
}

type Done = Arc<OnceLock<Result<u64, String>>>;

struct Queued {
    records: Vec<Record>,
    /// A commit: the write that carries it is signed.
    sign: bool,
    done: Done,
}

/// What waits for the writer, and whether a thread is writing now.
#[derive(Default)]
struct Queue {
    waiting: Vec<Queued>,
    writing: bool,
}

/// A commit on its way to disk.
pub struct Ticket {
    done: Option<oneshot::Receiver<Result<(), String>>>,
    path: Arc<PathBuf>,
}

impl Ticket {
    /// A ticket for nothing to commit.
    pub fn done() -> Ticket {
        Ticket {
            done: None,
            path: Arc::new(PathBuf::new()),
        }
    }

    fn ready(res: Result<(), String>, path: &Arc<PathBuf>) -> Ticket {
        let (ack, done) = oneshot::channel();
        let _ = ack.send(res);
        Ticket {
            done: Some(done),
            path: path.clone(),
        }
    }

    /// Waits until the records are committed (or failed to be).
    pub async fn wait(self) -> Result<(), Error> {
        let Some(done) = self.done else { return Ok(()) };
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Write {
                path: self.path.to_path_buf(),
                reason,
            }),
            Err(_) => Err(Error::Stopped),
        }
    }
}

/// The sync thread (durable mode); joined by [`Audit::close`].
pub struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Audit {
    /// Opens (creating with mode 0600, and its directory with 0700) the log at `path`, with
    /// the default [`Options`].
    pub fn open(path: &Path, durability: Durability) -> Result<(Audit, WriterThread), Error> {
        Audit::open_with(path, durability, &Options::default())
    }

    /// Opens the log at `path`: loads (or creates) the signing key, and seals a torn or
    /// unsigned end left by a crash before anything else is written.
    pub fn open_with(
        path: &Path,
        durability: Durability,
        opts: &Options,
    ) -> Result<(Audit, WriterThread), Error> {
        let err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let file = writer::open_log(path).map_err(err)?;
        let key = opts.key.clone().unwrap_or_else(|| dir.join("audit.key"));
        let signer = Arc::new(chain::Signer::load_or_create(&key)?);
        let checkpoint = opts
            .checkpoint
            .as_deref()
            .map(|c| checkpoint::Checkpoint::open(c, &signer))
            .transpose()?;
        let head_file = Arc::new(chain::HeadFile::open(path, checkpoint).map_err(err)?);
        let written = Arc::new(AtomicU64::new(0));
        let (sync, thread, head) = match durability {
            Durability::PageCache => (None, None, writer::HeadSink::Now(head_file.clone())),
            Durability::Durable => {
                let (stop, stopped) = mpsc::sync_channel(0);
                let pending = Arc::new(Mutex::new(None));
                let syncer = Arc::new(Syncer {
                    file: Mutex::new(file.try_clone().map_err(err)?),
                    path: path.to_path_buf(),
                    written: written.clone(),
                    state: Mutex::new(SyncState::default()),
                    synced: Condvar::new(),
                    head: pending.clone(),
                    head_file: head_file.clone(),
                });
                let flusher = syncer.clone();
                let thread = std::thread::Builder::new()
                    .name("audit-flush".into())
                    .spawn(move || flusher.run(stopped))
                    .map_err(err)?;
                (
                    Some((syncer, stop)),
                    Some(thread),
                    writer::HeadSink::AfterSync(pending),
                )
            }
        };
        let on_reopen = sync.as_ref().map(|(s, _)| s.clone());
        let mut writer = writer::Writer::new(
            path.to_path_buf(),
            file,
            signer,
            opts.max_bytes,
            opts.retention,
            head,
            on_reopen,
        );
        if let Err(e) = writer.tidy() {
            tracing::warn!(error = %e, path = %path.display(), "cannot tidy up after an interrupted rotation");
        }
        let audit = Audit {
            writer: Arc::new(Mutex::new(writer)),
            queue: Arc::new((Mutex::new(Queue::default()), Condvar::new())),
            sync,
            written,
            path: Arc::new(path.to_path_buf()),
            head_file,
            tap: Arc::default(),
        };
        let thread = WriterThread(thread);
        // A log a crash left torn is sealed now, not at the first decision.
        if let Err(reason) = audit
            .write(Vec::new(), true)
            .and_then(|generation| audit.sync(generation))
        {
            audit.close(thread);
            return Err(Error::Write {
                path: path.to_path_buf(),
                reason,
            });
        }
        Ok((audit, thread))
    }

    /// Tells `tap` of every write and commit from now on (once; later taps are ignored).
    pub fn set_tap(&self, tap: Arc<dyn Tap>) {
        let _ = self.tap.set(tap);
    }

    /// Writes and syncs `records` as a commit, timing it for the tap.
    fn commit_now(&self, records: Vec<Record>) -> Result<(), String> {
        let start = std::time::Instant::now();
        let res = self
            .write(records, true)
            .and_then(|generation| self.sync(generation));
        if res.is_ok()
            && let Some(t) = self.tap.get()
        {
            t.committed(start.elapsed());
        }
        res
    }

    /// Appends `records` and waits until they are committed.
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), Error> {
        self.submit(records).wait().await
    }

    /// Writes `records` now; the ticket tells when they are committed.
    /// [`Audit::commit`] for a thread outside any runtime: returns once the records are
    /// written, signed and (in durable mode) on disk.
    pub fn commit_blocking(&self, records: Vec<Record>) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        self.commit_now(records).map_err(|reason| Error::Write {
            path: self.path.to_path_buf(),
            reason,
        })
    }

    pub fn submit(&self, records: Vec<Record>) -> Ticket {
        if records.is_empty() {
            return Ticket {
                done: None,
                path: self.path.clone(),
            };
        }
        let res = self.commit_now(records);
        Ticket::ready(res, &self.path)
    }

    /// Writes `records` without waiting for `fdatasync`: the next commit, or the sync
    /// thread within [`FLUSH_INTERVAL`], makes them durable.
    pub fn append(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.write(records, false) {
            tracing::error!(error = %e, path = %self.path.display(), "audit records lost");
        }
    }

    /// Makes the write of generation `generation` durable (durable mode).
    fn sync(&self, generation: u64) -> Result<(), String> {
        match &self.sync {
            Some((syncer, _)) => syncer.sync_to(generation),
            None => Ok(()),
        }
    }

    /// Writes `records` together with whatever other threads queued meanwhile: one write,
    /// one signature for all of them. A thread that finds a write under way queues its
    /// records and sleeps until they are written (by that thread's next round, or by itself
    /// if it is first in line when the writer is free).
    fn write(&self, records: Vec<Record>, sign: bool) -> Result<u64, String> {
        let done: Done = Arc::default();
        let (queue, written) = &*self.queue;
        // A poisoned lock means a thread panicked holding it; the queue and the file state
        // (which is re-read) stay usable.
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        q.waiting.push(Queued {
            records,
            sign,
            done: done.clone(),
        });
        loop {
            if let Some(res) = done.get() {
                return res.clone();
            }
            if !q.writing {
                break;
            }
            q = written.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        q.writing = true;
        let queued = std::mem::take(&mut q.waiting);
        drop(q);
        let mut batch = Vec::with_capacity(queued.iter().map(|q| q.records.len()).sum());
        let sign = queued.iter().any(|q| q.sign);
        let mut waiting = Vec::with_capacity(queued.len());
        for q in queued {
            batch.extend(q.records);
            waiting.push(q.done);
        }
        let res = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(&mut batch, sign)
            .map(|()| self.written.fetch_add(1, Ordering::AcqRel) + 1)
            .map_err(|e| e.to_string());
        if res.is_ok()
            && let Some(t) = self.tap.get()
        {
            t.written(&batch);
        }
        for d in waiting {
            let _ = d.set(res.clone());
        }
        queue.lock().unwrap_or_else(|p| p.into_inner()).writing = false;
        written.notify_all();
        if let Err(e) = &res {
            tracing::error!(error = %e, path = %self.path.display(), "audit write failed");
        }
        res
    }

    /// Waits for what was written to be synced, and stops the sync thread.
    pub fn close(self, thread: WriterThread) {
        drop(self.sync);
        if let Some(t) = thread.0 {
            let _ = t.join();
        }
        // The last head is checkpointed whatever the interval: what was written is seen.
        self.head_file.flush();
    }
}

#[derive(Default)]
struct SyncState {
    synced: u64,
    syncing: bool,
}

/// Runs `fdatasync` when something was written since the last one, then records the head.
pub(crate) struct Syncer {
    /// The log file; replaced when the log is rotated.
    file: Mutex<File>,
    path: PathBuf,
    written: Arc<AtomicU64>,
    /// The generation the last `fdatasync` covered, and whether one is under way. A commit
    /// whose write another thread's sync covers sleeps until it is done; all waiters are
    /// woken together (no convoy through a lock).
    state: Mutex<SyncState>,
    synced: Condvar,
    /// The chain head of this process's last write, for the head file once it is on disk.
    head: Arc<Mutex<Option<chain::Head>>>,
    head_file: Arc<chain::HeadFile>,
}

impl Syncer {
    /// The flusher: syncs appended records every [`FLUSH_INTERVAL`] until told to stop.
    fn run(&self, stop: mpsc::Receiver<()>) {
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(FLUSH_INTERVAL) {
            let _ = self.sync_to(self.written.load(Ordering::Acquire));
            // A head held back by the checkpoint interval goes out once due, even when
            // no more records come.
            self.head_file.tick();
        }
        let _ = self.sync_to(self.written.load(Ordering::Acquire));
    }

    /// Follows the log to its new file (after a rotation, which synced the old one).
    fn replace(&self, file: File) {
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = file;
    }

    /// Syncs until the write of generation `generation` is on disk (one `fdatasync` covers
    /// everything written before it starts).
    fn sync_to(&self, generation: u64) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.synced >= generation {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.syncing = true;
        drop(st);
        // Both taken before the sync, so neither names a write the sync does not cover.
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner()).take();
        let upto = self.written.load(Ordering::Acquire);
        let res = self
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_data();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.syncing = false;
        if res.is_ok() {
            st.synced = st.synced.max(upto);
        }
        drop(st);
        self.synced.notify_all();
        match res {
            Ok(()) => {
                if let Some(h) = head
                    && let Err(e) = self.head_file.advance(&h)
                {
                    tracing::warn!(error = %e, path = %self.path.display(), "cannot update the audit head file");
                }
                Ok(())
            }
            Err(e) => {
                if let Some(h) = head {
                    self.head
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(h);
                }
                tracing::error!(error = %e, path = %self.path.display(), "audit fdatasync failed");
                Err(e.to_string())
            }
        }
    }
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
pub(crate) mod tests;
