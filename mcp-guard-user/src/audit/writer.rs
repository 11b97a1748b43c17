//! Appending to the log under its `flock`: continuing the chain from the file's last record,
//! sealing a torn tail, recording gaps left by failed writes, signing, rotating.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::chain::{Head, HeadFile, Signer, chain_hash, sibling, sync_dir};
use super::{Kind, Record, SCHEMA_VERSION};
use crate::digest::sha256_hex;

/// Longest time a writer goes on appending to a file that something other than a writer
/// renamed away (external log rotation) before it follows the path to the new file.
pub(super) const PATH_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// How far back from the end of the file the previous record is first looked for.
const TAIL_WINDOW: u64 = 1 << 20;

/// The chain's end as far as a writer knows it.
#[derive(Default, Clone)]
pub(crate) struct Tail {
    pub seq: u64,
    pub hash: String,
}

/// What a file's end looks like.
struct Scan {
    last: Tail,
    /// The last complete record carries no `sig`.
    unsigned: bool,
    /// Bytes after the last newline: a line a crash cut short.
    torn: Option<(u64, Vec<u8>)>,
}

/// Records that could not be written, to be accounted for by the next successful write.
struct Gap {
    lost: u64,
    since: String,
    error: String,
}

/// Where the head goes after a write.
pub(crate) enum HeadSink {
    /// Page-cache mode: at once.
    Now(Arc<HeadFile>),
    /// Durable mode: handed to the syncer, which writes it after the `fdatasync`.
    AfterSync(Arc<Mutex<Option<Head>>>),
}

pub(crate) struct Writer {
    pub path: PathBuf,
    pub file: File,
    /// File length after our last write; if it still matches, `last` is current.
    known_end: Option<u64>,
    last: Tail,
    /// `seq` of the current file's first record, once known (names the file when rotated).
    first_seq: Option<u64>,
    signer: Arc<Signer>,
    max_bytes: u64,
    /// What rotated files are kept (see [`super::Retention`]).
    retention: super::Retention,
    head: HeadSink,
    gap: Option<Gap>,
    /// Has written (or sealed) at least once since it was opened.
    started: bool,
    /// The file's last record, as far as this writer knows, carries no signature.
    unsigned: bool,
    /// Session of the records the writer writes itself: the last one it was given.
    session: Arc<str>,
    /// Told the new file when the log was replaced (rotation) so it syncs the right one.
    on_reopen: Option<Arc<super::Syncer>>,
    /// A descriptor of `file` kept for `flock` between writes (not made and closed for
    /// each), and which `file` it belongs to.
    lock_handle: Option<File>,
    file_generation: u64,
    /// When the path was last seen to name `file`.
    path_checked: Option<std::time::Instant>,
}

/// The log's `flock`, held; given back with [`Writer::unlock`].
struct Locked {
    lock: Flock<File>,
    file_generation: u64,
}

impl Writer {
    pub fn new(
        path: PathBuf,
        file: File,
        signer: Arc<Signer>,
        max_bytes: u64,
        retention: super::Retention,
        head: HeadSink,
        on_reopen: Option<Arc<super::Syncer>>,
    ) -> Writer {
        Writer {
            path,
            file,
            known_end: None,
            last: Tail::default(),
            first_seq: None,
            signer,
            max_bytes,
            retention,
            head,
            gap: None,
            started: false,
            unsigned: false,
            session: super::random_id().into(),
            on_reopen,
            lock_handle: None,
            file_generation: 0,
            path_checked: None,
        }
    }

    /// Appends `records` (possibly none: then only a torn tail or a gap is dealt with),
    /// unsigned unless `sign` or the write carries a notice: they are covered by the next
    /// signature through the chain (see [`Writer::seal`]).
    pub fn write(&mut self, records: &mut [Record], sign: bool) -> io::Result<()> {
        self.write_or_seal(records, sign).map(|_| ())
    }

    /// Signs the chain head: appends a signed `seal` record when the file's last record is
    /// unsigned (whoever wrote it), else does nothing. Whether anything was written.
    pub fn seal(&mut self) -> io::Result<bool> {
        self.write_or_seal(&mut [], true)
    }

