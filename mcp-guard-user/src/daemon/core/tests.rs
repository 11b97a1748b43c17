//! The core's decisions, driven without root: a process table in memory stands for /proc
//! and a recording kernel for the loaded programs. The kernel and end-to-end tests run the
//! same core over the real ones.

use std::collections::HashMap;
use std::path::PathBuf;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::*;
use crate::ebpf::{Exec, Socket, Unfollowed};
use crate::identity::Principal;
use mcp_guard_common::data;

/// What the programs would be told, and which signals were sent.
#[derive(Default)]
struct FakeKernel {
    watched: HashMap<u32, u32>,
    fds: HashMap<(u32, u32), u8>,
    forgotten: Vec<u32>,
    probe: u32,
    lost: u64,
    signals: Vec<(u32, Signal)>,
}

impl Kernel for FakeKernel {
    fn watch(&mut self, tgid: u32, flags: u32) -> Result<(), ebpf::Error> {
        self.watched.insert(tgid, flags);
        Ok(())
    }
    fn watched(&self, tgid: u32) -> Option<u32> {
        self.watched.get(&tgid).copied()
    }
    fn set_flags(&mut self, tgid: u32, flags: u32) -> Result<bool, ebpf::Error> {
        Ok(self.watched.insert(tgid, flags).is_some())
    }
    fn set_fd(&mut self, tgid: u32, fd: u32, origin: u8) -> Result<(), ebpf::Error> {
        self.fds.insert((tgid, fd), origin);
        Ok(())
    }
    fn forget_fds(&mut self, tgid: u32) {
        self.forgotten.push(tgid);
    }
    fn unwatch(&mut self, tgid: u32) -> Result<(), ebpf::Error> {
        self.watched.remove(&tgid);
        Ok(())
    }
    fn set_probe(&mut self, flags: u32) -> Result<(), ebpf::Error> {
        self.probe = flags;
        Ok(())
    }
    fn lost(&self) -> u64 {
        self.lost
    }
    fn programs(&self) -> Vec<String> {
        vec!["fake".into()]
    }
    fn signal(&mut self, tgid: u32, signal: Signal) -> nix::Result<()> {
        self.signals.push((tgid, signal));
        Ok(())
    }
}

#[derive(Clone)]
struct FakeProc {
    ppid: u32,
    state: char,
    comm: String,
    exe: Option<PathBuf>,
    cmdline: Vec<String>,
    /// fd -> what readlink says.
    fds: HashMap<u32, String>,
    tracer: Option<u32>,
    uid: u32,
}

/// A process table.
#[derive(Default)]
struct FakeProcs {
    procs: HashMap<u32, FakeProc>,
    /// (host, command line launched) -> the name its config gives.
    config: HashMap<(u32, Vec<String>), String>,
}

const ME: u32 = 1;

impl FakeProcs {
    fn add(&mut self, pid: u32, ppid: u32, argv: &[&str]) -> &mut FakeProc {
        let exe = PathBuf::from(argv[0]);
        let comm: String = exe
            .file_name()
            .unwrap()
            .to_string_lossy()
            .chars()
            .take(15)
            .collect();
        self.procs.insert(
            pid,
            FakeProc {
                ppid,
                state: 'S',
                comm,
                exe: Some(exe),
                cmdline: argv.iter().map(|s| s.to_string()).collect(),
                fds: HashMap::new(),
                tracer: None,
                uid: 1000,
            },
        );
        self.procs.get_mut(&pid).unwrap()
    }
}

impl FakeProc {
    fn fd(&mut self, fd: u32, target: &str) -> &mut FakeProc {
        self.fds.insert(fd, target.to_string());
        self
    }
}

impl Procs for FakeProcs {
    fn me(&self) -> u32 {
        ME
    }
    fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.procs.keys().copied().collect();
        v.sort();
        v
    }
    fn comm(&self, pid: u32) -> Option<String> {
        Some(self.procs.get(&pid)?.comm.clone())
    }
    fn exe(&self, pid: u32) -> Option<PathBuf> {
        self.procs.get(&pid)?.exe.clone()
    }
    fn cmdline(&self, pid: u32) -> Vec<String> {
        self.procs
            .get(&pid)
            .map(|p| p.cmdline.clone())
            .unwrap_or_default()
    }
    fn stat(&self, pid: u32) -> Option<(char, u32)> {
        let p = self.procs.get(&pid)?;
        Some((p.state, p.ppid))
    }
    fn fd_target(&self, pid: u32, fd: u32) -> String {
        self.procs
            .get(&pid)
            .and_then(|p| p.fds.get(&fd).cloned())
            .unwrap_or_default()
    }
    fn pipe_fds(&self, pid: u32) -> Vec<(u32, u64, bool)> {
        let Some(p) = self.procs.get(&pid) else {
            return Vec::new();
        };
        // `pipe:[N]w` in this table marks the write end.
        p.fds
            .iter()
            .filter_map(|(&fd, t)| {
                let write = t.ends_with('w');
                let inode = crate::daemon::procs::pipe_inode_of(t.trim_end_matches('w'))?;
                Some((fd, inode, write))
            })
            .collect()
    }
    fn tracer(&self, pid: u32) -> Option<u32> {
        self.procs.get(&pid)?.tracer
    }
    fn cwd(&self, pid: u32) -> Option<String> {
        self.procs.get(&pid).map(|_| "/work".to_string())
    }
    fn process(&self, pid: u32) -> Option<Process> {
        let p = self.procs.get(&pid)?;
        Some(Process {
            pid: pid as i32,
            ppid: p.ppid as i32,
            exec_id: format!("boot:0:{pid}"),
            exe: p.exe.as_ref().map(|e| e.display().to_string()),
            comm: p.comm.clone(),
            cmdline: p.cmdline.clone(),
            uid: p.uid,
            start_time: 0,
        })
    }
    fn principal(&self, pid: u32) -> Option<Principal> {
        let uid = self.procs.get(&pid)?.uid;
        Some(Principal {
            uid,
            euid: uid,
            user: Some(format!("user{uid}")),
            gid: uid,
            groups: vec![uid],
        })
    }
    fn ancestry(&self, pid: u32) -> Vec<Process> {
        let mut out = Vec::new();
        let mut p = self.parent(pid);
        while let Some(q) = p.filter(|&q| q > 1) {
            let Some(proc) = self.process(q) else { break };
            p = Some(proc.ppid as u32);
            out.push(proc);
        }
        out
    }
    fn shim_log(&self, _pid: u32) -> Option<shimlog::ShimLog> {
        None
    }
    fn config_name(&self, host: u32, launched: &[String]) -> Option<String> {
        self.config.get(&(host, launched.to_vec())).cloned()
    }
    fn tcp_listener(&self, _port: u16) -> Option<u32> {
        None
    }
}

