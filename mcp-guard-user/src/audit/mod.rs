//! The audit log: one JSON object per line, hash-chained, signed, committed before
//! decisions act.
//!
//! Records are appended under an exclusive `flock` (several shims may share one file), each
//! chained to the one before it in the file ([`chain`]). The write, and in durable mode the
//! `fdatasync`, happen on the caller's thread, except for commits of many records, which a
//! committer thread writes while the caller goes on (in the order of the calls, a caller's
//! later small commits queued behind them). Concurrent committers in one process share
//! writes and all committers share syncs: one that finds its records already covered by
//! another's `fdatasync` (in progress or done) does not sync again (group commit).
//!
//! Signing is off that path: a sealer thread appends a signed `seal` record over the chain
//! head once the log has been quiet for [`SEAL_IDLE`], and at the latest [`SEAL_WITHIN`]
//! after the first record it covers (a log still busy when first looked at is sealed at
//! the bound, so that the sealer does not wake at every lull; in durable mode the next commit's `fdatasync` makes
//! it durable, or the sealer's own within another [`SEAL_WITHIN`]; the head file then
//! names it). An Ed25519 signature costs tens of microseconds;
//! under load one covers hundreds of records.
//!
//! Only commits (decisions, which wait for their record) wait for `fdatasync`. Appended
//! observations (responses) are written at once and made durable by the next commit or seal.
//!
//! The writer also keeps `<log>.head` (the last signed chain head, so `verify` sees a cut
//! off end), seals a line torn by a crash with a `recovery` record, accounts for records
//! it could not write with a `gap` record, and rotates the file by size (see [`writer`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// Longest time a record stays without a signature over it (and, in durable mode, an
/// appended record only in the page cache).
pub const SEAL_WITHIN: Duration = Duration::from_millis(10);

/// How long the log must be quiet before its head is sealed early.
pub const SEAL_IDLE: Duration = Duration::from_millis(1);

/// How often an idle sealer looks at the head file (a checkpoint held back by its interval).
const TICK: Duration = Duration::from_millis(200);

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
    /// Sign the last record of every commit before the commit returns, as well as sealing
    /// (an Ed25519 signature per commit: tens of microseconds on its path). By default
    /// commits are covered by a seal within [`SEAL_WITHIN`].
    pub sign_commits: bool,
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
            sign_commits: false,
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
/// them all (group commit), and no other thread has to be woken and waited for. A commit
/// of many records (pipelined messages) goes to the committer thread instead, so that the
/// caller judges the next read meanwhile. The sealer thread signs what was written (see
/// the module's documentation).
#[derive(Clone)]
pub struct Audit {
    writer: Arc<Mutex<writer::Writer>>,
    /// Records waiting for the writer: whoever writes next writes them all in one go.
    queue: Arc<(Mutex<Queue>, Condvar)>,
    /// Durable mode: the file to `fdatasync`.
    sync: Option<Arc<Syncer>>,
    sealer: Arc<Sealer>,
    /// Sign every commit on its own ([`Options::sign_commits`]).
    sign_commits: bool,
    /// Writes commits of many records off the caller's thread.
    committer: Arc<Committer>,
    /// Dropped with the last handle: stops the sealer and the committer. (The committer's
    /// own handle has none.)
    _alive: Option<Arc<Alive>>,
    /// Generation of the last successful write (0: none yet). A commit waits until a sync
    /// has covered its own write's generation, not until nothing is unsynced: otherwise one
    /// thread's new record would cost the next waiter an `fdatasync` of its own.
    written: Arc<AtomicU64>,
    path: Arc<PathBuf>,
    tap: Arc<OnceLock<Arc<dyn Tap>>>,
}

type Done = Arc<OnceLock<Result<u64, String>>>;

/// Where a commit handed to the committer thread is answered.
type Acked = oneshot::Receiver<Result<(), String>>;

struct Queued {
    records: Vec<Record>,
    /// The write that carries these records ends with a signature.
    sign: bool,
    done: Done,
}

/// What waits for the writer, and whether a thread is writing now.
#[derive(Default)]
struct Queue {
    waiting: Vec<Queued>,
    writing: bool,
    /// Threads asleep until a write is done (woken only when there are any).
    sleepers: usize,
}

