//! `mcp-guard wrap`: spawn the server, pump both directions through the guard, and mirror
//! the server's life (signals in, exit status out).
//!
//! One current-thread runtime on the main thread. The server is spawned from the main
//! thread (its parent-death signal is tied to the spawning thread) in its own process
//! group, so signals reach it once and escalation reaches its children too.

use std::cell::RefCell;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, Notify};
use tokio::time::{Instant, sleep_until};

use crate::audit::{self, Alert, Audit, Context, Durability, Record};
use crate::frame::{Frame, Framer};
use crate::guard::{self, Act, Direction, Session};
use crate::identity::{self, Process};
use crate::jsonrpc::code;
use crate::managed::client::{Client, ConnectError};
use crate::policy::Policy;

/// Bytes asked for per read.
const READ_SIZE: usize = 256 * 1024;

/// How long output is still read after the server exited (its children may hold the pipe).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Exit status when the server cannot be started, as a shell does.
pub const EXIT_CANNOT_START: i32 = 127;

/// Exit status when the daemon refuses a managed shim (for example its `--policy`).
pub const EXIT_REFUSED: i32 = 2;

/// Everything `wrap` needs.
pub struct Options {
    pub name: String,
    pub policy: Policy,
    /// Where the policy was read from: it is reloaded from there and nowhere else.
    pub policy_source: crate::policy::Chosen,
    /// How often the policy files are checked for changes; zero: never.
    pub policy_poll: Duration,
    pub audit: PathBuf,
    pub audit_opts: crate::audit::Options,
    pub durability: Durability,
    pub max_message: usize,
    /// What one session may hold in flight and write to the audit log.
    pub limits: crate::guard::Limits,
    pub command: Vec<OsString>,
    /// After the client closes its end: wait this long, then SIGTERM; again, then SIGKILL.
    pub grace: Duration,
    /// Decisions by the daemon, when it runs.
    pub managed: Option<Managed>,
}

/// A shim whose decisions the daemon makes (see `crate::managed`).
pub struct Managed {
    pub socket: PathBuf,
    pub when_down: WhenDown,
    /// The shim's own policy, sent to the daemon, where it can only add denials: its text
    /// and where it came from.
    pub policy: Option<(String, String)>,
}

/// What a managed shim does while the daemon cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenDown {
    /// Refuse the requests that policy decides (calls, reads, prompts), with error -32087;
    /// the session goes on and reconnects.
    Refuse,
    /// Judge locally with the shim's own policy, as a standalone shim does.
    Standalone,
}

/// The policy a managed shim falls back to while the daemon is unreachable: every acting
/// request (`policy::ACTING_METHODS`) refused, the handshake and listings let through.
fn daemon_down_policy() -> anyhow::Result<Policy> {
    let methods: Vec<String> = crate::policy::ACTING_METHODS
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    let text = format!(
        "default = \"deny\"\n\n[[rule]]\nid = \"daemon-unavailable\"\nmethod = [{}]\naction = \"deny\"\n\
         message = \"the mcp-guard daemon is unreachable; requests are refused until it is back\"\n",
        methods.join(", ")
    );
    Policy::parse(&text, "daemon-unavailable (built-in)").context("fallback policy")
}

type Sink = Mutex<Option<Pin<Box<dyn AsyncWrite>>>>;

/// Runs a wrapped server to completion and returns the exit status for the shim.
pub fn run(opts: Options) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let code = rt.block_on(session(opts));
    // Reads of a terminal stdin run on a blocking thread that may never return; do not wait for it.
    rt.shutdown_background();
    code
}

