//! The daemon's core: events from the kernel in; records, alerts and kernel actions out.
//! It reassembles what watched processes read and write, decides what each is (a shim, a
//! wrapped server, a server nobody wrapped, something else), judges unwrapped sessions with
//! the guard, and stops, continues or kills gated readers. Everything it asks of the
//! machine goes through [`Kernel`] and [`Procs`], so it runs the same over the loaded
//! programs and over a process table in a unit test.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use super::config::{Config, Detect};
use super::shimlog;
use super::shims;
use super::status;
use super::world::{Kernel, Procs};
use crate::audit::{self, Alert, Context, Flow, Kind as RecordKind, Record};
use crate::ebpf::{self, Data, Event};
use crate::frame::{Frame, Framer};
use crate::guard::{self, Direction, Session};
use crate::identity::{self, Link, Process};
use crate::jsonrpc::{self, IdKey, Kind, Parsed};
use crate::policy::{Policy, Reaction};
use mcp_guard_common::{origin, watch};

mod sockets;
#[cfg(test)]
mod tests;

/// Requests a shim read from its host, remembered per shim for the injection check.
const SHIM_MEMORY: usize = 4096;
/// How long a shim has to record a request it read before the observer raises an alert.
pub const RECORD_GRACE: Duration = Duration::from_secs(2);

/// What a watched process turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not classified yet: no complete message seen.
    Unknown,
    /// Not MCP: no longer captured.
    Other,
    /// An `mcp-guard wrap` shim: its stdin is what the host sent.
    Shim,
    /// A server under a shim (the shim's tgid).
    Wrapped(u32),
    /// A server nobody wrapped: judged and recorded here.
    Server,
}

/// One direction of a process's stdio.
struct Stream {
    framer: Framer,
    /// Bytes were lost: drop everything up to the next newline.
    resync: bool,
    /// No byte seen yet.
    fresh: bool,
    /// Joined mid-stream: the first line may be the tail of a message.
    late_head: bool,
}

impl Stream {
    fn new(max: usize, joined_late: bool) -> Stream {
        Stream {
            framer: Framer::new(max),
            resync: false,
            fresh: true,
            late_head: joined_late,
        }
    }
}

/// An MCP session the observer judges.
struct Observed {
    guard: Session,
    name: String,
    host: Option<Process>,
    user: Option<String>,
    uid: u32,
    messages: u64,
}

struct Proc {
    role: Role,
    host: Option<u32>,
    inbound: Stream,
    outbound: Stream,
    session: Option<Box<Observed>>,
    /// Requests read from the host (shims only), for the injection check.
    seen: HashSet<(String, IdKey)>,
    seen_order: std::collections::VecDeque<(String, IdKey)>,
    /// Shims only: the audit log it writes, and the requests from the host not yet found
    /// recorded there.
    log: Option<shimlog::ShimLog>,
    unrecorded: std::collections::VecDeque<(String, String, Instant)>,
    /// Wrapped servers only: the name and user `status` shows, read once.
    label: Option<(String, Option<String>)>,
    joined_late: bool,
    killed: bool,
    /// Bytes of lines before the first JSON-RPC message (a banner, a wrapper's echo), both
    /// directions; past [`BANNER_LIMIT`] the process is taken for something else.
    banner: usize,
}

/// How much a process may say before its first JSON-RPC message and still be classified
/// as a server: a banner, a shell's `echo` before `exec`, a junk line a host sends first.
const BANNER_LIMIT: usize = 64 << 10;

/// What the daemon counts; `status.json` carries them under `counters`.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    pub events: u64,
    pub bytes: u64,
    pub messages: u64,
    pub lost_kernel: u64,
    pub lost_sequence: u64,
    pub alerts: u64,
    pub killed: u64,
    pub sessions_seen: u64,
}

pub struct Core<K, P> {
    pub(super) cfg: Config,
    pub(super) kernel: K,
    pub(super) sys: P,
    policy: Arc<Policy>,
    /// The daemon's own context, for records about no one session.
    ctx: Arc<Context>,
    records: Vec<Record>,
    hosts: HashMap<u32, Process>,
    procs: HashMap<u32, Proc>,
    /// Local socket connections of watched processes, by (tgid, fd).
    conns: HashMap<(u32, u32), sockets::Conn>,
    /// Processes that existed before the daemon: their streams are joined mid-way.
    late: HashSet<u32>,
    /// Next expected chunk sequence number, per CPU.
    next_seq: HashMap<u32, u64>,
    counters: Counters,
    /// Losses already reported in a gap record.
    reported_lost: (u64, u64),
    started_at: SystemTime,
    /// What managed shims' connections share (the enforced policy is swapped on reload).
    pub(super) managed: Option<Arc<shims::Shared>>,
    /// Children of agent hosts: their command line at their first exec.
    launched: HashMap<u32, Vec<String>>,
}

/// What a rescan found, away from the event loop.
#[derive(Default)]
pub struct Scan {
    /// Agent hosts running now.
    pub hosts: Vec<u32>,
    /// Host-config alerts.
    pub alerts: Vec<Alert>,
}

/// A denied request: its tool and the rule that denied it.
type Denied = (Option<String>, Option<String>);

