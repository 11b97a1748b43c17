//! Finding and reading policy files.
//!
//! System: `/etc/mcp-guard/policy.toml`, then `/etc/mcp-guard/policy.d/*.toml` in byte
//! order of their file names (hidden files skipped). Drop-ins add rules; only the main file
//! sets `default` and `mode`; rule ids are unique across all of them.
//!
//! Standalone (`wrap` without a daemon): `--policy`, `$MCP_GUARD_POLICY`,
//! `$XDG_CONFIG_HOME/mcp-guard/policy.toml` (`~/.config/...`), the system policy when it
//! exists, the built-in default. The first that is configured is used; one that is
//! configured and cannot be loaded is an error (the guard does not run unguarded).
//!
//! Running as root, every file and the drop-in directory must be owned by root and not
//! writable by group or others: otherwise any user who can write it can rewrite the rules
//! root's guard enforces.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{BUILTIN, Error, Policy};

/// Where the system policy lives.
pub const SYSTEM_DIR: &str = "/etc/mcp-guard";

/// One policy text and the name errors and records give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    /// Reads a file, refusing it when running as root and it is not root's alone.
    pub fn read(path: &Path) -> Result<Source, Error> {
        let err = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(err)?;
        // The checked metadata is that of the file actually read (fstat), not of a path
        // that could be swapped in between.
        let meta = f.metadata().map_err(err)?;
        check_owner(
            path,
            meta.uid(),
            meta.mode(),
            nix::unistd::geteuid().as_raw(),
        )?;
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(err)?;
        Ok(Source {
            name: path.display().to_string(),
            text,
        })
    }
}

/// As root, a policy must be owned by root and not group- or world-writable.
pub(super) fn check_owner(path: &Path, owner: u32, mode: u32, euid: u32) -> Result<(), Error> {
    if euid == 0 && (owner != 0 || mode & 0o022 != 0) {
        return Err(Error::Unsafe {
            path: path.to_path_buf(),
            owner,
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// The drop-ins of a directory: `*.toml`, not hidden, in byte order of their names. A
/// missing directory has none.
pub fn dropins(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let err = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    check_owner(
        dir,
        meta.uid(),
        meta.mode(),
        nix::unistd::geteuid().as_raw(),
    )?;
    let mut out: Vec<(OsString, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        if entry.file_type().map_err(err)?.is_dir() {
            continue;
        }
        out.push((name, entry.path()));
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

impl Policy {
    /// Reads and compiles one policy file; a directory is read as `DIR/policy.toml` plus
    /// `DIR/policy.d/*.toml`.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        if path.is_dir() {
            return Policy::load_dir(path);
        }
        Policy::compile(&[Source::read(path)?])
    }

    /// `DIR/policy.toml` and its drop-ins in `DIR/policy.d/`.
    pub fn load_dir(dir: &Path) -> Result<Policy, Error> {
        Policy::load_with_dropins(&dir.join("policy.toml"), &dir.join("policy.d"))
    }

    /// A main file and the drop-ins of a directory, merged in order.
    pub fn load_with_dropins(main: &Path, dropin_dir: &Path) -> Result<Policy, Error> {
        Self::with_dropins(Source::read(main)?, dropin_dir)
    }

    /// The built-in default policy, and the drop-ins in `dropin_dir`.
    pub fn builtin_with_dropins(dropin_dir: &Path) -> Result<Policy, Error> {
        let builtin = Source {
            name: "built-in".into(),
            text: BUILTIN.into(),
        };
        Self::with_dropins(builtin, dropin_dir)
    }

    fn with_dropins(main: Source, dropin_dir: &Path) -> Result<Policy, Error> {
        let mut sources = vec![main];
        for p in dropins(dropin_dir)? {
            sources.push(Source::read(&p)?);
        }
        Policy::compile(&sources)
    }
}

/// The environment the standalone search looks at (so tests need not set variables).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub policy: Option<OsString>,
    pub xdg_config_home: Option<OsString>,
    pub home: Option<OsString>,
    pub system_dir: PathBuf,
}

impl Env {
    /// This process's environment.
    pub fn current() -> Env {
        let var = |k| std::env::var_os(k).filter(|v| !v.is_empty());
        Env {
            policy: var("MCP_GUARD_POLICY"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            home: var("HOME"),
            system_dir: PathBuf::from(SYSTEM_DIR),
        }
    }
}

/// Where a standalone policy is read from. A running shim reloads from that place only: a
/// policy file appearing earlier in the search order while it runs (written by a guarded
/// tool, say) does not replace the policy the session was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    /// `--policy`, `$MCP_GUARD_POLICY` (a file, or a directory with `policy.toml` and
    /// `policy.d/`), or the user's `policy.toml`.
    File(PathBuf),
    /// The system policy and its drop-ins.
    SystemDir(PathBuf),
    /// The built-in default.
    BuiltIn,
}

impl Chosen {
    /// Reads the policy from this place.
    pub fn load(&self) -> Result<Policy, Error> {
        match self {
            Chosen::File(p) => Policy::load(p),
            Chosen::SystemDir(d) => Policy::load_dir(d),
            Chosen::BuiltIn => Policy::compile(&[Source {
                name: "built-in".into(),
                text: BUILTIN.into(),
            }]),
        }
    }

    /// The paths whose change means the policy may have changed (drop-in directories
    /// included; paths that do not exist yet too).
    pub fn watched(&self) -> Vec<PathBuf> {
        match self {
            Chosen::File(p) => vec![p.clone(), p.join("policy.toml"), p.join("policy.d")],
            Chosen::SystemDir(d) => vec![d.join("policy.toml"), d.join("policy.d")],
            Chosen::BuiltIn => Vec::new(),
        }
    }
}

/// Where the standalone policy comes from: `--policy`, `$MCP_GUARD_POLICY`, the user's
/// config, the system policy, the built-in default.
pub fn chosen(flag: Option<&Path>) -> Chosen {
    chosen_in(flag, &Env::current())
}

fn chosen_in(flag: Option<&Path>, env: &Env) -> Chosen {
    if let Some(p) = flag
        .map(Path::to_path_buf)
        .or_else(|| env.policy.clone().map(PathBuf::from))
    {
        return Chosen::File(p);
    }
    let config = env
        .xdg_config_home
        .clone()
        .map(PathBuf::from)
        .or_else(|| env.home.clone().map(|h| PathBuf::from(h).join(".config")));
    if let Some(p) = config
        .map(|c| c.join("mcp-guard/policy.toml"))
        .filter(|p| p.exists())
    {
        return Chosen::File(p);
    }
    if env.system_dir.join("policy.toml").exists() {
        return Chosen::SystemDir(env.system_dir.clone());
    }
    Chosen::BuiltIn
}

/// The standalone policy: `--policy`, `$MCP_GUARD_POLICY`, the user's config, the system
/// policy, the built-in default.
pub fn standalone(flag: Option<&Path>) -> Result<Policy, Error> {
    standalone_in(flag, &Env::current())
}

pub(super) fn standalone_in(flag: Option<&Path>, env: &Env) -> Result<Policy, Error> {
    chosen_in(flag, env).load()
}