async fn session(opts: Options) -> anyhow::Result<i32> {
    let (audit, audit_thread) = Audit::open_with(&opts.audit, opts.durability, &opts.audit_opts)?;
    let me = std::process::id() as i32;
    let principal = identity::current_principal();
    let host = Process::read(nix::unistd::getppid().as_raw()).ok();
    let chain = identity::ancestry(me);

    let mut child = match spawn(&opts.command) {
        Ok(child) => child,
        Err(e) => {
            let cmd = opts
                .command
                .first()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            eprintln!("mcp-guard: cannot start `{cmd}`: {e}");
            audit.close(audit_thread);
            return Ok(EXIT_CANNOT_START);
        }
    };
    let pid = child.id().map(|p| p as i32).unwrap_or_default();
    settle_launcher(pid, &opts.command).await;
    let remote = match &opts.managed {
        None => None,
        Some(m) => {
            let hello = || crate::managed::Hello {
                v: 1,
                name: opts.name.clone(),
                server_pid: pid as u32,
                policy: m.policy.as_ref().map(|(text, _)| text.clone()),
                policy_origin: m.policy.as_ref().map(|(_, origin)| origin.clone()),
                resumed: false,
            };
            match Client::connect(m.socket.clone(), hello()) {
                Ok(c) => Some(c),
                Err(ConnectError::Refused(why)) => {
                    eprintln!("mcp-guard: the mcp-guard daemon refused this shim: {why}");
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = child.wait().await;
                    audit.close(audit_thread);
                    return Ok(EXIT_REFUSED);
                }
                Err(e @ ConnectError::Unreachable { .. }) => match m.when_down {
                    WhenDown::Refuse => {
                        tracing::warn!(error = %e, "refusing requests until the daemon is back");
                        Some(Client::down(m.socket.clone(), hello()))
                    }
                    WhenDown::Standalone => {
                        tracing::warn!(error = %e, "judging locally with the shim's own policy");
                        None
                    }
                },
            }
        }
    };
    let argv: Vec<String> = opts
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let server = ServerIdentity {
        pid,
        name: opts.name.clone(),
        argv: argv.clone(),
        exe: RefCell::new(None),
        settled: std::cell::Cell::new(false),
    };
    let info = server.info();
    let mut detail = serde_json::Map::new();
    detail.insert("policy".into(), opts.policy.origin().into());
    detail.insert("shim_pid".into(), me.into());
    let (origin, rules) = (opts.policy.origin().to_string(), opts.policy.len());
    let started = guard::start(guard::Start {
        transport: audit::Transport::Shim,
        policy: Arc::new(opts.policy),
        max_message: opts.max_message,
        parties: guard::Parties {
            principal: Some(principal),
            host,
            shim: Process::read(me).ok(),
            chain,
        },
        server_exe: info.exe.clone(),
        server: info,
        cwd: std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .map(|p| p.display().to_string()),
        argv,
        detail,
    });
    let (mut guard, ctx) = (started.session, started.ctx);
    let mut loaded = Record::new(audit::Kind::PolicyLoaded, &ctx);
    loaded.detail = Some(serde_json::json!({ "origin": origin, "rules": rules }));
    if let Err(e) = audit.commit_signed(vec![loaded, started.record]) {
        // Fail closed: no session runs without its record.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = child.wait().await;
        audit.close(audit_thread);
        return Err(e).context("cannot record the session start");
    }
    // A managed shim judges locally only while the daemon is unreachable: fail closed.
    if remote.is_some() {
        guard.set_policy(Arc::new(daemon_down_policy()?));
    }
    if remote.is_some() {
        // The daemon decided the requests in flight when it went away; their answers pass.
        guard.resume(Duration::from_secs(365 * 86400));
    }
    let pins = crate::pins::Pins::beside(&opts.audit);
    let own = guard.own_files_mut();
    own.add_family(&opts.audit);
    own.add_family(pins.path());
    let key = opts
        .audit_opts
        .key
        .clone()
        .unwrap_or_else(|| opts.audit.with_file_name("audit.key"));
    own.add_family(&key);
    own.add_family(&key.with_extension("pub"));
    if let Some(c) = &opts.audit_opts.checkpoint {
        own.add_family(c);
    }
    if let crate::policy::Chosen::File(p) = &opts.policy_source {
        own.add_family(p);
        own.add_dir(&p.join("policy.d"));
        if p.is_dir() {
            own.add_dir(p);
        }
    }
    guard.set_limits(opts.limits);
    guard.set_server_pid(pid);
    guard.set_pins(pins);
    let session = RefCell::new(guard);
    let server_in: Sink = Mutex::new(
        child
            .stdin
            .take()
            .map(|w| Box::pin(w) as Pin<Box<dyn AsyncWrite>>),
    );
    let server_out = child.stdout.take().context("server stdout")?;
    let client_out: Sink = Mutex::new(Some(stdout()));
    let client_gone = Notify::new();
    let asks = AskClock::default();
    // The pumps borrow the session and the audit handle; they end with this block.
    let status = {
        let shared = Shared {
            session: &session,
            audit: &audit,
            server_in: &server_in,
            client_out: &client_out,
            client_gone: &client_gone,
            asks: &asks,
            server: &server,
            remote: remote.as_ref(),
        };

        let mut inbound = pin!(shared.pump(Direction::ToServer, stdin(), opts.max_message));
        let mut outbound =
            pin!(shared.pump(Direction::ToClient, Box::pin(server_out), opts.max_message));
        let mut expiry = pin!(shared.expire_asks());
        let (mut term, mut int, mut hup) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        );

        let mut watch = PolicyWatch::new(opts.policy_source.clone());
        // Managed: the daemon reloads the system policy; the local one is the fallback.
        let poll_every = if opts.policy_poll.is_zero() || remote.is_some() {
            far_poll()
        } else {
            opts.policy_poll
        };
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut in_done, mut out_done) = (false, false);
        let mut status: Option<ExitStatus> = None;
        // Escalation after the client leaves: close stdin -> grace -> SIGTERM -> grace -> SIGKILL.
        let mut escalate: Option<(Instant, Signal)> = None;
        let mut drain_until: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(86400 * 365);

        loop {
            if status.is_some() && (out_done || drain_until.is_some_and(|d| Instant::now() >= d)) {
                break;
            }
            let wake = escalate
                .map(|(at, _)| at)
                .into_iter()
                .chain(drain_until)
                .min()
                .unwrap_or(far);
            tokio::select! {
                _ = &mut inbound, if !in_done => {
                    in_done = true;
                    // The client closed its end: so does the server's stdin, and the clock starts.
                    server_in.lock().await.take();
                    if status.is_none() {
                        escalate = Some((Instant::now() + opts.grace, Signal::SIGTERM));
                    }
                }
                _ = &mut outbound, if !out_done => {
                out_done = true;
                // A server that closed its stdout can answer nothing more: end it as if the
                // client had left, so requests in flight get their errors.
                if status.is_none() && escalate.is_none() {
                    server_in.lock().await.take();
                    escalate = Some((Instant::now() + opts.grace, Signal::SIGTERM));
                }
            }
                s = child.wait(), if status.is_none() => {
                    status = Some(s.context("waiting for the server")?);
                    escalate = None;
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                }
                _ = &mut expiry => {}
                _ = term.recv() => forward(pid, Signal::SIGTERM),
                _ = int.recv() => forward(pid, Signal::SIGINT),
                _ = hup.recv() => forward(pid, Signal::SIGHUP),
                _ = poll.tick() => {
                    if watch.changed() {
                        reload(&watch, &session, &audit).await;
                    }
                }
                _ = sleep_until(wake) => {
                    if let Some((_, sig)) = escalate.take() {
                        tracing::warn!(signal = %sig, "server still running after the client left; signalling it");
                        forward(pid, sig);
                        if sig == Signal::SIGTERM {
                            escalate = Some((Instant::now() + opts.grace, Signal::SIGKILL));
                        }
                    }
                }
            }
        }
        status
    };
    // Children of the server that kept its pipes open go with it.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);

    let status = status.unwrap_or_else(|| ExitStatus::from_raw(0));
    let exit = exit_code(status);
    let ended = match &remote {
        Some(r) => {
            r.end(crate::managed::End {
                exit_code: status.code(),
                signal: status.signal(),
            })
            .await
        }
        None => None,
    };
    let (errors, mut records) = match ended {
        // The daemon answered for the requests in flight; the local session saw none of them.
        Some(acts) => {
            let errors = acts.into_iter().flat_map(|a| match a {
                Act::ToClient(b) => b,
                _ => Vec::new(),
            });
            (errors.collect(), Vec::new())
        }
        None => session
            .borrow_mut()
            .abandon("the server exited before answering"),
    };
    if !errors.is_empty() {
        write(&client_out, &errors).await;
    }
    if let Some(out) = client_out.lock().await.as_mut() {
        let _ = out.flush().await;
    }
    let ctx = session.borrow().ctx().clone();
    let mut end = Record::new(audit::Kind::SessionEnd, &ctx);
    end.detail = Some(serde_json::json!({
        "exit_code": status.code(),
        "signal": status.signal(),
        "counters": session.borrow().counters,
    }));
    records.push(end);
    if let Err(e) = audit.commit_signed(records) {
        tracing::error!(error = %e, "cannot record the session end");
    }
    audit.close(audit_thread);
    Ok(exit)
}