const HOST: u32 = 100;
const SERVER: u32 = 200;
const STDIN_PIPE: &str = "pipe:[7001]";
const STDOUT_PIPE: &str = "pipe:[7002]";

const DENY_WRITES: &str = r#"default = "allow"

[[rule]]
id = "no-writes"
tool = "write_file"
action = "deny"
"#;

fn kill_mode(policy: &str) -> String {
    format!("{policy}\n[observer]\ndenied = \"kill\"\n")
}

/// A core over a machine with an agent host (`claude`, pid 100) whose child (pid 200) is a
/// filesystem server on pipes; nothing is watched yet.
struct T {
    core: Core<FakeKernel, FakeProcs>,
    seq: u64,
    records: Vec<Value>,
}

fn machine() -> FakeProcs {
    let mut m = FakeProcs::default();
    m.add(HOST, 50, &["/usr/bin/claude"])
        .fd(0, "/dev/pts/1")
        .fd(1, "/dev/pts/1")
        .fd(20, "pipe:[7001]w")
        .fd(21, STDOUT_PIPE);
    m.add(
        SERVER,
        HOST,
        &["/usr/bin/node", "/srv/mcp-server-filesystem.js", "/data"],
    )
    .fd(0, STDIN_PIPE)
    .fd(1, "pipe:[7002]w");
    m.add(50, 1, &["/bin/bash"]);
    m
}

fn with(policy: &str, cfg: Config, m: FakeProcs) -> T {
    let policy = Policy::parse(policy, "test.toml").unwrap().into_monitor();
    T {
        core: Core::new(cfg, FakeKernel::default(), m, policy),
        seq: 0,
        records: Vec::new(),
    }
}

fn t(policy: &str) -> T {
    with(policy, Config::default(), machine())
}

fn request(id: u64, tool: &str, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}})
        .to_string()
}

fn write_file(id: u64) -> String {
    request(id, "write_file", json!({"path": "/data/x", "content": "y"}))
}

fn read_file(id: u64) -> String {
    request(id, "read_file", json!({"path": "/data/x"}))
}

impl T {
    fn exec(&mut self, tgid: u32, ppid: u32, watch: u32) {
        let p = self.core.sys.procs[&tgid].clone();
        self.core.handle(Event::Exec(Exec {
            pid: tgid,
            tgid,
            ppid,
            uid: p.uid,
            gid: p.uid,
            watch,
            ktime_ns: 0,
            comm: p.comm,
            filename: p.exe.unwrap(),
        }));
    }

    /// The host and its server as the kernel reports them: the host exec'd (and is
    /// recognised), then its child exec'd captured.
    fn host_and_server(&mut self) {
        self.exec(HOST, 50, 0);
        let flags = self.core.kernel.watched[&HOST];
        self.core
            .kernel
            .watched
            .insert(SERVER, flags & !watch::HOST | watch::CAPTURE);
        self.exec(SERVER, HOST, watch::CAPTURE);
    }

    fn data(&mut self, tgid: u32, origin: u8, inbound: bool, bytes: &[u8], flags: u8) {
        self.seq += 1;
        self.core.handle(Event::Data(Data {
            tgid,
            tid: tgid,
            fd: u32::from(origin != mcp_guard_common::origin::STDIN),
            inbound,
            origin,
            cpu: 0,
            seq: self.seq,
            total: bytes.len() as u32,
            offset: 0,
            flags: flags | data::LAST,
            payload: bytes.to_vec(),
        }));
    }

    /// `tgid` reads `line` and a newline from its stdin.
    fn read(&mut self, tgid: u32, line: &str) {
        self.data(tgid, origin::STDIN, true, format!("{line}\n").as_bytes(), 0);
    }

    /// A gated read: the kernel stopped `tgid` as the read returned.
    fn gated_read(&mut self, tgid: u32, line: &str) {
        let bytes = format!("{line}\n");
        self.data(tgid, origin::STDIN, true, bytes.as_bytes(), data::GATED);
    }

    fn write(&mut self, tgid: u32, line: &str) {
        self.data(
            tgid,
            origin::STDOUT,
            false,
            format!("{line}\n").as_bytes(),
            0,
        );
    }

    fn initialize(&mut self, tgid: u32) {
        self.read(
            tgid,
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
        );
    }

    /// Every record so far, as JSON.
    fn records(&mut self) -> &[Value] {
        for r in self.core.take_records() {
            self.records.push(serde_json::to_value(&r).unwrap());
        }
        &self.records
    }

