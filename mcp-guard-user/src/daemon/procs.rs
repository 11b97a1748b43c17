//! What /proc says about processes: which are agent hosts, which are shims, what a
//! server is called.

use std::path::Path;

/// The names a process goes by: its comm, its executable's file name, and, for an
/// interpreter, its script's file name (`node /usr/bin/claude` is `claude`).
pub fn names(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        out.push(comm.trim_end().to_string());
    }
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe"))
        && let Some(name) = exe.file_name()
    {
        out.push(
            name.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
        );
    }
    let argv = cmdline(pid);
    if let Some(first) = argv.first() {
        out.push(base(first));
    }
    if let Some(script) = script_of(&argv) {
        out.push(base(script));
    }
    out
}

/// Whether one of `pid`'s names is in `hosts`.
pub fn is_host(pid: u32, hosts: &[String]) -> bool {
    names(pid).iter().any(|n| hosts.iter().any(|h| h == n))
}

/// [`is_host`] for a program that just exec'd, from what the exec event says (its new
/// comm and the path it was started by) without reading /proc, except for an interpreter,
/// whose script is what names it. An exec that names the host otherwise (through argv[0]
/// alone, or a symlink of another name) is found by the next rescan.
pub fn is_host_exec(pid: u32, comm: &str, filename: &Path, hosts: &[String]) -> bool {
    let file = filename
        .file_name()
        .map(|f| f.to_string_lossy())
        .unwrap_or_default();
    if hosts.iter().any(|h| h == comm || *h == file) {
        return true;
    }
    is_interpreter(&file) && is_host(pid, hosts)
}

/// Which of `hosts` names `pid`: the kind of agent host it is, for records and alerts.
pub fn host_kind(pid: u32, hosts: &[String]) -> Option<String> {
    names(pid).into_iter().find(|n| hosts.contains(n))
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

/// The one-letter state of `pid` (`R`, `S`, `T` stopped, ...).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm may hold spaces and parentheses: fields start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Every process: pid and parent.
pub fn all() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect()
}

/// Interpreters and launchers whose first non-option argument names the program.
const INTERPRETERS: &[&str] = &[
    "node", "nodejs", "bun", "deno", "python", "python3", "npx", "npm", "uv", "uvx", "pipx",
    "ruby", "java", "env", "sh", "bash",
];

fn is_interpreter(arg: &str) -> bool {
    let b = base(arg);
    INTERPRETERS.contains(&b.as_str())
        || (b.starts_with("python3.") && b[8..].chars().all(|c| c.is_ascii_digit()))
}

/// The program an interpreter runs: its first argument that is not an option
/// (`-m module` counts as the module).
fn script_of(argv: &[String]) -> Option<&String> {
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

fn base(arg: &str) -> String {
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

/// Whether `pid` is an `mcp-guard wrap` shim.
pub fn is_shim(pid: u32) -> bool {
    let argv = cmdline(pid);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let named = exe
        .as_deref()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "mcp-guard")
        || argv.first().is_some_and(|a| base(a) == "mcp-guard");
    named && argv.get(1).is_some_and(|a| a == "wrap")
}

/// The nearest `mcp-guard wrap` above `pid`, if any, up to the first agent host.
pub fn shim_above(pid: u32, host: u32) -> Option<u32> {
    let mut p = parent(pid)?;
    for _ in 0..64 {
        if p == host || p <= 1 {
            return None;
        }
        if is_shim(p) {
            return Some(p);
        }
        p = parent(p)?;
    }
    None
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
    all().into_iter().map(|(pid, _)| pid).find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .any(|t| t.as_os_str() == want.as_str())
            })
            .unwrap_or(false)
    })
}

/// The pipe inodes `pid` has open.
pub fn pipes(pid: u32) -> std::collections::HashSet<u64> {
    pipe_fds(pid)
        .into_iter()
        .map(|(_, inode, _)| inode)
        .collect()
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

fn fd_target(pid: u32, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The inode of the pipe descriptor `fd` of `pid` is, if it is a pipe.
pub fn pipe_inode(pid: u32, fd: u32) -> Option<u64> {
    fd_target(pid, fd)
        .strip_prefix("pipe:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The process at the other end of `pid`'s stdin: its host. For a pipe, the nearest
/// ancestor that holds the pipe open for writing (through wrappers such as `npx` or
/// `sh -c`), else any process that does (one that handed its pipe to a server it did not
/// start: `systemd-run --pipe`, a container runtime, descriptors passed over a socket).
/// For anything else, its parent.
pub fn peer_of(pid: u32) -> Option<u32> {
    let parent_of = |p| parent(p).filter(|&q| q > 1);
    let Some(inode) = pipe_inode(pid, 0) else {
        return parent_of(pid);
    };
    let writes = |p: u32| pipe_fds(p).iter().any(|&(_, i, w)| i == inode && w);
    let mut p = parent_of(pid);
    for _ in 0..16 {
        let Some(q) = p else { break };
        if writes(q) {
            return Some(q);
        }
        p = parent_of(q);
    }
    all()
        .into_iter()
        .map(|(p, _)| p)
        .find(|&p| p != pid && p != std::process::id() && writes(p))
        .or_else(|| parent_of(pid))
}

pub fn is_pipe(pid: u32, fd: u32) -> bool {
    fd_target(pid, fd).starts_with("pipe:")
}

pub fn is_pipe_or_socket(pid: u32, fd: u32) -> bool {
    let t = fd_target(pid, fd);
    t.starts_with("pipe:") || t.starts_with("socket:")
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

/// Whether `pid` runs: it exists and is not a zombie (exited, not yet reaped) or dead.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold any byte.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_names_a_host_by_comm_path_or_script() {
        let hosts = vec!["claude".to_string(), "mcpg-x".to_string()];
        let me = std::process::id();
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
        let names = names(me);
        assert!(!names.is_empty());
        assert!(is_host(me, &names[..1]));
        assert!(!is_host(me, &["no-such-host".to_string()]));
        assert!(!is_shim(me));
        assert_eq!(parent(me), Some(nix::unistd::getppid().as_raw() as u32));
    }
}
