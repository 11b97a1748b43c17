//! What the daemon's core asks of the machine, and what it does to it: the kernel's watch
//! maps and signals ([`Kernel`]), and what /proc says about processes ([`Procs`]). The
//! drivers implement them over the loaded programs and the real /proc; the core's unit
//! tests over a process table in memory, so every decision runs without root.
//!
//! [`Procs`] asks only for what one /proc file says; how those answers combine (which
//! process is a host, a shim, the other end of a pipe) is written once, in its provided
//! methods, and so is the same code under test and in production.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::procs::{self, base, is_interpreter, script_of};
use super::shimlog::ShimLog;
use crate::ebpf::{self, Observer};
use crate::identity::{self, Principal, Process};

/// The kernel side: watch flags per process, descriptor roles, signals.
pub trait Kernel {
    fn watch(&mut self, tgid: u32, flags: u32) -> Result<(), ebpf::Error>;
    /// The watch flags of `tgid`, if watched.
    fn watched(&self, tgid: u32) -> Option<u32>;
    fn set_flags(&mut self, tgid: u32, flags: u32) -> Result<bool, ebpf::Error>;
    fn set_fd(&mut self, tgid: u32, fd: u32, origin: u8) -> Result<(), ebpf::Error>;
    fn forget_fds(&mut self, tgid: u32);
    fn unwatch(&mut self, tgid: u32) -> Result<(), ebpf::Error>;
    /// The watch every new program gets at exec.
    fn set_probe(&mut self, flags: u32) -> Result<(), ebpf::Error>;
    /// Events the kernel could not put in the ring buffer.
    fn lost(&self) -> u64;
    /// The programs attached.
    fn programs(&self) -> Vec<String>;
    fn signal(&mut self, tgid: u32, signal: Signal) -> nix::Result<()>;
}

impl Kernel for Observer {
    fn watch(&mut self, tgid: u32, flags: u32) -> Result<(), ebpf::Error> {
        Observer::watch(self, tgid, flags)
    }
    fn watched(&self, tgid: u32) -> Option<u32> {
        Observer::watched(self, tgid).map(|w| w.flags)
    }
    fn set_flags(&mut self, tgid: u32, flags: u32) -> Result<bool, ebpf::Error> {
        Observer::set_flags(self, tgid, flags)
    }
    fn set_fd(&mut self, tgid: u32, fd: u32, origin: u8) -> Result<(), ebpf::Error> {
        Observer::set_fd(self, tgid, fd, origin)
    }
    fn forget_fds(&mut self, tgid: u32) {
        Observer::forget_fds(self, tgid)
    }
    fn unwatch(&mut self, tgid: u32) -> Result<(), ebpf::Error> {
        Observer::unwatch_tgid(self, tgid)
    }
    fn set_probe(&mut self, flags: u32) -> Result<(), ebpf::Error> {
        Observer::set_probe(self, flags)
    }
    fn lost(&self) -> u64 {
        Observer::lost(self)
    }
    fn programs(&self) -> Vec<String> {
        self.programs.iter().map(|p| p.to_string()).collect()
    }
    fn signal(&mut self, tgid: u32, signal: Signal) -> nix::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(tgid as i32), signal)
    }
}

