//! What /proc says about processes, one file at a time, and how programs are named. How
//! those answers combine (hosts, shims, the other end of a pipe) is in [`super::world::Procs`].

use std::path::Path;

/// Every pid in /proc.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The one-letter state of `pid` (`R`, `S`, `T` stopped, `Z` zombie, ...) and its parent.
pub fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The state and parent in a `/proc/PID/stat` line. The comm may hold spaces and
/// parentheses: fields start after the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let mut rest = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

/// Interpreters and launchers whose first non-option argument names the program.
const INTERPRETERS: &[&str] = &[
    "node", "nodejs", "bun", "deno", "python", "python3", "npx", "npm", "uv", "uvx", "pipx",
    "ruby", "java", "env", "sh", "bash",
];

pub(super) fn is_interpreter(arg: &str) -> bool {
    let b = base(arg);
    INTERPRETERS.contains(&b.as_str())
        || (b.starts_with("python3.") && b[8..].chars().all(|c| c.is_ascii_digit()))
}

/// The program an interpreter runs: its first argument that is not an option
/// (`-m module` counts as the module).
pub(super) fn script_of(argv: &[String]) -> Option<&String> {
    if !argv.first().is_some_and(|a| is_interpreter(a)) {
        return None;
    }
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        if a == "-m" {
            return args.next();
        }
        if a.starts_with('-') || a == "run" || a == "exec" || is_interpreter(a) {
            continue;
        }
        return Some(a);
    }
    None
}

pub(super) fn base(arg: &str) -> String {
    Path::new(arg)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_string())
}

/// The name records give a server nobody named: its script or package without an
/// extension (`mcp-server-filesystem`, `mcp_server_time`), else its program's name.
pub fn server_name(argv: &[String]) -> String {
    let prog = script_of(argv)
        .or(argv.first())
        .map(|a| base(a))
        .unwrap_or_default();
    let prog = prog
        .rsplit_once('@')
        .filter(|(p, _)| !p.is_empty())
        .map_or(prog.as_str(), |(p, _)| p)
        .to_string();
    match prog.rsplit_once('.') {
        Some((stem, ext)) if ["js", "mjs", "cjs", "ts", "py"].contains(&ext) => stem.to_string(),
        _ => prog,
    }
}

/// Whether a host config entry (`command`, `args`) launched a process whose command line,
/// as first exec'd, is `cmdline`: the entry's arguments end it, and its command is one of
/// its words (a `#!` script runs as `interpreter script args...`).
pub fn launched_by(cmdline: &[String], command: &str, args: &[String]) -> bool {
    if cmdline.len() < args.len() + 1 || !cmdline.ends_with(args) {
        return false;
    }
    let head = &cmdline[..cmdline.len() - args.len()];
    let want = base(command);
    head.iter().any(|w| w == command || base(w) == want)
}

/// The process listening on loopback TCP `port`, from /proc/net/tcp{,6} and the
/// descriptors of every process.
pub fn tcp_listener(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit(':').next()?;
            let listening = *cols.get(3)? == "0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| cols.get(9)?.parse::<u64>().ok())
                .flatten()
        })
    })?;
    let want = format!("socket:[{inode}]");
    pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .any(|t| t.as_os_str() == want.as_str())
            })
            .unwrap_or(false)
    })
}

/// `pid`'s pipe descriptors: (fd, pipe inode, open for writing).
pub fn pipe_fds(pid: u32) -> Vec<(u32, u64, bool)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: u32 = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        let inode = target
            .to_str()?
            .strip_prefix("pipe:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
        let flags = u32::from_str_radix(flags, 8).ok()?;
        Some((fd, inode, flags & 0o3 != 0))
    })
    .collect()
}