    /// Writes `records`, the last line signed when `sign` is set; with no records, `sign`
    /// seals an unsigned tail.
    fn write_or_seal(&mut self, records: &mut [Record], sign: bool) -> io::Result<bool> {
        let res = self.try_write(records, sign);
        if let Err(e) = &res {
            self.known_end = None;
            if !records.is_empty() {
                let gap = self.gap.get_or_insert_with(|| Gap {
                    lost: 0,
                    since: now(),
                    error: e.to_string(),
                });
                gap.lost += records.len() as u64;
            }
        }
        res
    }

    /// Whether anything was written.
    fn try_write(&mut self, records: &mut [Record], sign: bool) -> io::Result<bool> {
        let (locked, start) = self.lock()?;
        if let Some(first) = records.first() {
            self.session = first.session.clone();
        }
        let mut notices = Vec::new();
        let mut out = Vec::with_capacity(1024 * (records.len() + 1));
        if self.known_end != Some(start) {
            let scan = read_tail(&mut self.file, start)?;
            self.last = scan.last;
            self.unsigned = scan.unsigned;
            if start == 0 {
                self.first_seq = None;
            }
            if let Some((offset, bytes)) = &scan.torn {
                // A writer died mid-line. The torn bytes stay, as a line of their own, and a
                // signed recovery record describes them; the chain goes on from the last
                // complete record. `verify` accepts exactly this pattern.
                tracing::warn!(path = %self.path.display(), offset, bytes = bytes.len(), "sealing a torn audit line");
                out.push(b'\n');
                notices.push(self.notice(
                    Kind::Recovery,
                    json!({
                        "reason": "torn",
                        "after_seq": self.last.seq,
                        "torn": { "offset": offset, "bytes": bytes.len(), "sha256": sha256_hex(bytes) },
                    }),
                ));
            } else if scan.unsigned && !self.started {
                // Found at start-up: a writer died before it sealed its last records (or
                // another process's await its sealer). Sealed now, so the log verifies
                // without waiting.
                tracing::info!(path = %self.path.display(), seq = self.last.seq, "sealing an unsigned audit tail");
                notices.push(self.notice(Kind::Seal, json!({ "after_seq": self.last.seq })));
            }
            // Later, an unsigned tail needs no seal of its own: the sealer's next seal
            // covers it through the chain.
        }
        if let Some(gap) = &self.gap {
            let detail = json!({ "records_lost": gap.lost, "since": gap.since, "until": now(), "error": gap.error });
            notices.push(self.notice(Kind::Gap, detail));
        }
        if sign && records.is_empty() && notices.is_empty() && self.unsigned {
            notices.push(self.notice(Kind::Seal, json!({ "after_seq": self.last.seq })));
        }
        if notices.is_empty() && records.is_empty() {
            self.started = true;
            self.unlock(locked);
            return Ok(false);
        }
        let mut last = self.last.clone();
        let total = notices.len() + records.len();
        let signer = (sign || !notices.is_empty()).then_some(&*self.signer);
        for (i, n) in notices.iter_mut().enumerate() {
            append_line(
                &mut out,
                &mut last,
                signer.filter(|_| i + 1 == total),
                |seq, prev| {
                    n.seq = seq;
                    n.prev = prev.to_string();
                    serde_json::to_vec(n)
                },
            )?;
        }
        for (i, rec) in records.iter_mut().enumerate() {
            append_line(
                &mut out,
                &mut last,
                signer.filter(|_| notices.len() + i + 1 == total),
                |seq, prev| {
                    rec.seq = seq;
                    rec.prev = prev.to_string();
                    serde_json::to_vec(rec)
                },
            )?;
        }
        if let Err(e) = self.file.write_all(&out) {
            // Leave no partial line behind; the records were not written.
            let _ = self.file.set_len(start);
            return Err(e);
        }
        let end = start + out.len() as u64;
        self.known_end = Some(end);
        if start == 0 {
            self.first_seq = Some(self.last.seq + 1);
        }
        self.last = last;
        self.unsigned = signer.is_none();
        self.gap = None;
        self.started = true;
        self.publish_head(out.rsplit(|&b| b == b'\n').nth(1).unwrap_or_default());
        if self.max_bytes > 0
            && end > self.max_bytes
            && let Err(e) = self.rotate()
        {
            // The records are written; only the file goes on growing.
            tracing::warn!(error = %e, path = %self.path.display(), "cannot rotate the audit log");
        }
        self.unlock(locked);
        Ok(true)
    }