/// Judges frames of an observed session; its records go to `records`. Returns the denied
/// requests among them (tool, rule) and the session's context.
fn judge_into(
    s: &mut Observed,
    dir: Direction,
    data: &[u8],
    frames: Vec<Frame>,
    records: &mut Vec<Record>,
    counters: &mut Counters,
) -> (Vec<Denied>, Arc<Context>) {
    s.messages += frames.len() as u64;
    counters.messages += frames.len() as u64;
    let plan = s.guard.judge(dir, data, frames);
    // What the server is about to read and cannot be judged (over max_message, a bare `\r`,
    // invalid JSON, a lenient envelope, pretty-printed or concatenated JSON) counts as
    // denied: the server may act on it, and nobody could say it was allowed.
    let denied = plan
        .commit
        .iter()
        .filter(|r| {
            (r.kind == RecordKind::Request && r.would_deny == Some(true))
                || (r.kind == RecordKind::Malformed && r.direction == Some(Flow::ClientToServer))
        })
        .map(|r| match r.kind {
            RecordKind::Malformed => (
                r.tool.clone(),
                r.rule.as_ref().map(|k| format!("unjudgeable:{k}")),
            ),
            _ => (r.tool.clone(), r.rule.clone()),
        })
        .collect();
    records.extend(plan.commit);
    records.extend(plan.append);
    (denied, s.guard.ctx().clone())
}

/// Alerts for the requests shim `pid` read from its host more than `grace` ago and did not
/// record.
fn unrecorded(pid: u32, p: &mut Proc, grace: Duration) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let Some(log) = p.log.as_mut() else {
        return alerts;
    };
    // The log is read only while a request waits for its record.
    if p.unrecorded.is_empty() {
        return alerts;
    }
    log.read_new(pid);
    while let Some((method, id, at)) = p.unrecorded.front() {
        if log.recorded(id) {
            p.unrecorded.pop_front();
            continue;
        }
        if at.elapsed() < grace {
            break;
        }
        alerts.push(Alert::UnrecordedRequest {
            shim_pid: pid,
            method: method.clone(),
            request_id: id.clone(),
            audit: log.path().to_path_buf(),
            why: "the shim read this request from the agent host, and its audit log has no record of it",
        });
        p.unrecorded.pop_front();
    }
    alerts
}

/// The watch every new program gets at exec: probed, with `detect = "any"`, and gated as
/// the policy says (a gate stops a reader only once it is found to read JSON).
pub(super) fn probe_flags(cfg: &Config, policy: &Policy) -> u32 {
    match cfg.detect {
        Detect::Any => watch::PROBE | gate_flag(policy),
        Detect::Hosts => 0,
    }
}

/// Gates hold a reader until its bytes are judged: needed to kill a server before it acts
/// on a denied call, and before it acts at all when unwrapped servers are killed on sight.
fn gate_flag(policy: &Policy) -> u32 {
    let o = policy.observer();
    if o.denied == Reaction::Kill || o.unwrapped == Reaction::Kill {
        watch::GATE
    } else {
        0
    }
}

impl<K: Kernel, P: Procs> Core<K, P> {
    pub fn new(cfg: Config, kernel: K, sys: P, policy: Policy) -> Core<K, P> {
        let policy = Arc::new(policy);
        let me = sys.me();
        let ctx = Arc::new(Context {
            session: audit::random_id().into(),
            transport: audit::Transport::StdioObserved,
            policy_sha256: policy.sha256().to_string(),
            mode: policy.mode(),
            principal: guard::raw_field(&identity::current_principal()),
            agent_host: guard::raw_field(&None::<Link>),
            chain: guard::raw_field(&sys.ancestry(me).iter().map(Link::short).collect::<Vec<_>>()),
            server: guard::raw_field(&serde_json::json!({ "name": "mcp-guard-daemon", "pid": me })),
        });
        Core {
            cfg,
            kernel,
            sys,
            policy,
            ctx,
            records: Vec::new(),
            hosts: HashMap::new(),
            procs: HashMap::new(),
            conns: HashMap::new(),
            late: HashSet::new(),
            next_seq: HashMap::new(),
            counters: Counters::default(),
            reported_lost: (0, 0),
            started_at: SystemTime::now(),
            managed: None,
            launched: HashMap::new(),
        }
    }

    /// The first records: the policy in force and what was loaded.
    pub fn started(&mut self, object: &str) {
        let mut loaded = Record::new(audit::Kind::PolicyLoaded, &self.ctx);
        loaded.detail = Some(
            serde_json::json!({ "origin": self.policy.origin(), "rules": self.policy.len(), "observer": self.policy.observer() }),
        );
        let mut start = Record::new(audit::Kind::DaemonStart, &self.ctx);
        start.detail = Some(serde_json::json!({
            "object": object,
            "programs": self.kernel.programs(),
            "hosts": self.cfg.hosts,
            "detect": self.cfg.detect,
        }));
        self.records.extend([loaded, start]);
    }

    /// Records `alert`, in the session `ctx` or the daemon's own; returns its record.
    fn alert(&mut self, ctx: Option<&Arc<Context>>, alert: Alert) -> &mut Record {
        self.counters.alerts += 1;
        tracing::warn!(?alert, "alert");
        self.records
            .push(Record::alert(ctx.unwrap_or(&self.ctx), &alert));
        let last = self.records.len() - 1;
        &mut self.records[last]
    }