    fn kinds(&mut self, kind: &str) -> Vec<Value> {
        self.records()
            .iter()
            .filter(|r| r["kind"] == kind)
            .cloned()
            .collect()
    }

    /// The details of the alerts named `name`.
    fn alerts(&mut self, name: &str) -> Vec<Value> {
        self.kinds("alert")
            .into_iter()
            .map(|r| r["detail"].clone())
            .filter(|d| d["alert"] == name)
            .collect()
    }

    fn signals(&self, tgid: u32) -> Vec<Signal> {
        self.core
            .kernel
            .signals
            .iter()
            .filter(|(p, _)| *p == tgid)
            .map(|(_, s)| *s)
            .collect()
    }

    fn role(&self, tgid: u32) -> Option<Role> {
        self.core.procs.get(&tgid).map(|p| p.role)
    }
}

// Recognising hosts and probing programs.

#[test]
fn a_host_is_watched_when_it_execs_under_its_name() {
    let mut t = t("");
    t.exec(HOST, 50, 0);
    assert_eq!(t.core.kernel.watched.get(&HOST), Some(&watch::HOST));
    assert!(t.core.hosts.contains_key(&HOST));
}

#[test]
fn a_host_started_by_an_interpreter_is_named_by_its_script() {
    let mut m = machine();
    m.add(300, 50, &["/usr/bin/node", "/opt/claude/cli.js"]);
    m.procs.get_mut(&300).unwrap().cmdline = vec!["node".into(), "/usr/bin/claude".into()];
    let mut t = with("", Config::default(), m);
    t.exec(300, 50, 0);
    assert!(t.core.hosts.contains_key(&300));
}

#[test]
fn under_kill_hosts_are_watched_with_the_gate() {
    let mut t = t(&kill_mode(""));
    t.exec(HOST, 50, 0);
    assert_eq!(
        t.core.kernel.watched.get(&HOST),
        Some(&(watch::HOST | watch::GATE))
    );
}

#[test]
fn a_probed_program_on_a_terminal_is_left_alone() {
    let mut m = machine();
    m.add(300, 50, &["/usr/bin/vim"])
        .fd(0, "/dev/pts/1")
        .fd(1, "/dev/pts/1");
    let mut t = with("", Config::default(), m);
    t.core.kernel.watched.insert(300, watch::PROBE);
    t.exec(300, 50, watch::PROBE);
    assert_eq!(t.core.kernel.watched.get(&300), None);
}

#[test]
fn a_probed_program_on_pipes_stays_probed() {
    let mut m = machine();
    m.add(300, 50, &["/usr/bin/python3", "agent.py"])
        .fd(0, "pipe:[9]")
        .fd(1, "socket:[10]");
    let mut t = with("", Config::default(), m);
    t.core.kernel.watched.insert(300, watch::PROBE);
    t.exec(300, 50, watch::PROBE);
    assert_eq!(t.core.kernel.watched.get(&300), Some(&watch::PROBE));
    assert!(t.core.hosts.is_empty());
}

#[test]
fn with_detect_hosts_an_exec_is_named_from_proc() {
    let mut m = machine();
    // The exec event's comm and path say `node`; its argv says it is claude.
    m.add(300, 50, &["/usr/bin/node"]).cmdline = vec!["claude".into()];
    let cfg = Config {
        detect: Detect::Hosts,
        ..Config::default()
    };
    let mut t = with("", cfg, m);
    t.exec(300, 50, 0);
    assert!(t.core.hosts.contains_key(&300));
}

#[test]
fn the_probe_carries_the_gate_only_under_kill() {
    let any = Config::default();
    let monitor = Policy::parse("", "p").unwrap();
    let kill = Policy::parse(&kill_mode(""), "p").unwrap();
    assert_eq!(probe_flags(&any, &monitor), watch::PROBE);
    assert_eq!(probe_flags(&any, &kill), watch::PROBE | watch::GATE);
    let hosts = Config {
        detect: Detect::Hosts,
        ..Config::default()
    };
    assert_eq!(probe_flags(&hosts, &kill), 0);
}

// Sessions of servers nobody wrapped.

#[test]
fn an_unwrapped_server_is_recorded_and_alerted_with_its_host() {
    let mut t = t(DENY_WRITES);
    t.host_and_server();
    t.initialize(SERVER);
    t.read(SERVER, &read_file(1));
    assert_eq!(t.role(SERVER), Some(Role::Server));
    let start = t.kinds("session_start");
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["transport"], "stdio-observed");
    assert_eq!(start[0]["server"]["name"], "mcp-server-filesystem");
    assert_eq!(start[0]["agent_host"]["pid"], HOST);
    let alert = t.alerts("unwrapped_server");
    assert_eq!(alert.len(), 1);
    assert_eq!(alert[0]["host_kind"], "claude");
    assert_eq!(alert[0]["user"], "user1000");
    let requests = t.kinds("request");
    assert!(
        requests.iter().any(|r| r["tool"] == "read_file"),
        "{requests:?}"
    );
    assert_eq!(t.core.counters.sessions_seen, 1);
}

#[test]
fn the_host_config_names_the_server() {
    let mut m = machine();
    let launched = m.procs[&SERVER].cmdline.clone();
    m.config.insert((HOST, launched), "files".into());
    let mut t = with(DENY_WRITES, Config::default(), m);
    t.host_and_server();
    t.initialize(SERVER);
    assert_eq!(t.kinds("session_start")[0]["server"]["name"], "files");
}

