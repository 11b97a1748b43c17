//! Who is asking, as the kernel and /proc tell it (never as a message claims it).

use serde::Serialize;

/// Longest ancestry chain recorded; deeper chains are cut at the top.
const MAX_ANCESTRY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read /proc/{pid}")]
    Proc {
        pid: i32,
        #[source]
        source: procfs::ProcError,
    },
}

/// The user a process runs as.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub uid: u32,
    pub euid: u32,
    pub user: Option<String>,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// One process, named in a way that survives pid reuse.
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    /// `boot id prefix:start time in clock ticks:pid`, unique across pid reuse and reboots.
    pub exec_id: String,
    pub exe: Option<String>,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub uid: u32,
    pub start_time: u64,
}

/// A process as every record names it: enough to identify it and join it with the
/// session-start record, which has the command lines.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub pid: i32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Vec<String>>,
}

impl Link {
    /// Pid, comm and exe: for the ancestry chain.
    pub fn short(p: &Process) -> Link {
        Link {
            pid: p.pid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            exec_id: None,
            cmdline: None,
        }
    }

    /// Also the exec id and the (redacted) command line: for the agent host.
    pub fn long(p: &Process) -> Link {
        Link {
            exec_id: Some(p.exec_id.clone()),
            cmdline: Some(p.cmdline.clone()),
            ..Link::short(p)
        }
    }
}

impl Process {
    /// Reads a process from /proc.
    pub fn read(pid: i32) -> Result<Process, Error> {
        let err = |source| Error::Proc { pid, source };
        let p = procfs::process::Process::new(pid).map_err(err)?;
        let stat = p.stat().map_err(err)?;
        let status = p.status().map_err(err)?;
        Ok(Process {
            pid,
            ppid: stat.ppid,
            exec_id: exec_id(pid, stat.starttime),
            // exe is unreadable for other users' processes without privilege; that is recorded as absent.
            exe: p.exe().ok().map(|e| e.display().to_string()),
            comm: stat.comm,
            cmdline: redact_args(&p.cmdline().unwrap_or_default()),
            uid: status.ruid,
            start_time: stat.starttime,
        })
    }
}

/// Longest argument kept in records, and most arguments kept.
const MAX_ARG: usize = 512;
const MAX_ARGS: usize = 64;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

use std::sync::LazyLock;

static FLAG: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"(?i)^(--?[a-z0-9_.-]*(?:token|secret|passw(?:or)?d|api[_-]?key|auth|credential|bearer|private[_-]?key)[a-z0-9_.-]*)(=.*)?$")
        .expect("static regex")
});
static ENV: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"(?i)^([a-z_][a-z0-9_]*(?:token|secret|passw(?:or)?d|api_?key|auth|credential)[a-z0-9_]*)=.+$")
        .expect("static regex")
});
/// Free text (an error message, a reason) with credential-looking values replaced, by the
/// same rules as server responses ([`crate::redact`]).
pub fn redact_text(text: &str) -> String {
    crate::redact::text(text)
}

/// A JSON value as records keep it: strings that look like credentials, and the values of
/// keys named like credentials (`token`, `password`, `api_key`, `secret`, ...), replaced.
pub fn redact_json(v: &serde_json::Value) -> serde_json::Value {
    static KEY: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(?i)(token|secret|passw(or)?d|api[_-]?key|auth|credential|private[_-]?key|cookie|session)")
            .expect("static regex")
    });
    match v {
        serde_json::Value::String(s) => serde_json::Value::String(redact_text(s)),
        serde_json::Value::Array(a) => a.iter().map(redact_json).collect(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| {
                let v = if KEY.is_match(k) && !v.is_null() {
                    serde_json::Value::from(REDACTED)
                } else {
                    redact_json(v)
                };
                (k.clone(), v)
            })
            .collect(),
        other => other.clone(),
    }
}