fn far_poll() -> Duration {
    Duration::from_secs(86400 * 365)
}

/// The policy files' state, to notice an edit of the place the policy was read from.
struct PolicyWatch {
    source: crate::policy::Chosen,
    seen: Vec<Option<(std::time::SystemTime, u64, u64)>>,
}

impl PolicyWatch {
    fn new(source: crate::policy::Chosen) -> PolicyWatch {
        let mut w = PolicyWatch {
            source,
            seen: Vec::new(),
        };
        w.seen = w.state();
        w
    }

    fn state(&self) -> Vec<Option<(std::time::SystemTime, u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        let mut paths = self.source.watched();
        // Drop-ins: each file, not just the directory (an edit in place keeps its mtime).
        let dirs: Vec<PathBuf> = paths
            .iter()
            .filter(|p| p.ends_with("policy.d"))
            .cloned()
            .collect();
        for d in dirs {
            if let Ok(rd) = std::fs::read_dir(&d) {
                let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort();
                paths.extend(files);
            }
        }
        paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
            })
            .collect()
    }

    /// Whether anything changed since the last call.
    fn changed(&mut self) -> bool {
        let now = self.state();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

/// Loads the policy again, the way it was first chosen. A policy that loads is put in force
/// (atomically, between two reads) and recorded; one that does not leaves the old one in
/// force, and the failure is logged and recorded as an alert.
async fn reload(watch: &PolicyWatch, session: &RefCell<Session>, audit: &Audit) {
    let loaded = watch.source.load();
    let ctx = session.borrow().ctx().clone();
    let record = match loaded {
        Ok(policy) if policy.sha256() == ctx.policy_sha256 => return,
        Ok(policy) => {
            let ctx = Arc::new(Context {
                policy_sha256: policy.sha256().to_string(),
                mode: policy.mode(),
                ..(*ctx).clone()
            });
            let mut rec = Record::new(audit::Kind::PolicyLoaded, &ctx);
            rec.detail = Some(serde_json::json!({
                "origin": policy.origin(),
                "rules": policy.len(),
                "replaces": ctx_sha(&session.borrow()),
            }));
            tracing::info!(origin = %policy.origin(), sha256 = %policy.sha256(), "policy reloaded");
            let mut s = session.borrow_mut();
            s.set_policy(Arc::new(policy));
            s.set_ctx(ctx);
            rec
        }
        Err(e) => {
            tracing::error!(error = %e, "the changed policy does not load; the previous one stays in force");
            let mut rec = Record::alert(
                &ctx,
                &Alert::PolicyReloadFailed {
                    in_force: ctx.policy_sha256.clone(),
                },
            );
            rec.reason = Some(crate::identity::redact_text(&e.to_string()));
            rec
        }
    };
    if let Err(e) = audit.commit(vec![record]).await {
        tracing::error!(error = %e, "cannot record the policy reload");
    }
}

fn ctx_sha(s: &Session) -> String {
    s.ctx().policy_sha256.clone()
}

/// What records say about the server process.
struct ServerIdentity {
    pid: i32,
    name: String,
    argv: Vec<String>,
    exe: RefCell<Option<String>>,
    /// Set once the server has spoken: by then it runs its final program.
    settled: std::cell::Cell<bool>,
}

impl ServerIdentity {
    /// The server as records describe it, its executable read afresh.
    fn info(&self) -> guard::ServerInfo {
        let p = Process::read(self.pid).ok();
        *self.exe.borrow_mut() = p.as_ref().and_then(|p| p.exe.clone());
        guard::ServerInfo::new(
            self.name.clone(),
            Some(self.pid as u32),
            p.as_ref(),
            Some(&self.argv),
        )
    }

    /// A script started through `#!/usr/bin/env node` is `env` when spawn returns and
    /// `node` a moment later: until the server has spoken, look again before each decision.
    fn refresh(&self, dir: Direction, session: &RefCell<Session>) {
        if self.settled.get() {
            return;
        }
        if dir == Direction::ToClient {
            self.settled.set(true);
        }
        let now = std::fs::read_link(format!("/proc/{}/exe", self.pid))
            .ok()
            .map(|p| p.display().to_string());
        if now.is_some() && now != *self.exe.borrow() {
            let mut s = session.borrow_mut();
            let old = s.ctx().clone();
            s.set_server_exe(now.clone());
            s.set_ctx(Arc::new(Context {
                server: self.info().raw(),
                ..(*old).clone()
            }));
        }
    }
}

/// Batches judged and not yet carried out, per direction.
const IN_FLIGHT: usize = 4;

/// One read's worth of frames, judged, its records on their way to disk.
struct Batch {
    /// The bytes the frames and acts index.
    data: Vec<u8>,
    frames: Vec<Frame>,
    decision: Decision,
}

enum Decision {
    /// Judged here: the acts, and the commit of their records.
    Local {
        acts: Vec<Act>,
        append: Vec<Record>,
        ticket: crate::audit::Ticket,
    },
    /// Sent to the daemon: its plan, whose forwards index the frames' lines laid end to end.
    Remote(tokio::sync::oneshot::Receiver<Vec<u8>>),
}

struct Shared<'a> {
    /// The daemon, for a managed shim.
    remote: Option<&'a Client>,
    server: &'a ServerIdentity,
    session: &'a RefCell<Session>,
    audit: &'a Audit,
    server_in: &'a Sink,
    client_out: &'a Sink,
    client_gone: &'a Notify,
    asks: &'a AskClock,
}

