//! Reads records from the audit log from a cursor on, following the live file across
//! rotation: when the log's path names a new file, the old one is read to its end first.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::Error;
use super::cursor::{Cursor, FileId};

/// How long a rotated file's unterminated last line is waited for before it is given up.
const TORN_TAIL_GRACE: Duration = Duration::from_secs(1);
/// Bytes read at a time.
const CHUNK: usize = 256 * 1024;

/// One line of the log.
#[derive(Debug)]
pub struct Entry {
    /// The record, unless the line is not one (a line torn by a crash, or a record the
    /// cursor says was already sent): such lines are passed over.
    pub record: Option<Line>,
    /// The position just after this line.
    pub pos: Cursor,
}

/// A record as read: its bytes (without the newline) and its fields.
#[derive(Debug)]
pub struct Line {
    pub bytes: Vec<u8>,
    pub value: Value,
    pub seq: u64,
}

/// The fields every record has that the reader needs.
#[derive(Deserialize)]
struct Head {
    seq: u64,
    hash: String,
    #[expect(
        dead_code,
        reason = "only its presence is checked: files without it are not audit logs"
    )]
    kind: String,
}

struct LogFile {
    id: FileId,
    file: File,
    name: PathBuf,
}

impl LogFile {
    fn open(path: &Path) -> Result<LogFile, Error> {
        let err = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        let id = FileId::of(&file.metadata().map_err(err)?);
        Ok(LogFile {
            id,
            file,
            name: path.to_path_buf(),
        })
    }

    fn len(&self) -> Result<u64, Error> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|source| Error::Read {
                path: self.name.clone(),
                source,
            })
    }
}

/// The log being read: the file the reading position is in, and the files after it.
pub struct Source {
    path: PathBuf,
    /// The file of the last committed position first (kept open for a rewind), the live
    /// file last.
    files: VecDeque<LogFile>,
    /// Index in `files` of the file being read, and the position in it.
    cur: usize,
    pos: Cursor,
    /// Records with a seq up to this one are passed over (resuming without the cursor's file).
    skip_through: Option<u64>,
    /// The log's path names a new file, opened here; switched to once the current one is read.
    next: Option<(LogFile, Instant)>,
}