/// A commit on its way to disk.
pub struct Ticket {
    done: Option<Acked>,
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

/// The sealer and committer threads; joined by [`Audit::close`].
pub struct WriterThread {
    sealer: Option<std::thread::JoinHandle<()>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

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
        let (sync, head) = match durability {
            Durability::PageCache => (None, writer::HeadSink::Now(head_file.clone())),
            Durability::Durable => {
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
                (Some(syncer), writer::HeadSink::AfterSync(pending))
            }
        };
        let mut writer = writer::Writer::new(
            path.to_path_buf(),
            file,
            signer,
            opts.max_bytes,
            opts.retention,
            head,
            sync.clone(),
        );
        if let Err(e) = writer.tidy() {
            tracing::warn!(error = %e, path = %path.display(), "cannot tidy up after an interrupted rotation");
        }
        let writer = Arc::new(Mutex::new(writer));
        let sealer = Arc::new(Sealer {
            writer: writer.clone(),
            sync: sync.clone(),
            written: written.clone(),
            head_file: head_file.clone(),
            path: path.to_path_buf(),
            state: Mutex::new(SealState::default()),
            wake: Condvar::new(),
        });
        let thread = {
            let sealer = sealer.clone();
            std::thread::Builder::new()
                .name("audit-seal".into())
                .spawn(move || sealer.run())
                .map_err(err)?
        };
        let committer = Arc::new(Committer::default());
        let audit = Audit {
            writer,
            queue: Arc::new((Mutex::new(Queue::default()), Condvar::new())),
            sync,
            _alive: Some(Arc::new(Alive {
                sealer: sealer.clone(),
                committer: committer.clone(),
            })),
            committer,
            sealer,
            sign_commits: opts.sign_commits,
            written,
            path: Arc::new(path.to_path_buf()),
            tap: Arc::default(),
        };
        let committer = {
            let own = Audit {
                _alive: None,
                ..audit.clone()
            };
            std::thread::Builder::new()
                .name("audit-commit".into())
                .spawn(move || own.run_committer())
        };
        let committer = match committer {
            Ok(t) => t,
            Err(e) => {
                audit.close(WriterThread {
                    sealer: Some(thread),
                    committer: None,
                });
                return Err(err(e));
            }
        };
        let thread = WriterThread {
            sealer: Some(thread),
            committer: Some(committer),
        };
        // A log a crash left torn, or unsigned, is sealed now, not at the first decision.
        if let Err(reason) = audit
            .write(Vec::new(), false)
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

    /// Writes and syncs `records` as a commit, timing it for the tap; signed on its own
    /// when `sign`.
    fn commit_now(&self, records: Vec<Record>, sign: bool) -> Result<(), String> {
        let start = std::time::Instant::now();
        let res = self
            .write(records, sign || self.sign_commits)
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

    /// Commits `records` with a signature of their own, not waiting for a seal: for records
    /// off the hot path (a session's or the daemon's start and end), so that they are signed
    /// even when nothing can be written after them (a full disk).
    pub fn commit_signed(&self, records: Vec<Record>) -> Result<(), Error> {
        self.commit_here(records, true)
    }

    /// [`Audit::commit`] for a thread outside any runtime: returns once the records are
    /// written and (in durable mode) on disk.
    pub fn commit_blocking(&self, records: Vec<Record>) -> Result<(), Error> {
        self.commit_here(records, false)
    }

    fn commit_here(&self, records: Vec<Record>, sign: bool) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        // After what was handed over, in the log as in time.
        self.committer.drain();
        self.commit_now(records, sign)
            .map_err(|reason| Error::Write {
                path: self.path.to_path_buf(),
                reason,
            })
    }

    /// Commits `records`: at once on this thread when they are few and nothing handed over
    /// is still on its way, else by the committer thread while the caller goes on (one read
    /// of many pipelined requests is judged while the one before it is written and synced).
    /// Either way the log keeps the order of the calls.
    pub fn submit(&self, records: Vec<Record>) -> Ticket {
        if records.is_empty() {
            return Ticket {
                done: None,
                path: self.path.clone(),
            };
        }
        let records = match self.hand_over(records, true) {
            Ok(done) => {
                return Ticket {
                    done,
                    path: self.path.clone(),
                };
            }
            Err(records) => records,
        };
        let res = self.commit_now(records, false);
        Ticket::ready(res, &self.path)
    }

    /// Hands `records` to the committer thread when they are many or it is busy (with a
    /// ticket when they are a `commit`), else gives them back to be written here (as they
    /// are once the thread has stopped).
    fn hand_over(&self, records: Vec<Record>, commit: bool) -> Result<Option<Acked>, Vec<Record>> {
        if records.len() < HAND_OVER_AT && !self.committer.busy() {
            return Err(records);
        }
        let (ack, done) = match commit {
            true => {
                let (ack, done) = oneshot::channel();
                (Some(ack), Some(done))
            }
            false => (None, None),
        };
        self.committer
            .hand(Job { records, ack })
            .map(|()| done)
            .map_err(|job| {
                // After what the stopping thread still writes.
                self.committer.drain();
                job.records
            })
    }

