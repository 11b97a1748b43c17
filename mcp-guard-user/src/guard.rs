//! The one pipeline every message goes through: classify -> policy -> decision -> record.
//!
//! [`Session`] is sync and does no I/O. For each read's worth of frames it returns a
//! [`Plan`]: the records to commit and, in order, what to do with each frame. The caller
//! commits the records first and only then carries the plan out, so no decision takes
//! effect before its record is written.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::audit::{
    Alert, Context, Decision, Flow, Kind as RecordKind, Outcome, Record, canonical_sha256,
};
use crate::frame::Frame;
use crate::jsonrpc::{self, ErrorObject, IdKey, Kind, Malformed, Message, Parsed, code};
use crate::policy::{Action, Ancestor, Limiter, Mode, Policy, Principal, Query};

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the agent host to the server.
    ToServer,
    /// From the server to the agent host.
    ToClient,
}

impl Direction {
    /// As logs name it.
    fn name(self) -> &'static str {
        match self {
            Direction::ToServer => "client_to_server",
            Direction::ToClient => "server_to_client",
        }
    }

    /// The kind of record a request travelling this way gets.
    fn request_kind(self) -> RecordKind {
        match self {
            Direction::ToServer => RecordKind::Request,
            Direction::ToClient => RecordKind::ServerRequest,
        }
    }

    fn flow(self) -> Flow {
        match self {
            Direction::ToServer => Flow::ClientToServer,
            Direction::ToClient => Flow::ServerToClient,
        }
    }
}

/// What to do with a frame once its records are committed.
#[derive(Debug, PartialEq, Eq)]
pub enum Act {
    /// Pass these bytes of the input buffer on, unchanged.
    Forward(Range<usize>),
    /// Send this message (one line, ending included) to the client.
    ToClient(Vec<u8>),
    /// Send this message (one line, ending included) to the server.
    ToServer(Vec<u8>),
}

/// The result of judging one read's worth of frames.
#[derive(Debug, Default)]
pub struct Plan {
    pub acts: Vec<Act>,
    /// Records that must be on disk before any act is carried out.
    pub commit: Vec<Record>,
    /// Records that may be written after the acts (responses: observations, not decisions).
    pub append: Vec<Record>,
}

/// Counters for the session-end record.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counters {
    pub requests: u64,
    pub denied: u64,
    pub notifications: u64,
    pub responses: u64,
    pub malformed: u64,
    /// Requests refused because too many were in flight the same way.
    #[serde(skip_serializing_if = "is_zero")]
    pub refused_in_flight: u64,
    /// Records not written because the session's audit budget was used up.
    #[serde(skip_serializing_if = "is_zero")]
    pub unrecorded: u64,
    /// Secrets replaced in what the server sent the host.
    #[serde(skip_serializing_if = "is_zero")]
    pub redactions: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What one session may hold in flight and write to the audit log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests in flight per direction (sent, not yet answered); 0: no bound.
    pub max_in_flight: usize,
    /// Records a session may write at once (the bucket's size); 0: no budget.
    pub audit_burst: u32,
    /// Records per second the budget refills with.
    pub audit_rate: u32,
}

impl Limits {
    /// No bound and no budget: for sessions the observer watches, which cannot refuse a
    /// message, so a refusal would only hide a request from the record (and from `kill`).
    pub const NONE: Limits = Limits {
        max_in_flight: 0,
        audit_burst: 0,
        audit_rate: 0,
    };
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
    pub const DEFAULT_AUDIT_BURST: u32 = 10_000;
    pub const DEFAULT_AUDIT_RATE: u32 = 100;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_in_flight: Limits::DEFAULT_MAX_IN_FLIGHT,
            audit_burst: Limits::DEFAULT_AUDIT_BURST,
            audit_rate: Limits::DEFAULT_AUDIT_RATE,
        }
    }
}

/// A token bucket of audit records: one token per record a peer's message causes.
struct Budget {
    tokens: f64,
    last: Instant,
    /// An alert was raised since the bucket was last full.
    alerted: bool,
}

impl Budget {
    fn new(limits: &Limits) -> Budget {
        Budget {
            tokens: f64::from(limits.audit_burst),
            last: Instant::now(),
            alerted: false,
        }
    }