impl Source {
    /// Opens the log at `path` for reading from `cursor` (from the start without one).
    /// `exclude`: files next to the log that are not rotated logs (the cursor's).
    pub fn open(
        path: &Path,
        cursor: Option<&Cursor>,
        exclude: &[PathBuf],
    ) -> Result<Source, Error> {
        let live = LogFile::open(path)?;
        let mut src = Source {
            path: path.to_path_buf(),
            pos: Cursor::start(live.id),
            files: VecDeque::new(),
            cur: 0,
            skip_through: None,
            next: None,
        };
        let Some(cursor) = cursor else {
            src.files.push_back(live);
            return Ok(src);
        };
        // The inode alone could be a reused one: the record before the offset must be the
        // cursor's too.
        if cursor.file == live.id && ends_at(&live, cursor)? {
            src.pos = cursor.clone();
            src.files.push_back(live);
            return Ok(src);
        }
        // The log was rotated since the cursor was saved. Records keep their seq across
        // rotation, so the rotated files to read are those that hold later records.
        let mut rotated = rotated_files(path, exclude)?;
        rotated
            .retain(|(f, first)| f.id != live.id && (f.id == cursor.file || *first > cursor.seq));
        let mut resume_in = None;
        for (f, _) in &rotated {
            if f.id == cursor.file && ends_at(f, cursor)? {
                resume_in = Some(f.id);
            }
        }
        rotated.retain(|(f, _)| f.id != cursor.file || resume_in == Some(f.id));
        rotated.sort_by_key(|(f, first)| (Some(f.id) != resume_in, *first));
        match rotated.first() {
            Some((f, _)) if Some(f.id) == resume_in => {
                src.pos = cursor.clone();
            }
            _ => {
                let live_first = first_seq(&live)?;
                match live_first {
                    Some(first)
                        if first <= cursor.seq
                            && rotated.is_empty()
                            && !contains(&live, cursor)? =>
                    {
                        tracing::warn!(path = %path.display(), cursor_seq = cursor.seq, "the cursor's file is gone and the log starts over: reading the new log from its start");
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), cursor_seq = cursor.seq, "the cursor's file is gone: resuming after seq {}; records between may be missing", cursor.seq);
                        src.skip_through = Some(cursor.seq);
                    }
                }
                if let Some((f, _)) = rotated.first() {
                    src.pos = Cursor::start(f.id);
                }
            }
        }
        src.files.extend(rotated.into_iter().map(|(f, _)| f));
        src.files.push_back(live);
        src.pos.seq = cursor.seq;
        src.pos.hash.clone_from(&cursor.hash);
        Ok(src)
    }

    /// The position the next record is read from.
    pub fn position(&self) -> &Cursor {
        &self.pos
    }

    /// Up to the last `max_bytes` of the current file before the reading position, whole
    /// lines only: what was sent before this run started (OTLP recovers the requests whose
    /// responses are still to come from it).
    pub fn read_before(&self, max_bytes: u64) -> Result<Vec<u8>, Error> {
        let f = &self.files[self.cur];
        let start = self.pos.offset.saturating_sub(max_bytes);
        let len = usize::try_from(self.pos.offset - start).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; len];
        f.file
            .read_exact_at(&mut buf, start)
            .map_err(|source| Error::Read {
                path: f.name.clone(),
                source,
            })?;
        if start > 0 {
            // Begun mid-line: from the first whole one.
            let first = buf
                .iter()
                .position(|&b| b == b'\n')
                .map_or(buf.len(), |i| i + 1);
            buf.drain(..first);
        }
        Ok(buf)
    }

    /// Goes back to `to`, a position read before and not yet [`Source::forget_before`].
    pub fn rewind(&mut self, to: &Cursor) -> Result<(), Error> {
        let idx = self
            .files
            .iter()
            .position(|f| f.id == to.file)
            .ok_or(Error::LostFile)?;
        self.cur = idx;
        self.pos = to.clone();
        Ok(())
    }

    /// Closes the files before the one `to` is in: no rewind goes before `to` any more.
    pub fn forget_before(&mut self, to: &Cursor) {
        if let Some(idx) = self.files.iter().position(|f| f.id == to.file) {
            let idx = idx.min(self.cur);
            self.files.drain(..idx);
            self.cur -= idx;
        }
    }

    /// Up to `max_records` lines (about `max_bytes`), following rotation; empty when there
    /// is nothing new.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let read = self.read_lines(
                max_records - out.len(),
                max_bytes.saturating_sub(bytes),
                &mut out,
            )?;
            bytes += read;
            if out.len() >= max_records || bytes >= max_bytes || read > 0 {
                return Ok(out);
            }
            // At the end of the current file.
            if self.cur + 1 < self.files.len() {
                self.advance_file()?;
                continue;
            }
            if !self.rotation_ready()? {
                return Ok(out);
            }
        }
    }

    /// Moves to the start of the next file in `files`.
    fn advance_file(&mut self) -> Result<(), Error> {
        let f = &self.files[self.cur];
        let len = f.len()?;
        if len > self.pos.offset {
            tracing::warn!(path = %f.name.display(), bytes = len - self.pos.offset, "rotated log ends with an unterminated line; passed over");
        }
        self.cur += 1;
        let (seq, hash) = (self.pos.seq, std::mem::take(&mut self.pos.hash));
        self.pos = Cursor {
            seq,
            hash,
            ..Cursor::start(self.files[self.cur].id)
        };
        Ok(())
    }

    /// At the end of the live file: whether the log has been rotated and the old file is
    /// read to its end (then the new file is queued and reading goes on there).
    fn rotation_ready(&mut self) -> Result<bool, Error> {
        let current = &self.files[self.cur];
        if self.next.is_none() {
            let id = match std::fs::metadata(&self.path) {
                Ok(m) => FileId::of(&m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(source) => {
                    return Err(Error::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            };
            if id == current.id {
                if current.len()? < self.pos.offset {
                    tracing::warn!(path = %self.path.display(), "the log was truncated; reading it from the start");
                    self.pos.offset = 0;
                    self.skip_through = Some(self.pos.seq);
                    return Ok(true);
                }
                return Ok(false);
            }
            let new = match LogFile::open(&self.path) {
                Ok(f) => f,
                Err(Error::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
            tracing::info!(path = %self.path.display(), "log rotated; finishing the old file first");
            self.next = Some((new, Instant::now()));
            // Read the old file once more: records may have landed before the rename.
            return Ok(true);
        }
        // The old file is read to its end, but for an unterminated line that a writer
        // may still be completing.
        if let Some((_, since)) = &self.next
            && current.len()? > self.pos.offset
            && since.elapsed() < TORN_TAIL_GRACE
        {
            return Ok(false);
        }
        if let Some((new, _)) = self.next.take() {
            self.files.push_back(new);
            self.advance_file()?;
        }
        Ok(true)
    }

    /// Reads the complete lines after the position in the current file into `out`;
    /// returns the bytes consumed.
    fn read_lines(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<usize, Error> {
        let f = &self.files[self.cur];
        let err = |source| Error::Read {
            path: f.name.clone(),
            source,
        };
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        // Ends of the complete lines read (just past their newline).
        let mut ends = Vec::new();
        loop {
            let n = f
                .file
                .read_at(&mut buf[filled..], self.pos.offset + filled as u64)
                .map_err(err)?;
            filled += n;
            let mut start = ends.last().copied().unwrap_or(0);
            while let Some(nl) = memchr::memchr(b'\n', &buf[start..filled]) {
                start += nl + 1;
                ends.push(start);
                if ends.len() >= max_records || start >= max_bytes {
                    break;
                }
            }
            if n == 0 || !ends.is_empty() {
                break;
            }
            // One line longer than the buffer: grow it.
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
        }
        let mut start = 0;
        for &end in &ends {
            let entry = self.entry(&buf[start..end - 1], end as u64);
            out.push(entry);
            start = end;
        }
        self.pos.offset += start as u64;
        Ok(start)
    }

    /// The entry for `line`, which ends `end` bytes after the position.
    fn entry(&mut self, line: &[u8], end: u64) -> Entry {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let parsed = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| Head::deserialize(&v).ok().map(|h| (v, h)));
        let mut pos = Cursor {
            offset: self.pos.offset + end,
            ..self.pos.clone()
        };
        let record = match parsed {
            None => {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    tracing::warn!(path = %self.files[self.cur].name.display(), offset = pos.offset - end, "line is not an audit record; passed over");
                }
                None
            }
            Some((value, head)) => {
                pos.seq = head.seq;
                pos.hash = head.hash;
                self.pos.seq = pos.seq;
                self.pos.hash.clone_from(&pos.hash);
                match self.skip_through {
                    Some(through) if head.seq <= through => None,
                    _ => {
                        self.skip_through = None;
                        Some(Line {
                            bytes: line.to_vec(),
                            value,
                            seq: head.seq,
                        })
                    }
                }
            }
        };
        Entry { record, pos }
    }
}

/// The files next to the log named `<log name>.*` that are audit logs, with the seq of
/// their first record.
fn rotated_files(path: &Path, exclude: &[PathBuf]) -> Result<Vec<(LogFile, u64)>, Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        // `<log>.new-*` is the next live file while a writer rotates, not a rotated one.
        let matches = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .is_some_and(|rest| !rest.starts_with("new-"));
        if !matches || exclude.contains(&p) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(f) = LogFile::open(&p) else { continue };
        if let Ok(Some(first)) = first_seq(&f) {
            out.push((f, first));
        }
    }
    Ok(out)
}

/// The seq of a file's first record; `None` if its first line is not a record.
fn first_seq(f: &LogFile) -> Result<Option<u64>, Error> {
    let mut line = Vec::new();
    let err = |source| Error::Read {
        path: f.name.clone(),
        source,
    };
    // Reading elsewhere is by offset (pread); the file position is this function's own.
    (&f.file).seek(SeekFrom::Start(0)).map_err(err)?;
    let mut reader = std::io::Read::take(BufReader::new(&f.file), 16 << 20);
    reader.read_until(b'\n', &mut line).map_err(err)?;
    Ok(serde_json::from_slice::<Head>(line.trim_ascii())
        .ok()
        .map(|h| h.seq))
}

/// Whether the record that ends at the cursor's offset in `f` is the cursor's.
fn ends_at(f: &LogFile, cursor: &Cursor) -> Result<bool, Error> {
    if cursor.offset == 0 {
        return Ok(cursor.seq == 0);
    }
    if f.len()? < cursor.offset {
        return Ok(false);
    }
    let err = |source| Error::Read {
        path: f.name.clone(),
        source,
    };
    let mut want = 64 * 1024u64;
    loop {
        let from = cursor.offset.saturating_sub(want);
        let mut buf = vec![0u8; usize::try_from(cursor.offset - from).unwrap_or(usize::MAX)];
        f.file.read_exact_at(&mut buf, from).map_err(err)?;
        let Some(body) = buf.strip_suffix(b"\n") else {
            return Ok(false);
        };
        match body.iter().rposition(|&b| b == b'\n') {
            Some(nl) => return Ok(is_cursors(&body[nl + 1..], cursor)),
            None if from == 0 => return Ok(is_cursors(body, cursor)),
            None if want >= 64 << 20 => return Ok(false),
            None => want *= 4,
        }
    }
}

fn is_cursors(line: &[u8], cursor: &Cursor) -> bool {
    serde_json::from_slice::<Head>(line).is_ok_and(|h| h.seq == cursor.seq && h.hash == cursor.hash)
}

/// Whether the file holds the record the cursor points after.
fn contains(f: &LogFile, cursor: &Cursor) -> Result<bool, Error> {
    (&f.file)
        .seek(SeekFrom::Start(0))
        .map_err(|source| Error::Read {
            path: f.name.clone(),
            source,
        })?;
    let r = BufReader::new(&f.file);
    for line in r.split(b'\n') {
        let line = line.map_err(|source| Error::Read {
            path: f.name.clone(),
            source,
        })?;
        if let Ok(h) = serde_json::from_slice::<Head>(&line)
            && h.seq == cursor.seq
            && h.hash == cursor.hash
        {
            return Ok(true);
        }
    }
    Ok(false)
}