/// What /proc says about a process, one file at a time; `None` or empty when the process
/// (or the file) is gone.
pub trait Procs {
    /// The daemon's own pid.
    fn me(&self) -> u32;
    /// Every process.
    fn pids(&self) -> Vec<u32>;
    fn comm(&self, pid: u32) -> Option<String>;
    fn exe(&self, pid: u32) -> Option<PathBuf>;
    fn cmdline(&self, pid: u32) -> Vec<String>;
    /// Its one-letter state (`R`, `S`, `T` stopped, `Z` zombie, ...) and parent.
    fn stat(&self, pid: u32) -> Option<(char, u32)>;
    /// What descriptor `fd` points to, as `readlink` says (`pipe:[123]`, `socket:[4]`,
    /// `/dev/pts/0`); empty if it is not open.
    fn fd_target(&self, pid: u32, fd: u32) -> String;
    /// Its pipe descriptors: (fd, pipe inode, open for writing).
    fn pipe_fds(&self, pid: u32) -> Vec<(u32, u64, bool)>;
    /// The pid of the process tracing it (ptrace), if any.
    fn tracer(&self, pid: u32) -> Option<u32>;
    fn cwd(&self, pid: u32) -> Option<String>;
    fn process(&self, pid: u32) -> Option<Process>;
    fn principal(&self, pid: u32) -> Option<Principal>;
    /// Its parent and the parent's ancestors, nearest first.
    fn ancestry(&self, pid: u32) -> Vec<Process>;
    /// The audit log shim `pid` writes.
    fn shim_log(&self, pid: u32) -> Option<ShimLog>;
    /// The name host `host`'s config gives the server entry whose command line, as the
    /// host launched it, is `launched`.
    fn config_name(&self, host: u32, launched: &[String]) -> Option<String>;
    /// The process listening on loopback TCP `port`.
    fn tcp_listener(&self, port: u16) -> Option<u32>;

    fn exists(&self, pid: u32) -> bool {
        self.stat(pid).is_some()
    }

    fn state(&self, pid: u32) -> Option<char> {
        self.stat(pid).map(|(s, _)| s)
    }

    fn parent(&self, pid: u32) -> Option<u32> {
        self.stat(pid).map(|(_, p)| p)
    }

    /// Whether `pid` runs: it exists and is not a zombie (exited, not yet reaped) or dead.
    fn alive(&self, pid: u32) -> bool {
        self.state(pid)
            .is_some_and(|s| !matches!(s, 'Z' | 'X' | 'x'))
    }

    /// Every process: pid and parent.
    fn all(&self) -> Vec<(u32, u32)> {
        self.pids()
            .into_iter()
            .filter_map(|pid| Some((pid, self.parent(pid)?)))
            .collect()
    }