    /// Removes what a rotation cut short by a crash left behind: a rotated name that is
    /// still the live file (linked, not yet replaced), or a new file never moved into place.
    /// Under the lock, so no rotation is under way.
    pub fn tidy(&mut self) -> io::Result<()> {
        let (_lock, _) = self.lock()?;
        let Some(name) = self
            .path
            .file_name()
            .map(|n| format!("{}.", n.to_string_lossy()))
        else {
            return Ok(());
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&name)) else {
                continue;
            };
            let stale = rest.starts_with("new-")
                || (rest
                    .split_once('-')
                    .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
                    && same_file(&entry.path(), &self.file));
            if stale {
                tracing::warn!(file = %entry.path().display(), "removing what an interrupted audit log rotation left");
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Takes the log's `flock`, first following the path to a new file if another writer
    /// rotated (or someone removed) the one we hold.
    /// Returns the lock and the file's length under it.
    fn lock(&mut self) -> io::Result<(Locked, u64)> {
        loop {
            let handle = match self.lock_handle.take() {
                Some(h) => h,
                None => self.file.try_clone()?,
            };
            let lock = Flock::lock(handle, FlockArg::LockExclusive)
                .map_err(|(_, e)| io::Error::from(e))?;
            let ours = self.file.metadata()?;
            // Nobody wrote to the file since our last write, so nobody rotated it (a rotation
            // follows its writer's own write), and it is not removed: the path still names it
            // unless something outside the writers renamed it, which is looked for at least
            // every PATH_CHECK_EVERY.
            let now = std::time::Instant::now();
            if self.known_end == Some(ours.len())
                && ours.nlink() > 0
                && self
                    .path_checked
                    .is_some_and(|at| now.duration_since(at) < PATH_CHECK_EVERY)
            {
                let locked = Locked {
                    lock,
                    file_generation: self.file_generation,
                };
                return Ok((locked, ours.len()));
            }
            match std::fs::metadata(&self.path) {
                Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => {
                    self.path_checked = Some(now);
                    let locked = Locked {
                        lock,
                        file_generation: self.file_generation,
                    };
                    return Ok((locked, ours.len()));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(path = %self.path.display(), "the audit log was removed; starting a new one");
                }
                Err(e) => return Err(e),
            }
            drop(lock);
            self.replace_file(open_log(&self.path)?);
            self.known_end = None;
            self.first_seq = None;
            if let Some(s) = &self.on_reopen {
                s.replace(self.file.try_clone()?);
            }
        }
    }

    /// `notice` as the next line of the chain, signed, and the chain's end after it.
    fn signed_line(&self, mut notice: Notice) -> io::Result<(Vec<u8>, Tail)> {
        let mut last = self.last.clone();
        let mut out = Vec::with_capacity(1024);
        append_line(&mut out, &mut last, Some(&self.signer), |seq, prev| {
            notice.seq = seq;
            notice.prev = prev.to_string();
            serde_json::to_vec(&notice)
        })?;
        Ok((out, last))
    }

    /// Releases the lock, keeping its descriptor for the next one if the file is the same.
    fn unlock(&mut self, locked: Locked) {
        if let Ok(handle) = locked.lock.unlock()
            && locked.file_generation == self.file_generation
        {
            self.lock_handle = Some(handle);
        }
    }

    /// Makes `file` the log (the lock's kept descriptor belongs to the old one).
    fn replace_file(&mut self, file: File) {
        self.file = file;
        self.path_checked = None;
        self.lock_handle = None;
        self.file_generation += 1;
    }

    /// A record the writer adds on its own.
    fn notice(&self, kind: Kind, detail: serde_json::Value) -> Notice {
        Notice {
            v: SCHEMA_VERSION,
            seq: 0,
            time: now(),
            id: format!(
                "{}-{kind}-{}",
                self.session,
                super::random_id().get(..8).unwrap_or_default()
            ),
            kind,
            session: self.session.clone(),
            detail,
            prev: String::new(),
        }
    }

    /// Hands the new chain head (from the last line written) to the head file.
    fn publish_head(&self, line: &[u8]) {
        let Some(parts) = super::chain::Line::split(line) else {
            return;
        };
        let (Ok(hash), Some(Ok(sig))) = (
            std::str::from_utf8(parts.hash),
            parts.sig.map(std::str::from_utf8),
        ) else {
            return;
        };
        let head = Head {
            seq: self.last.seq,
            hash: hash.to_string(),
            sig: sig.to_string(),
        };
        match &self.head {
            HeadSink::Now(file) => {
                if let Err(e) = file.advance(&head) {
                    tracing::warn!(error = %e, path = %self.path.display(), "cannot update the audit head file");
                }
            }
            HeadSink::AfterSync(pending) => {
                *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(head)
            }
        }
    }

    /// Under the lock: moves the full file to `<log>.<first seq>-<last seq>` and puts in its
    /// place a new file whose first record, `rotated`, continues the chain.
    fn rotate(&mut self) -> io::Result<()> {
        let first = match self.first_seq {
            Some(s) => s,
            None => first_seq(&mut self.file)?,
        };
        // The old file ends signed, so it verifies on its own.
        if self.unsigned {
            let seal = self.notice(Kind::Seal, json!({ "after_seq": self.last.seq }));
            let (out, last) = self.signed_line(seal)?;
            self.file.write_all(&out)?;
            self.last = last;
            self.unsigned = false;
        }
        // Whatever any writer put in the old file is on disk before it is renamed.
        self.file.sync_data()?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let old_name = format!("{name}.{first}-{}", self.last.seq);
        let old = self.path.with_file_name(&old_name);
        match std::fs::hard_link(&self.path, &old) {
            Ok(()) => {}
            // A rotation that died before the rename already made this link.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && same_file(&old, &self.file) => {}
            Err(e) => return Err(e),
        }
        let rec = self.notice(
            Kind::Rotated,
            json!({ "previous": old_name, "first_seq": first, "last_seq": self.last.seq }),
        );
        let (out, last) = self.signed_line(rec)?;
        let tmp = sibling(&self.path, &format!(".new-{}", super::random_id()));
        let made = (|| {
            let mut f = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&out)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok::<File, io::Error>(f)
        })();
        let new = match made {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&old);
                return Err(e);
            }
        };
        sync_dir(&self.path);
        tracing::info!(path = %self.path.display(), rotated = %old.display(), "audit log rotated");
        self.replace_file(new);
        self.known_end = Some(out.len() as u64);
        self.first_seq = Some(last.seq);
        self.last = last;
        self.unsigned = false;
        if let Some(s) = &self.on_reopen {
            s.replace(self.file.try_clone()?);
        }
        self.publish_head(out.strip_suffix(b"\n").unwrap_or(&out));
        prune(&self.path, &self.retention);
        Ok(())
    }
}

