//! The forwarder's cursor: how far into the log the SIEM has (at least) everything.
//!
//! Saved atomically (temporary file, `fsync`, `rename`, `fsync` of the directory), so a
//! crash leaves either the old cursor or the new one, never a torn one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Error;

/// Version of the cursor file format.
const VERSION: u32 = 1;

/// A file's identity: device and inode, stable across renames (rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A position in the log: just after the record `seq` (whose hash is `hash`), at byte
/// `offset` of the file `file`. `seq` 0 and an empty hash: before the first record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub v: u32,
    #[serde(flatten)]
    pub file: FileId,
    pub offset: u64,
    pub seq: u64,
    pub hash: String,
}

impl Cursor {
    /// The start of the file `file`.
    pub fn start(file: FileId) -> Cursor {
        Cursor {
            v: VERSION,
            file,
            offset: 0,
            seq: 0,
            hash: String::new(),
        }
    }
}

/// Where the cursor of `log` is kept when no `--cursor` is given: `<log>.cursor`.
pub fn default_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".cursor");
    PathBuf::from(p)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The files a cursor at `path` uses besides itself (they are not audit logs).
pub fn companions(path: &Path) -> [PathBuf; 2] {
    [with_suffix(path, ".tmp"), with_suffix(path, ".lock")]
}

/// Reads the cursor at `path`; `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Cursor>, Error> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Cursor {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let cursor: Cursor = serde_json::from_slice(&text).map_err(|e| Error::CursorFormat {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if cursor.v != VERSION {
        return Err(Error::CursorFormat {
            path: path.to_path_buf(),
            reason: format!("unknown version {}", cursor.v),
        });
    }
    Ok(Some(cursor))
}

/// Replaces the cursor at `path` with `cursor`, durably.
pub fn save(path: &Path, cursor: &Cursor) -> Result<(), Error> {
    let err = |source| Error::Cursor {
        path: path.to_path_buf(),
        source,
    };
    let tmp = with_suffix(path, ".tmp");
    let mut body = serde_json::to_vec(cursor).map_err(|e| err(std::io::Error::other(e)))?;
    body.push(b'\n');
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    // The rename is durable once the directory is.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// An exclusive lock on a cursor: two forwarders on one cursor would send everything twice.
pub struct Lock {
    _held: nix::fcntl::Flock<File>,
}

/// Takes the lock of the cursor at `path` (`<cursor>.lock`), failing if another holds it.
pub fn lock(path: &Path) -> Result<Lock, Error> {
    let lock_path = with_suffix(path, ".lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| Error::Cursor {
            path: lock_path.clone(),
            source,
        })?;
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |_| Error::CursorBusy {
            path: path.to_path_buf(),
        },
    )?;
    Ok(Lock { _held: held })
}
