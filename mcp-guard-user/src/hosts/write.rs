//! Applying an [`Edit`]: backup once, then an atomic replace that keeps owner and mode.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Edit;

/// `<file>.mcp-guard.bak`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".mcp-guard.bak");
    PathBuf::from(s)
}

/// Writes `edit.new` to `edit.path`:
/// refuses if the file changed since the edit was computed; copies the current
/// file to `<file>.mcp-guard.bak` unless that backup already exists; writes a
/// temp file in the same directory, fsyncs it, gives it the original owner and
/// mode, renames it over the file and fsyncs the directory. A symlinked config
/// is replaced at its target. A no-op edit writes nothing.
pub fn apply(edit: &Edit) -> Result<()> {
    if edit.is_noop() {
        return Ok(());
    }
    let shown = edit.path.display();
    let path = fs::canonicalize(&edit.path).with_context(|| format!("{shown}: cannot resolve"))?;
    let current = fs::read_to_string(&path).with_context(|| format!("{shown}: cannot read"))?;
    if current != edit.old {
        bail!("{shown}: changed since it was read; not written (run the command again)");
    }
    let meta = fs::metadata(&path).with_context(|| format!("{shown}: cannot stat"))?;
    let mode = meta.permissions().mode() & 0o7777;
    let dir = path
        .parent()
        .context("config file has no parent directory")?;

    let bak = backup_path(&path);
    if !bak.exists() {
        write_new(&bak, edit.old.as_bytes(), mode, &meta)
            .with_context(|| format!("{}: cannot write backup", bak.display()))?;
    }

    let fname = path
        .file_name()
        .context("config file has no name")?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{fname}.mcp-guard.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp); // a leftover from a crashed run of this pid
    if let Err(e) = write_new(&tmp, edit.new.as_bytes(), mode, &meta) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write temp file", tmp.display()));
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{shown}: cannot replace"));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}: cannot fsync", dir.display()))?;
    Ok(())
}

fn write_new(p: &Path, data: &[u8], mode: u32, orig: &fs::Metadata) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(data)?;
    if (orig.uid(), orig.gid()) != (f.metadata()?.uid(), f.metadata()?.gid()) {
        std::os::unix::fs::fchown(&f, Some(orig.uid()), Some(orig.gid()))
            .context("cannot give the new file the original owner")?;
    }
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    Ok(())
}
