//! `mcp-guard audit verify`: proves a log (or a sequence of rotated logs) was not edited,
//! cut short, reordered, or added to, and that its signatures are the key's.
//!
//! The files are read as one chain, line by line; only `seq`, `prev`, `kind`, `hash` and
//! `sig` are parsed. Signatures are checked on worker threads while the main thread hashes.
//! The first problem is reported with its file, line and `seq`; what kind of problem it is
//! comes from the `seq`/`prev`/`hash` pattern around it (see [`Problem`]).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use serde::Deserialize;

use super::chain::{Head, Line, PublicKey};

/// How many lines past a broken link are read to tell a deletion from a reordering.
mod keys;
mod report;

use keys::choose_key;
pub use report::{Finding, Problem, Summary, Verdict};

const LOOKAHEAD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no files to verify")]
    NoFiles,
}

/// Where trusted public keys are kept (`*.pub`, 64 hex digits each): a directory only root
/// can write, so the writer of a log cannot replace the key its signatures are checked with.
pub const TRUSTED_KEYS_DIR: &str = "/etc/mcp-guard/trusted-keys";
/// The daemon's public key (beside its signing key, where users cannot write): trusted too.
pub const SYSTEM_KEY: &str = "/var/lib/mcp-guard/audit.pub";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The public key to check signatures with [default: a trusted key that signed the log
    /// (from /etc/mcp-guard/trusted-keys/ or $MCP_GUARD_TRUSTED_KEYS, or the daemon's
    /// /var/lib/mcp-guard/audit.pub), else the key pinned in an append-only --checkpoint,
    /// else audit.pub beside the first FILE, which shows only that the log is self-consistent].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Exit 1 unless the key is trusted (--key, a trusted key, or pinned in an append-only
    /// checkpoint), even when the chain is whole.
    #[arg(long)]
    pub require_trusted_key: bool,
    /// A forwarder's cursor: the log must reach the record it names, with the hash it names
    /// [default: the last FILE's `.cursor`, when there is one].
    #[arg(long, value_name = "FILE")]
    pub cursor: Option<PathBuf>,
    /// A checkpoint file (`wrap --audit-checkpoint`): the log must hold every signed head
    /// it names, and be signed with the key it pinned.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Vec<PathBuf>,
    /// The last seq a witness holds (a SIEM, another copy): the log must reach it.
    #[arg(long, value_name = "SEQ")]
    pub expect_seq: Option<u64>,
    /// The `hash` of that record, as the witness holds it.
    #[arg(long, value_name = "HASH", requires = "expect_seq")]
    pub expect_hash: Option<String>,
    /// The log: rotated files first, the live one last.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Where the key that checked the signatures came from, which says what an OK is worth.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `--key FILE`.
    Given(PathBuf),
    /// A trusted key ([`TRUSTED_KEYS_DIR`], [`SYSTEM_KEY`]).
    Trusted(PathBuf),
    /// Pinned at first use in an append-only checkpoint file.
    Pinned(PathBuf),
    /// `audit.pub` beside the log: whoever can write the log can replace it.
    Beside(PathBuf),
}

impl KeySource {
    /// Whether the log's writer could not have chosen the key.
    pub fn trusted(&self) -> bool {
        !matches!(self, KeySource::Beside(_))
    }

    fn path(&self) -> &Path {
        match self {
            KeySource::Given(p)
            | KeySource::Trusted(p)
            | KeySource::Pinned(p)
            | KeySource::Beside(p) => p,
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Given(p) => write!(f, "key {} (given with --key)", p.display()),
            KeySource::Trusted(p) => write!(f, "key {} (trusted)", p.display()),
            KeySource::Pinned(p) => write!(
                f,
                "key pinned at first use in the append-only checkpoint {}",
                p.display()
            ),
            KeySource::Beside(p) => write!(
                f,
                "self-consistent only: signed by the key beside the log ({}), which whoever can write the log can replace; \
                 give --key, or put the key in {TRUSTED_KEYS_DIR}/, to show it is authentic",
                p.display()
            ),
        }
    }
}