    /// The names a process goes by: its comm, its executable's file name, and, for an
    /// interpreter, its script's file name (`node /usr/bin/claude` is `claude`).
    fn names(&self, pid: u32) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.comm(pid));
        if let Some(exe) = self.exe(pid)
            && let Some(name) = exe.file_name()
        {
            out.push(
                name.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string(),
            );
        }
        let argv = self.cmdline(pid);
        if let Some(first) = argv.first() {
            out.push(base(first));
        }
        if let Some(script) = script_of(&argv) {
            out.push(base(script));
        }
        out
    }

    /// Whether one of `pid`'s names is in `hosts`.
    fn is_host(&self, pid: u32, hosts: &[String]) -> bool {
        self.names(pid).iter().any(|n| hosts.iter().any(|h| h == n))
    }

    /// [`Procs::is_host`] for a program that just exec'd, from what the exec event says (its
    /// new comm and the path it was started by) without reading /proc, except for an
    /// interpreter, whose script is what names it. An exec that names the host otherwise
    /// (through argv[0] alone, or a symlink of another name) is found by the next rescan.
    fn is_host_exec(&self, pid: u32, comm: &str, filename: &Path, hosts: &[String]) -> bool {
        let file = filename
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default();
        if hosts.iter().any(|h| h == comm || *h == file) {
            return true;
        }
        is_interpreter(&file) && self.is_host(pid, hosts)
    }

    /// Which of `hosts` names `pid`: the kind of agent host it is, for records and alerts.
    fn host_kind(&self, pid: u32, hosts: &[String]) -> Option<String> {
        self.names(pid).into_iter().find(|n| hosts.contains(n))
    }

    /// Whether `pid` is an `mcp-guard wrap` shim.
    fn is_shim(&self, pid: u32) -> bool {
        let argv = self.cmdline(pid);
        let named = self
            .exe(pid)
            .as_deref()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "mcp-guard")
            || argv.first().is_some_and(|a| base(a) == "mcp-guard");
        named && argv.get(1).is_some_and(|a| a == "wrap")
    }

    /// The nearest `mcp-guard wrap` above `pid`, if any, up to the first agent host.
    fn shim_above(&self, pid: u32, host: u32) -> Option<u32> {
        let mut p = self.parent(pid)?;
        for _ in 0..64 {
            if p == host || p <= 1 {
                return None;
            }
            if self.is_shim(p) {
                return Some(p);
            }
            p = self.parent(p)?;
        }
        None
    }

    /// The pipe inodes `pid` has open.
    fn pipes(&self, pid: u32) -> std::collections::HashSet<u64> {
        self.pipe_fds(pid)
            .into_iter()
            .map(|(_, inode, _)| inode)
            .collect()
    }

    /// The inode of the pipe descriptor `fd` of `pid` is, if it is a pipe.
    fn pipe_inode(&self, pid: u32, fd: u32) -> Option<u64> {
        procs::pipe_inode_of(&self.fd_target(pid, fd))
    }

    fn is_pipe(&self, pid: u32, fd: u32) -> bool {
        self.fd_target(pid, fd).starts_with("pipe:")
    }

    fn is_pipe_or_socket(&self, pid: u32, fd: u32) -> bool {
        let t = self.fd_target(pid, fd);
        t.starts_with("pipe:") || t.starts_with("socket:")
    }

    /// The process at the other end of `pid`'s stdin: its host. For a pipe, the nearest
    /// ancestor that holds the pipe open for writing (through wrappers such as `npx` or
    /// `sh -c`), else any process that does (one that handed its pipe to a server it did
    /// not start: `systemd-run --pipe`, a container runtime, descriptors passed over a
    /// socket). For anything else, its parent.
    fn peer_of(&self, pid: u32) -> Option<u32> {
        let parent_of = |p| self.parent(p).filter(|&q| q > 1);
        let Some(inode) = self.pipe_inode(pid, 0) else {
            return parent_of(pid);
        };
        let writes = |p: u32| self.pipe_fds(p).iter().any(|&(_, i, w)| i == inode && w);
        let mut p = parent_of(pid);
        for _ in 0..16 {
            let Some(q) = p else { break };
            if writes(q) {
                return Some(q);
            }
            p = parent_of(q);
        }
        let me = self.me();
        self.pids()
            .into_iter()
            .find(|&p| p != pid && p != me && writes(p))
            .or_else(|| parent_of(pid))
    }
}

/// This machine's /proc.
pub struct LiveProcs;

impl Procs for LiveProcs {
    fn me(&self) -> u32 {
        std::process::id()
    }
    fn pids(&self) -> Vec<u32> {
        procs::pids()
    }
    fn comm(&self, pid: u32) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|c| c.trim_end().to_string())
    }
    fn exe(&self, pid: u32) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/exe")).ok()
    }
    fn cmdline(&self, pid: u32) -> Vec<String> {
        procs::cmdline(pid)
    }
    fn stat(&self, pid: u32) -> Option<(char, u32)> {
        procs::stat(pid)
    }
    fn fd_target(&self, pid: u32, fd: u32) -> String {
        procs::fd_target(pid, fd)
    }
    fn pipe_fds(&self, pid: u32) -> Vec<(u32, u64, bool)> {
        procs::pipe_fds(pid)
    }
    fn tracer(&self, pid: u32) -> Option<u32> {
        procs::tracer(pid)
    }
    fn cwd(&self, pid: u32) -> Option<String> {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .map(|p| p.display().to_string())
    }
    fn process(&self, pid: u32) -> Option<Process> {
        Process::read(pid as i32).ok()
    }
    fn principal(&self, pid: u32) -> Option<Principal> {
        identity::principal_of(pid as i32)
    }
    fn ancestry(&self, pid: u32) -> Vec<Process> {
        identity::ancestry(pid as i32)
    }
    fn shim_log(&self, pid: u32) -> Option<ShimLog> {
        ShimLog::of(pid)
    }
    fn config_name(&self, host: u32, launched: &[String]) -> Option<String> {
        super::hostcfg::config_name(self, host, launched)
    }
    fn tcp_listener(&self, port: u16) -> Option<u32> {
        procs::tcp_listener(port)
    }
}