/// Wakes the timer of calls held for approval (`action = "ask"`).
#[derive(Default)]
struct AskClock {
    /// The host was asked at least once in this session.
    asked: std::cell::Cell<bool>,
    wake: Notify,
    /// Managed: the questions the daemon asked and the requests they hold (question id ->
    /// held request id), so that the host is answered if the daemon goes away.
    open: RefCell<std::collections::HashMap<String, serde_json::Value>>,
}

impl AskClock {
    /// Notes a question the daemon sent the host, or its closing.
    fn carried(&self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let mut open = self.open.borrow_mut();
        match v.get("method").and_then(serde_json::Value::as_str) {
            Some("elicitation/create") => {
                if let (Some(id), Some(held)) = (
                    v.get("id").and_then(serde_json::Value::as_str),
                    v.pointer("/params/_meta")
                        .and_then(|m| m.get(guard::HELD_META)),
                ) {
                    open.insert(id.to_string(), held.clone());
                }
            }
            Some("notifications/cancelled") => {
                if let Some(id) = v
                    .pointer("/params/requestId")
                    .and_then(serde_json::Value::as_str)
                {
                    open.remove(id);
                }
            }
            _ => {}
        }
    }

    /// Forgets the questions the host answers in `data`'s lines.
    fn answered(&self, data: &[u8], frames: &[Frame]) {
        if self.open.borrow().is_empty() {
            return;
        }
        for f in frames {
            let Some(r) = f.raw() else { continue };
            let line = &data[r.clone()];
            if memchr::memmem::find(line, guard::ASK_ID_PREFIX.as_bytes()).is_none() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            for m in v.as_array().map_or(std::slice::from_ref(&v), Vec::as_slice) {
                if m.get("method").is_none()
                    && let Some(id) = m.get("id").and_then(serde_json::Value::as_str)
                {
                    self.open.borrow_mut().remove(id);
                }
            }
        }
    }