    /// The records of the events handled since the last call, for the committer.
    pub fn take_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }

    /// At start-up: watches agent hosts (every process that matches the host list) and
    /// their descendants, which started before the daemon and so are not watched yet, and
    /// probes the other processes whose stdio are pipes or sockets.
    pub fn start(&mut self) {
        let all = self.sys.all();
        let flags = watch::HOST | gate_flag(&self.policy);
        let mut found = Vec::new();
        for &(pid, _) in &all {
            if pid == self.sys.me() || self.hosts.contains_key(&pid) {
                continue;
            }
            if self.sys.is_host(pid, &self.cfg.hosts) {
                found.push(pid);
            }
        }
        // A host's descendant that goes by a host's name (its fork before it execs, or a
        // server that is the host's own program, as `goose mcp developer` is) is captured
        // below with the host's other descendants, not watched as a host of its own.
        let below: Vec<u32> = found
            .iter()
            .copied()
            .filter(|&pid| self.ancestors(pid).any(|a| found.contains(&a)))
            .collect();
        found.retain(|pid| !below.contains(pid));
        for pid in found {
            self.watch_host(pid, flags);
        }
        // Children of hosts, breadth first, so deeper descendants find their parent watched.
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for &(pid, ppid) in &all {
            children.entry(ppid).or_default().push(pid);
        }
        let mut queue: Vec<u32> = self.hosts.keys().copied().collect();
        let child_flags = watch::CAPTURE | gate_flag(&self.policy);
        while let Some(p) = queue.pop() {
            for &c in children.get(&p).into_iter().flatten() {
                if self.hosts.contains_key(&c) || self.late.contains(&c) {
                    continue;
                }
                if let Err(e) = self.kernel.watch(c, child_flags) {
                    tracing::warn!(pid = c, error = %e, "cannot watch a host's child");
                    continue;
                }
                self.map_stdio(c, p);
                self.late.insert(c);
                self.recover_gate(c);
                queue.push(c);
            }
        }
        // After the hosts' trees, which are captured outright.
        self.probe_existing(&all);
    }

    /// For a process that started before the daemon: which of its descriptors carry the
    /// pipes it shares with its parent (its stdio, wherever it moved them since), and
    /// that fds 0 and 1 are not captured when they point elsewhere.
    fn map_stdio(&mut self, pid: u32, parent: u32) {
        let shared = self.sys.pipes(parent);
        let mut found = [false; 2];
        for (fd, inode, write) in self.sys.pipe_fds(pid) {
            if !shared.contains(&inode) {
                continue;
            }
            let o = if write { origin::STDOUT } else { origin::STDIN };
            found[usize::from(write)] = true;
            if fd > 1 {
                let _ = self.kernel.set_fd(pid, fd, o);
            }
        }
        for fd in 0..2u32 {
            if !self.sys.is_pipe_or_socket(pid, fd)
                || (!found[fd as usize] && self.sys.is_pipe(pid, fd))
            {
                let _ = self.kernel.set_fd(pid, fd, origin::NONE);
            }
        }
    }

    /// A host's child found stopped at start-up, with `denied = "kill"` in force, may be a
    /// server a previous daemon stopped at a read it never judged (it died meanwhile).
    /// Nothing can judge that read now: fail closed. (Agent hosts start their servers
    /// without a terminal, so job control does not stop them.)
    fn recover_gate(&mut self, pid: u32) {
        if gate_flag(&self.policy) == 0 || self.sys.state(pid) != Some('T') {
            return;
        }
        let killed = self.kill(pid);
        let cmdline = identity::redact_args(&self.sys.cmdline(pid));
        self.alert(
            None,
            Alert::StoppedServerFound {
                pid,
                cmdline,
                action: "kill",
                killed,
                why: "stopped at start-up under denied = \"kill\": a read a previous daemon never judged",
            },
        );
    }

    /// A program the kernel probes stops being probed unless both its stdin and stdout are
    /// pipes or sockets: a server's stdio, not a terminal, a file or `/dev/null`. The
    /// kernel leaves it alone anyway once it reads something that is not JSON; this spares
    /// the ones that never read stdin the watched processes' per-call cost.
    fn triage(&mut self, pid: u32) {
        if self.sys.is_pipe_or_socket(pid, 0) && self.sys.is_pipe_or_socket(pid, 1) {
            return;
        }
        if self
            .kernel
            .watched(pid)
            .is_some_and(|flags| flags & watch::PROBE != 0)
        {
            let _ = self.kernel.unwatch(pid);
        }
    }

    /// At start-up, with `detect = "any"`: processes that started before the daemon, with
    /// pipes or sockets for stdin and stdout, are probed as new ones are; what they read
    /// next says whether they are servers. Descriptors they hold on the same pipes as
    /// their stdin or stdout are followed as those.
    fn probe_existing(&mut self, all: &[(u32, u32)]) {
        let flags = probe_flags(&self.cfg, &self.policy);
        if flags == 0 {
            return;
        }
        let me = self.sys.me();
        for &(pid, _) in all {
            if pid == me
                || self.kernel.watched(pid).is_some()
                || !self.sys.is_pipe_or_socket(pid, 0)
                || !self.sys.is_pipe_or_socket(pid, 1)
            {
                continue;
            }
            if self.kernel.watch(pid, flags).is_err() {
                continue;
            }
            self.late.insert(pid);
            let (stdin, stdout) = (self.sys.pipe_inode(pid, 0), self.sys.pipe_inode(pid, 1));
            for (fd, inode, write) in self.sys.pipe_fds(pid) {
                let o = match (write, Some(inode)) {
                    (false, i) if i == stdin => origin::STDIN,
                    (true, i) if i == stdout => origin::STDOUT,
                    _ => continue,
                };
                if fd > 1 {
                    let _ = self.kernel.set_fd(pid, fd, o);
                }
            }
        }
    }

    fn watch_host(&mut self, pid: u32, flags: u32) {
        let Some(process) = self.sys.process(pid) else {
            return;
        };
        if let Err(e) = self.kernel.watch(pid, flags) {
            tracing::warn!(pid, error = %e, "cannot watch an agent host");
            return;
        }
        tracing::info!(pid, comm = %process.comm, "watching agent host");
        self.hosts.insert(pid, process);
    }

    /// One event from the kernel.
    pub fn handle(&mut self, event: Event) {
        self.counters.events += 1;
        match event {
            Event::Exec(e) => {
                if e.watch & (watch::HOST | watch::CAPTURE) == 0 {
                    // Every exec on the machine comes here. With detect = "any" the host list
                    // is a label, and what the event says is enough to apply it (the rescan
                    // finds the rest); with "hosts" it is the gate: /proc is read for each.
                    let host = match self.cfg.detect {
                        Detect::Any => {
                            self.sys
                                .is_host_exec(e.tgid, &e.comm, &e.filename, &self.cfg.hosts)
                        }
                        Detect::Hosts => self.sys.is_host(e.tgid, &self.cfg.hosts),
                    };
                    if host {
                        self.watch_host(e.tgid, watch::HOST | gate_flag(&self.policy));
                    } else if e.watch & watch::PROBE != 0 {
                        self.triage(e.tgid);
                    }
                    return;
                }
                // A watched process runs a new program: classify it afresh.
                if let Some(p) = self.procs.remove(&e.tgid) {
                    self.end(e.tgid, p, "exec");
                }
                // A host's own child: its command line as the host launched it names its
                // entry in the host's config (later execs, `env` -> `node`, keep the first).
                if self.hosts.contains_key(&e.ppid) && !self.launched.contains_key(&e.tgid) {
                    self.launched.insert(e.tgid, self.sys.cmdline(e.tgid));
                }
                if e.watch & watch::GATE != 0 && self.sys.is_shim(e.tgid) {
                    // Shims are judged by themselves; their reads need no gate.
                    let _ = self.kernel.set_flags(e.tgid, e.watch & !watch::GATE);
                }
            }
            Event::Exit { tgid } => {
                self.launched.remove(&tgid);
                // Descriptor entries of processes that spoke (the kernel adds them as stdio
                // moves); others age out of the LRU map. A scan per exit of every process
                // would not keep up with a build.
                if self.procs.contains_key(&tgid) || self.conns.keys().any(|(t, _)| *t == tgid) {
                    self.kernel.forget_fds(tgid);
                }
                self.hosts.remove(&tgid);
                self.late.remove(&tgid);
                if let Some(p) = self.procs.remove(&tgid) {
                    self.end(tgid, p, "exit");
                }
                self.close_conns(tgid);
            }
            Event::Data(d) => {
                // Every chunk takes a number from its CPU's sequence, whatever it carries:
                // accounting for some kinds only would see the others as losses.
                self.account(&d);
                if d.origin == origin::SOCKET {
                    self.socket_data(d);
                } else {
                    self.data(d);
                }
            }
            Event::Socket(s) => self.socket_opened(s),
            Event::Unfollowed(u) => self.unfollowed(u),
        }
    }

    /// A captured process moved bytes the kernel could not copy (`splice` from its stdin,
    /// `sendfile`, `recvmmsg`, ...). What it read from its host may have carried a request
    /// nobody judged: under `denied = "kill"` that counts as denied, and the process is killed
    /// (the kernel already killed a gated reader of its stdin). Writes are alerted.
    fn unfollowed(&mut self, u: ebpf::Unfollowed) {
        let role = self.procs.get(&u.tgid).map(|p| p.role);
        // Shims read their stdin themselves, and judge it; the rest is no longer captured.
        if matches!(role, Some(Role::Other | Role::Shim)) {
            return;
        }
        let request_side = u.inbound && u.origin != origin::STDOUT;
        let kill_mode = self.policy.observer().denied == Reaction::Kill;
        if u.killed {
            self.counters.killed += 1;
        }
        let killed = u.killed || (request_side && kill_mode && self.kill(u.tgid));
        if let Some(p) = self.procs.get_mut(&u.tgid) {
            p.killed |= killed;
        }
        let ctx = self.session_ctx(u.tgid);
        let carries = match u.origin {
            origin::STDIN => "stdin",
            origin::STDOUT => "stdout",
            _ => "socket",
        };
        let cmdline = identity::redact_args(&self.sys.cmdline(u.tgid));
        self.alert(
            ctx.as_ref(),
            Alert::UnfollowedIo {
                pid: u.tgid,
                fd: u.fd,
                call: u.call(),
                direction: match (u.passed, u.inbound) {
                    (true, _) => "pass",
                    (false, true) => "read",
                    (false, false) => "write",
                },
                carries,
                action: if request_side && kill_mode {
                    "kill"
                } else {
                    "alert"
                },
                killed,
                cmdline,
            },
        );
    }

    /// The context of `tgid`'s observed session, for alerts about it.
    fn session_ctx(&self, tgid: u32) -> Option<Arc<Context>> {
        let session = self.procs.get(&tgid)?.session.as_ref()?;
        Some(session.guard.ctx().clone())
    }

    /// Ends a process's session, if it had one.
    fn end(&mut self, tgid: u32, mut p: Proc, why: &str) {
        // A shim that is gone has written all it will write.
        for a in unrecorded(tgid, &mut p, Duration::ZERO) {
            self.alert(None, a);
        }
        if let Some(s) = p.session {
            let mut rec = Record::new(audit::Kind::SessionEnd, s.guard.ctx());
            rec.detail = Some(serde_json::json!({
                "reason": why,
                "pid": tgid,
                "messages": s.messages,
                "killed": p.killed,
                "counters": s.guard.counters,
            }));
            self.records.push(rec);
        }
    }

    /// Follows the per-CPU chunk sequence. A jump means chunks were lost (the ring was full):
    /// any stream may miss bytes, so every stream resynchronises at its next newline.
    fn account(&mut self, d: &Data) {
        let Some(expected) = self.next_seq.insert(d.cpu, d.seq + 1) else {
            return;
        };
        if d.seq <= expected {
            return;
        }
        self.counters.lost_sequence += d.seq - expected;
        for p in self.procs.values_mut() {
            p.inbound.resync = true;
            p.outbound.resync = true;
            p.inbound.framer = Framer::new(self.cfg.max_message);
            p.outbound.framer = Framer::new(self.cfg.max_message);
        }
        self.resync_conns();
    }

    fn data(&mut self, d: Data) {
        self.counters.bytes += d.payload.len() as u64;
        let dir = match (d.origin, d.inbound) {
            (origin::STDIN, true) => Direction::ToServer,
            (origin::STDOUT, false) => Direction::ToClient,
            _ => return self.release(&d, false),
        };
        let held = |p: &Proc| p.role != Role::Other && !p.killed;
        if d.gated() && self.procs.get(&d.tgid).is_none_or(held) && self.traced(d.tgid) {
            return self.release(&d, true);
        }
        let max = self.cfg.max_message;
        let late = self.late.contains(&d.tgid);
        let p = self.procs.entry(d.tgid).or_insert_with(|| Proc {
            role: Role::Unknown,
            host: None,
            inbound: Stream::new(max, late),
            outbound: Stream::new(max, late),
            session: None,
            seen: HashSet::new(),
            seen_order: Default::default(),
            log: None,
            unrecorded: Default::default(),
            label: None,
            joined_late: late,
            killed: false,
            banner: 0,
        });
        if p.role == Role::Other || p.killed {
            let killed = p.killed;
            return self.release(&d, killed);
        }
        let stream = if dir == Direction::ToServer {
            &mut p.inbound
        } else {
            &mut p.outbound
        };
        let mut payload = &d.payload[..];
        if stream.resync {
            match memchr::memchr(b'\n', payload) {
                Some(i) => {
                    stream.resync = false;
                    payload = &payload[i + 1..];
                }
                None => payload = &[],
            }
        }
        if !payload.is_empty() {
            stream.fresh = false;
            if let Some(spare) = stream.framer.spare(payload.len()).get_mut(..payload.len()) {
                spare.copy_from_slice(payload);
            }
            stream.framer.filled(payload.len());
        }
        if d.incomplete() {
            // The rest of this call's bytes were not captured: the line in progress is lost.
            stream.resync = true;
        }
        if !d.last() {
            return;
        }
        let mut frames = Vec::new();
        while let Some(f) = stream.framer.next_frame() {
            frames.push(f);
        }
        // Before the first message, a line in progress counts against the banner allowance:
        // a program that prints a long line, or binary, is not buffered up to max_message.
        if p.role == Role::Unknown && p.banner + stream.framer.pending() > BANNER_LIMIT {
            return self.not_mcp(d);
        }
        if stream.late_head && !frames.is_empty() {
            stream.late_head = false;
            let whole = match &frames[0] {
                Frame::Line { msg, .. } => {
                    jsonrpc::parse(&stream.framer.data()[msg.clone()]).is_ok()
                }
                Frame::TooLong { .. } => false,
            };
            if !whole {
                frames.remove(0);
            }
        }
        if stream.resync {
            stream.framer = Framer::new(max);
        }
        if !frames.is_empty() {
            let data = stream.framer.data().to_vec();
            self.frames(d.tgid, dir, &data, frames);
        }
        let killed = self.procs.get(&d.tgid).is_some_and(|p| p.killed);
        self.release(&d, killed);
    }

    /// A gated reader that is being traced: the tracer is told of the gate's SIGSTOP and may
    /// swallow it, so the process would act on what it read before it is judged. What cannot
    /// be held cannot be judged: under `denied = "kill"` (the only mode with gates) it is
    /// killed. True if it was.
    fn traced(&mut self, tgid: u32) -> bool {
        let Some(tracer) = self.sys.tracer(tgid) else {
            return false;
        };
        let killed = self.kill(tgid);
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.killed |= killed;
        }
        let ctx = self.session_ctx(tgid);
        let tracer_cmdline = identity::redact_args(&self.sys.cmdline(tracer));
        self.alert(
            ctx.as_ref(),
            Alert::TracedServer {
                pid: tgid,
                tracer,
                tracer_cmdline,
                action: "kill",
                killed,
                why: "a traced process can let its gate's SIGSTOP go: its reads cannot be held for judgement",
            },
        );
        killed
    }

    /// Lets a gated reader go on, unless it was killed.
    fn release(&mut self, d: &Data, killed: bool) {
        if d.gated() && !killed {
            let _ = self.kernel.signal(d.tgid, Signal::SIGCONT);
        }
    }

    fn not_mcp(&mut self, d: Data) {
        if let Some(p) = self.procs.get_mut(&d.tgid) {
            p.role = Role::Other;
            p.inbound = Stream::new(0, false);
            p.outbound = Stream::new(0, false);
        }
        if let Some(flags) = self.kernel.watched(d.tgid) {
            let _ = self.kernel.set_flags(d.tgid, flags & !watch::CAPTURE);
        }
        self.release(&d, false);
    }

    /// The processes above `pid`, nearest first (at most 64).
    fn ancestors(&self, pid: u32) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(self.sys.parent(pid), |&p| {
            (p > 1).then(|| self.sys.parent(p)).flatten()
        })
        .take_while(|&p| p > 1)
        .take(64)
    }

    /// The nearest watched host above `pid`.
    fn host_of(&self, pid: u32) -> Option<u32> {
        let mut p = self.sys.parent(pid)?;
        for _ in 0..64 {
            if self.hosts.contains_key(&p) {
                return Some(p);
            }
            if p <= 1 {
                return None;
            }
            p = self.sys.parent(p)?;
        }
        None
    }

    fn frames(&mut self, tgid: u32, dir: Direction, data: &[u8], frames: Vec<Frame>) {
        let role = self.procs.get(&tgid).map_or(Role::Other, |p| p.role);
        let frames = if role == Role::Unknown {
            match self.classify(tgid, data, frames) {
                Some(f) => f,
                None => return,
            }
        } else {
            frames
        };
        let role = self.procs.get(&tgid).map_or(Role::Other, |p| p.role);
        match role {
            Role::Server => self.judge(tgid, dir, data, frames),
            Role::Shim if dir == Direction::ToServer => self.remember(tgid, data, &frames),
            Role::Wrapped(shim) if dir == Direction::ToServer => {
                self.check_injection(tgid, shim, data, &frames)
            }
            _ => {}
        }
    }

    /// Decides what `tgid` is from its first complete message; returns the frames left
    /// to handle, or `None` when it is not MCP.
    ///
    /// Lines before the first JSON-RPC message are skipped, up to [`BANNER_LIMIT`] bytes in
    /// all: a banner or a wrapper script's output does not turn capture off, and neither does
    /// a junk line written first to the server's stdin.
    fn classify(&mut self, tgid: u32, data: &[u8], mut frames: Vec<Frame>) -> Option<Vec<Frame>> {
        let late = self.procs.get(&tgid).is_some_and(|p| p.joined_late);
        let first = frames.iter().position(|f| match f {
            Frame::Line { msg, .. } => jsonrpc::parse(&data[msg.clone()]).is_ok(),
            Frame::TooLong { .. } => false,
        });
        let skipped: usize = frames[..first.unwrap_or(frames.len())]
            .iter()
            .map(|f| match f {
                Frame::Line { raw, .. } => raw.len(),
                Frame::TooLong { seen, .. } => *seen,
            })
            .sum();
        let banner = self.procs.get_mut(&tgid).map(|p| {
            p.banner += skipped;
            p.banner
        });
        let Some(first) = first else {
            if banner.is_none_or(|b| b > BANNER_LIMIT) {
                self.not_mcp_pid(tgid);
            }
            return None;
        };
        frames.drain(..first);
        // Under a listed host, that host; else whoever is at the other end of its stdin.
        let listed = self.host_of(tgid);
        let host = listed.or_else(|| self.sys.peer_of(tgid));
        let role = if self.sys.is_shim(tgid) {
            Role::Shim
        } else if let Some(shim) = listed.and_then(|h| self.sys.shim_above(tgid, h)) {
            Role::Wrapped(shim)
        } else if let Some(shim) = host.filter(|&h| listed.is_none() && self.sys.is_shim(h)) {
            Role::Wrapped(shim)
        } else {
            Role::Server
        };
        if matches!(role, Role::Shim | Role::Wrapped(_))
            && let Some(flags) = self.kernel.watched(tgid)
        {
            let _ = self.kernel.set_flags(tgid, flags & !watch::GATE);
        }
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.role = role;
            p.host = host;
            if matches!(role, Role::Wrapped(_)) {
                p.label = Some((
                    super::procs::server_name(&self.sys.cmdline(tgid)),
                    self.sys.principal(tgid).and_then(|u| u.user),
                ));
            }
            // A managed shim's decisions are the daemon's own records: nothing to compare.
            let managed = self
                .managed
                .as_ref()
                .is_some_and(|m| m.live.lock().is_ok_and(|l| l.contains_key(&tgid)));
            if role == Role::Shim && !p.joined_late && !managed {
                p.log = self.sys.shim_log(tgid);
                if p.log.is_none() {
                    tracing::warn!(
                        pid = tgid,
                        "cannot find the audit log of a shim; its records are not checked"
                    );
                }
            }
        }
        if role == Role::Server {
            self.open_session(tgid, host, late);
        }
        Some(frames)
    }

    fn not_mcp_pid(&mut self, tgid: u32) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.role = Role::Other;
        }
        if let Some(flags) = self.kernel.watched(tgid) {
            let _ = self.kernel.set_flags(tgid, flags & !watch::CAPTURE);
        }
    }

    /// Starts recording an unwrapped server's session, and raises its alert.
    fn open_session(&mut self, tgid: u32, host: Option<u32>, late: bool) {
        let pid = tgid;
        let process = self.sys.process(pid);
        let argv = self.sys.cmdline(tgid);
        let name = host
            .and_then(|h| self.config_name(tgid, h))
            .unwrap_or_else(|| super::procs::server_name(&argv));
        let principal = self.sys.principal(pid);
        let host_proc =
            host.and_then(|h| self.hosts.get(&h).cloned().or_else(|| self.sys.process(h)));
        let chain = self.sys.ancestry(pid);
        let uid = principal.as_ref().map_or(u32::MAX, |p| p.uid);
        let user = principal.as_ref().and_then(|p| p.user.clone());
        let mut detail = serde_json::Map::new();
        detail.insert("observed".into(), true.into());
        detail.insert("joined_late".into(), late.into());
        let (session, ctx) = self.observe(
            guard::Start {
                transport: audit::Transport::StdioObserved,
                policy: self.policy.clone(),
                max_message: self.cfg.max_message,
                parties: guard::Parties {
                    principal,
                    host: host_proc.clone(),
                    shim: None,
                    chain,
                },
                server: guard::ServerInfo::new(
                    name.clone(),
                    Some(pid),
                    process.as_ref(),
                    Some(&argv),
                ),
                server_exe: process.as_ref().and_then(|p| p.exe.clone()),
                cwd: self.sys.cwd(pid),
                argv,
                detail,
            },
            host_proc.clone(),
            user.clone(),
            uid,
        );
        let reaction = self.policy.observer().unwrapped;
        let host_kind = host.and_then(|h| self.sys.host_kind(h, &self.cfg.hosts));
        self.alert(
            Some(&ctx),
            Alert::UnwrappedServer {
                server: name.clone(),
                pid,
                host: host_proc.as_ref().map(Link::short),
                host_kind,
                user: user.clone(),
                uid,
                action: reaction,
            },
        );
        let killed = reaction == Reaction::Kill && self.kill(tgid);
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.killed = killed;
            p.session = Some(session);
        }
    }

    /// Starts a session the observer judges (in monitor mode, without limits: it refuses
    /// nothing) and records its start.
    fn observe(
        &mut self,
        start: guard::Start,
        host: Option<Process>,
        user: Option<String>,
        uid: u32,
    ) -> (Box<Observed>, Arc<Context>) {
        self.counters.sessions_seen += 1;
        let name = start.server.name.clone();
        let started = guard::start(start);
        let mut guard = started.session;
        guard.set_limits(crate::guard::Limits::NONE);
        self.records.push(started.record);
        let observed = Observed {
            guard,
            name,
            host,
            user,
            uid,
            messages: 0,
        };
        (Box::new(observed), started.ctx)
    }

    /// The name the agent host's config gives the server `pid` belongs to: the entry that
    /// launched the host's child above (or at) `pid`.
    fn config_name(&self, pid: u32, host: u32) -> Option<String> {
        // The host's direct child on the way up from `pid`.
        let mut child = pid;
        for _ in 0..64 {
            let parent = self.sys.parent(child)?;
            if parent == host {
                break;
            }
            child = parent;
        }
        let cmdline = self
            .launched
            .get(&child)
            .cloned()
            .unwrap_or_else(|| self.sys.cmdline(child));
        self.sys.config_name(host, &cmdline)
    }

    /// Kills `tgid`; true only if it was alive to be killed: a process that already exited
    /// (a zombie waiting for its parent accepts the signal) is not counted as killed.
    fn kill(&mut self, tgid: u32) -> bool {
        if !self.sys.alive(tgid) {
            tracing::info!(pid = tgid, "not killed: it had already exited");
            return false;
        }
        match self.kernel.signal(tgid, Signal::SIGKILL) {
            Ok(()) => {
                self.counters.killed += 1;
                true
            }
            Err(e) => {
                tracing::warn!(pid = tgid, error = %e, "cannot kill");
                false
            }
        }
    }

    fn judge(&mut self, tgid: u32, dir: Direction, data: &[u8], frames: Vec<Frame>) {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return;
        };
        let Some(s) = p.session.as_mut() else { return };
        let (denied, ctx) = judge_into(s, dir, data, frames, &mut self.records, &mut self.counters);
        if denied.is_empty() || dir != Direction::ToServer {
            return;
        }
        let may_kill = !p.killed;
        let killed = self.react_to_denied(&ctx, Some(tgid), may_kill, denied);
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.killed |= killed;
        }
    }

    /// Denied calls seen going into server `pid`: killed first if the policy says so and
    /// `may_kill` (the record must not give the call time to run), then an alert each.
    /// Returns whether it was killed.
    fn react_to_denied(
        &mut self,
        ctx: &Arc<Context>,
        pid: Option<u32>,
        may_kill: bool,
        denied: Vec<Denied>,
    ) -> bool {
        let reaction = self.policy.observer().denied;
        let killed =
            reaction == Reaction::Kill && may_kill && pid.is_some_and(|pid| self.kill(pid));
        for (tool, rule) in denied {
            self.alert(
                Some(ctx),
                Alert::DeniedCallObserved {
                    pid,
                    tool,
                    rule,
                    action: reaction,
                    killed,
                },
            );
        }
        killed
    }

    /// Requests (method and id) in `frames`.
    fn requests(data: &[u8], frames: &[Frame]) -> Vec<(String, IdKey, Option<String>)> {
        let mut out = Vec::new();
        for f in frames {
            let Frame::Line { msg, .. } = f else { continue };
            let push = |m: &jsonrpc::Message<'_>, out: &mut Vec<_>| {
                if m.kind == Kind::Request
                    && let (Some(method), Some(id)) = (m.method.as_deref(), m.id)
                {
                    out.push((
                        method.to_string(),
                        IdKey::of(id),
                        Some(crate::guard::recorded_id(id)),
                    ));
                }
            };
            match jsonrpc::parse(&data[msg.clone()]) {
                Ok(Parsed::Single(m)) => push(&m, &mut out),
                Ok(Parsed::Batch(items)) => items.iter().flatten().for_each(|m| push(m, &mut out)),
                Err(_) => {}
            }
        }
        out
    }

    fn remember(&mut self, shim: u32, data: &[u8], frames: &[Frame]) {
        let Some(p) = self.procs.get_mut(&shim) else {
            return;
        };
        for (method, id, text) in Self::requests(data, frames) {
            if p.log.is_some()
                && let Some(text) = text
            {
                p.unrecorded
                    .push_back((method.clone(), text, Instant::now()));
            }
            let key = (method, id);
            if p.seen.insert(key.clone()) {
                p.seen_order.push_back(key);
                if p.seen_order.len() > SHIM_MEMORY
                    && let Some(old) = p.seen_order.pop_front()
                {
                    p.seen.remove(&old);
                }
            }
        }
    }

    /// Every request a wrapped server reads must have come from its host through the shim.
    fn check_injection(&mut self, server: u32, shim: u32, data: &[u8], frames: &[Frame]) {
        let Some(sp) = self.procs.get(&shim) else {
            // The shim's stdin was never seen (the daemon started later): nothing to compare.
            return;
        };
        if sp.joined_late {
            return;
        }
        let injected: Vec<_> = Self::requests(data, frames)
            .into_iter()
            .filter(|(m, id, _)| !sp.seen.contains(&(m.clone(), id.clone())))
            .collect();
        for (method, _, id) in injected {
            self.alert(
                None,
                Alert::InjectedMessage {
                    server_pid: server,
                    shim_pid: shim,
                    method,
                    request_id: id,
                    why: "the wrapped server read a request its shim never received from the agent host",
                },
            );
        }
    }

    /// Every request a shim read from its host must appear in the shim's audit log within
    /// [`RECORD_GRACE`]; one that does not is an alert (a shim that does not record, or a
    /// fake one).
    fn check_shim_records(&mut self) {
        let mut alerts = Vec::new();
        for (&pid, p) in self.procs.iter_mut() {
            alerts.extend(unrecorded(pid, p, RECORD_GRACE));
        }
        for a in alerts {
            self.alert(None, a);
        }
    }

    /// A policy reload: the enforced policy (managed shims) and its monitor-mode twin
    /// (the observer), or why they could not be loaded (the policy in force stays).
    pub fn reload(&mut self, loaded: anyhow::Result<(Policy, Policy)>) {
        match loaded {
            Ok((enforced, p)) => {
                if let Some(m) = &self.managed
                    && let Ok(mut slot) = m.policy.write()
                {
                    *slot = Arc::new(enforced);
                }
                self.policy = Arc::new(p);
                for p in self.procs.values_mut() {
                    if let Some(s) = p.session.as_mut() {
                        s.guard.set_policy(self.policy.clone());
                    }
                }
                let mut rec = Record::new(audit::Kind::PolicyLoaded, &self.ctx);
                rec.detail = Some(
                    serde_json::json!({ "origin": self.policy.origin(), "rules": self.policy.len(), "reload": true, "policy_sha256": self.policy.sha256() }),
                );
                self.records.push(rec);
                // Gates follow the new policy for hosts watched, and programs started, from now on.
                let flags = watch::HOST | gate_flag(&self.policy);
                for &h in self.hosts.keys() {
                    let _ = self.kernel.set_flags(h, flags);
                }
                if let Err(e) = self.kernel.set_probe(probe_flags(&self.cfg, &self.policy)) {
                    tracing::warn!(error = %e, "cannot update the probe's gate");
                }
                tracing::info!(origin = self.policy.origin(), "policy reloaded");
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "policy not reloaded; the one in force stays"
                );
                let in_force = self.policy.sha256().to_string();
                self.alert(None, Alert::PolicyReloadFailed { in_force })
                    .reason = Some(identity::redact_text(&format!("{e:#}")));
            }
        }
    }

    /// Every half second: exits the ring buffer could not report, shims that did not
    /// record, losses.
    pub fn tick(&mut self) {
        let gone: Vec<u32> = self
            .procs
            .keys()
            .copied()
            .filter(|&p| !self.sys.exists(p))
            .collect();
        for pid in gone {
            if let Some(p) = self.procs.remove(&pid) {
                self.end(pid, p, "exit");
            }
        }
        self.check_shim_records();
        self.counters.lost_kernel = self.kernel.lost();
        let lost = (self.counters.lost_kernel, self.counters.lost_sequence);
        if lost != self.reported_lost {
            let mut rec = Record::new(audit::Kind::Gap, &self.ctx);
            rec.detail = Some(serde_json::json!({
                "source": "observer",
                "why": "the kernel-to-daemon ring buffer was full; messages in this period may be missing",
                "lost_events": lost.0 - self.reported_lost.0,
                "lost_chunks": lost.1 - self.reported_lost.1,
            }));
            self.records.push(rec);
            self.reported_lost = lost;
        }
    }

    /// What the scanner found: agent hosts running now (a host the exec events did not
    /// name: renamed, started through a symlink) and alerts about host configs.
    pub fn scanned(&mut self, scan: Scan) {
        // A process that exited is gone, even while its parent has not reaped it: a scan
        // that saw it alive may be handled after its exit event, and watching the dead
        // pid would make a host of whatever reuses it.
        self.hosts.retain(|&h, _| self.sys.alive(h));
        let flags = watch::HOST | gate_flag(&self.policy);
        for pid in scan.hosts {
            if self.hosts.contains_key(&pid) || !self.sys.alive(pid) {
                continue;
            }
            // A host's descendant (the kernel captures it since its fork) stays captured
            // whatever it is named: a fork before it execs goes by its host's names, and a
            // server may be the host's own program (`goose mcp developer`). Watching it as a
            // host would stop capturing what it reads and writes.
            if self
                .kernel
                .watched(pid)
                .is_some_and(|f| f & watch::CAPTURE != 0)
            {
                continue;
            }
            self.watch_host(pid, flags);
        }
        for a in scan.alerts {
            self.alert(None, a);
        }
    }

    /// What `mcp-guard status` shows.
    pub fn status(&self) -> status::Status {
        let sessions = self
            .procs
            .iter()
            .filter_map(|(&pid, p)| {
                let (server, host, user, wrapped) = match (&p.role, &p.session) {
                    (Role::Server, Some(s)) => (
                        s.name.clone(),
                        s.host.as_ref().map(|h| h.comm.clone()),
                        s.user.clone().or(Some(s.uid.to_string())),
                        false,
                    ),
                    (Role::Wrapped(_), _) => {
                        let (name, user) = p.label.clone()?;
                        (
                            name,
                            p.host
                                .and_then(|h| self.hosts.get(&h))
                                .map(|h| h.comm.clone()),
                            user,
                            true,
                        )
                    }
                    _ => return None,
                };
                Some(status::Session {
                    pid,
                    server,
                    host,
                    user,
                    wrapped,
                    messages: p.session.as_ref().map_or(0, |s| s.messages),
                })
            })
            .chain(self.socket_sessions())
            .chain(self.managed.iter().flat_map(|m| {
                m.live
                    .lock()
                    .map(|l| l.values().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            }))
            .collect();
        status::Status {
            pid: self.sys.me(),
            started: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            updated: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            programs: self.kernel.programs(),
            policy: self.policy.origin().to_string(),
            policy_sha256: self.policy.sha256().to_string(),
            audit: self.cfg.audit.clone(),
            hosts: self
                .hosts
                .iter()
                .map(|(&pid, p)| status::Host {
                    pid,
                    comm: p.comm.clone(),
                })
                .collect(),
            sessions,
            counters: self.counters,
        }
    }

    /// Ends every session: the daemon stops.
    pub fn stop(&mut self) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            if let Some(p) = self.procs.remove(&pid) {
                self.end(pid, p, "daemon_stopped");
            }
        }
        let mut rec = Record::new(audit::Kind::DaemonStop, &self.ctx);
        rec.detail = Some(serde_json::to_value(self.counters).unwrap_or_default());
        self.records.push(rec);
    }
}