    fn take(&mut self, limits: &Limits, now: Instant) -> bool {
        if limits.audit_burst == 0 {
            return true;
        }
        let cap = f64::from(limits.audit_burst);
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * f64::from(limits.audit_rate)).min(cap);
        if self.tokens >= cap {
            self.alerted = false;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Pending {
    record: String,
    method: String,
    tool: Option<String>,
    since: Instant,
    id: Box<RawValue>,
}

/// Who is asking and what answers, as the policy sees it: read once per session from the
/// kernel and /proc, never from messages.
#[derive(Debug, Default)]
pub struct Subject {
    pub principal: Option<Principal>,
    /// Processes above the server, nearest first.
    pub ancestry: Option<Vec<Ancestor>>,
    pub host_exe: Option<String>,
    pub server_exe: Option<String>,
    /// The server's working directory, for relative paths in arguments.
    pub cwd: Option<String>,
    /// Directories the server may resolve relative paths against besides its cwd: those on
    /// its command line ([`Subject::roots_from_argv`]), and the roots the host lists.
    pub roots: Vec<String>,
}

impl Session {
    /// The built-in rule: a request that names one of mcp-guard's own files is refused, in
    /// monitor mode too, and raises a `guard_files_targeted` alert.
    fn refuse_own_files(
        &mut self,
        params: Option<&serde_json::Value>,
        method: &str,
        tool: Option<&str>,
        decision: &mut crate::policy::Decision,
    ) {
        let Some(params) = params else { return };
        let s = &self.subject;
        let bases = crate::policy::path::Bases {
            cwd: s.cwd.as_deref(),
            roots: &s.roots,
            follow_links: true,
        };
        let home = s.principal.as_ref().and_then(|p| p.home.as_deref());
        let Some(hit) = self.own_files.named_in(params, bases, home) else {
            return;
        };
        decision.action = Action::Deny;
        decision.would_deny = false;
        decision.rule = crate::own_files::RULE.into();
        decision.message = Some(
            "mcp-guard's own files (policy, keys, pins, audit log) are off limits to guarded tools"
                .into(),
        );
        tracing::warn!(method, "refused a request naming mcp-guard's own files");
        let mut alert = self.alert(Alert::GuardFilesTargeted {
            path: crate::identity::redact_text(&hit),
        });
        alert.method = Some(method.to_string());
        alert.tool = tool.map(crate::identity::redact_text);
        alert.rule = Some(crate::own_files::RULE.into());
        self.alerts.push(alert);
    }
}

impl Session {
    /// The roots the host gave the server (`roots/list`): the server may resolve relative
    /// paths against them, so path rules read relative paths against them too.
    fn learn_roots(&mut self, m: &Message<'_>) {
        #[derive(Deserialize)]
        struct Root {
            uri: String,
        }
        #[derive(Deserialize)]
        struct Roots {
            roots: Vec<Root>,
        }
        let Some(Roots { roots }) = m.result_as() else {
            return;
        };
        for r in roots {
            let Ok(p) = crate::policy::path::resolve(&r.uri, None, None) else {
                continue;
            };
            // Bounded: each root is one more reading of every relative path.
            if self.subject.roots.len() < MAX_ROOTS && !self.subject.roots.contains(&p) {
                self.subject.roots.push(p);
            }
        }
    }
}

/// The most roots a session keeps for reading relative paths.
const MAX_ROOTS: usize = 64;

impl Subject {
    /// The directories on a server's command line (`/srv/data`, `--root=/srv`, `.`), taken
    /// against its working directory: servers such as the reference filesystem server
    /// resolve relative paths against these rather than their cwd. Only existing
    /// directories count, each as spelled and as the kernel resolves it.
    pub fn roots_from_argv(argv: &[String], cwd: Option<&str>) -> Vec<String> {
        let mut roots = Vec::new();
        for arg in argv.iter().skip(1) {
            let arg = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with('-') => value,
                _ => arg.as_str(),
            };
            if arg.is_empty() || arg.starts_with('-') {
                continue;
            }
            let Ok(p) = crate::policy::path::resolve(arg, cwd, None) else {
                continue;
            };
            if !std::fs::metadata(&p).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let real = std::fs::canonicalize(&p)
                .ok()
                .and_then(|r| r.to_str().map(str::to_string));
            for r in std::iter::once(p).chain(real) {
                if !roots.contains(&r) {
                    roots.push(r);
                }
            }
        }
        roots
    }
}

/// One shim session: the server's name, the policy in force, what is in flight.
pub struct Session {
    name: String,
    policy: Arc<Policy>,
    subject: Subject,
    limiter: Limiter,
    ctx: Arc<Context>,
    max_message: usize,
    /// Client requests forwarded to the server and not yet answered.
    pending: HashMap<IdKey, Pending>,
    /// Server requests forwarded to the client and not yet answered.
    server_pending: HashMap<IdKey, Pending>,
    /// The protocol revision in use, once known.
    protocol: Option<Arc<str>>,
    /// Pinned tool definitions and server program (see `crate::pins`).
    pins: Option<crate::pins::Pins>,
    /// Tools found pinned and unchanged: called without looking at the store again.
    approved: std::collections::HashSet<String>,
    /// Tools the last listing named more than once (withheld, refused).
    duplicates: std::collections::HashSet<String>,
    /// The server was pinned for the first time by a listing whose next page is to come.
    first_listing: bool,
    server_pid: Option<i32>,
    /// The server's program, once hashed (None inside: it could not be read).
    program: Option<Option<crate::pins::Program>>,
    program_checked: bool,
    program_alerted: bool,
    /// Alerts raised while judging, committed with the plan.
    alerts: Vec<Record>,
    /// A second policy that can only add denials (a managed shim's own `--policy`).
    restrictions: Option<Arc<Policy>>,
    /// Until then, answers to requests this session never saw are let through: they were
    /// made before a restart of the daemon that judges this session.
    resumed_until: Option<Instant>,
    /// mcp-guard's own files, which no request may name (built in, whatever the policy).
    own_files: crate::own_files::OwnFiles,
    limits: Limits,
    budget: Budget,
    /// Requests refused in the current run of "too many in flight", for the client's
    /// requests (0) and the server's (1); the first of a run is recorded, the rest counted.
    overflow: [u64; 2],
    /// The ids of the requests of the batch being judged that will be in flight if it passes.
    batch_keys: Vec<IdKey>,
    /// Calls held for the person's approval.
    asks: ask::Asks,
    /// The message being judged is an element of a batch.
    in_batch: bool,
    pub counters: Counters,
}

/// The verdict on one message, before batch rules are applied.
struct Judged {
    pass: bool,
    record: Option<Record>,
    durable: bool,
    track: Option<(IdKey, Pending)>,
    /// An error response for the sender, when the message is refused.
    error: Option<Vec<u8>>,
    /// Refusing a request of the sender's: the side that gets `error`.
    reply_to: Direction,
    /// Passing, but as this message instead of the bytes received (a filtered tool list).
    replace: Option<Vec<u8>>,
}

#[derive(Deserialize, Default)]
struct InitializeResult {
    #[serde(default, rename = "serverInfo")]
    server_info: Option<serde_json::Value>,
    #[serde(default, rename = "protocolVersion")]
    protocol_version: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorCode {
    code: i64,
}

/// Keys of the per-request `_meta` that carry claims in the handshake-less revision.
const META_CLAIMS: &[&str] = &[
    "io.modelcontextprotocol/protocolVersion",
    "io.modelcontextprotocol/clientInfo",
];

impl Session {
    pub fn new(
        name: String,
        policy: Arc<Policy>,
        ctx: Arc<Context>,
        max_message: usize,
        subject: Subject,
    ) -> Session {
        let mut own_files = crate::own_files::OwnFiles::standard();
        if let Some(home) = subject.principal.as_ref().and_then(|p| p.home.as_deref()) {
            // The principal's own config and state, when the judge runs as someone else.
            own_files.add_dir(&std::path::Path::new(home).join(".config/mcp-guard"));
            own_files.add_dir(&std::path::Path::new(home).join(".local/state/mcp-guard"));
        }
        Session {
            own_files,
            name,
            policy,
            subject,
            limiter: Limiter::new(),
            ctx,
            max_message,
            pending: HashMap::new(),
            server_pending: HashMap::new(),
            protocol: None,
            pins: None,
            approved: std::collections::HashSet::new(),
            duplicates: std::collections::HashSet::new(),
            first_listing: false,
            server_pid: None,
            program: None,
            program_checked: false,
            program_alerted: false,
            alerts: Vec::new(),
            restrictions: None,
            resumed_until: None,
            limits: Limits::default(),
            budget: Budget::new(&Limits::default()),
            overflow: [0; 2],
            batch_keys: Vec::new(),
            asks: ask::Asks::default(),
            in_batch: false,
            counters: Counters::default(),
        }
    }

    /// mcp-guard's files that no request may name: add the session's own (policy, audit
    /// log, key, pins) to the standard ones.
    pub fn own_files_mut(&mut self) -> &mut crate::own_files::OwnFiles {
        &mut self.own_files
    }

    /// Bounds what the session holds in flight and writes to the audit log.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        self.budget = Budget::new(&limits);
    }

    /// Takes one record from the session's audit budget. When it is used up, the record
    /// is not written (counted instead) and, once until the budget is full again, an
    /// alert says so.
    fn charge(&mut self) -> bool {
        if self.budget.take(&self.limits, Instant::now()) {
            return true;
        }
        self.counters.unrecorded += 1;
        if !self.budget.alerted {
            self.budget.alerted = true;
            tracing::error!(server = %self.name, "the session used up its audit budget; refusing requests until it refills");
            let mut alert = self.alert(Alert::AuditBudgetExceeded {
                audit_burst: self.limits.audit_burst,
                audit_rate: self.limits.audit_rate,
            });
            alert.reason = Some(format!(
                "the session wrote more than its audit budget ({} records, then {} a second); requests are refused and other records dropped until it refills",
                self.limits.audit_burst, self.limits.audit_rate
            ));
            self.alerts.push(alert);
        }
        false
    }