/// Opens (creating, mode 0600) the log for appending.
pub(crate) fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Chains the record `body` serializes (given its `seq` and `prev`) to `last`, and puts
/// it on `out` with its hash (and, when `signer` is given, its signature) and a newline.
fn append_line(
    out: &mut Vec<u8>,
    last: &mut Tail,
    signer: Option<&Signer>,
    body: impl FnOnce(u64, &str) -> serde_json::Result<Vec<u8>>,
) -> io::Result<()> {
    last.seq += 1;
    let prev = std::mem::take(&mut last.hash);
    let body = body(last.seq, &prev).map_err(io::Error::other)?;
    let hash = chain_hash(&prev, &body);
    out.extend_from_slice(&body[..body.len() - 1]);
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    let sig = signer.map(|s| s.sign(hash.as_bytes()));
    if let Some(sig) = &sig {
        out.extend_from_slice(b"\",\"sig\":\"");
        out.extend_from_slice(sig.as_bytes());
    }
    out.extend_from_slice(b"\"}\n");
    last.hash = super::chain::link(&hash, sig.as_ref().map(|s| s.as_bytes()));
    Ok(())
}

/// Removes rotated files (`<log>.<first>-<last>`) beyond `retention`: the oldest past the
/// count, and any older than the age. The live file is never touched.
pub(super) fn prune(path: &Path, retention: &super::Retention) {
    if retention.keep_files == 0 && retention.keep_age.is_none() {
        return;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // (first seq, path, modified)
    let mut rotated: Vec<(u64, PathBuf, Option<std::time::SystemTime>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let (first, last) = file.strip_prefix(&prefix)?.split_once('-')?;
            let first: u64 = first.parse().ok()?;
            last.parse::<u64>().ok()?;
            let modified = e.metadata().ok().and_then(|m| m.modified().ok());
            Some((first, e.path(), modified))
        })
        .collect();
    rotated.sort_by_key(|(first, _, _)| *first);
    let excess = if retention.keep_files > 0 {
        rotated.len().saturating_sub(retention.keep_files)
    } else {
        0
    };
    let now = std::time::SystemTime::now();
    for (i, (_, file, modified)) in rotated.iter().enumerate() {
        let too_old = match (retention.keep_age, modified) {
            (Some(age), Some(m)) => now.duration_since(*m).is_ok_and(|d| d > age),
            _ => false,
        };
        if i < excess || too_old {
            match std::fs::remove_file(file) {
                Ok(()) => {
                    tracing::info!(path = %file.display(), "rotated audit log removed (retention)")
                }
                Err(e) => {
                    tracing::warn!(path = %file.display(), error = %e, "cannot remove a rotated audit log")
                }
            }
        }
    }
}