/// Something outside the log that saw a record: the log must reach it, and agree.
#[derive(Debug, Clone)]
pub struct Witness {
    pub seq: u64,
    /// The record's `hash`, when the witness knows it.
    pub hash: Option<String>,
    /// Who saw it, for messages (`checkpoint FILE:LINE`).
    pub source: String,
    /// The witness, for the summary (`checkpoint FILE`).
    pub label: String,
}

/// Verifies `args.files` as one chain; prints `FILE...: OK, N records ...; KEY` or the
/// first bad record as `FILE:LINE: seq S: PROBLEM: detail`. Exit status 0 or 1.
pub fn run(args: &Args) -> anyhow::Result<i32> {
    let files = &args.files;
    let first = files.first().ok_or(Error::NoFiles)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut checkpoints = Vec::new();
    for path in &args.checkpoint {
        match super::checkpoint::read(path) {
            Ok(c) => checkpoints.push((path.clone(), c)),
            Err(super::checkpoint::Error::Malformed { path, line, why }) => {
                println!(
                    "{}:{line}: malformed: not a checkpoint line: {why}",
                    path.display()
                );
                return Ok(1);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (public, source) = choose_key(args.key.as_deref(), first, files, &checkpoints)?;
    let mut witnesses = Vec::new();
    for (path, c) in &checkpoints {
        if let Some((line, pinned)) = &c.key
            && !pinned.eq_ignore_ascii_case(&public.hex())
        {
            println!(
                "{}:{line}: wrong key: the checkpoint pinned the key {pinned} at first use; the log is checked with {}",
                path.display(),
                source.path().display()
            );
            return Ok(1);
        }
        for (line, h) in &c.heads {
            if !public.verifies(h.hash.as_bytes(), h.sig.as_bytes()) {
                println!(
                    "{}:{line}: seq {}: wrong key: the checkpoint's signature does not verify with {}",
                    path.display(),
                    h.seq,
                    source.path().display()
                );
                return Ok(1);
            }
            witnesses.push(Witness {
                seq: h.seq,
                hash: Some(h.hash.clone()),
                source: format!("checkpoint {}:{line}", path.display()),
                label: format!("checkpoint {}", path.display()),
            });
        }
    }
    let cursor = args.cursor.clone().or_else(|| {
        let c = super::forward::cursor::default_path(files.last().unwrap_or(first));
        c.is_file().then_some(c)
    });
    if let Some(path) = cursor
        && let Some(c) = super::forward::cursor::load(&path)?
        && c.seq > 0
    {
        witnesses.push(Witness {
            seq: c.seq,
            hash: Some(c.hash),
            source: format!("the forwarder's cursor {}", path.display()),
            label: format!("cursor {}", path.display()),
        });
    }
    if let Some(seq) = args.expect_seq {
        witnesses.push(Witness {
            seq,
            hash: args.expect_hash.clone(),
            source: "--expect-seq".into(),
            label: "--expect-seq".into(),
        });
    }
    match check_witnessed(&public, source.path(), files, &witnesses)? {
        Verdict::Ok(summary) if source.trusted() || !args.require_trusted_key => {
            println!("{}: OK, {summary}; {source}", names.join(" "));
            Ok(0)
        }
        Verdict::Ok(summary) => {
            println!(
                "{}: untrusted key: the chain is whole ({summary}), but {source}",
                names.join(" ")
            );
            Ok(1)
        }
        Verdict::Bad(finding) => {
            println!("{finding}");
            Ok(1)
        }
    }
}

/// The fields verification reads; everything else is skipped.
#[derive(Deserialize)]
struct Fields<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
    #[serde(borrow)]
    kind: &'a str,
}

#[derive(Deserialize)]
struct Recovery {
    detail: RecoveryDetail,
}

#[derive(Deserialize)]
struct RecoveryDetail {
    torn: Option<TornLine>,
}

#[derive(Deserialize)]
struct TornLine {
    offset: u64,
    bytes: u64,
    sha256: String,
}

#[derive(Deserialize)]
struct GapRecord {
    detail: GapDetail,
}

#[derive(Deserialize)]
struct GapDetail {
    records_lost: u64,
}

/// A record in the chain.
#[derive(Clone)]
struct Link {
    seq: u64,
    hash: String,
    signed: bool,
    file: usize,
    line: u64,
}

/// A signature to check.
struct SigJob {
    index: u64,
    hash: [u8; 64],
    sig: [u8; 128],
    file: usize,
    line: u64,
    seq: u64,
}

/// A line that did not fit the chain; judged once the next line is known (it may be a
/// torn line that the next one seals).
struct Suspect {
    line: u64,
    seq: Option<u64>,
    /// Why it is not a record at all, if it is not.
    malformed: Option<(Problem, String)>,
    content_ok: bool,
    prev: String,
    kind_rotated: bool,
}

/// The previous line, for a `recovery` record that seals it.
struct Previous {
    offset: u64,
    line: u64,
    bytes: Vec<u8>,
    /// The chain state before it, if it was taken into the chain.
    undo: Option<(Option<Link>, Option<Link>, bool)>,
    suspect: Option<Suspect>,
}

/// Checks `files` as one chain with `key` (named `key_path` in messages).
pub fn check(key: &PublicKey, key_path: &Path, files: &[PathBuf]) -> Result<Verdict, Error> {
    check_witnessed(key, key_path, files, &[])
}

/// [`check`], and the log must reach, and agree with, what each witness saw.
pub fn check_witnessed(
    key: &PublicKey,
    key_path: &Path,
    files: &[PathBuf],
    witnesses: &[Witness],
) -> Result<Verdict, Error> {
    let verdict = check_with(key, key_path, files, witnesses, false)?;
    match &verdict {
        // A signature failed: go again over all of them to name the first bad record.
        Verdict::Bad(f) if f.problem == Problem::Edited && f.detail.starts_with(SIG_FAILED) => {
            check_with(key, key_path, files, witnesses, true)
        }
        _ => Ok(verdict),
    }
}

const SIG_FAILED: &str = "the signature over the chain head does not verify";

fn check_with(
    key: &PublicKey,
    key_path: &Path,
    files: &[PathBuf],
    witnesses: &[Witness],
    all_sigs: bool,
) -> Result<Verdict, Error> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let (tx, rx) = mpsc::sync_channel::<Vec<SigJob>>(workers * 4);
    let rx = Mutex::new(rx);
    let bad_sig: Mutex<Option<SigJob>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let chain = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let batch = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(b) => b,
                        Err(_) => return,
                    };
                    for job in batch {
                        if !key.verifies(&job.hash, &job.sig) {
                            let mut bad = bad_sig.lock().unwrap_or_else(|p| p.into_inner());
                            if bad.as_ref().is_none_or(|b| job.index < b.index) {
                                *bad = Some(job);
                            }
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        let mut checker = Checker::new(files, tx, &stop, all_sigs, witnesses);
        let res = checker.run();
        drop(checker);
        res
    });
    let chain = chain?;
    let bad_sig = bad_sig.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(job) = bad_sig {
        let earlier = match &chain {
            Verdict::Bad(f) => (job.file, job.line) < f.pos,
            Verdict::Ok(_) => true,
        };
        if earlier {
            let (problem, detail) = if job.index == 0 {
                (
                    Problem::WrongKey,
                    format!("the signature does not verify with {}", key_path.display()),
                )
            } else {
                (
                    Problem::Edited,
                    format!(
                        "{SIG_FAILED}: the records it covers were rewritten (or the key changed)"
                    ),
                )
            };
            return Ok(Verdict::Bad(Finding {
                file: files[job.file].clone(),
                line: job.line,
                seq: Some(job.seq),
                problem,
                detail,
                pos: (job.file, job.line),
            }));
        }
    }
    let Verdict::Ok(mut summary) = chain else {
        return Ok(chain);
    };
    // The head: the last chain head the writers signed. A log that ends before it was cut short.
    let last_file = files.len() - 1;
    let head_path = Head::path(&files[last_file]);
    let head = Head::read(&head_path).map_err(|source| Error::Read {
        path: head_path.clone(),
        source,
    })?;
    if let Some(h) = head {
        let at = |problem, detail| {
            Ok(Verdict::Bad(Finding {
                file: head_path.clone(),
                line: 1,
                seq: Some(h.seq),
                problem,
                detail,
                pos: (last_file, 0),
            }))
        };
        if !key.verifies(h.hash.as_bytes(), h.sig.as_bytes()) {
            return at(
                Problem::Edited,
                "the head's signature does not verify".to_string(),
            );
        }
        if h.seq > summary.last_seq {
            return Ok(Verdict::Bad(Finding {
                file: files[last_file].clone(),
                line: summary.last_line,
                seq: Some(summary.last_seq),
                problem: Problem::Truncated,
                detail: format!(
                    "the log ends at seq {}, but seq {} was written (signed head {})",
                    summary.last_seq,
                    h.seq,
                    head_path.display()
                ),
                pos: (last_file, u64::MAX),
            }));
        }
        summary.head = (h.seq >= summary.first_seq).then_some(h.seq);
    } else {
        summary.head = None;
    }
    // A record something outside the log saw: a log that ends before it was cut short,
    // whatever its head file says (the head file lives beside the log, and can be forged
    // from an earlier record by whoever can write the log).
    if let Some(w) = witnesses.iter().max_by_key(|w| w.seq)
        && w.seq > summary.last_seq
    {
        return Ok(Verdict::Bad(Finding {
            file: files[last_file].clone(),
            line: summary.last_line,
            seq: Some(summary.last_seq),
            problem: Problem::Truncated,
            detail: format!(
                "the log ends at seq {}, but {} saw seq {}",
                summary.last_seq, w.source, w.seq
            ),
            pos: (last_file, u64::MAX),
        }));
    }
    for w in witnesses {
        let before = summary.records == 0 || w.seq < summary.first_seq;
        match summary.witnessed.iter_mut().find(|(l, _, _)| *l == w.label) {
            Some(entry) if entry.1 < w.seq => *entry = (w.label.clone(), w.seq, before),
            Some(_) => {}
            None => summary.witnessed.push((w.label.clone(), w.seq, before)),
        }
    }
    Ok(Verdict::Ok(summary))
}