    /// Queues an alert for the next commit, if the session's audit budget has room for it
    /// (a server can cause many: one listing with thousands of new tools).
    fn push_alert(&mut self, alert: Record) {
        if self.charge() {
            self.alerts.push(alert);
        }
    }

    /// Adds a policy whose denials apply on top of the session's policy.
    pub fn set_restrictions(&mut self, policy: Arc<Policy>) {
        self.restrictions = Some(policy);
    }

    /// The session continues one that was judged elsewhere (a daemon restart): for `grace`,
    /// answers to requests made before are passed rather than dropped.
    pub fn resume(&mut self, grace: std::time::Duration) {
        self.resumed_until = Some(Instant::now() + grace);
    }

    pub fn ctx(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn alert(&self, alert: Alert) -> Record {
        Record {
            protocol: self.protocol.clone(),
            ..Record::alert(&self.ctx, &alert)
        }
    }

    fn record(&self, kind: RecordKind) -> Record {
        Record {
            protocol: self.protocol.clone(),
            ..Record::new(kind, &self.ctx)
        }
    }

    fn response_record(&self) -> Record {
        Record {
            protocol: self.protocol.clone(),
            ..Record::response(&self.ctx)
        }
    }

    /// Notes the protocol revision a message states: the one proposed in `initialize`, the
    /// one the server answers with, or the per-request `_meta` one.
    fn learn_protocol(&mut self, stated: Option<&serde_json::Value>) {
        if let Some(v) = stated.and_then(serde_json::Value::as_str)
            && self.protocol.as_deref() != Some(v)
        {
            self.protocol = Some(v.into());
        }
    }

    /// The server now runs another program (a launcher exec'd it).
    pub fn set_server_exe(&mut self, exe: Option<String>) {
        self.subject.server_exe = exe;
    }

    /// Pins tool definitions in this store.
    pub fn set_pins(&mut self, pins: crate::pins::Pins) {
        self.pins = Some(pins);
    }

    /// The server's process, whose program is pinned with its tools.
    pub fn set_server_pid(&mut self, pid: i32) {
        self.server_pid = (pid > 0).then_some(pid);
    }

    /// Puts a newly loaded policy in force for the requests that follow.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
    }

    /// Replaces the session context (the server's identity changed).
    pub fn set_ctx(&mut self, ctx: Arc<Context>) {
        self.ctx = ctx;
    }

    /// Judges a read's worth of frames travelling `dir`, taken from `data`.
    pub fn judge(
        &mut self,
        dir: Direction,
        data: &[u8],
        frames: impl IntoIterator<Item = Frame>,
    ) -> Plan {
        let mut plan = Plan::default();
        self.expire(Instant::now(), &mut plan.acts);
        for frame in frames {
            match frame {
                Frame::TooLong { prefix, seen } => {
                    let text = String::from_utf8_lossy(&prefix);
                    let id = jsonrpc::sniff_id(&text);
                    self.malformed(
                        dir,
                        id,
                        Malformed::TooLong {
                            max: self.max_message,
                        },
                        seen,
                        &mut plan,
                    );
                }
                Frame::Line { msg, raw } => self.line(dir, &data[msg], raw, &mut plan),
            }
        }
        plan.commit.append(&mut self.alerts);
        plan.acts.append(&mut self.asks.queued);
        plan
    }

    /// When a held call times out: the caller judges an empty read by then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.asks.deadline()
    }

    fn line(&mut self, dir: Direction, msg: &[u8], raw: Range<usize>, plan: &mut Plan) {
        if msg.iter().all(u8::is_ascii_whitespace) {
            // Blank lines carry nothing; some peers choke on them, so they are dropped.
            return;
        }
        match jsonrpc::parse(msg) {
            Err(m) => {
                let text = String::from_utf8_lossy(&msg[..msg.len().min(crate::frame::PREFIX_LEN)]);
                let id = jsonrpc::sniff_id(&text);
                self.malformed(dir, id, m, msg.len(), plan);
            }
            Ok(Parsed::Single(m)) => {
                let mut j = self.message(dir, &m, msg.len());
                self.batch_keys.clear();
                if j.pass {
                    let replace = j.replace.take();
                    self.settle(j, plan);
                    match replace {
                        Some(mut line) => {
                            line.push(b'\n');
                            plan.acts.push(reply(dir, line));
                        }
                        None => plan.acts.push(Act::Forward(raw)),
                    }
                } else {
                    let (to, error) = (j.reply_to, j.error.clone());
                    self.settle(j, plan);
                    if let Some(mut e) = error {
                        e.push(b'\n');
                        plan.acts.push(reply(to, e));
                    }
                }
            }
            Ok(Parsed::Batch(items)) => self.batch(dir, items, msg.len(), raw, plan),
        }
    }