#[test]
fn a_server_of_an_unlisted_host_is_found_by_the_other_end_of_its_stdin() {
    let mut m = machine();
    // An agent nobody listed, and a server it did not start: only the pipe joins them.
    m.add(400, 50, &["/usr/bin/python3", "my_agent.py"])
        .fd(9, "pipe:[8001]w");
    m.add(401, 1, &["/usr/bin/mcp-server-time"])
        .fd(0, "pipe:[8001]")
        .fd(1, "pipe:[8002]w");
    let mut t = with("", Config::default(), m);
    t.core
        .kernel
        .watched
        .insert(401, watch::PROBE | watch::CAPTURE);
    t.exec(401, 1, watch::PROBE | watch::CAPTURE);
    t.initialize(401);
    let alert = t.alerts("unwrapped_server");
    assert_eq!(alert.len(), 1, "{:?}", t.records());
    assert_eq!(alert[0]["host"]["pid"], 400);
    assert_eq!(alert[0]["host_kind"], Value::Null);
}

#[test]
fn a_banner_before_the_first_message_does_not_stop_capture() {
    let mut t = t(DENY_WRITES);
    t.host_and_server();
    t.write(SERVER, "starting the server, please wait");
    t.read(SERVER, "hello from a wrapper script");
    t.initialize(SERVER);
    t.read(SERVER, &write_file(1));
    assert_eq!(t.role(SERVER), Some(Role::Server));
    assert!(t.kinds("request").iter().any(|r| r["tool"] == "write_file"));
}

#[test]
fn output_past_the_banner_allowance_is_not_mcp() {
    let mut t = t("");
    t.host_and_server();
    let line = "x".repeat(BANNER_LIMIT / 2);
    for _ in 0..3 {
        t.write(SERVER, &line);
    }
    assert_eq!(t.role(SERVER), Some(Role::Other));
    assert_eq!(t.core.kernel.watched[&SERVER] & watch::CAPTURE, 0);
    assert!(t.kinds("session_start").is_empty());
}

#[test]
fn a_long_unterminated_line_is_not_buffered_before_classification() {
    let mut t = t("");
    t.host_and_server();
    let junk = vec![b'a'; BANNER_LIMIT + 1];
    t.data(SERVER, origin::STDOUT, false, &junk, 0);
    assert_eq!(t.role(SERVER), Some(Role::Other));
}

#[test]
fn a_message_split_across_reads_is_judged_once_whole() {
    let mut t = t(DENY_WRITES);
    t.host_and_server();
    t.initialize(SERVER);
    let line = format!("{}\n", write_file(1));
    let (a, b) = line.as_bytes().split_at(10);
    t.data(SERVER, origin::STDIN, true, a, 0);
    assert!(!t.kinds("request").iter().any(|r| r["tool"] == "write_file"));
    t.data(SERVER, origin::STDIN, true, b, 0);
    let writes: Vec<_> = t
        .kinds("request")
        .into_iter()
        .filter(|r| r["tool"] == "write_file")
        .collect();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0]["would_deny"], true);
}

// Denied calls, gates and kills.

#[test]
fn a_denied_call_in_monitor_mode_is_alerted_not_killed() {
    let mut t = t(DENY_WRITES);
    t.host_and_server();
    t.initialize(SERVER);
    t.read(SERVER, &write_file(1));
    let alert = t.alerts("denied_call_observed");
    assert_eq!(alert.len(), 1);
    assert_eq!(alert[0]["tool"], "write_file");
    assert_eq!(alert[0]["rule"], "no-writes");
    assert_eq!(alert[0]["killed"], false);
    assert!(!t.signals(SERVER).contains(&Signal::SIGKILL));
}

#[test]
fn under_kill_a_denied_gated_read_is_killed_and_never_continued() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.gated_read(SERVER, &read_file(0));
    assert_eq!(t.signals(SERVER), [Signal::SIGCONT]);
    t.gated_read(SERVER, &write_file(1));
    assert_eq!(t.signals(SERVER), [Signal::SIGCONT, Signal::SIGKILL]);
    let alert = t.alerts("denied_call_observed");
    assert_eq!(alert[0]["killed"], true);
    assert_eq!(alert[0]["action"], "kill");
    assert_eq!(t.core.counters.killed, 1);
    // Whatever it read after is never let go.
    t.gated_read(SERVER, &read_file(2));
    assert_eq!(t.signals(SERVER).len(), 2);
}

#[test]
fn an_allowed_gated_read_is_continued() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.gated_read(SERVER, &read_file(0));
    t.gated_read(SERVER, &read_file(1));
    assert_eq!(t.signals(SERVER), [Signal::SIGCONT, Signal::SIGCONT]);
}

#[test]
fn a_gated_read_of_half_a_message_is_continued_and_the_rest_judged() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.initialize(SERVER);
    let line = format!("{}\n", write_file(1));
    let (a, b) = line.as_bytes().split_at(20);
    t.data(SERVER, origin::STDIN, true, a, data::GATED);
    assert_eq!(t.signals(SERVER), [Signal::SIGCONT]);
    t.data(SERVER, origin::STDIN, true, b, data::GATED);
    assert_eq!(t.signals(SERVER), [Signal::SIGCONT, Signal::SIGKILL]);
}

#[test]
fn a_traced_reader_is_killed_at_its_first_gated_read() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.core.sys.procs.get_mut(&SERVER).unwrap().tracer = Some(HOST);
    t.gated_read(SERVER, &read_file(0));
    assert_eq!(t.signals(SERVER), [Signal::SIGKILL]);
    let alert = t.alerts("traced_server");
    assert_eq!(alert.len(), 1);
    assert_eq!(alert[0]["tracer"], HOST);
    assert_eq!(alert[0]["killed"], true);
}