pub fn fd_target(pid: u32, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The inode of a pipe, from what its descriptor points to (`pipe:[123]`).
pub fn pipe_inode_of(target: &str) -> Option<u64> {
    target
        .strip_prefix("pipe:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The pid of the process tracing `pid` (ptrace), if any.
pub fn tracer(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&t| t != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::world::{LiveProcs, Procs as _};

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(parse_stat("12 (a) b) S 7 12 12 0"), Some(('S', 7)));
        assert_eq!(parse_stat("12 (x y) Z 1 0"), Some(('Z', 1)));
        assert_eq!(parse_stat("12 (x"), None);
    }

    #[test]
    fn an_exec_names_a_host_by_comm_path_or_script() {
        let hosts = vec!["claude".to_string(), "mcpg-x".to_string()];
        let me = std::process::id();
        let is_host_exec =
            |pid, comm, file, hosts: &[String]| LiveProcs.is_host_exec(pid, comm, file, hosts);
        assert!(is_host_exec(me, "claude", Path::new("/x/y"), &hosts));
        assert!(is_host_exec(
            me,
            "other",
            Path::new("/usr/bin/mcpg-x"),
            &hosts
        ));
        assert!(!is_host_exec(me, "ls", Path::new("/usr/bin/ls"), &hosts));
        // An interpreter is named by its script: this test's own argv has none of those.
        assert!(!is_host_exec(
            me,
            "node",
            Path::new("/usr/bin/node"),
            &hosts
        ));
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let alive = |pid| LiveProcs.alive(pid);
        assert!(alive(pid));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Not reaped yet: a zombie, which would still accept a signal.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(pid) {
            assert!(std::time::Instant::now() < deadline, "still running");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "reaped too early for the test"
        );
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(alive(std::process::id()));
    }

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn server_names_come_from_the_script_or_package() {
        assert_eq!(
            server_name(&v(&[
                "node",
                "/x/node_modules/.bin/mcp-server-filesystem",
                "/tmp"
            ])),
            "mcp-server-filesystem"
        );
        assert_eq!(
            server_name(&v(&["/usr/bin/python3", "-m", "mcp_server_time"])),
            "mcp_server_time"
        );
        assert_eq!(
            server_name(&v(&["python3", "-u", "/srv/server.py"])),
            "server"
        );
        assert_eq!(
            server_name(&v(&[
                "npx",
                "-y",
                "@modelcontextprotocol/server-memory@1.0"
            ])),
            "server-memory"
        );
        assert_eq!(
            server_name(&v(&["/opt/bin/github-mcp-server", "stdio"])),
            "github-mcp-server"
        );
        assert_eq!(server_name(&v(&["uv", "run", "weather.py"])), "weather");
    }

    #[test]
    fn config_entries_are_matched_to_what_they_launched() {
        let a = |x: &[&str]| v(x);
        // A script with a shebang runs as `env node script args`.
        assert!(launched_by(
            &a(&[
                "/usr/bin/env",
                "node",
                "/x/.bin/mcp-server-filesystem",
                "/tmp"
            ]),
            "/x/.bin/mcp-server-filesystem",
            &a(&["/tmp"])
        ));
        assert!(launched_by(
            &a(&["node", "/usr/bin/npx", "-y", "@m/server-memory"]),
            "npx",
            &a(&["-y", "@m/server-memory"])
        ));
        assert!(!launched_by(
            &a(&["node", "/usr/bin/npx", "-y", "@m/server-memory"]),
            "npx",
            &a(&["-y", "@m/server-git"])
        ));
        assert!(!launched_by(
            &a(&["python3", "-m", "mcp_server_time"]),
            "uvx",
            &a(&["mcp_server_time"])
        ));
        assert!(!launched_by(&a(&["x"]), "x", &a(&["y"])));
    }

    #[test]
    fn this_process_is_found_by_its_names_and_is_no_shim() {
        let me = std::process::id();
        let names = LiveProcs.names(me);
        assert!(!names.is_empty());
        assert!(LiveProcs.is_host(me, &names[..1]));
        assert!(!LiveProcs.is_host(me, &["no-such-host".to_string()]));
        assert!(!LiveProcs.is_shim(me));
        assert_eq!(
            LiveProcs.parent(me),
            Some(nix::unistd::getppid().as_raw() as u32)
        );
    }
}