    /// A batch is forwarded whole or not at all: one refused element refuses all of it.
    fn batch(
        &mut self,
        dir: Direction,
        items: Vec<Result<Message<'_>, (Option<&RawValue>, Malformed)>>,
        bytes: usize,
        raw: Range<usize>,
        plan: &mut Plan,
    ) {
        self.batch_keys.clear();
        // The host's answers to the guard's own questions are taken out first: they are
        // not the server's business, and must not refuse the rest of their batch.
        let mut items = items;
        let mut rebuild = false;
        if dir == Direction::ToServer && !self.asks.is_empty() {
            let (ours, rest): (Vec<_>, Vec<_>) = items
                .into_iter()
                .partition(|it| matches!(it, Ok(m) if self.asks.answers(m)));
            rebuild = !ours.is_empty();
            for m in ours.iter().flatten() {
                if let Some(j) = self.answer(m) {
                    let (to, error) = (j.reply_to, j.error.clone());
                    self.settle(j, plan);
                    if let Some(mut e) = error {
                        e.push(b'\n');
                        plan.acts.push(reply(to, e));
                    }
                }
            }
            items = rest;
            if items.is_empty() {
                return;
            }
        }
        self.in_batch = true;
        let judged: Vec<Judged> = items
            .iter()
            .map(|item| match item {
                Ok(m) => self.message(dir, m, bytes),
                Err((id, m)) => self.refusal(dir, *id, m, bytes),
            })
            .collect();
        self.in_batch = false;
        self.batch_keys.clear();
        if judged.iter().all(|j| j.pass) {
            // Forwarded as received, unless an element was changed (redacted, filtered):
            // then the batch is rebuilt from the elements, changed ones in their new form.
            let mut parts: Vec<Vec<u8>> = Vec::new();
            let changed = rebuild || judged.iter().any(|j| j.replace.is_some());
            for (item, mut j) in items.iter().zip(judged) {
                if changed {
                    let part = j
                        .replace
                        .take()
                        .or_else(|| item.as_ref().ok().map(|m| m.raw.as_bytes().to_vec()));
                    parts.extend(part);
                }
                self.settle(j, plan);
            }
            if changed {
                let mut out =
                    Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
                out.push(b'[');
                out.extend(parts.join(&b","[..]));
                out.extend_from_slice(b"]\n");
                plan.acts.push(reply(dir, out));
            } else {
                plan.acts.push(Act::Forward(raw));
            }
            return;
        }
        // Errors for the sender's requests go back as one batch; stand-ins for answers the
        // receiver was waiting on (a response in the refused batch, or an unusable one)
        // go forward one by one, so no request is left hanging.
        let mut to_sender = Vec::new();
        let mut to_receiver = Vec::new();
        for (item, mut j) in items.iter().zip(judged) {
            if j.pass {
                match item {
                    Ok(m) if m.kind == Kind::Request => {
                        let id = m.id.unwrap_or(jsonrpc::null_id());
                        j.error = Some(error_line(
                            id,
                            code::BATCH_REFUSED,
                            "refused: another message in its batch was refused",
                            None,
                        ));
                    }
                    Ok(m) if m.kind == Kind::Response => {
                        let id = m.id.unwrap_or(jsonrpc::null_id());
                        let message = "the answer came in a batch that was refused";
                        to_receiver.push(error_line(id, code::BATCH_REFUSED, message, None));
                    }
                    _ => {}
                }
                if let Some(r) = j.record.as_mut() {
                    r.decision = Some(Decision::Deny);
                    r.reason = Some("batch refused".into());
                    r.outcome = None;
                }
                j.track = None;
                j.pass = false;
            }
            if let Some(e) = j.error.take() {
                if j.reply_to == dir {
                    to_receiver.push(e)
                } else {
                    to_sender.push(e)
                }
            }
            self.settle(j, plan);
        }
        if !to_sender.is_empty() {
            let mut out =
                Vec::with_capacity(to_sender.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
            out.push(b'[');
            out.extend(to_sender.join(&b","[..]));
            out.extend_from_slice(b"]\n");
            plan.acts.push(reply(dir.reverse(), out));
        }
        for mut e in to_receiver {
            e.push(b'\n');
            plan.acts.push(reply(dir, e));
        }
    }

    /// Records a judged message and remembers what it leaves in flight.
    fn settle(&mut self, j: Judged, plan: &mut Plan) {
        if let Some((key, p)) = j.track {
            // A request is answered where it came from: refusals of client requests go to
            // the client, so `reply_to` tells which table tracks it.
            let table = match j.reply_to {
                Direction::ToClient => &mut self.pending,
                Direction::ToServer => &mut self.server_pending,
            };
            table.insert(key, p);
        }
        if let Some(r) = j.record {
            if j.durable {
                plan.commit.push(r)
            } else {
                plan.append.push(r)
            }
        }
    }

    fn message(&mut self, dir: Direction, m: &Message<'_>, bytes: usize) -> Judged {
        let mut j = match m.kind {
            Kind::Notification => {
                self.counters.notifications += 1;
                if dir == Direction::ToServer
                    && !self.asks.is_empty()
                    && m.method.as_deref() == Some("notifications/cancelled")
                    && self.withdraw(m).is_some()
                {
                    // The server never saw the withdrawn request: nothing to tell it.
                    return Judged {
                        pass: false,
                        ..Judged::pass(dir)
                    };
                }
                Judged::pass(dir)
            }
            Kind::Request => self.request(dir, m, bytes),
            Kind::Response => self.response(dir, m, bytes),
        };
        if dir == Direction::ToClient && j.pass {
            self.redact(m, &mut j);
        }
        j
    }

    /// Secrets in anything the server sends the host (a result, an error's message and
    /// data, a notification, a request of its own) are replaced before it is forwarded;
    /// the message is then rebuilt (its id kept as sent), else forwarded as received.
    fn redact(&mut self, m: &Message<'_>, j: &mut Judged) {
        let limits = self.policy.responses();
        let text = match &j.replace {
            Some(line) => std::str::from_utf8(line).unwrap_or_default(),
            None => m.raw,
        };
        if !limits.may_redact(text) {
            return;
        }
        let Ok(serde_json::Value::Object(mut body)) =
            serde_json::from_str::<serde_json::Value>(text)
        else {
            return;
        };
        body.remove("id");
        let mut body = serde_json::Value::Object(body);
        let n = limits.redact(&mut body);
        if n == 0 {
            return;
        }
        self.counters.redactions += u64::from(n);
        if let Some(o) = j.record.as_mut().and_then(|r| r.outcome.as_mut()) {
            o.redactions += n;
        } else if let Some(r) = j.record.as_mut() {
            r.redactions = Some(n);
        }
        let rest = body.to_string();
        j.replace = Some(match m.id {
            // `{` + `"id":<as sent>` + the rest of the object, so the id stays what was sent.
            Some(id) if rest.len() > 2 => {
                format!("{{\"id\":{},{}", id.get(), &rest[1..]).into_bytes()
            }
            Some(id) => format!("{{\"id\":{}}}", id.get()).into_bytes(),
            None => rest.into_bytes(),
        });
    }

    /// Which table tracks the requests travelling `dir` (and which run of overflow).
    fn in_flight(&mut self, dir: Direction) -> (&mut HashMap<IdKey, Pending>, usize) {
        match dir {
            Direction::ToServer => (&mut self.pending, 0),
            Direction::ToClient => (&mut self.server_pending, 1),
        }
    }

    /// The bounds a request meets before the policy sees it: its id is not that of a
    /// request in flight the same way (so no answer can be matched to the wrong request),
    /// there is room in flight, and the session's audit budget has room for its record.
    fn admit(
        &mut self,
        dir: Direction,
        m: &Message<'_>,
        id: &RawValue,
        key: &IdKey,
        bytes: usize,
    ) -> Option<Judged> {
        let batch = self.batch_keys.len();
        let max = self.limits.max_in_flight;
        // Calls held for approval are in flight too: not reusable ids, and counted.
        let (held, holding) = match dir {
            Direction::ToServer => (self.asks.holds(key), self.asks.len()),
            Direction::ToClient => (false, 0),
        };
        let (table, run) = self.in_flight(dir);
        let live = table.contains_key(key) || held;
        let full = max > 0 && table.len() + holding + batch >= max;
        let refuse = |s: &mut Session, code: i64, rule: &str, why: String, recorded: bool| {
            s.counters.denied += 1;
            let record = (recorded && s.charge()).then(|| {
                let mut rec = s.record(dir.request_kind());
                rec.direction = Some(dir.flow());
                rec.decision = Some(Decision::Deny);
                rec.rule = Some(rule.to_string());
                rec.reason = Some(why.clone());
                rec.method = m.method.as_deref().map(crate::identity::redact_text);
                rec.request_id = Some(recorded_id(id));
                rec.bytes = Some(bytes);
                rec
            });
            let error = error_line(id, code, &format!("refused by mcp-guard: {why}"), None);
            Judged {
                pass: false,
                record,
                durable: true,
                track: None,
                error: Some(error),
                reply_to: dir.reverse(),
                replace: None,
            }
        };
        // The guard's own questions: a server's request with an id of theirs could take
        // the person's answer meant for one.
        let ours = dir == Direction::ToClient
            && matches!(key, IdKey::Str(s) if s.starts_with(ask::ASK_ID_PREFIX));
        if ours {
            let why = "a server's request may not use the id prefix of mcp-guard's own questions"
                .to_string();
            return Some(refuse(self, code::INVALID_REQUEST, "guard-id", why, true));
        }
        if live || self.batch_keys.contains(key) {
            tracing::warn!(
                direction = dir.name(),
                "refused a request whose id is in flight already"
            );
            let why = "a request with an equal id is still in flight".to_string();
            return Some(refuse(
                self,
                code::INVALID_REQUEST,
                "id-in-flight",
                why,
                true,
            ));
        }
        if full {
            self.overflow[run] += 1;
            self.counters.refused_in_flight += 1;
            let first = self.overflow[run] == 1;
            if first {
                tracing::warn!(
                    direction = dir.name(),
                    max,
                    "too many requests in flight; refusing until some are answered"
                );
            }
            let why =
                format!("{max} requests are in flight already; refused until some are answered");
            return Some(refuse(
                self,
                code::TOO_MANY_IN_FLIGHT,
                "in-flight-limit",
                why,
                first,
            ));
        }
        if !self.charge() {
            self.counters.denied += 1;
            let why = "refused by mcp-guard: the session used up its audit budget; try again later";
            let error = error_line(id, code::AUDIT_BUDGET, why, None);
            return Some(Judged {
                pass: false,
                record: None,
                durable: true,
                track: None,
                error: Some(error),
                reply_to: dir.reverse(),
                replace: None,
            });
        }
        None
    }

    /// Ends a run of refusals for too many in flight once there is room again: one alert
    /// with how many were refused (the first was recorded on its own).
    fn end_overflow(&mut self, dir: Direction) {
        let max = self.limits.max_in_flight;
        let (table, run) = self.in_flight(dir);
        let len = table.len();
        if self.overflow[run] == 0 || (max > 0 && len >= max) {
            return;
        }
        let refused = std::mem::take(&mut self.overflow[run]);
        let mut alert = self.alert(Alert::InFlightLimit {
            refused,
            max_in_flight: max,
        });
        alert.direction = Some(dir.flow());
        alert.reason = Some(format!(
            "{refused} requests were refused while {max} were in flight"
        ));
        self.push_alert(alert);
    }

    fn request(&mut self, dir: Direction, m: &Message<'_>, bytes: usize) -> Judged {
        self.counters.requests += 1;
        let key = IdKey::of(m.id.unwrap_or(jsonrpc::null_id()));
        if let Some(refused) = self.admit(dir, m, m.id.unwrap_or(jsonrpc::null_id()), &key, bytes) {
            return refused;
        }
        let method = m.method.as_deref().unwrap_or_default();
        let params = m.params_value.as_ref();
        let field = |k: &str| params.and_then(|p| p.get(k));
        let (tool, arguments) = crate::policy::call_parts(method, params);
        if method == "initialize" {
            self.learn_protocol(field("protocolVersion"));
            if dir == Direction::ToServer {
                self.asks.supported = ask::can_ask(field("capabilities"));
            }
        }
        self.learn_protocol(field("_meta").and_then(|m| m.get(META_CLAIMS[0])));
        let s = &self.subject;
        let query = Query {
            server: &self.name,
            server_exe: s.server_exe.as_deref(),
            method,
            tool,
            principal: s.principal.as_ref(),
            host_exe: s.host_exe.as_deref(),
            ancestry: s.ancestry.as_deref(),
            arguments,
            cwd: s.cwd.as_deref(),
            roots: &s.roots,
            follow_links: true,
        };
        let mut decision = self
            .policy
            .decide_limited(&query, &self.limiter, Instant::now());
        if let Some(extra) = &self.restrictions {
            // The shim's own policy may deny what the system policy allows, never the reverse.
            let mine = extra.decide_limited(&query, &self.limiter, Instant::now());
            let denies = mine.action == Action::Deny || mine.would_deny;
            if mine.action == Action::Ask
                && decision.action == Action::Allow
                && !decision.would_deny
            {
                // Asking is stricter than allowing: the shim's own ask rule holds the call.
                decision.rule = format!("user:{}", mine.rule);
                decision.message = mine.message.clone();
                decision.action = Action::Ask;
                decision.ask = mine.ask;
            }
            if denies && decision.action != Action::Deny && !decision.would_deny {
                decision.rule = format!("user:{}", mine.rule);
                decision.message = mine.message;
                if self.policy.mode() == Mode::Monitor {
                    decision.would_deny = true;
                } else {
                    decision.action = Action::Deny;
                }
            }
        }
        if let Some(t) = tool.filter(|_| method == "tools/call" && dir == Direction::ToServer)
            && let Some((rule, message)) = self.pin_block(t)
        {
            decision.rule = rule.into();
            decision.message = Some(message.into());
            if self.policy.mode() == Mode::Monitor {
                decision.would_deny = true;
            } else {
                decision.action = Action::Deny;
            }
        }
        if dir == Direction::ToServer {
            self.refuse_own_files(params, method, tool, &mut decision);
        }
        let id = m.id.unwrap_or(jsonrpc::null_id());
        let mut rec = self.record(dir.request_kind());
        rec.direction = Some(dir.flow());
        rec.decision = Some(match decision.action {
            Action::Allow => Decision::Allow,
            Action::Deny => Decision::Deny,
            Action::Ask => Decision::Ask,
        });
        rec.rule = Some(decision.rule.clone());
        rec.would_deny = decision.would_deny.then_some(true);
        rec.audit_rule = decision.audit.clone();
        rec.rate_limited = decision.rate_limited.then_some(true);
        if decision.would_deny {
            rec.reason = decision.message.clone();
        }
        if decision.would_ask {
            // Monitor mode cannot hold a call; nobody would have been asked.
            rec.would_deny = Some(true);
            rec.reason = Some(format!(
                "monitor mode: rule `{}` would hold this call for the approval of the person at the host",
                decision.rule
            ));
        }
        rec.method = Some(method.to_string());
        rec.tool = tool.map(crate::identity::redact_text);
        rec.request_id = Some(recorded_id(id));
        rec.args_sha256 = field("arguments").map(canonical_sha256);
        if decision.record_arguments {
            rec.args = arguments.map(crate::identity::redact_json);
        }
        rec.bytes = Some(bytes);
        rec.claims = params.and_then(claims);
        let reply_to = dir.reverse();
        match decision.action {
            Action::Allow => {
                let pending = Pending {
                    record: rec.id.clone(),
                    method: method.to_string(),
                    tool: tool.map(crate::identity::redact_text),
                    since: Instant::now(),
                    id: id.to_owned(),
                };
                self.batch_keys.push(key.clone());
                Judged {
                    pass: true,
                    record: Some(rec),
                    durable: true,
                    track: Some((key, pending)),
                    error: None,
                    reply_to,
                    replace: None,
                }
            }
            // Only a host can be asked; a server's request to the host has nobody to ask.
            Action::Ask if dir == Direction::ToServer => {
                self.ask(m, key, &decision, rec, arguments)
            }
            Action::Deny | Action::Ask => {
                self.counters.denied += 1;
                let message = match &decision.message {
                    Some(msg) => format!("denied by mcp-guard rule `{}`: {msg}", decision.rule),
                    None => format!("denied by mcp-guard rule `{}`", decision.rule),
                };
                let data =
                    serde_json::json!({ "mcp_guard": { "rule": decision.rule, "record": rec.id } });
                rec.reason = decision.message;
                Judged {
                    pass: false,
                    record: Some(rec),
                    durable: true,
                    track: None,
                    error: Some(error_line(id, code::DENIED, &message, Some(data))),
                    reply_to,
                    replace: None,
                }
            }
        }
    }

    fn response(&mut self, dir: Direction, m: &Message<'_>, bytes: usize) -> Judged {
        self.counters.responses += 1;
        if dir == Direction::ToServer
            && let Some(j) = self.answer(m)
        {
            return j;
        }
        let id = m.id.unwrap_or(jsonrpc::null_id());
        let mut rec = self.response_record();
        rec.direction = Some(dir.flow());
        rec.request_id = Some(recorded_id(id));
        rec.bytes = Some(bytes);
        let table = match dir {
            Direction::ToClient => &mut self.pending,
            Direction::ToServer => &mut self.server_pending,
        };
        let resumed = self.resumed_until.is_some_and(|t| Instant::now() < t);
        let found = table.remove(&IdKey::of(id));
        if found.is_some() {
            self.end_overflow(dir.reverse());
        } else if !self.charge() {
            // An answer to nothing, past the budget: dropped (or passed, while resuming) unrecorded.
            let pass = resumed && dir == Direction::ToClient;
            return Judged {
                pass,
                record: None,
                durable: false,
                track: None,
                error: None,
                reply_to: dir,
                replace: None,
            };
        }
        if found.is_none() && resumed && dir == Direction::ToClient {
            rec.decision = Some(Decision::Allow);
            rec.reason = Some("answer to a request made before the guard daemon restarted".into());
            return Judged {
                pass: true,
                record: Some(rec),
                durable: false,
                track: None,
                error: None,
                reply_to: dir,
                replace: None,
            };
        }
        let Some(p) = found else {
            // Nobody asked: forwarding it would let one side inject answers into the other.
            rec.decision = Some(Decision::Deny);
            rec.reason = Some("response to no request in flight".into());
            tracing::warn!(
                direction = dir.name(),
                "dropped a response to no request in flight"
            );
            return Judged {
                pass: false,
                record: Some(rec),
                durable: false,
                track: None,
                error: None,
                reply_to: dir,
                replace: None,
            };
        };
        let error_code = m.error_code();
        rec.decision = Some(Decision::Allow);
        rec.method = Some(p.method.clone());
        rec.tool = p.tool;
        rec.links = Some(p.record);
        rec.outcome = Some(Outcome {
            error: m.is_error(),
            error_code,
            bytes,
            redactions: 0,
            latency_us: p.since.elapsed().as_micros() as u64,
        });
        if p.method == "initialize" {
            let init: InitializeResult = m.result_as().unwrap_or_default();
            self.learn_protocol(init.protocol_version.as_ref());
            rec.protocol = self.protocol.clone();
            let mut c = serde_json::Map::new();
            if let Some(v) = init.server_info {
                c.insert("serverInfo".into(), v);
            }
            if let Some(v) = init.protocol_version {
                c.insert("protocolVersion".into(), v);
            }
            rec.claims = (!c.is_empty()).then_some(serde_json::Value::Object(c));
        }
        if p.method == "roots/list" && dir == Direction::ToServer {
            self.learn_roots(m);
        }
        let mut replace = None;
        if dir == Direction::ToClient {
            let limits = self.policy.responses();
            // The limit is for what tools and resources return, not for the protocol's own answers.
            let content = matches!(
                p.method.as_str(),
                "tools/call" | "resources/read" | "prompts/get"
            );
            if content && limits.max_bytes > 0 && bytes as u64 > limits.max_bytes {
                // Fail closed: the client gets an error in place of the oversized answer.
                let why = format!(
                    "the response ({bytes} bytes) is larger than the policy allows ({} bytes)",
                    limits.max_bytes
                );
                rec.decision = Some(Decision::Deny);
                rec.reason = Some(why.clone());
                let error = error_line(id, code::RESPONSE_TOO_LARGE, &why, None);
                return Judged {
                    pass: false,
                    record: Some(rec),
                    durable: false,
                    track: None,
                    error: Some(error),
                    reply_to: dir,
                    replace: None,
                };
            }
            let filter = p.method == "tools/list";
            if filter
                && let Some(mut result) = m
                    .result
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok())
            {
                let mut hidden = if filter && !m.is_error() {
                    self.pin_tools(&mut result)
                } else {
                    Vec::new()
                };
                if filter && !m.is_error() {
                    hidden.extend(self.hide_tools(&mut result));
                }
                if !hidden.is_empty() {
                    rec.detail = Some(serde_json::json!({ "hidden_tools": hidden }));
                    replace = response_line(id, &result);
                }
            }
        }
        Judged {
            pass: true,
            record: Some(rec),
            durable: false,
            track: None,
            error: None,
            reply_to: dir.reverse(),
            replace,
        }
    }