/// A record the writer writes on its own (`recovery`, `gap`, `rotated`): the fields every
/// record has, in the same order, and `detail`.
#[derive(Serialize)]
struct Notice {
    v: u32,
    seq: u64,
    time: String,
    id: String,
    kind: Kind,
    session: Arc<str>,
    detail: serde_json::Value,
    prev: String,
}

fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

fn same_file(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[derive(Deserialize)]
struct TailFields {
    seq: u64,
    hash: String,
    #[serde(default)]
    sig: Option<String>,
}

/// The last complete record of the file, and what follows it.
fn read_tail(file: &mut File, len: u64) -> io::Result<Scan> {
    let mut window = TAIL_WINDOW;
    loop {
        let from = len.saturating_sub(window);
        let mut buf = Vec::with_capacity((len - from) as usize);
        file.seek(SeekFrom::Start(from))?;
        Read::by_ref(file).take(len - from).read_to_end(&mut buf)?;
        let end = match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => i,
            None if from == 0 => {
                let torn = (!buf.is_empty()).then_some((0, buf));
                return Ok(Scan {
                    last: Tail::default(),
                    unsigned: false,
                    torn,
                });
            }
            None => {
                window = window.saturating_mul(4);
                continue;
            }
        };
        let start = match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if from == 0 => 0,
            None => {
                window = window.saturating_mul(4);
                continue;
            }
        };
        let torn = (end + 1 < buf.len()).then(|| (from + end as u64 + 1, buf[end + 1..].to_vec()));
        let rec: TailFields = serde_json::from_slice(&buf[start..end]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("last audit record unreadable (fix or move the log): {e}"),
            )
        })?;
        return Ok(Scan {
            last: Tail {
                seq: rec.seq,
                hash: super::chain::link(&rec.hash, rec.sig.as_deref().map(str::as_bytes)),
            },
            unsigned: rec.sig.is_none(),
            torn,
        });
    }
}

/// `seq` of the file's first record (for the rotated file's name).
fn first_seq(file: &mut File) -> io::Result<u64> {
    #[derive(Deserialize)]
    struct First {
        seq: u64,
    }
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    let mut chunk = [0u8; 8192];
    loop {
        let n = file.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let first: First = serde_json::from_slice(&buf[..i])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            return Ok(first.seq);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no complete first record",
            ));
        }
    }
}