    /// The daemon that held the open questions' calls is gone: the host gets a refusal for
    /// each held request and the question closed, rather than no answer ever.
    fn lost(&self) -> Vec<Act> {
        let open = std::mem::take(&mut *self.open.borrow_mut());
        let mut acts = Vec::new();
        for (ask, held) in open {
            tracing::warn!(question = %ask, "the mcp-guard daemon holding a call for approval went away; refusing it");
            let cancel = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": ask, "reason": "the guard daemon went away"}});
            let refusal = serde_json::json!({"jsonrpc": "2.0", "id": held, "error": {
                "code": code::DENIED,
                "message": "refused by mcp-guard: the guard daemon holding this call for approval went away; send it again",
                "data": {"mcp_guard": {"approval": "daemon_gone"}}}});
            for v in [cancel, refusal] {
                let mut line = v.to_string().into_bytes();
                line.push(b'\n');
                acts.push(Act::ToClient(line));
            }
        }
        acts
    }
}

/// How often a managed shim has the daemon look at its held calls' deadlines, once the
/// host has been asked (the daemon holds them and has no clock of its own per session).
const MANAGED_ASK_TICK: Duration = Duration::from_secs(1);

impl Shared<'_> {
    /// Reads `dir`'s input until end of input, judging each read's worth of messages.
    /// Reads `dir`'s input until end of input. Each read's worth of messages is judged and
    /// its records sent to the writer at once; while they are committed, the next read is
    /// already being judged. Batches are carried out strictly in order.
    async fn pump(&self, dir: Direction, mut input: Pin<Box<dyn AsyncRead>>, max: usize) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(IN_FLIGHT);
        let read = async move {
            let mut framer = Framer::new(max);
            loop {
                let read = tokio::select! {
                    r = input.read(framer.spare(READ_SIZE)) => r,
                    _ = self.client_gone.notified(), if dir == Direction::ToServer => return,
                };
                let n = match read {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, direction = ?dir, "read failed; treating it as end of input");
                        0
                    }
                };
                let mut frames = Vec::new();
                if n == 0 {
                    frames.extend(framer.finish());
                } else {
                    framer.filled(n);
                    while let Some(f) = framer.next_frame() {
                        frames.push(f);
                    }
                }
                if !frames.is_empty()
                    && tx
                        .send(self.prepare(dir, framer.data(), frames))
                        .await
                        .is_err()
                {
                    return;
                }
                if n == 0 {
                    return;
                }
            }
        };
        let write = async {
            while let Some(batch) = rx.recv().await {
                self.carry_out(dir, batch).await;
            }
        };
        tokio::join!(read, write);
    }

    /// Judges frames (here, or by the daemon) and submits their records; copies out the
    /// bytes the plan refers to.
    fn prepare(&self, dir: Direction, data: &[u8], frames: Vec<Frame>) -> Batch {
        let lo = frames
            .iter()
            .filter_map(|f| f.raw().map(|r| r.start))
            .min()
            .unwrap_or(0);
        let hi = frames
            .iter()
            .filter_map(|f| f.raw().map(|r| r.end))
            .max()
            .unwrap_or(0);
        let data = data[lo..hi.max(lo)].to_vec();
        let mut frames: Vec<Frame> = frames.iter().map(|f| f.shifted(lo)).collect();
        if let Some(r) = self.remote {
            frames = crate::managed::cap_frames(frames, &data, r.max_message());
        }
        if self.remote.is_some() && dir == Direction::ToServer {
            self.asks.answered(&data, &frames);
        }
        if let Some(rx) = self.remote.and_then(|r| r.judge(dir, &data, &frames)) {
            return Batch {
                data,
                frames,
                decision: Decision::Remote(rx),
            };
        }
        let decision = self.judge_here(dir, &data, &frames);
        Batch {
            data,
            frames,
            decision,
        }
    }

    fn judge_here(&self, dir: Direction, data: &[u8], frames: &[Frame]) -> Decision {
        self.server.refresh(dir, self.session);
        let plan = self
            .session
            .borrow_mut()
            .judge(dir, data, frames.iter().cloned());
        let ticket = self.audit.submit(plan.commit);
        // Judged here while managed: the daemon is unreachable, and so are the calls it held.
        let mut acts = match self.remote {
            Some(_) => self.asks.lost(),
            None => Vec::new(),
        };
        acts.extend(plan.acts);
        Decision::Local {
            acts,
            append: plan.append,
            ticket,
        }
    }

    async fn carry_out(&self, dir: Direction, batch: Batch) {
        let Batch {
            data,
            frames,
            decision,
        } = batch;
        let data = &data[..];
        let mut decision = decision;
        if let Decision::Remote(rx) = decision {
            let map = crate::managed::line_map(&frames);
            let total = map.last().map_or(0, |(s, r)| s + r.len());
            let plan = rx
                .await
                .ok()
                .and_then(|p| crate::managed::decode_plan(&p, total).ok());
            decision = match plan {
                Some((_, acts)) => Decision::Local {
                    acts: acts
                        .into_iter()
                        .flat_map(|a| match a {
                            Act::Forward(r) => crate::managed::map_forward(&map, &r)
                                .into_iter()
                                .map(Act::Forward)
                                .collect(),
                            other => vec![other],
                        })
                        .collect(),
                    append: Vec::new(),
                    ticket: crate::audit::Ticket::done(),
                },
                // The daemon went away with these frames: judged here, failing closed.
                None => {
                    tracing::warn!(
                        "the mcp-guard daemon did not answer; judging locally (refusing)"
                    );
                    self.judge_here(dir, data, &frames)
                }
            };
        }
        let Decision::Local {
            mut acts,
            append,
            ticket,
        } = decision
        else {
            return;
        };
        if let Err(e) = ticket.wait().await {
            // Fail closed: what needed a record does not take effect without one.
            tracing::error!(error = %e, "audit commit failed; refusing the requests it covered");
            acts = self.session.borrow_mut().refuse_unrecorded(
                dir,
                data,
                &frames,
                code::AUDIT_UNAVAILABLE,
                &e.to_string(),
            );
        }
        let own = match dir {
            Direction::ToServer => self.server_in,
            Direction::ToClient => self.client_out,
        };
        // Consecutive forwards are written as one slice when they are adjacent in the buffer.
        let mut run: Option<std::ops::Range<usize>> = None;
        for act in acts {
            match act {
                Act::Forward(r) => match &mut run {
                    Some(cur) if cur.end == r.start => cur.end = r.end,
                    _ => {
                        if let Some(cur) = run.replace(r) {
                            self.send(own, &data[cur]).await;
                        }
                    }
                },
                Act::ToClient(line) => {
                    if let Some(cur) = run.take() {
                        self.send(own, &data[cur]).await;
                    }
                    if memchr::memmem::find(&line, b"\"mcp-guard-ask-").is_some() {
                        self.asks.asked.set(true);
                        self.asks.wake.notify_one();
                        if self.remote.is_some() {
                            self.asks.carried(&line);
                        }
                    }
                    self.send(self.client_out, &line).await;
                }
                Act::ToServer(line) => {
                    if let Some(cur) = run.take() {
                        self.send(own, &data[cur]).await;
                    }
                    self.send(self.server_in, &line).await;
                }
            }
        }
        if let Some(cur) = run {
            self.send(own, &data[cur]).await;
        }
        self.audit.append(append);
    }

    /// Refuses held calls whose time is up: an empty read is judged when the first one
    /// is due (here, from the session's deadline; managed, every [`MANAGED_ASK_TICK`]).
    async fn expire_asks(&self) {
        loop {
            let due = match self.remote {
                Some(_) if self.asks.asked.get() => Some(Instant::now() + MANAGED_ASK_TICK),
                Some(_) => None,
                None => self.session.borrow().next_deadline().map(Instant::from_std),
            };
            match due {
                None => self.asks.wake.notified().await,
                Some(at) => {
                    tokio::select! {
                        _ = sleep_until(at) => {}
                        _ = self.asks.wake.notified() => continue,
                    }
                }
            }
            let batch = self.prepare(Direction::ToServer, &[], Vec::new());
            self.carry_out(Direction::ToServer, batch).await;
        }
    }

    async fn send(&self, sink: &Sink, bytes: &[u8]) {
        if !write(sink, bytes).await && std::ptr::eq(sink, self.client_out) {
            // The client is gone: behave as if it had closed its end.
            self.client_gone.notify_one();
        }
    }
}