    /// The program the server runs, hashed once per session (after it has spoken, so a
    /// launcher has exec'd what it launches), and checked against the server's pin.
    fn program(&mut self) -> Option<crate::pins::Program> {
        let pins = self.pins.clone()?;
        if self.program.is_none() {
            let program = self.server_pid.map(|pid| pins.program_of(pid));
            self.program = Some(program);
        }
        self.program.clone().flatten()
    }

    /// Records, once per session, that the server's program differs from its pin.
    fn program_changed(&mut self, pinned: &crate::pins::Program, seen: &crate::pins::Program) {
        if std::mem::replace(&mut self.program_alerted, true) {
            return;
        }
        tracing::warn!(server = %self.name, "the server's program changed since it was pinned; its tools are withheld");
        let mut alert = self.alert(Alert::ServerBinaryChanged {
            pinned: pinned.clone(),
            seen: seen.clone(),
        });
        alert.reason = Some("the server's program changed since it was pinned".into());
        self.push_alert(alert);
    }

    /// Why a call to `tool` is held back by the pins, if it is: a duplicated name in the
    /// last listing, or what the store says (looked up each time, so an approval counts at
    /// once). Tools the last listing showed clean are not looked up again.
    fn pin_block(&mut self, tool: &str) -> Option<(&'static str, &'static str)> {
        if self.duplicates.contains(tool) {
            return Some((
                "duplicate-tool-name",
                "the server listed more than one tool with this name",
            ));
        }
        if self.approved.contains(tool) {
            return None;
        }
        let pins = self.pins.clone()?;
        if !self.program_checked
            && let Some(program) = self.program()
        {
            self.program_checked = true;
            if let Ok(Some((pinned, seen))) = pins.check_program(&self.name, &program) {
                self.program_changed(&pinned, &seen);
            }
        }
        match pins.blocked(&self.name, tool) {
            Some(b) => Some((b.rule(), b.message())),
            None => {
                self.approved.insert(tool.to_string());
                None
            }
        }
    }