struct Checker<'a> {
    files: &'a [PathBuf],
    sigs: Option<mpsc::SyncSender<Vec<SigJob>>>,
    batch: Vec<SigJob>,
    /// Check every signature, not just the first and the last.
    all_sigs: bool,
    /// The last signature seen, checked at the end.
    last_sig: Option<SigJob>,
    stop: &'a AtomicBool,
    last: Option<Link>,
    before: Option<Link>,
    head: Option<Head>,
    /// What witnesses saw, by seq.
    witnesses: std::collections::HashMap<u64, Vec<&'a Witness>>,
    summary: Summary,
    file: usize,
}

impl<'a> Checker<'a> {
    fn new(
        files: &'a [PathBuf],
        sigs: mpsc::SyncSender<Vec<SigJob>>,
        stop: &'a AtomicBool,
        all_sigs: bool,
        witnesses: &'a [Witness],
    ) -> Checker<'a> {
        let head = files
            .last()
            .and_then(|f| Head::read(&Head::path(f)).ok().flatten());
        let mut by_seq: std::collections::HashMap<u64, Vec<&Witness>> =
            std::collections::HashMap::new();
        for w in witnesses {
            by_seq.entry(w.seq).or_default().push(w);
        }
        Checker {
            files,
            sigs: Some(sigs),
            batch: Vec::new(),
            all_sigs,
            last_sig: None,
            stop,
            last: None,
            before: None,
            head,
            witnesses: by_seq,
            summary: Summary::default(),
            file: 0,
        }
    }

    fn run(&mut self) -> Result<Verdict, Error> {
        for i in 0..self.files.len() {
            self.file = i;
            if let Some(f) = self.check_file()? {
                // Signatures before the finding are still checked: an earlier bad one wins.
                self.flush_sigs();
                return Ok(Verdict::Bad(f));
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        self.flush_sigs();
        if let Some(last) = self.last.as_ref().filter(|l| !l.signed) {
            return Ok(Verdict::Bad(self.finding(
                last.line,
                Some(last.seq),
                Problem::Truncated,
                format!(
                    "the last record is not signed: the log was cut after its last seal, or \
                     its writer stopped within {} ms of writing it (the next writer to open \
                     the log seals it; verify again then)",
                    super::SEAL_WITHIN.as_millis()
                ),
            )));
        }
        let mut summary = std::mem::take(&mut self.summary);
        summary.last_line = self.last.as_ref().map_or(0, |l| l.line);
        Ok(Verdict::Ok(summary))
    }

    fn finding(&self, line: u64, seq: Option<u64>, problem: Problem, detail: String) -> Finding {
        Finding {
            file: self.files[self.file].clone(),
            line,
            seq,
            problem,
            detail,
            pos: (self.file, line),
        }
    }

    fn check_file(&mut self) -> Result<Option<Finding>, Error> {
        let path = &self.files[self.file];
        let err = |source| Error::Read {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(err)?);
        let mut buf = Vec::with_capacity(4096);
        let mut prev: Option<Previous> = None;
        let (mut offset, mut line_no) = (0u64, 0u64);
        let mut first_in_file: Option<u64> = None;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let complete = buf.last() == Some(&b'\n');
            let line = if complete { &buf[..n - 1] } else { &buf[..] };
            if line_no % 1024 == 0 && self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            // A recovery record sealing the line before it: that line is torn, not a record.
            if let Some(torn) = sealed_torn(line) {
                match prev.as_mut().filter(|p| p.offset == torn.offset) {
                    Some(p)
                        if p.bytes.len() as u64 == torn.bytes
                            && crate::digest::sha256_hex(&p.bytes) == torn.sha256 =>
                    {
                        if let Some((last, before, signed)) = p.undo.take() {
                            self.last = last;
                            self.before = before;
                            self.summary.records -= 1;
                            self.summary.signatures -= u64::from(signed);
                        }
                        p.suspect = None;
                        self.summary.torn.push((path.clone(), p.line));
                    }
                    Some(p) => {
                        return Ok(Some(
                            self.finding(
                                p.line,
                                None,
                                Problem::Edited,
                                "the torn line differs from what the recovery record after it says"
                                    .into(),
                            ),
                        ));
                    }
                    None => {
                        return Ok(Some(self.finding(
                            line_no,
                            None,
                            Problem::Deleted,
                            format!(
                                "the torn line this recovery record seals (at byte {}) is missing",
                                torn.offset
                            ),
                        )));
                    }
                }
            }
            if let Some(s) = prev.as_mut().and_then(|p| p.suspect.take()) {
                return Ok(Some(self.judge(s, Some(line), &mut reader)));
            }
            let mut p = Previous {
                offset,
                line: line_no,
                bytes: line.to_vec(),
                undo: None,
                suspect: None,
            };
            if !complete {
                p.suspect = Some(Suspect {
                    line: line_no,
                    seq: None,
                    malformed: Some((Problem::Torn, "the last line is incomplete: a write was cut off, and no writer has sealed it since".into())),
                    content_ok: false,
                    prev: String::new(),
                    kind_rotated: false,
                });
            } else {
                match self.record(line, line_no) {
                    Ok(undo) => {
                        first_in_file.get_or_insert(self.last.as_ref().map_or(0, |l| l.seq));
                        p.undo = Some(undo);
                    }
                    Err(s) => p.suspect = Some(s),
                }
            }
            offset += n as u64;
            prev = Some(p);
        }
        if let Some(s) = prev.as_mut().and_then(|p| p.suspect.take()) {
            return Ok(Some(self.judge(s, None, &mut reader)));
        }
        Ok(self.check_name(first_in_file, line_no))
    }

    /// A rotated file is named `<log>.<first seq>-<last seq>`: it must hold exactly those.
    fn check_name(&self, first: Option<u64>, lines: u64) -> Option<Finding> {
        let name = self.files[self.file]
            .file_name()?
            .to_string_lossy()
            .into_owned();
        let (_, range) = name.rsplit_once('.')?;
        let (a, b) = range.split_once('-')?;
        let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
        let last = self.last.as_ref()?;
        if first != Some(a) {
            return Some(self.finding(
                1,
                first,
                Problem::Deleted,
                format!("the file's name says it starts at seq {a}"),
            ));
        }
        (last.seq != b).then(|| {
            self.finding(
                lines,
                Some(last.seq),
                Problem::Truncated,
                format!("the file's name says it ends at seq {b}"),
            )
        })
    }

    /// Takes a complete line into the chain, or says why it does not fit.
    fn record(
        &mut self,
        line: &[u8],
        line_no: u64,
    ) -> Result<(Option<Link>, Option<Link>, bool), Suspect> {
        let malformed = |why: String| Suspect {
            line: line_no,
            seq: None,
            malformed: Some((Problem::Malformed, why)),
            content_ok: false,
            prev: String::new(),
            kind_rotated: false,
        };
        let Some(parts) = Line::split(line) else {
            return Err(malformed(
                "not an audit record: the line does not end with its hash".into(),
            ));
        };
        let fields: Fields<'_> = serde_json::from_slice(line)
            .map_err(|e| malformed(format!("not an audit record: {e}")))?;
        let content_ok = parts.hash_matches(fields.prev.as_bytes());
        let linked = match &self.last {
            None => (fields.seq == 1 && fields.prev.is_empty()) || fields.kind == "rotated",
            Some(l) => fields.seq == l.seq + 1 && fields.prev == l.hash,
        };
        if !content_ok || !linked {
            return Err(Suspect {
                line: line_no,
                seq: Some(fields.seq),
                malformed: None,
                content_ok,
                prev: fields.prev.to_string(),
                kind_rotated: fields.kind == "rotated",
            });
        }
        let hash = String::from_utf8_lossy(parts.hash).into_owned();
        if self
            .head
            .as_ref()
            .is_some_and(|h| h.seq == fields.seq && h.hash != hash)
        {
            return Err(Suspect {
                line: line_no,
                seq: Some(fields.seq),
                malformed: Some((
                    Problem::Edited,
                    "the record differs from the signed head that names its seq".into(),
                )),
                content_ok: true,
                prev: fields.prev.to_string(),
                kind_rotated: false,
            });
        }
        let differs = self.witnesses.get(&fields.seq).and_then(|ws| {
            ws.iter().find(|w| {
                w.hash
                    .as_deref()
                    .is_some_and(|h| !h.eq_ignore_ascii_case(&hash))
            })
        });
        if let Some(w) = differs {
            return Err(Suspect {
                line: line_no,
                seq: Some(fields.seq),
                malformed: Some((
                    Problem::Edited,
                    format!(
                        "the record differs from the one {} saw: the log was rewritten from here or before",
                        w.source
                    ),
                )),
                content_ok: true,
                prev: fields.prev.to_string(),
                kind_rotated: false,
            });
        }
        if let Some(sig) = parts.sig {
            let mut job = SigJob {
                index: self.summary.signatures,
                hash: [0; 64],
                sig: [0; 128],
                file: self.file,
                line: line_no,
                seq: fields.seq,
            };
            job.hash.copy_from_slice(parts.hash);
            job.sig.copy_from_slice(sig);
            // Signatures are chained into the next record's `prev`, so the last one covers
            // every byte before it: the first (is it the key?) and the last suffice, and all
            // are checked only to locate a failure.
            if self.all_sigs || job.index == 0 {
                self.batch.push(job);
                if self.batch.len() >= 256 {
                    self.flush_sigs_partial();
                }
            } else {
                self.last_sig = Some(job);
            }
        }
        match fields.kind {
            "gap" => {
                self.summary.gaps += 1;
                if let Ok(g) = serde_json::from_slice::<GapRecord>(line) {
                    self.summary.records_lost += g.detail.records_lost;
                }
            }
            "rotated" if self.last.is_some() => self.summary.rotations += 1,
            _ => {}
        }
        if self.summary.records == 0 {
            self.summary.first_seq = fields.seq;
        }
        self.summary.records += 1;
        self.summary.signatures += u64::from(parts.sig.is_some());
        self.summary.last_seq = fields.seq;
        let link = Link {
            seq: fields.seq,
            // What the next record's `prev` must name.
            hash: super::chain::link(&hash, parts.sig),
            signed: parts.sig.is_some(),
            file: self.file,
            line: line_no,
        };
        let undo = (self.last.clone(), self.before.clone(), parts.sig.is_some());
        self.before = self.last.replace(link);
        Ok(undo)
    }

    fn flush_sigs_partial(&mut self) {
        if let Some(tx) = &self.sigs {
            let _ = tx.send(std::mem::take(&mut self.batch));
        }
    }

    fn flush_sigs(&mut self) {
        self.batch.extend(self.last_sig.take());
        self.flush_sigs_partial();
        self.sigs = None;
    }

    /// Says what is wrong with a line that did not fit the chain, from the lines after it.
    fn judge(&mut self, s: Suspect, next: Option<&[u8]>, reader: &mut impl BufRead) -> Finding {
        let mut ahead: Vec<Brief> = next.and_then(Brief::parse).into_iter().collect();
        if next.is_some() {
            let mut buf = Vec::new();
            while ahead.len() < LOOKAHEAD {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => ahead.extend(Brief::parse(buf.strip_suffix(b"\n").unwrap_or(&buf))),
                }
            }
        }
        let at = |problem, detail: String| self.finding(s.line, s.seq, problem, detail);
        // Without this line, would the chain be whole?
        let heals = match (ahead.first(), &self.last) {
            (Some(n), Some(l)) => n.seq == l.seq + 1 && n.prev == l.hash,
            (Some(n), None) => n.seq == 1 && n.prev.is_empty(),
            (None, _) => false,
        } && ahead
            .get(1)
            .is_none_or(|n2| n2.seq == ahead[0].seq + 1 && n2.prev == ahead[0].hash);
        if heals && next.is_some() {
            let after = self
                .last
                .as_ref()
                .map_or("the start".to_string(), |l| format!("seq {}", l.seq));
            return at(
                Problem::Inserted,
                format!("this line does not belong in the chain: the next record follows {after}"),
            );
        }
        if let Some((problem, why)) = s.malformed {
            return at(problem, why);
        }
        if !s.content_ok {
            return at(Problem::Edited, "the record does not match its hash".into());
        }
        let Some(last) = self.last.clone() else {
            return at(
                Problem::Deleted,
                format!(
                    "the chain starts at seq {}: the records before it are missing",
                    s.seq.unwrap_or(0)
                ),
            );
        };
        let seq = s.seq.unwrap_or(0);
        if seq == last.seq && self.before.as_ref().is_some_and(|b| b.hash == s.prev) {
            return Finding {
                file: self.files[last.file].clone(),
                line: last.line,
                seq: Some(last.seq),
                problem: Problem::Inserted,
                detail: "this record does not belong in the chain: the next one follows the record before it".into(),
                pos: (last.file, last.line),
            };
        }
        if seq > last.seq + 1 {
            if let Some(later) = ahead.iter().find(|b| b.seq > last.seq && b.seq < seq) {
                return at(
                    Problem::Reordered,
                    format!("seq {seq} comes before seq {}", later.seq),
                );
            }
            let hint = if s.kind_rotated {
                " (a rotated file left out?)"
            } else {
                ""
            };
            let missing = if seq == last.seq + 2 {
                format!("seq {} is", last.seq + 1)
            } else {
                format!("seq {}-{} are", last.seq + 1, seq - 1)
            };
            return at(
                Problem::Deleted,
                format!("follows seq {}: {missing} missing{hint}", last.seq),
            );
        }
        if seq <= last.seq {
            return at(Problem::Reordered, format!("comes after seq {}", last.seq));
        }
        at(
            Problem::Edited,
            format!(
                "`prev` is not the hash of seq {}: a record before it was rewritten",
                last.seq
            ),
        )
    }
}

/// `seq`, `prev` and `hash` of a line after a problem.
struct Brief {
    seq: u64,
    prev: String,
    hash: String,
}

impl Brief {
    fn parse(line: &[u8]) -> Option<Brief> {
        let parts = Line::split(line)?;
        let f: Fields<'_> = serde_json::from_slice(line).ok()?;
        Some(Brief {
            seq: f.seq,
            prev: f.prev.to_string(),
            hash: super::chain::link(&String::from_utf8_lossy(parts.hash), parts.sig),
        })
    }
}

/// If `line` is a `recovery` record for a torn line, what it says about that line.
fn sealed_torn(line: &[u8]) -> Option<TornLine> {
    memchr::memmem::find(line, b"\"kind\":\"recovery\"")?;
    serde_json::from_slice::<Recovery>(line).ok()?.detail.torn
}