/// Writes to a sink; a failed write closes it. Returns false when nothing could be written.
async fn write(sink: &Sink, bytes: &[u8]) -> bool {
    let mut guard = sink.lock().await;
    let Some(w) = guard.as_mut() else {
        return false;
    };
    match w.write_all(bytes).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "write failed; closing that side");
            guard.take();
            false
        }
    }
}

fn spawn(command: &[OsString]) -> io::Result<tokio::process::Child> {
    let (prog, args) = command
        .split_first()
        .ok_or_else(|| io::Error::other("no command given"))?;
    let parent = std::process::id() as i32;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            // The server must not outlive the shim, even a shim killed with SIGKILL.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid().as_raw() != parent {
                return Err(io::Error::other("the shim exited during start-up"));
            }
            Ok(())
        });
    }
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
}

/// A server started through a `#!/usr/bin/env node`-style script is `env` when spawn
/// returns and the real program a moment later. Wait (briefly, bounded) for that second
/// exec, so the session's records name the program that actually runs.
async fn settle_launcher(pid: i32, command: &[OsString]) {
    const PATIENCE: Duration = Duration::from_millis(200);
    let Some(prog) = command.first() else { return };
    let path = which(prog);
    let Some(interpreter) = path.as_deref().and_then(shebang) else {
        return;
    };
    if interpreter.file_name().is_none_or(|f| f != "env") {
        return;
    }
    let exe = || std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let deadline = Instant::now() + PATIENCE;
    while exe().is_some_and(|e| e.file_name().is_some_and(|f| f == "env"))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Where `prog` is found, as `execvp` would look.
fn which(prog: &OsString) -> Option<PathBuf> {
    let p = PathBuf::from(prog);
    if p.components().count() > 1 {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(&p))
            .find(|c| c.is_file())
    })
}