    /// Checks a `tools/list` page against the pins and the server's program, and removes
    /// from it every tool that is not trusted: changed since pinned, added since the first
    /// listing, named twice in the page, without a name, or all of them when the server's
    /// program changed. Raises an alert for each; returns the names withheld. If the pin
    /// store cannot be used, every tool is withheld (fail closed) and that is the alert.
    fn pin_tools(&mut self, result: &mut serde_json::Value) -> Vec<String> {
        use std::collections::HashSet;
        let Some(pins) = self.pins.clone() else {
            return Vec::new();
        };
        let more = result.get("nextCursor").is_some_and(|c| !c.is_null());
        let program = self.program();
        let Some(tools) = result
            .get_mut("tools")
            .and_then(serde_json::Value::as_array_mut)
        else {
            return Vec::new();
        };
        let name_of = |t: &serde_json::Value| {
            t.get("name")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        let mut count: HashMap<String, usize> = HashMap::new();
        for t in tools.iter() {
            if let Some(n) = name_of(t) {
                *count.entry(n).or_default() += 1;
            }
        }
        let dups: HashSet<String> = count
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, _)| n.clone())
            .collect();
        let seen: Vec<crate::pins::Seen> = tools
            .iter()
            .filter_map(|t| {
                name_of(t)
                    .filter(|n| !dups.contains(n))
                    .map(|n| crate::pins::Seen::of(&n, t))
            })
            .collect();
        let checked = match pins.check(&self.name, program.as_ref(), &seen, self.first_listing) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, path = %pins.path().display(), "tool pins unavailable; withholding the tool list");
                let mut alert = self.alert(Alert::PinsUnavailable {});
                alert.reason = Some(crate::identity::redact_text(&e.to_string()));
                self.push_alert(alert);
                let names: Vec<String> = tools.iter().filter_map(name_of).collect();
                for n in &names {
                    self.approved.remove(n);
                }
                tools.clear();
                return names
                    .iter()
                    .map(|n| crate::identity::redact_text(n))
                    .collect();
            }
        };
        self.program_checked = true;
        self.first_listing = checked.first && more;
        if let Some((pinned, seen)) = &checked.program {
            self.program_changed(pinned, seen);
        }
        let mut withhold: HashSet<String> = HashSet::new();
        for c in &checked.changed {
            tracing::warn!(tool = %c.tool, server = %self.name, "tool definition changed since it was pinned; withheld");
            let mut alert = self.alert(Alert::ToolDefinitionChanged {
                pinned_sha256: c.pinned.clone(),
                seen_sha256: c.seen.clone(),
            });
            alert.tool = Some(crate::identity::redact_text(&c.tool));
            alert.reason = Some("the tool's definition changed since it was pinned".into());
            self.push_alert(alert);
            withhold.insert(c.tool.clone());
        }
        for (name, sha) in &checked.added {
            tracing::warn!(tool = %name, server = %self.name, "a tool was added since the server was pinned; withheld");
            let skeleton = crate::pins::skeleton(name);
            let resembles = seen
                .iter()
                .map(|s| &s.name)
                .filter(|n| *n != name && !checked.added.iter().any(|(a, _)| a == *n))
                .find(|n| crate::pins::skeleton(n) == skeleton);
            let mut alert = self.alert(Alert::ToolAdded {
                seen_sha256: sha.clone(),
                resembles: resembles.map(|r| crate::identity::redact_text(r)),
            });
            alert.tool = Some(crate::identity::redact_text(name));
            alert.reason = Some(match resembles {
                Some(r) => format!(
                    "a tool was added since the server was pinned, with a name like `{}`",
                    crate::identity::redact_text(r)
                ),
                None => "a tool was added since the server was pinned".into(),
            });
            self.push_alert(alert);
            withhold.insert(name.clone());
        }
        for name in &dups {
            tracing::warn!(tool = %name, server = %self.name, "a tool listing names a tool more than once; withheld");
            let mut alert = self.alert(Alert::DuplicateToolName { count: count[name] });
            alert.tool = Some(crate::identity::redact_text(name));
            alert.reason = Some("the listing names this tool more than once".into());
            self.push_alert(alert);
            withhold.insert(name.clone());
        }
        let program_changed = checked.program.is_some();
        let mut hidden = Vec::new();
        tools.retain(|t| {
            let keep = match name_of(t) {
                Some(n) => !program_changed && !withhold.contains(&n),
                // A tool without a name cannot be pinned or called: not offered.
                None => false,
            };
            if !keep {
                hidden.push(crate::identity::redact_text(
                    &name_of(t).unwrap_or_default(),
                ));
            }
            keep
        });
        for s in &seen {
            if program_changed || withhold.contains(&s.name) {
                self.approved.remove(&s.name);
            } else {
                self.approved.insert(s.name.clone());
                self.duplicates.remove(&s.name);
            }
        }
        for d in dups {
            self.approved.remove(&d);
            self.duplicates.insert(d);
        }
        hidden
    }

    /// Removes from a `tools/list` result the tools this principal can never call (so the
    /// model is not offered them) and returns their names. Each page is filtered on its own;
    /// `nextCursor` and every other field stay as the server sent them.
    fn hide_tools(&self, result: &mut serde_json::Value) -> Vec<String> {
        let Some(tools) = result
            .get_mut("tools")
            .and_then(serde_json::Value::as_array_mut)
        else {
            return Vec::new();
        };
        let s = &self.subject;
        let mut hidden = Vec::new();
        tools.retain(|t| {
            let Some(name) = t.get("name").and_then(serde_json::Value::as_str) else {
                return true;
            };
            let query = Query {
                server: &self.name,
                server_exe: s.server_exe.as_deref(),
                method: "tools/call",
                tool: Some(name),
                principal: s.principal.as_ref(),
                host_exe: s.host_exe.as_deref(),
                ancestry: s.ancestry.as_deref(),
                arguments: None,
                cwd: s.cwd.as_deref(),
                roots: &s.roots,
                follow_links: true,
            };
            let never = self.policy.never_allows(&query);
            if never {
                hidden.push(crate::identity::redact_text(name));
            }
            !never
        });
        hidden
    }

    fn refusal(
        &mut self,
        dir: Direction,
        id: Option<&RawValue>,
        m: &Malformed,
        bytes: usize,
    ) -> Judged {
        self.counters.malformed += 1;
        let mut rec = self.record(RecordKind::Malformed);
        rec.direction = Some(dir.flow());
        rec.decision = Some(Decision::Deny);
        rec.rule = Some(m.kind().to_string());
        // Parser messages can quote the input; nothing credential-like reaches a record.
        rec.reason = Some(crate::identity::redact_text(&m.to_string()));
        rec.request_id = id.map(recorded_id);
        rec.bytes = Some(bytes);
        let (reply_to, error) = match dir {
            // The client sent it: it gets the error (with `null` when the id is unknown).
            Direction::ToServer => (
                Direction::ToClient,
                Some(error_line(
                    id.unwrap_or(jsonrpc::null_id()),
                    m.code(),
                    &m.to_string(),
                    None,
                )),
            ),
            // The server sent it: if it answers a request in flight, the client gets an
            // error for that request instead; nothing is sent to the server.
            Direction::ToClient => {
                let answered = id.and_then(|id| self.pending.remove(&IdKey::of(id)));
                if answered.is_some() {
                    self.end_overflow(Direction::ToServer);
                }
                let error = answered.map(|p| {
                    rec.links = Some(p.record);
                    let message = format!("the server sent an unusable response: {m}");
                    error_line(&p.id, code::SERVER_FAILED, &message, None)
                });
                (Direction::ToClient, error)
            }
        };
        let record = self.charge().then_some(rec);
        Judged {
            pass: false,
            record,
            durable: true,
            track: None,
            error,
            reply_to,
            replace: None,
        }
    }

    fn malformed(
        &mut self,
        dir: Direction,
        id: Option<&RawValue>,
        m: Malformed,
        bytes: usize,
        plan: &mut Plan,
    ) {
        tracing::warn!(
            direction = dir.name(),
            fault = m.kind(),
            bytes,
            "refused a malformed message"
        );
        let j = self.refusal(dir, id, &m, bytes);
        let (to, error) = (j.reply_to, j.error.clone());
        self.settle(j, plan);
        if let Some(mut e) = error {
            e.push(b'\n');
            plan.acts.push(reply(to, e));
        }
    }

    /// When the records of a plan could not be committed: refuse, with `code`, every
    /// request among `frames`, forget it was in flight, and forward the rest (notifications
    /// and responses decide nothing).
    pub fn refuse_unrecorded(
        &mut self,
        dir: Direction,
        data: &[u8],
        frames: &[Frame],
        code: i64,
        why: &str,
    ) -> Vec<Act> {
        let message = format!("not forwarded: the audit record could not be written ({why})");
        let mut acts = Vec::new();
        for frame in frames {
            let Frame::Line { msg, raw } = frame else {
                continue;
            };
            let requests: Vec<&RawValue> = match jsonrpc::parse(&data[msg.clone()]) {
                Ok(Parsed::Single(m)) => {
                    m.id.filter(|_| m.kind == Kind::Request)
                        .into_iter()
                        .collect()
                }
                Ok(Parsed::Batch(items)) => items
                    .iter()
                    .filter_map(|i| {
                        i.as_ref()
                            .ok()
                            .filter(|m| m.kind == Kind::Request)
                            .and_then(|m| m.id)
                    })
                    .collect(),
                // Malformed input was refused already; its error is lost with the record.
                Err(_) => continue,
            };
            if requests.is_empty() {
                acts.push(Act::Forward(raw.clone()));
                continue;
            }
            let table = match dir {
                Direction::ToServer => &mut self.pending,
                Direction::ToClient => &mut self.server_pending,
            };
            let mut lines = Vec::new();
            for id in requests {
                table.remove(&IdKey::of(id));
                lines.push(error_line(id, code, &message, None));
            }
            let mut out = if lines.len() == 1 {
                lines.remove(0)
            } else {
                [b"[".to_vec(), lines.join(&b","[..]), b"]".to_vec()].concat()
            };
            out.push(b'\n');
            acts.push(reply(dir.reverse(), out));
        }
        acts
    }

    /// The records of calls still held for approval when their session is lost (a managed
    /// shim gone): refused, as nobody can carry the answer.
    pub fn drop_held(&mut self, why: &str) -> Vec<Record> {
        let mut records = Vec::new();
        self.abandon_asks(why, &mut Vec::new(), &mut records);
        records
    }

    /// Error responses for every client request still in flight, and their records.
    pub fn abandon(&mut self, why: &str) -> (Vec<u8>, Vec<Record>) {
        let mut out = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        self.server_pending.clear();
        self.end_overflow(Direction::ToServer);
        self.end_overflow(Direction::ToClient);
        let mut records = std::mem::take(&mut self.alerts);
        self.abandon_asks(why, &mut out, &mut records);
        for (_, p) in pending {
            out.extend(error_line(&p.id, code::SERVER_FAILED, why, None));
            out.push(b'\n');
            let mut rec = self.response_record();
            rec.direction = Some(Direction::ToClient.flow());
            rec.decision = Some(Decision::Deny);
            rec.reason = Some(why.to_string());
            rec.method = Some(p.method);
            rec.tool = p.tool;
            rec.request_id = Some(recorded_id(&p.id));
            rec.links = Some(p.record);
            records.push(rec);
        }
        (out, records)
    }
}

