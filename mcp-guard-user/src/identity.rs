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
            cmdline: p.cmdline().unwrap_or_default(),
            uid: status.ruid,
            start_time: stat.starttime,
        })
    }
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
    let mut groups: Vec<u32> = getgroups().map(|g| g.into_iter().map(|g| g.as_raw()).collect()).unwrap_or_default();
    if !groups.contains(&gid.as_raw()) {
        groups.insert(0, gid.as_raw());
    }
    Principal {
        uid: uid.as_raw(),
        euid: geteuid().as_raw(),
        user: User::from_uid(Uid::from_raw(uid.as_raw())).ok().flatten().map(|u| u.name),
        gid: gid.as_raw(),
        groups,
    }
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
        assert_eq!(chain.last().map(|p| p.pid), Some(1), "the chain ends at init");
        assert!(me.exec_id.ends_with(&format!(":{}", me.pid)));
    }

    #[test]
    fn principal_includes_the_primary_group() {
        let p = current_principal();
        assert!(p.groups.contains(&p.gid));
    }
}