/// The interpreter of a `#!` script.
fn shebang(path: &std::path::Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let interp = std::str::from_utf8(line).ok()?.split_whitespace().next()?;
    Some(PathBuf::from(interp))
}

fn forward(pid: i32, sig: Signal) {
    if pid > 0 {
        let _ = killpg(Pid::from_raw(pid), sig);
    }
}

/// The shim's exit status for the server's: its code, or 128+N for signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}

/// The client side of stdio: non-blocking pipe or socket ends when possible, so reads and
/// writes need no helper thread; anything else (a terminal, a file) through tokio's stdio.
fn stdin() -> Pin<Box<dyn AsyncRead>> {
    match dup_fd(0).map(nonblocking_reader) {
        Some(Ok(r)) => r,
        _ => Box::pin(tokio::io::stdin()),
    }
}

fn stdout() -> Pin<Box<dyn AsyncWrite>> {
    match dup_fd(1).map(nonblocking_writer) {
        Some(Ok(w)) => w,
        _ => Box::pin(tokio::io::stdout()),
    }
}

fn dup_fd(fd: i32) -> Option<OwnedFd> {
    // SAFETY: fds 0 and 1 are open for the life of the process (std guarantees it at start).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().ok()
}

/// What kind of file a descriptor is, for choosing how to drive it.
enum FdKind {
    Fifo,
    Socket,
    Other,
}