impl Judged {
    fn pass(dir: Direction) -> Judged {
        Judged {
            pass: true,
            record: None,
            durable: false,
            track: None,
            error: None,
            reply_to: dir.reverse(),
            replace: None,
        }
    }
}

impl Direction {
    fn reverse(self) -> Direction {
        match self {
            Direction::ToServer => Direction::ToClient,
            Direction::ToClient => Direction::ToServer,
        }
    }
}

trait ResponseExt {
    fn error_code(&self) -> Option<i64>;
    fn result_as<T: serde::de::DeserializeOwned>(&self) -> Option<T>;
}

impl ResponseExt for Message<'_> {
    fn error_code(&self) -> Option<i64> {
        self.error
            .and_then(|e| serde_json::from_str::<ErrorCode>(e.get()).ok())
            .map(|e| e.code)
    }

    fn result_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.result.and_then(|r| serde_json::from_str(r.get()).ok())
    }
}

/// An id as records keep it: strings unquoted, and nothing credential-like (ids and names
/// are free text a peer chooses).
pub(crate) fn recorded_id(id: &RawValue) -> String {
    let text = jsonrpc::id_text(id);
    if id.get().starts_with('"') {
        crate::identity::redact_text(&text)
    } else {
        text
    }
}

fn reply(to: Direction, line: Vec<u8>) -> Act {
    match to {
        Direction::ToClient => Act::ToClient(line),
        Direction::ToServer => Act::ToServer(line),
    }
}