#[test]
fn a_process_that_already_exited_is_not_counted_killed() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.initialize(SERVER);
    t.core.sys.procs.get_mut(&SERVER).unwrap().state = 'Z';
    t.read(SERVER, &write_file(1));
    assert!(t.signals(SERVER).is_empty());
    assert_eq!(t.alerts("denied_call_observed")[0]["killed"], false);
    assert_eq!(t.core.counters.killed, 0);
}

#[test]
fn under_kill_what_cannot_be_judged_counts_as_denied() {
    for (bad, fault) in [
        // A bare `\r` inside a line: some readers frame two messages here.
        (format!("{}\r{}", read_file(1), write_file(2)), "line_break"),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"x"}"#.to_string(),
            "duplicate_key",
        ),
    ] {
        let mut t = t(&kill_mode(DENY_WRITES));
        t.host_and_server();
        t.initialize(SERVER);
        t.gated_read(SERVER, &bad);
        let alert = t.alerts("denied_call_observed");
        assert_eq!(alert.len(), 1, "{bad}: {:?}", t.records());
        let rule = alert[0]["rule"].as_str().unwrap().to_string();
        assert!(rule.starts_with("unjudgeable:"), "{rule}");
        assert!(rule.contains(fault), "{rule} for {bad}");
        assert_eq!(t.signals(SERVER).last(), Some(&Signal::SIGKILL), "{bad}");
    }
}

#[test]
fn an_oversized_request_is_unjudgeable() {
    let cfg = Config {
        max_message: 4096,
        ..Config::default()
    };
    let mut t = with(&kill_mode(DENY_WRITES), cfg, machine());
    t.host_and_server();
    t.initialize(SERVER);
    let big = request(1, "read_file", json!({"path": "x".repeat(8192)}));
    t.gated_read(SERVER, &big);
    let alert = t.alerts("denied_call_observed");
    assert_eq!(alert.len(), 1, "{:?}", t.records());
    assert!(
        alert[0]["rule"]
            .as_str()
            .unwrap()
            .starts_with("unjudgeable:")
    );
    assert_eq!(t.signals(SERVER).last(), Some(&Signal::SIGKILL));
}

#[test]
fn unwrapped_kill_kills_on_sight_before_the_first_read_returns() {
    let policy = "default = \"allow\"\n[observer]\nunwrapped = \"kill\"\n";
    let mut t = t(policy);
    // Reads are gated, so the server is held at its first message and never continued.
    t.exec(HOST, 50, 0);
    assert_eq!(t.core.kernel.watched[&HOST], watch::HOST | watch::GATE);
    t.core
        .kernel
        .watched
        .insert(SERVER, watch::CAPTURE | watch::GATE);
    t.exec(SERVER, HOST, watch::CAPTURE | watch::GATE);
    t.gated_read(
        SERVER,
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#,
    );
    assert_eq!(t.signals(SERVER), [Signal::SIGKILL]);
    assert_eq!(t.alerts("unwrapped_server")[0]["action"], "kill");
}

// Byte paths the kernel cannot copy.

fn unfollowed(tgid: u32, origin: u8, inbound: bool, killed: bool) -> Event {
    Event::Unfollowed(Unfollowed {
        tgid,
        fd: 0,
        syscall: mcp_guard_common::nr::SPLICE as u32,
        inbound,
        passed: false,
        origin,
        killed,
    })
}

#[test]
fn a_splice_from_stdin_under_kill_kills_the_reader() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.core
        .handle(unfollowed(SERVER, origin::STDIN, true, false));
    assert_eq!(t.signals(SERVER), [Signal::SIGKILL]);
    let alert = t.alerts("unfollowed_io");
    assert_eq!(alert[0]["call"], "splice");
    assert_eq!(alert[0]["action"], "kill");
    assert_eq!(alert[0]["carries"], "stdin");
}

#[test]
fn an_io_uring_ring_under_kill_kills_the_server() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.core.handle(Event::Unfollowed(Unfollowed {
        tgid: SERVER,
        fd: 5,
        syscall: mcp_guard_common::nr::IO_URING_SETUP as u32,
        inbound: true,
        passed: false,
        origin: origin::STDIN,
        killed: false,
    }));
    assert_eq!(t.signals(SERVER), [Signal::SIGKILL]);
    let alert = t.alerts("unfollowed_io");
    assert_eq!(alert[0]["call"], "io_uring_setup");
    assert_eq!(alert[0]["killed"], true);
}

#[test]
fn stdin_passed_to_another_process_under_kill_kills_the_sender() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.core.handle(Event::Unfollowed(Unfollowed {
        tgid: SERVER,
        fd: 3,
        syscall: mcp_guard_common::nr::SENDMSG as u32,
        inbound: true,
        passed: true,
        origin: origin::STDIN,
        killed: false,
    }));
    assert_eq!(t.signals(SERVER), [Signal::SIGKILL]);
    let alert = t.alerts("unfollowed_io");
    assert_eq!(
        (
            &alert[0]["call"],
            &alert[0]["direction"],
            &alert[0]["carries"]
        ),
        (&"sendmsg".into(), &"pass".into(), &"stdin".into())
    );
}

#[test]
fn a_kernel_kill_is_counted_and_not_repeated() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.core.handle(unfollowed(SERVER, origin::STDIN, true, true));
    assert!(t.signals(SERVER).is_empty());
    assert_eq!(t.core.counters.killed, 1);
    assert_eq!(t.alerts("unfollowed_io")[0]["killed"], true);
}

#[test]
fn an_unfollowed_write_is_alerted_only() {
    let mut t = t(&kill_mode(DENY_WRITES));
    t.host_and_server();
    t.core
        .handle(unfollowed(SERVER, origin::STDOUT, false, false));
    assert!(t.signals(SERVER).is_empty());
    assert_eq!(t.alerts("unfollowed_io")[0]["action"], "alert");
}