    /// The committer thread: writes what is handed over, in order, each round's jobs in one
    /// write and (when any is a commit) one `fdatasync`.
    fn run_committer(&self) {
        while let Some(jobs) = self.committer.take() {
            let n = jobs.len();
            let mut records = Vec::with_capacity(jobs.iter().map(|j| j.records.len()).sum());
            let mut acks = Vec::new();
            for j in jobs {
                records.extend(j.records);
                acks.extend(j.ack);
            }
            let commit = !acks.is_empty();
            // A panic (in a tap, say) fails this round's commits rather than leaving their
            // callers, and every later one, waiting for a thread that is gone.
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match commit {
                true => self.commit_now(records, false),
                false => self.write(records, false).map(|_| ()),
            }))
            .unwrap_or_else(|_| Err("the audit committer thread failed".into()));
            if let Err(e) = &res
                && !commit
            {
                tracing::error!(error = %e, path = %self.path.display(), "audit records lost");
            }
            for ack in acks {
                let _ = ack.send(res.clone());
            }
            self.committer.done(n);
        }
    }

    /// Writes `records` without waiting for `fdatasync`: the next commit, or the seal
    /// within [`SEAL_WITHIN`], makes them durable.
    pub fn append(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let records = match self.hand_over(records, false) {
            Ok(_) => return,
            Err(records) => records,
        };
        if let Err(e) = self.write(records, false) {
            tracing::error!(error = %e, path = %self.path.display(), "audit records lost");
        }
    }

    /// Makes the write of generation `generation` durable (durable mode).
    fn sync(&self, generation: u64) -> Result<(), String> {
        match &self.sync {
            Some(syncer) => syncer.sync_to(generation),
            None => Ok(()),
        }
    }

    /// Writes `records` together with whatever other threads queued meanwhile, in one
    /// write. A thread that finds a write under way queues its records and sleeps until they
    /// are written (by that thread's next round, or by itself if it is first in line when
    /// the writer is free).
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
            q.sleepers += 1;
            q = written.wait(q).unwrap_or_else(|p| p.into_inner());
            q.sleepers -= 1;
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
        if res.is_ok() {
            if !batch.is_empty() {
                self.sealer.wrote();
            }
            if let Some(t) = self.tap.get() {
                t.written(&batch);
            }
        }
        for d in waiting {
            let _ = d.set(res.clone());
        }
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        q.writing = false;
        let sleepers = q.sleepers;
        drop(q);
        if sleepers > 0 {
            written.notify_all();
        }
        if let Err(e) = &res {
            tracing::error!(error = %e, path = %self.path.display(), "audit write failed");
        }
        res
    }

    /// Seals and syncs what was written, and stops the sealer (other handles still alive
    /// write unsealed from now on: close the log when the session is over).
    pub fn close(self, thread: WriterThread) {
        // What was handed over is written before the last seal.
        self.committer.stop();
        if let Some(t) = thread.committer {
            let _ = t.join();
        }
        self.sealer.stop();
        drop(self);
        if let Some(t) = thread.sealer {
            let _ = t.join();
        }
    }
}

/// Commits of at least this many records go to the committer thread; fewer (a request at a
/// time) are written on the caller's thread, which handing over would only slow down.
const HAND_OVER_AT: usize = 8;

