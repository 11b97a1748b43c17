//! `mcp-guard service install | uninstall`: puts the daemon on a host as a systemd system
//! service, in the FHS paths the README lists, and takes it off again.
//!
//! Every path is made under `--root` (default `/`), so packagers and tests can stage an
//! install; systemctl runs only for `/` on a host booted with systemd. What an admin owns
//! (configuration, policy, audit log, signing key) is never overwritten: only the binary, the
//! eBPF object and the unit are replaced, and a shipped file that differs from the one in
//! place is written beside it as `<file>.new`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The systemd unit, as shipped.
pub const UNIT: &str = include_str!("../../config/mcp-guard.service");
/// The daemon configuration installed when there is none.
pub const CONFIG: &str = include_str!("../../config/config.toml");
/// The unit's name.
pub const UNIT_NAME: &str = "mcp-guard.service";

const BIN: &str = "/usr/bin/mcp-guard";
const LIB_DIR: &str = "/usr/lib/mcp-guard";
const UNIT_FILE: &str = "/usr/lib/systemd/system/mcp-guard.service";
// Left by `systemctl enable`; removed by hand only where systemctl cannot run.
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/mcp-guard.service";
const ETC_DIR: &str = "/etc/mcp-guard";
const CONFIG_FILE: &str = "/etc/mcp-guard/config.toml";
const POLICY_FILE: &str = "/etc/mcp-guard/policy.toml";
const POLICY_DIR: &str = "/etc/mcp-guard/policy.d";
const LOG_DIR: &str = "/var/log/mcp-guard";
const STATE_DIR: &str = "/var/lib/mcp-guard";
/// Made by the daemon at its first start, never here.
#[cfg(test)]
const KEY_FILE: &str = "/var/lib/mcp-guard/audit.key";

/// `mcp-guard service install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Install under this directory instead of `/` (staging, packaging); systemd is then
    /// left alone.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// The mcp-guard binary to install as /usr/bin/mcp-guard [default: this program].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// The eBPF object to install as /usr/lib/mcp-guard/mcp-guard-ebpf.o [default: the one
    /// this program would load, if there is one].
    #[arg(long, value_name = "PATH")]
    pub bpf_object: Option<PathBuf>,
    /// Do not run systemctl (daemon-reload, enable --now); print what to run instead.
    #[arg(long)]
    pub no_start: bool,
}

/// `mcp-guard service uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Uninstall from under this directory instead of `/`; systemd is then left alone.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Also remove /etc/mcp-guard (configuration, policy), /var/log/mcp-guard (the audit
    /// log) and /var/lib/mcp-guard (the signing key).
    #[arg(long)]
    pub purge: bool,
    /// Do not run systemctl (disable --now, daemon-reload); print what to run instead.
    #[arg(long)]
    pub no_stop: bool,
}

/// Installs the binary, the eBPF object, the unit, the configuration, the directories and
/// the signing key under `--root`, then enables and starts the service when it can.
pub fn install(args: &InstallArgs) -> anyhow::Result<i32> {
    let t = Target::new(&args.root)?;
    let upgrade = t.path(BIN).exists();
    // A daemon without its eBPF object cannot start: refuse before installing anything.
    let object = match &args.bpf_object {
        Some(o) => Some(o.clone()),
        // This program carries its own: nothing to install beside it.
        None if args.bin.is_none() && crate::ebpf::EMBEDDED.is_some() => None,
        None => match crate::ebpf::find_object() {
            Ok(crate::ebpf::Object::File(o)) => Some(o),
            Ok(crate::ebpf::Object::Embedded) => None,
            Err(e) => bail!(
                "{e}: the daemon needs its eBPF object; build a binary that carries it \
                 (`cargo xtask package`, or `MCP_GUARD_EMBED_BPF=OBJECT cargo build`), or give \
                 --bpf-object FILE (`cargo xtask build-ebpf` builds it)"
            ),
        },
    };

    t.dir(ETC_DIR, 0o755)?;
    t.dir(POLICY_DIR, 0o755)?;
    t.dir(LOG_DIR, 0o750)?;
    t.dir(STATE_DIR, 0o700)?;
    t.dir(LIB_DIR, 0o755)?;

    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this program's path; give --bin")?,
    };
    t.copy(&bin, BIN, 0o755)?;
    if let Some(o) = object {
        t.copy(&o, crate::ebpf::INSTALLED_OBJECT, 0o644)?;
    }
    t.write(UNIT_FILE, UNIT.as_bytes(), 0o644)?;
    t.config(CONFIG_FILE, CONFIG)?;
    t.config(POLICY_FILE, crate::policy::BUILTIN)?;
    // The signing key is made by the daemon at its first start, on the host it signs for:
    // a key made here could end up in a staged tree, and every host installed from it
    // would share it.

    let mut start = vec![vec!["daemon-reload"]];
    if upgrade {
        // `enable --now` leaves a running daemon on the old binary.
        start.push(vec!["try-restart", UNIT_NAME]);
    }
    start.push(vec!["enable", "--now", UNIT_NAME]);
    match t.why_not_systemctl(args.no_start, "--no-start") {
        None => run_systemctl(&start),
        Some(why) => {
            advise(&why, &start);
            Ok(0)
        }
    }
}