#[test]
fn a_shims_own_splice_is_its_business() {
    let mut m = machine();
    m.procs.get_mut(&SERVER).unwrap().cmdline = vec![
        "/usr/bin/mcp-guard".into(),
        "wrap".into(),
        "--".into(),
        "x".into(),
    ];
    let mut t = with(&kill_mode(DENY_WRITES), Config::default(), m);
    t.host_and_server();
    t.initialize(SERVER);
    assert_eq!(t.role(SERVER), Some(Role::Shim));
    t.core
        .handle(unfollowed(SERVER, origin::STDIN, true, false));
    assert!(t.alerts("unfollowed_io").is_empty());
    assert!(!t.signals(SERVER).contains(&Signal::SIGKILL));
}

// Shims and the servers they wrap.

/// The host runs a shim (200), which runs the server (300).
fn wrapped() -> T {
    let mut m = machine();
    m.procs.get_mut(&SERVER).unwrap().cmdline = vec![
        "/usr/bin/mcp-guard".into(),
        "wrap".into(),
        "--".into(),
        "node".into(),
    ];
    m.add(300, SERVER, &["/usr/bin/node", "/srv/server.js"])
        .fd(0, "pipe:[7101]")
        .fd(1, "pipe:[7102]w");
    m.procs.get_mut(&SERVER).unwrap().fd(5, "pipe:[7101]w");
    let mut t = with(&kill_mode(DENY_WRITES), Config::default(), m);
    t.host_and_server();
    t.core
        .kernel
        .watched
        .insert(300, watch::CAPTURE | watch::GATE);
    t.exec(300, SERVER, watch::CAPTURE | watch::GATE);
    t
}

#[test]
fn a_shim_and_its_server_are_recognised_and_not_gated() {
    let mut t = wrapped();
    t.initialize(SERVER);
    t.initialize(300);
    assert_eq!(t.role(SERVER), Some(Role::Shim));
    assert_eq!(t.role(300), Some(Role::Wrapped(SERVER)));
    assert_eq!(t.core.kernel.watched[&300] & watch::GATE, 0);
    assert!(t.alerts("unwrapped_server").is_empty());
    assert!(t.kinds("session_start").is_empty());
}

#[test]
fn a_request_the_shim_never_read_is_an_injection() {
    let mut t = wrapped();
    t.initialize(SERVER);
    t.initialize(300);
    t.read(SERVER, &read_file(1));
    t.read(300, &read_file(1));
    assert!(t.alerts("injected_message").is_empty());
    t.read(300, &write_file(2));
    let alert = t.alerts("injected_message");
    assert_eq!(alert.len(), 1);
    assert_eq!(alert[0]["shim_pid"], SERVER);
    assert_eq!(alert[0]["request_id"], "2");
}

// Losses and resynchronisation.

#[test]
fn a_sequence_jump_counts_lost_chunks_and_resyncs_every_stream() {
    let mut t = t(DENY_WRITES);
    t.host_and_server();
    t.initialize(SERVER);
    // Half a message, then chunks lost, then the rest of a line and a whole message.
    t.data(SERVER, origin::STDIN, true, b"{\"jsonrpc\":\"2.0\",", 0);
    t.seq += 5;
    let rest = format!("\"id\":9}}\n{}\n", read_file(3));
    t.data(SERVER, origin::STDIN, true, rest.as_bytes(), 0);
    assert_eq!(t.core.counters.lost_sequence, 5);
    let requests = t.kinds("request");
    assert!(requests.iter().any(|r| r["tool"] == "read_file"));
    assert!(t.kinds("malformed").is_empty(), "{:?}", t.records());
    t.core.tick();
    let gap = t.kinds("gap");
    assert_eq!(gap.len(), 1);
    assert_eq!(gap[0]["detail"]["lost_chunks"], 5);
}

#[test]
fn socket_chunks_take_their_sequence_numbers_too() {
    let mut t = t(DENY_WRITES);
    t.host_and_server();
    t.initialize(SERVER);
    // Bytes on a socket nobody follows, between two stdio chunks.
    t.data(SERVER, origin::SOCKET, false, b"ping", 0);
    t.read(SERVER, &write_file(1));
    assert_eq!(t.core.counters.lost_sequence, 0);
    assert!(t.kinds("request").iter().any(|r| r["tool"] == "write_file"));
}

#[test]
fn kernel_losses_are_recorded_once_as_a_gap() {
    let mut t = t("");
    t.core.kernel.lost = 3;
    t.core.tick();
    t.core.tick();
    let gap = t.kinds("gap");
    assert_eq!(gap.len(), 1);
    assert_eq!(gap[0]["detail"]["lost_events"], 3);
}

// Ends of sessions.

#[test]
fn exec_and_exit_end_sessions() {
    let mut t = t("");
    t.host_and_server();
    t.initialize(SERVER);
    t.exec(SERVER, HOST, watch::CAPTURE);
    t.initialize(SERVER);
    t.core.handle(Event::Exit { tgid: SERVER });
    let ends = t.kinds("session_end");
    let reasons: Vec<_> = ends.iter().map(|r| r["detail"]["reason"].clone()).collect();
    assert_eq!(reasons, ["exec", "exit"]);
    assert!(t.core.kernel.forgotten.contains(&SERVER));
    assert!(t.core.procs.is_empty());
}

#[test]
fn a_process_gone_without_an_exit_event_is_ended_at_the_tick() {
    let mut t = t("");
    t.host_and_server();
    t.initialize(SERVER);
    t.core.sys.procs.remove(&SERVER);
    t.core.tick();
    assert_eq!(t.kinds("session_end")[0]["detail"]["reason"], "exit");
}

