//! Checkpoints: the signed chain head, copied at most every [`INTERVAL`] to an append-only
//! file kept away from the log, so that `audit verify --checkpoint FILE` sees a log cut
//! short (and its `.head` forged from an earlier record) by whoever can write the log.
//!
//! The file is JSON lines, only ever appended to:
//! - `{"key":"<hex>","time":"..."}`: the first line, written when the file is new: the
//!   public key, pinned at first use;
//! - `{"seq":N,"hash":"<hex>","sig":"<hex>","time":"..."}`: a signed chain head, exactly
//!   the record's own `hash` and `sig`, written only once the record is on disk (in durable
//!   mode after its `fdatasync`), so a checkpoint never names a record a crash can lose.
//!
//! A checkpoint is worth what its location is worth: one the log's writer can rewrite
//! proves nothing against that writer. Root makes a file append-only for a user with
//! `chattr +a` (the user can add lines, not change or remove them); `verify` reports
//! whether the file it read is append-only.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use serde::Deserialize;

use super::chain::{Head, Signer};

/// Least time between two checkpoints while records are written (the last head is always
/// written when the log is closed, and by the durable-mode flusher once it is due).
pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the audit checkpoint file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the audit checkpoint file {} pinned another public key ({pinned}) at first use than this log's signing key ({mine}); a new key needs a new checkpoint file", path.display())]
    KeyMismatch {
        path: PathBuf,
        pinned: String,
        mine: String,
    },
    #[error("{}:{line}: not a checkpoint line: {why}", path.display())]
    Malformed {
        path: PathBuf,
        line: u64,
        why: String,
    },
}

/// The writer's side: appends heads to the checkpoint file.
pub(crate) struct Checkpoint {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// When the last head was written.
    last: Option<Instant>,
    /// A head not written yet because the last one is too recent.
    pending: Option<Head>,
}

impl Checkpoint {
    /// Opens (creating, mode 0600) the checkpoint file at `path` for appending; pins the
    /// signer's public key in a new file, and refuses a file that pinned another one.
    pub fn open(path: &Path, signer: &Signer) -> Result<Checkpoint, Error> {
        let err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        let mut text = Vec::new();
        Read::by_ref(&mut file)
            .take(4096)
            .read_to_end(&mut text)
            .map_err(err)?;
        let mine = signer.public_hex();
        if text.is_empty() {
            let line = format!("{{\"key\":\"{mine}\",\"time\":\"{}\"}}\n", now());
            file.write_all(line.as_bytes()).map_err(err)?;
        } else {
            let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
            if let Ok(k) = serde_json::from_slice::<KeyLine>(first)
                && !k.key.eq_ignore_ascii_case(&mine)
            {
                return Err(Error::KeyMismatch {
                    path: path.to_path_buf(),
                    pinned: k.key,
                    mine,
                });
            }
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                file,
                last: None,
                pending: None,
            }),
        })
    }

    /// A new signed head (on disk already): written now if the last checkpoint is at least
    /// [`INTERVAL`] old, else kept for later.
    pub fn offer(&self, head: &Head) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.pending.as_ref().is_none_or(|p| p.seq < head.seq) {
            st.pending = Some(head.clone());
        }
        self.write_due(&mut st, false);
    }

    /// Writes the head that waits, once it is due.
    pub fn tick(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.write_due(&mut st, false);
    }

    /// Writes the head that waits, due or not (the log is being closed).
    pub fn flush(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.write_due(&mut st, true);
    }

    fn write_due(&self, st: &mut State, now_anyway: bool) {
        if st.pending.is_none() || !(now_anyway || st.last.is_none_or(|t| t.elapsed() >= INTERVAL))
        {
            return;
        }
        let Some(h) = st.pending.take() else { return };
        let line = format!(
            "{{\"seq\":{},\"hash\":\"{}\",\"sig\":\"{}\",\"time\":\"{}\"}}\n",
            h.seq,
            h.hash,
            h.sig,
            now()
        );
        // One write of one line: appends of concurrent writers do not interleave.
        match st.file.write(line.as_bytes()) {
            Ok(n) if n == line.len() => st.last = Some(Instant::now()),
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "short write to the audit checkpoint file")
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot write the audit checkpoint file");
                st.pending = Some(h);
            }
        }
    }
}

#[derive(Deserialize)]
struct KeyLine {
    key: String,
}

/// A checkpoint file as `verify` reads it.
#[derive(Debug, Default)]
pub struct Contents {
    /// The public key pinned at first use (hex), and its line.
    pub key: Option<(u64, String)>,
    /// The signed heads, with their lines.
    pub heads: Vec<(u64, Head)>,
    /// The file has the append-only attribute (`chattr +a`): its lines cannot be changed or
    /// removed, not even by its owner, without `CAP_LINUX_IMMUTABLE`.
    pub append_only: bool,
}

/// Reads the checkpoint file at `path`. A last line without its newline (a write a crash
/// cut short) is left out; any other line that is not a key or a head is an error.
pub fn read(path: &Path) -> Result<Contents, Error> {
    let err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(err)?;
    let mut out = Contents {
        append_only: append_only(&file),
        ..Contents::default()
    };
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for (i, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
        let n = i as u64 + 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        if let Ok(h) = serde_json::from_slice::<Head>(line) {
            out.heads.push((n, h));
        } else if let Ok(k) = serde_json::from_slice::<KeyLine>(line) {
            if out.key.is_none() {
                out.key = Some((n, k.key));
            }
        } else {
            return Err(Error::Malformed {
                path: path.to_path_buf(),
                line: n,
                why: String::from_utf8_lossy(line).chars().take(80).collect(),
            });
        }
    }
    Ok(out)
}

nix::ioctl_read!(fs_ioc_getflags, b'f', 1, nix::libc::c_long);

/// `FS_APPEND_FL` from `linux/fs.h`.
const FS_APPEND_FL: nix::libc::c_long = 0x20;

/// Whether `file` has the append-only attribute.
pub fn append_only(file: &File) -> bool {
    let mut flags: nix::libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes at most one int into `flags`, which outlives the call.
    let res = unsafe { fs_ioc_getflags(file.as_raw_fd(), &mut flags) };
    res.is_ok() && flags & FS_APPEND_FL != 0
}

fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}