/// Removes the unit, the binary and the eBPF object from under `--root` (stopping and
/// disabling the service first when it can), and with `--purge` the configuration, the
/// audit log and the signing key too.
pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<i32> {
    let t = Target::new(&args.root)?;
    let why_not = t.why_not_systemctl(args.no_stop, "--no-stop");
    let mut code = 0;
    if why_not.is_none() && t.path(UNIT_FILE).exists() {
        code = run_systemctl(&[vec!["disable", "--now", UNIT_NAME]])?;
    }
    // Removed by hand too, for the hosts where systemctl did not run.
    for file in [UNIT_FILE, WANTS_LINK, BIN, crate::ebpf::INSTALLED_OBJECT] {
        t.remove(file)?;
    }
    match fs::remove_dir(t.path(LIB_DIR)) {
        Ok(()) => println!("removed {}", t.show(LIB_DIR)),
        // Not ours to remove when something else is in it.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", t.show(LIB_DIR))),
    }
    let kept = [
        (ETC_DIR, "configuration and policy"),
        (LOG_DIR, "audit log"),
        (STATE_DIR, "signing key, cursors, pins"),
    ];
    for (dir, what) in kept {
        let path = t.path(dir);
        if args.purge {
            match fs::remove_dir_all(&path) {
                Ok(()) => println!("removed {} and everything in it", path.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
            }
        } else if path.exists() {
            println!("kept {} ({what})", path.display());
        }
    }
    if !args.purge {
        println!("`mcp-guard service uninstall --purge` removes what was kept");
    }
    match why_not {
        None => Ok(code.max(run_systemctl(&[vec!["daemon-reload"]])?)),
        Some(why) => {
            advise(&why, &[vec!["stop", UNIT_NAME], vec!["daemon-reload"]]);
            Ok(code)
        }
    }
}

/// Makes the missing directories above `path` (`/usr/bin` and the like in a staging root),
/// 0755 less the umask, as `install -d` would.
fn parents(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(parent) => DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display())),
        None => Ok(()),
    }
}

/// Runs each systemctl command in turn; exit code 1 at the first that fails.
fn run_systemctl(commands: &[Vec<&str>]) -> anyhow::Result<i32> {
    for c in commands {
        println!("+ systemctl {}", c.join(" "));
        let status = Command::new("systemctl")
            .args(c)
            .status()
            .context("cannot run systemctl")?;
        if !status.success() {
            eprintln!("mcp-guard: systemctl {} failed ({status})", c.join(" "));
            return Ok(1);
        }
    }
    Ok(0)
}

/// Tells the admin what systemctl commands were not run, and why.
fn advise(why: &str, commands: &[Vec<&str>]) {
    let lines: Vec<String> = commands
        .iter()
        .map(|c| format!("systemctl {}", c.join(" ")))
        .collect();
    println!(
        "systemd left alone ({why}); on a systemd host run: {}",
        lines.join(" && ")
    );
}

/// The root installed into, and whether it is this running host.
struct Target {
    root: PathBuf,
    /// The root is this host's `/`.
    is_slash: bool,
    /// This host was booted with systemd (sd_booted(3): /run/systemd/system exists).
    booted_systemd: bool,
    /// Root runs the installer: everything made is chowned to root:root.
    as_root: bool,
}

impl Target {
    fn new(root: &Path) -> anyhow::Result<Target> {
        let root =
            std::path::absolute(root).with_context(|| format!("bad --root {}", root.display()))?;
        let is_slash = fs::canonicalize(&root).is_ok_and(|r| r == Path::new("/"));
        let as_root = nix::unistd::geteuid().is_root();
        if is_slash && !as_root {
            bail!("installing into / needs root (or give --root DIR to stage an install)");
        }
        if !as_root {
            println!(
                "not running as root: what is made is owned by uid {}, not root:root",
                nix::unistd::geteuid()
            );
        }
        let booted_systemd = Path::new("/run/systemd/system").is_dir();
        Ok(Target {
            root,
            is_slash,
            booted_systemd,
            as_root,
        })
    }

    /// `abs` (an absolute path on the installed system) under the root.
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn show(&self, abs: &str) -> String {
        self.path(abs).display().to_string()
    }

    fn chown(&self, path: &Path) -> anyhow::Result<()> {
        if self.as_root {
            std::os::unix::fs::chown(path, Some(0), Some(0))
                .with_context(|| format!("cannot chown {} to root:root", path.display()))?;
        }
        Ok(())
    }