/// Command lines as records keep them: credentials replaced, long arguments cut.
///
/// Catches `--token X`, `--api-key=X`, `GITHUB_TOKEN=X`, URLs with a password, and values
/// that look like well-known credentials (GitHub, Slack, AWS, OpenAI-style keys, JWTs).
pub fn redact_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len().min(MAX_ARGS));
    let mut hide_next = false;
    for arg in args.iter().take(MAX_ARGS) {
        let mut a = if std::mem::take(&mut hide_next) {
            REDACTED.to_string()
        } else if let Some(c) = FLAG.captures(arg) {
            match c.get(2) {
                Some(_) => format!("{}={REDACTED}", &c[1]),
                None => {
                    hide_next = true;
                    arg.clone()
                }
            }
        } else if let Some(c) = ENV.captures(arg) {
            format!("{}={REDACTED}", &c[1])
        } else {
            redact_text(arg)
        };
        if a.len() > MAX_ARG {
            let mut cut = MAX_ARG;
            while !a.is_char_boundary(cut) {
                cut -= 1;
            }
            a.truncate(cut);
            a.push('…');
        }
        out.push(a);
    }
    if args.len() > MAX_ARGS {
        out.push(format!("… {} more", args.len() - MAX_ARGS));
    }
    out
}

/// `exec_id` for a pid and its start time.
pub fn exec_id(pid: i32, start_time: u64) -> String {
    format!("{}:{start_time}:{pid}", boot_id())
}

fn boot_id() -> &'static str {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().replace('-', "").chars().take(12).collect())
            .unwrap_or_else(|_| "noboot".to_string())
    })
}

/// The principal of the calling process.
pub fn current_principal() -> Principal {
    use nix::unistd::{Uid, User, geteuid, getgid, getgroups, getuid};
    let uid = getuid();
    let gid = getgid();
    let mut groups: Vec<u32> = getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    if !groups.contains(&gid.as_raw()) {
        groups.insert(0, gid.as_raw());
    }
    Principal {
        uid: uid.as_raw(),
        euid: geteuid().as_raw(),
        user: User::from_uid(Uid::from_raw(uid.as_raw()))
            .ok()
            .flatten()
            .map(|u| u.name),
        gid: gid.as_raw(),
        groups,
    }
}

/// The principal of process `pid`, from /proc: real and effective uid, real gid, groups.
pub fn principal_of(pid: i32) -> Option<Principal> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (uids, gids) = (field("Uid:"), field("Gid:"));
    let (uid, euid, gid) = (*uids.first()?, *uids.get(1)?, *gids.first()?);
    let mut groups = field("Groups:");
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    Some(Principal {
        uid,
        euid,
        user,
        gid,
        groups,
    })
}

/// The chain of processes from `pid`'s parent up to init, nearest first.
pub fn ancestry(pid: i32) -> Vec<Process> {
    let mut chain = Vec::new();
    let mut next = Process::read(pid).map(|p| p.ppid).unwrap_or(0);
    while next > 0 && chain.len() < MAX_ANCESTRY {
        match Process::read(next) {
            Ok(p) => {
                next = p.ppid;
                chain.push(p);
            }
            // The parent exited between reads; the chain ends where /proc does.
            Err(_) => break,
        }
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_its_ancestry() {
        let me = Process::read(std::process::id() as i32).unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert!(me.exe.is_some());
        let chain = ancestry(me.pid);
        assert_eq!(chain.first().map(|p| p.pid), Some(me.ppid));
        assert_eq!(
            chain.last().map(|p| p.pid),
            Some(1),
            "the chain ends at init"
        );
        assert!(me.exec_id.ends_with(&format!(":{}", me.pid)));
    }

    #[test]
    fn credentials_in_command_lines_are_redacted() {
        let args: Vec<String> = [
            "server",
            "--token",
            "s3cr3t",
            "--api-key=abc123",
            "GITHUB_TOKEN=ghp_x",
            "--verbose",
            "https://bob:hunter2@example.com/x",
            "ghp_0123456789abcdefghijABCDEFGHIJ",
            "--port",
            "80",
        ]
        .map(String::from)
        .to_vec();
        let out = redact_args(&args);
        let joined = out.join(" ");
        for secret in ["s3cr3t", "abc123", "ghp_x", "hunter2", "ghp_0123456789"] {
            assert!(!joined.contains(secret), "{secret} leaked: {joined}");
        }
        assert_eq!(out[0], "server");
        assert_eq!(out[1], "--token");
        assert_eq!(out[5], "--verbose");
        assert_eq!(&out[8..], ["--port", "80"]);
    }

    #[test]
    fn principal_of_this_process_matches_the_current_one() {
        let of = principal_of(std::process::id() as i32).unwrap();
        let cur = current_principal();
        assert_eq!(
            (of.uid, of.euid, of.gid, of.user),
            (cur.uid, cur.euid, cur.gid, cur.user)
        );
        let (mut a, mut b) = (of.groups, cur.groups);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn principal_includes_the_primary_group() {
        let p = current_principal();
        assert!(p.groups.contains(&p.gid));
    }
}