#[test]
fn stopping_ends_every_session_and_records_the_counters() {
    let mut t = t("");
    t.host_and_server();
    t.initialize(SERVER);
    t.core.stop();
    assert_eq!(
        t.kinds("session_end")[0]["detail"]["reason"],
        "daemon_stopped"
    );
    let stop = t.kinds("daemon_stop");
    assert_eq!(stop[0]["detail"]["sessions_seen"], 1);
}

// Start-up, rescans, reloads, status.

#[test]
fn at_start_up_hosts_children_and_piped_processes_are_watched() {
    let mut m = machine();
    m.add(500, 1, &["/usr/bin/mcp-server-time"])
        .fd(0, "pipe:[9001]")
        .fd(1, "pipe:[9002]w")
        .fd(7, "pipe:[9001]");
    let mut t = with("", Config::default(), m);
    t.core.start();
    assert_eq!(t.core.kernel.watched.get(&HOST), Some(&watch::HOST));
    assert_eq!(t.core.kernel.watched.get(&SERVER), Some(&watch::CAPTURE));
    assert_eq!(t.core.kernel.watched.get(&500), Some(&watch::PROBE));
    // Its copy of stdin at fd 7 is followed as stdin.
    assert_eq!(t.core.kernel.fds.get(&(500, 7)), Some(&origin::STDIN));
    assert!(t.core.late.contains(&SERVER) && t.core.late.contains(&500));
    // The host's terminal and the shell are not probed.
    assert_eq!(t.core.kernel.watched.get(&50), None);
}

#[test]
fn a_joined_late_stream_drops_the_tail_of_a_message_it_missed() {
    let mut t = t(DENY_WRITES);
    t.core.start();
    let tail = format!("\"y\"}}}}}}\n{}\n", write_file(4));
    t.data(SERVER, origin::STDIN, true, tail.as_bytes(), 0);
    assert_eq!(t.role(SERVER), Some(Role::Server));
    assert!(t.kinds("request").iter().any(|r| r["tool"] == "write_file"));
    assert_eq!(t.kinds("session_start")[0]["detail"]["joined_late"], true);
}

#[test]
fn a_stopped_child_found_at_start_up_under_kill_is_killed() {
    let mut m = machine();
    m.procs.get_mut(&SERVER).unwrap().state = 'T';
    let mut t = with(&kill_mode(""), Config::default(), m);
    t.core.start();
    assert_eq!(t.signals(SERVER), [Signal::SIGKILL]);
    assert_eq!(t.alerts("stopped_server_found")[0]["killed"], true);
}

#[test]
fn a_rescan_watches_hosts_the_exec_events_missed_and_forgets_gone_ones() {
    let mut t = t("");
    t.core.scanned(Scan {
        hosts: vec![HOST, 999],
        alerts: vec![Alert::HostConfigUnwrapped {
            file: "/home/u/.claude.json".into(),
            host: "claude-code",
            server: "x".into(),
            command: "npx".into(),
        }],
    });
    assert!(t.core.hosts.contains_key(&HOST));
    assert!(!t.core.hosts.contains_key(&999), "not running");
    assert_eq!(t.alerts("host_config_unwrapped").len(), 1);
    t.core.sys.procs.remove(&HOST);
    t.core.scanned(Scan::default());
    assert!(t.core.hosts.is_empty());
}

#[test]
fn a_rescan_that_saw_a_host_before_it_exited_does_not_watch_it_again() {
    let mut t = t("");
    t.core.start();
    assert!(t.core.hosts.contains_key(&HOST));
    // The host exits; its parent has not reaped it yet. The exit event comes first, then a
    // scan made while it still ran.
    t.core.sys.procs.get_mut(&HOST).unwrap().state = 'Z';
    t.core.kernel.watched.remove(&HOST);
    t.core.handle(Event::Exit { tgid: HOST });
    t.core.scanned(Scan {
        hosts: vec![HOST],
        alerts: vec![],
    });
    assert!(!t.core.hosts.contains_key(&HOST));
    assert!(
        !t.core.kernel.watched.contains_key(&HOST),
        "a dead pid is not watched: whatever reuses it would be a host"
    );
}

/// A host's fork, seen by /proc before it execs, carries the host's names.
fn fork_of_host(m: &mut FakeProcs, pid: u32) {
    let host = m.procs[&HOST].clone();
    m.procs.insert(pid, FakeProc { ppid: HOST, ..host });
}

#[test]
fn a_hosts_fork_that_has_not_execd_stays_its_child_on_rescan() {
    let mut t = t("");
    t.core.start();
    fork_of_host(&mut t.core.sys, 300);
    t.core.kernel.watched.insert(300, watch::CAPTURE);
    t.core.scanned(Scan {
        hosts: vec![HOST, 300],
        alerts: vec![],
    });
    assert!(t.core.hosts.contains_key(&HOST));
    assert!(
        !t.core.hosts.contains_key(&300),
        "the fork is the host's child"
    );
    assert_eq!(t.core.kernel.watched[&300], watch::CAPTURE);
    // Once it has exec'd the server, still a captured child: the scan that saw the fork
    // may be handled after the exec.
    let p = t.core.sys.procs.get_mut(&300).unwrap();
    p.cmdline = vec!["/usr/bin/node".into(), "srv.js".into()];
    p.exe = Some("/usr/bin/node".into());
    t.core.scanned(Scan {
        hosts: vec![300],
        alerts: vec![],
    });
    assert!(!t.core.hosts.contains_key(&300));
    assert_eq!(t.core.kernel.watched[&300], watch::CAPTURE);
}