/// Records handed to the committer thread; `ack` is the commit's ticket (none: an append).
struct Job {
    records: Vec<Record>,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

#[derive(Default)]
struct Handed {
    jobs: Vec<Job>,
    /// Jobs handed over, and written, since the log was opened.
    handed: u64,
    written: u64,
    stop: bool,
}

/// The committer thread's queue.
#[derive(Default)]
struct Committer {
    state: Mutex<Handed>,
    /// Jobs came, or the thread is to stop.
    wake: Condvar,
    /// Everything handed over is written.
    drained: Condvar,
    /// Whether anything handed over is not yet written (read without the lock on every
    /// submit).
    busy: std::sync::atomic::AtomicBool,
}

impl Committer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Queues `job`; gives it back once the thread is stopping (another handle closed
    /// the log).
    fn hand(&self, job: Job) -> Result<(), Job> {
        let mut st = self.lock();
        if st.stop {
            return Err(job);
        }
        st.jobs.push(job);
        st.handed += 1;
        self.busy.store(true, Ordering::Release);
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// The jobs waiting, once there are any; `None` once stopped with none left.
    fn take(&self) -> Option<Vec<Job>> {
        let mut st = self.lock();
        loop {
            if !st.jobs.is_empty() {
                return Some(std::mem::take(&mut st.jobs));
            }
            if st.stop {
                return None;
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// `n` jobs are written.
    fn done(&self, n: usize) {
        let mut st = self.lock();
        st.written += n as u64;
        if st.written == st.handed {
            self.busy.store(false, Ordering::Release);
        }
        drop(st);
        self.drained.notify_all();
    }

    /// Waits until everything handed over so far is written (not for what others hand
    /// over meanwhile).
    fn drain(&self) {
        if !self.busy() {
            return;
        }
        let mut st = self.lock();
        let upto = st.handed;
        while st.written < upto {
            st = self.drained.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }
}

/// Stops the sealer and the committer when the last [`Audit`] handle goes.
struct Alive {
    sealer: Arc<Sealer>,
    committer: Arc<Committer>,
}

impl Drop for Alive {
    fn drop(&mut self) {
        // What was handed over is written before the sealer's last seal.
        self.committer.stop();
        self.committer.drain();
        self.sealer.stop();
    }
}

#[derive(Default)]
struct SealState {
    /// When the first record no signature covers yet was written.
    unsealed_since: Option<Instant>,
    /// When the last record was written.
    last_write: Option<Instant>,
    /// After a failed seal: not again before this.
    retry_at: Option<Instant>,
    /// Records came while the sealer waited for a lull: sealed at [`SEAL_WITHIN`].
    busy: bool,
    /// When the sealer last went to sleep waiting for the unsealed records' seal.
    slept_at: Option<Instant>,
    stop: bool,
}

/// Signs the chain head when the log goes quiet, and at the latest [`SEAL_WITHIN`] after
/// the first record it covers.
struct Sealer {
    writer: Arc<Mutex<writer::Writer>>,
    sync: Option<Arc<Syncer>>,
    written: Arc<AtomicU64>,
    head_file: Arc<chain::HeadFile>,
    path: PathBuf,
    state: Mutex<SealState>,
    wake: Condvar,
}

impl Sealer {
    /// Tells the thread to seal once more and end.
    fn stop(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.stop = true;
        drop(st);
        self.wake.notify_all();
    }

    /// Records were written: the sealer is woken only by the first of a quiet spell.
    fn wrote(&self) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.last_write = Some(now);
        if st.unsealed_since.is_none() {
            st.unsealed_since = Some(now);
            drop(st);
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.stop {
                // Sealed once more below, whether or not anything waits.
                break;
            }
            let Some(since) = st.unsealed_since else {
                st = self
                    .wake
                    .wait_timeout(st, TICK)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                // A head held back by the checkpoint interval goes out once due, even
                // when no more records come.
                if st.unsealed_since.is_none() {
                    self.head_file.tick();
                }
                continue;
            };
            // Records written while the sealer slept: the log is busy, and is sealed at
            // the bound rather than at a lull (waiting for each lull would cost a thread
            // switch per millisecond on a busy machine).
            if let (Some(slept), Some(last)) = (st.slept_at, st.last_write)
                && last > slept
            {
                st.busy = true;
            }
            let quiet = st.last_write.unwrap_or(since) + SEAL_IDLE;
            let due = match st.busy {
                true => since + SEAL_WITHIN,
                false => quiet.min(since + SEAL_WITHIN),
            }
            .max(st.retry_at.unwrap_or(since));
            let now = Instant::now();
            if now < due {
                st.slept_at = Some(now);
                st = self
                    .wake
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            st.unsealed_since = None;
            st.busy = false;
            st.slept_at = None;
            drop(st);
            let sealed = self.seal(false);
            st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.retry_at = None;
            if !sealed {
                st.unsealed_since.get_or_insert(since);
                st.retry_at = Some(Instant::now() + TICK);
            }
        }
        drop(st);
        self.seal(true);
        // The last head is checkpointed whatever the interval: what was written is seen.
        self.head_file.flush();
    }

    /// Appends the seal (when the last record is unsigned).
    ///
    /// In durable mode the seal is synced by the next commit's `fdatasync` when one comes
    /// within [`SEAL_WITHIN`] (on a busy log the sealer does not sync in the commits' way),
    /// else by the sealer itself; when closing, at once.
    fn seal(&self, closing: bool) -> bool {
        let res = self.writer.lock().unwrap_or_else(|p| p.into_inner()).seal();
        match res {
            // Nothing to seal (another writer's seal, or a signed commit, came first).
            Ok(false) => true,
            Ok(true) => {
                let generation = self.written.fetch_add(1, Ordering::AcqRel) + 1;
                self.sync.as_ref().is_none_or(|s| {
                    (!closing && s.covered_within(generation, SEAL_WITHIN))
                        || s.sync_to(generation).is_ok()
                })
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot seal the audit log");
                false
            }
        }
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
    /// Follows the log to its new file (after a rotation, which synced the old one).
    fn replace(&self, file: File) {
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = file;
    }

    /// Waits up to `timeout` for another thread's `fdatasync` to cover `generation`;
    /// whether one did.
    fn covered_within(&self, generation: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.synced < generation {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .synced
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
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