/// A result response rebuilt around a changed result (redacted, filtered).
fn response_line(id: &RawValue, result: &serde_json::Value) -> Option<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Response<'a> {
        jsonrpc: &'static str,
        id: &'a RawValue,
        result: &'a serde_json::Value,
    }
    serde_json::to_vec(&Response {
        jsonrpc: "2.0",
        id,
        result,
    })
    .ok()
}

fn error_line(id: &RawValue, code: i64, message: &str, data: Option<serde_json::Value>) -> Vec<u8> {
    jsonrpc::error_response(
        id,
        ErrorObject {
            code,
            message,
            data,
        },
    )
}

/// What a request says about its sender: `clientInfo` and `protocolVersion` from the
/// handshake, or the same from the per-request `_meta` of the handshake-less revision.
fn claims(params: &serde_json::Value) -> Option<serde_json::Value> {
    let mut c = serde_json::Map::new();
    for key in ["clientInfo", "protocolVersion"] {
        if let Some(v) = params.get(key) {
            c.insert(key.into(), v.clone());
        }
    }
    if let Some(meta) = params.get("_meta") {
        for key in META_CLAIMS {
            if let Some(v) = meta.get(*key) {
                c.insert((*key).into(), v.clone());
            }
        }
    }
    (!c.is_empty()).then_some(serde_json::Value::Object(c))
}

mod ask;
pub use ask::{ASK_ID_PREFIX, HELD_META};
mod start;
pub use start::{Parties, ServerInfo, Start, Started, raw as raw_field, start};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod differential;

#[cfg(test)]
mod flight_tests;

#[cfg(test)]
mod redaction;

#[cfg(test)]
mod ask_tests;