#[test]
fn a_server_that_is_the_hosts_own_program_stays_captured() {
    // `goose mcp developer`: a stdio server started by the host, named like the host.
    let mut m = machine();
    m.add(300, HOST, &["/usr/bin/claude", "mcp", "serve"])
        .fd(0, "pipe:[7101]")
        .fd(1, "pipe:[7102]w");
    let mut t = with("", Config::default(), m);
    t.core.start();
    assert!(
        !t.core.hosts.contains_key(&300),
        "found at start-up: a child"
    );
    assert_eq!(t.core.kernel.watched[&300] & watch::CAPTURE, watch::CAPTURE);
    // Started after the daemon: the kernel captures it from its fork; a rescan leaves it so.
    t.core
        .sys
        .add(301, HOST, &["/usr/bin/claude", "mcp", "serve"]);
    t.core.kernel.watched.insert(301, watch::CAPTURE);
    t.core.scanned(Scan {
        hosts: vec![HOST, 300, 301],
        alerts: vec![],
    });
    assert!(!t.core.hosts.contains_key(&301));
    assert_eq!(t.core.kernel.watched[&301], watch::CAPTURE);
}

#[test]
fn a_hosts_fork_found_at_start_up_is_captured_as_its_child() {
    let mut m = machine();
    fork_of_host(&mut m, 300);
    let mut t = with("", Config::default(), m);
    t.core.start();
    assert!(t.core.hosts.contains_key(&HOST));
    assert!(!t.core.hosts.contains_key(&300));
    assert_eq!(t.core.kernel.watched[&300] & watch::CAPTURE, watch::CAPTURE);
}

#[test]
fn a_reload_swaps_the_policy_and_the_gates() {
    let mut t = t(DENY_WRITES);
    t.host_and_server();
    t.initialize(SERVER);
    let strict = || Policy::parse(&kill_mode(DENY_WRITES), "new.toml").unwrap();
    t.core.reload(Ok((strict(), strict().into_monitor())));
    assert_eq!(t.core.kernel.probe, watch::PROBE | watch::GATE);
    assert_eq!(t.core.kernel.watched[&HOST], watch::HOST | watch::GATE);
    let loaded = t.kinds("policy_loaded");
    assert_eq!(loaded.last().unwrap()["detail"]["reload"], true);
    // The running session judges with the new policy: its denials now kill.
    t.read(SERVER, &write_file(1));
    assert_eq!(t.signals(SERVER), [Signal::SIGKILL]);
}

#[test]
fn a_failed_reload_keeps_the_policy_and_says_why() {
    let mut t = t(DENY_WRITES);
    let before = t.core.policy.sha256().to_string();
    t.core
        .reload(Err(anyhow::anyhow!("policy.toml:3:1: unknown key")));
    assert_eq!(t.core.policy.sha256(), before);
    // The same shape as the shim's: the policy in force, and why in `reason`.
    let alert = t.kinds("alert");
    assert_eq!(alert[0]["detail"]["alert"], "policy_reload_failed");
    assert_eq!(alert[0]["detail"]["in_force"], before.as_str());
    assert!(alert[0]["reason"].as_str().unwrap().contains("unknown key"));
}

#[test]
fn status_lists_hosts_sessions_and_counters() {
    let mut t = t("");
    t.host_and_server();
    t.initialize(SERVER);
    let st = t.core.status();
    assert_eq!(st.pid, ME);
    assert_eq!(st.hosts.len(), 1);
    assert_eq!(st.sessions.len(), 1);
    assert_eq!(st.sessions[0].server, "mcp-server-filesystem");
    assert_eq!(st.sessions[0].host.as_deref(), Some("claude"));
    assert!(!st.sessions[0].wrapped);
    assert_eq!(st.counters.messages, 1);
}

// Local sockets.

#[test]
fn json_lines_over_a_unix_socket_are_a_session() {
    let mut t = t(DENY_WRITES);
    t.exec(HOST, 50, 0);
    t.core.handle(Event::Socket(Socket {
        tgid: HOST,
        fd: 30,
        accepted: false,
        family: 1,
        port: 0,
    }));
    let line = format!("{}\n", write_file(1));
    t.seq += 1;
    t.core.handle(Event::Data(Data {
        tgid: HOST,
        tid: HOST,
        fd: 30,
        inbound: false,
        origin: origin::SOCKET,
        cpu: 0,
        seq: t.seq,
        total: line.len() as u32,
        offset: 0,
        flags: data::LAST,
        payload: line.into_bytes(),
    }));
    let start = t.kinds("session_start");
    assert_eq!(start[0]["transport"], "socket-observed");
    assert_eq!(start[0]["server"]["address"], "tcp://unix");
    assert_eq!(t.alerts("denied_call_observed").len(), 1);
}

#[test]
fn a_socket_that_does_not_speak_json_rpc_is_let_go() {
    let mut t = t("");
    t.exec(HOST, 50, 0);
    t.core.handle(Event::Socket(Socket {
        tgid: HOST,
        fd: 31,
        accepted: false,
        family: 1,
        port: 0,
    }));
    t.seq += 1;
    t.core.handle(Event::Data(Data {
        tgid: HOST,
        tid: HOST,
        fd: 31,
        inbound: false,
        origin: origin::SOCKET,
        cpu: 0,
        seq: t.seq,
        total: 4,
        offset: 0,
        flags: data::LAST,
        payload: b"PING".to_vec(),
    }));
    assert_eq!(t.core.kernel.fds.get(&(HOST, 31)), Some(&origin::NONE));
    assert!(t.kinds("session_start").is_empty());
}