    /// Makes directory `abs` with `mode`, root:root. One that exists is left as it is (an
    /// admin may have chosen its group), with a note when it differs.
    fn dir(&self, abs: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.path(abs);
        parents(&path)?;
        match DirBuilder::new().mode(mode).create(&path) {
            Ok(()) => {
                // Exactly `mode`, whatever the umask.
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .with_context(|| format!("cannot chmod {}", path.display()))?;
                self.chown(&path)?;
                println!("created {} ({mode:04o})", path.display());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(&path)
                    .with_context(|| format!("cannot stat {}", path.display()))?;
                if !meta.is_dir() {
                    bail!("{} exists and is not a directory", path.display());
                }
                let have = meta.mode() & 0o7777;
                if have != mode || (self.as_root && (meta.uid(), meta.gid()) != (0, 0)) {
                    println!(
                        "note: {} is {have:04o} {}:{}, expected {mode:04o} 0:0; left as it is",
                        path.display(),
                        meta.uid(),
                        meta.gid()
                    );
                }
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }

    /// Replaces `abs` with `bytes` atomically (a running binary or a loaded unit is never seen
    /// half written).
    fn write(&self, abs: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
        let path = self.path(abs);
        let existed = path.exists();
        self.replace(&path, mode, |f| f.write_all(bytes))?;
        println!(
            "{} {} ({mode:04o})",
            if existed { "replaced" } else { "installed" },
            path.display()
        );
        Ok(())
    }

    /// Replaces `abs` with a copy of `src`, atomically.
    fn copy(&self, src: &Path, abs: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.path(abs);
        let same = |a: &fs::Metadata, b: &fs::Metadata| (a.dev(), a.ino()) == (b.dev(), b.ino());
        let from = fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
        if !from.is_file() {
            bail!("{} is not a file", src.display());
        }
        let existing = fs::metadata(&path).ok();
        if existing.as_ref().is_some_and(|to| same(&from, to)) {
            println!("kept {} (it is the one given)", path.display());
            return Ok(());
        }
        let mut input =
            File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
        self.replace(&path, mode, |f| io::copy(&mut input, f).map(drop))
            .with_context(|| format!("copying {}", src.display()))?;
        let verb = if existing.is_some() {
            "replaced"
        } else {
            "installed"
        };
        println!(
            "{verb} {} ({mode:04o}) from {}",
            path.display(),
            src.display()
        );
        Ok(())
    }

    fn replace(
        &self,
        path: &Path,
        mode: u32,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let mut name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(format!(".tmp-{}", crate::audit::random_id()));
        let tmp = path.with_file_name(name);
        parents(path)?;
        let written = (|| -> anyhow::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            fill(&mut f)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            self.chown(&tmp)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.with_context(|| format!("cannot write {}", path.display()))
    }

    /// Installs a configuration file `abs` with `shipped` if there is none; one that exists
    /// is the admin's and stays, and a different shipped version goes to `<abs>.new`.
    fn config(&self, abs: &str, shipped: &str) -> anyhow::Result<()> {
        let path = self.path(abs);
        match fs::read(&path) {
            Ok(have) if have == shipped.as_bytes() => {
                println!("kept {} (same as shipped)", path.display());
                Ok(())
            }
            Ok(_) => {
                let new = format!("{abs}.new");
                self.replace(&self.path(&new), 0o644, |f| f.write_all(shipped.as_bytes()))?;
                println!(
                    "kept {} (changed here); the shipped version is in {}: compare and merge",
                    path.display(),
                    self.show(&new)
                );
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.write(abs, shipped.as_bytes(), 0o644)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn remove(&self, abs: &str) -> anyhow::Result<()> {
        let path = self.path(abs);
        match fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        Ok(())
    }

    /// Why systemctl must not run here, if it must not.
    fn why_not_systemctl(&self, skip: bool, flag: &str) -> Option<String> {
        if skip {
            Some(format!("{flag} given"))
        } else if !self.is_slash {
            Some(format!("installed under {}, not /", self.root.display()))
        } else if !self.booted_systemd {
            Some("systemd is not running on this host: no /run/systemd/system".to_string())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit, the configuration and this installer agree on every path.
    #[test]
    fn shipped_files_name_the_installed_paths() {
        assert!(UNIT.contains(&format!("ExecStart={BIN} daemon --config {CONFIG_FILE}\n")));
        for dir in [LOG_DIR, STATE_DIR, "/run/mcp-guard"] {
            assert!(
                UNIT.lines()
                    .any(|l| l.starts_with("ReadWritePaths=") && l.contains(dir)),
                "{dir}"
            );
        }
        assert!(CONFIG.contains(&format!("policy = \"{POLICY_FILE}\"")));
        assert!(CONFIG.contains(&format!("audit_key = \"{KEY_FILE}\"")));
        assert!(CONFIG.contains(&format!("audit = \"{LOG_DIR}/audit.jsonl\"")));
        assert!(crate::ebpf::INSTALLED_OBJECT.starts_with(LIB_DIR));
        assert!(POLICY_DIR.starts_with(ETC_DIR) && KEY_FILE.starts_with(STATE_DIR));
    }

    #[test]
    fn paths_land_under_the_root() {
        let t = Target {
            root: PathBuf::from("/stage"),
            is_slash: false,
            booted_systemd: false,
            as_root: false,
        };
        assert_eq!(t.path(BIN), Path::new("/stage/usr/bin/mcp-guard"));
        let t = Target {
            root: PathBuf::from("/"),
            is_slash: true,
            booted_systemd: false,
            as_root: false,
        };
        assert_eq!(t.path(BIN), Path::new("/usr/bin/mcp-guard"));
    }
}
