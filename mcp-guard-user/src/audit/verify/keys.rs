//! Which key a log is checked with, and whether it is trusted.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::*;

/// The key to check with, and where it came from: `--key`; else a trusted key that is the
/// key beside the log or that made the log's first signature; else a key pinned in an
/// append-only checkpoint; else the key beside the log.
pub(super) fn choose_key(
    given: Option<&Path>,
    first: &Path,
    files: &[PathBuf],
    checkpoints: &[(PathBuf, crate::audit::checkpoint::Contents)],
) -> anyhow::Result<(PublicKey, KeySource)> {
    if let Some(k) = given {
        return Ok((PublicKey::read(k)?, KeySource::Given(k.to_path_buf())));
    }
    let beside = first
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("audit.pub");
    let beside_key = match PublicKey::read(&beside) {
        Ok(k) => Some(k),
        Err(crate::audit::chain::Error::ReadPublic { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let trusted = trusted_keys();
    if let Some(b) = &beside_key
        && let Some(i) = trusted.iter().position(|(_, k)| k.bytes() == b.bytes())
    {
        let (path, key) = trusted.into_iter().nth(i).ok_or(Error::NoFiles)?;
        return Ok((key, KeySource::Trusted(path)));
    }
    if let Some((hash, sig)) = first_signature(files)
        && let Some(i) = trusted.iter().position(|(_, k)| k.verifies(&hash, &sig))
    {
        let (path, key) = trusted.into_iter().nth(i).ok_or(Error::NoFiles)?;
        return Ok((key, KeySource::Trusted(path)));
    }
    for (path, c) in checkpoints {
        if c.append_only
            && let Some(key) = c
                .key
                .as_ref()
                .and_then(|(_, hex)| PublicKey::from_hex(hex.as_bytes()))
        {
            return Ok((key, KeySource::Pinned(path.clone())));
        }
    }
    match beside_key {
        Some(k) => Ok((k, KeySource::Beside(beside))),
        // Named in the error: no key is no pass.
        None => Err(PublicKey::read(&beside)
            .err()
            .map_or_else(|| anyhow::anyhow!("no public key"), anyhow::Error::from)),
    }
}

/// The trusted keys: `*.pub` in `$MCP_GUARD_TRUSTED_KEYS` or [`TRUSTED_KEYS_DIR`], and
/// [`SYSTEM_KEY`]; each only if it and its directory are root's and writable by no one else.
fn trusted_keys() -> Vec<(PathBuf, PublicKey)> {
    let dir = std::env::var_os("MCP_GUARD_TRUSTED_KEYS")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(TRUSTED_KEYS_DIR), PathBuf::from);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths.push(PathBuf::from(SYSTEM_KEY));
    paths
        .into_iter()
        .filter(|p| p.exists())
        .filter_map(|p| {
            if let Err(why) = root_only(&p) {
                tracing::warn!(key = %p.display(), %why, "not trusting this key");
                return None;
            }
            match PublicKey::read(&p) {
                Ok(k) => Some((p, k)),
                Err(e) => {
                    tracing::warn!(error = %e, "not trusting this key");
                    None
                }
            }
        })
        .collect()
}

/// Why a key file is not trusted.
#[derive(Debug, thiserror::Error)]
enum NotRootOnly {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{} is not root's alone (uid {uid}, mode {mode:o})", path.display())]
    Owner { path: PathBuf, uid: u32, mode: u32 },
}

/// The file (symlinks followed) and its directory belong to root and no one else can write them.
fn root_only(path: &Path) -> Result<(), NotRootOnly> {
    use std::os::unix::fs::MetadataExt as _;
    let real = std::fs::canonicalize(path)?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    for p in [real.as_path(), dir] {
        let m = std::fs::metadata(p)?;
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Err(NotRootOnly::Owner {
                path: p.to_path_buf(),
                uid: m.uid(),
                mode: m.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// The hash and signature of the first signed record of the first file.
pub(super) fn first_signature(files: &[PathBuf]) -> Option<(Vec<u8>, Vec<u8>)> {
    let reader = BufReader::new(File::open(files.first()?).ok()?);
    for line in reader.split(b'\n') {
        let line = line.ok()?;
        if let Some(parts) = Line::split(&line)
            && let Some(sig) = parts.sig
        {
            return Some((parts.hash.to_vec(), sig.to_vec()));
        }
    }
    None
}