fn fd_kind(fd: &OwnedFd) -> io::Result<FdKind> {
    use nix::sys::stat::{SFlag, fstat};
    let kind = SFlag::from_bits_truncate(fstat(fd.as_fd())?.st_mode) & SFlag::S_IFMT;
    Ok(match kind {
        SFlag::S_IFIFO => FdKind::Fifo,
        SFlag::S_IFSOCK => FdKind::Socket,
        _ => FdKind::Other,
    })
}

fn nonblocking_socket(fd: OwnedFd) -> io::Result<tokio::net::UnixStream> {
    let s = std::os::unix::net::UnixStream::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

fn nonblocking_reader(fd: OwnedFd) -> io::Result<Pin<Box<dyn AsyncRead>>> {
    match fd_kind(&fd)? {
        FdKind::Fifo => Ok(Box::pin(tokio::net::unix::pipe::Receiver::from_owned_fd(
            fd,
        )?)),
        FdKind::Socket => Ok(Box::pin(nonblocking_socket(fd)?)),
        FdKind::Other => Err(io::Error::other("not a pipe or socket")),
    }
}

fn nonblocking_writer(fd: OwnedFd) -> io::Result<Pin<Box<dyn AsyncWrite>>> {
    match fd_kind(&fd)? {
        FdKind::Fifo => Ok(Box::pin(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?)),
        FdKind::Socket => Ok(Box::pin(nonblocking_socket(fd)?)),
        FdKind::Other => Err(io::Error::other("not a pipe or socket")),
    }
}
