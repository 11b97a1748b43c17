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

use crate::audit::{Context, Outcome, Record, canonical_sha256};
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
    fn name(self) -> &'static str {
        match self {
            Direction::ToServer => "client_to_server",
            Direction::ToClient => "server_to_client",
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
    /// Pinned tool definitions, and the tools whose definition changed (hidden, refused).
    pins: Option<crate::pins::Pins>,
    blocked: std::collections::HashSet<String>,
    /// Alerts raised while judging, committed with the plan.
    alerts: Vec<Record>,
    /// A second policy that can only add denials (a managed shim's own `--policy`).
    restrictions: Option<Arc<Policy>>,
    /// Until then, answers to requests this session never saw are let through: they were
    /// made before a restart of the daemon that judges this session.
    resumed_until: Option<Instant>,
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
        Session {
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
            blocked: std::collections::HashSet::new(),
            alerts: Vec::new(),
            restrictions: None,
            resumed_until: None,
            counters: Counters::default(),
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

    fn record(&self, kind: &'static str) -> Record {
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
        plan
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
        let judged: Vec<Judged> = items
            .iter()
            .map(|item| match item {
                Ok(m) => self.message(dir, m, bytes),
                Err((id, m)) => self.refusal(dir, *id, m, bytes),
            })
            .collect();
        if judged.iter().all(|j| j.pass) {
            // Forwarded as received, unless an element was changed (redacted, filtered):
            // then the batch is rebuilt from the elements, changed ones in their new form.
            let mut parts: Vec<Vec<u8>> = Vec::new();
            let changed = judged.iter().any(|j| j.replace.is_some());
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
                    r.decision = Some("deny");
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
        match m.kind {
            Kind::Notification => {
                self.counters.notifications += 1;
                Judged::pass(dir)
            }
            Kind::Request => self.request(dir, m, bytes),
            Kind::Response => self.response(dir, m, bytes),
        }
    }

    fn request(&mut self, dir: Direction, m: &Message<'_>, bytes: usize) -> Judged {
        self.counters.requests += 1;
        let method = m.method.as_deref().unwrap_or_default();
        let params = m.params_value.as_ref();
        let field = |k: &str| params.and_then(|p| p.get(k));
        let tool = match method {
            "resources/read" | "resources/subscribe" => field("uri"),
            _ => field("name"),
        }
        .and_then(serde_json::Value::as_str);
        if method == "initialize" {
            self.learn_protocol(field("protocolVersion"));
        }
        self.learn_protocol(field("_meta").and_then(|m| m.get(META_CLAIMS[0])));
        // Arguments for the calls that have them; the whole params otherwise (so a rule can
        // look at a resource's `/uri` or a sampling request's messages).
        let arguments = match method {
            "tools/call" | "prompts/get" => field("arguments"),
            _ => params,
        };
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
        };
        let mut decision = self
            .policy
            .decide_limited(&query, &self.limiter, Instant::now());
        if let Some(extra) = &self.restrictions {
            // The shim's own policy may deny what the system policy allows, never the reverse.
            let mine = extra.decide_limited(&query, &self.limiter, Instant::now());
            let denies = mine.action == Action::Deny || mine.would_deny;
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
        if let Some(t) = tool.filter(|t| method == "tools/call" && self.blocked.contains(*t)) {
            // Looked up again: the change may have been approved since.
            if self
                .pins
                .as_ref()
                .is_none_or(|p| p.is_blocked(&self.name, t))
            {
                decision.rule = "pinned-tool-changed".into();
                decision.message =
                    Some("the tool's definition changed since it was pinned; review and approve it with `mcp-guard pins approve`".into());
                if self.policy.mode() == Mode::Monitor {
                    decision.would_deny = true;
                } else {
                    decision.action = Action::Deny;
                }
            } else {
                self.blocked.remove(t);
            }
        }
        let id = m.id.unwrap_or(jsonrpc::null_id());
        let mut rec = self.record(if dir == Direction::ToServer {
            "request"
        } else {
            "server_request"
        });
        rec.direction = Some(dir.name());
        rec.decision = Some(match decision.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        });
        rec.rule = Some(decision.rule.clone());
        rec.would_deny = decision.would_deny.then_some(true);
        rec.audit_rule = decision.audit.clone();
        rec.rate_limited = decision.rate_limited.then_some(true);
        if decision.would_deny {
            rec.reason = decision.message.clone();
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
                Judged {
                    pass: true,
                    record: Some(rec),
                    durable: true,
                    track: Some((IdKey::of(id), pending)),
                    error: None,
                    reply_to,
                    replace: None,
                }
            }
            Action::Deny => {
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
        let id = m.id.unwrap_or(jsonrpc::null_id());
        let mut rec = self.response_record();
        rec.direction = Some(dir.name());
        rec.request_id = Some(recorded_id(id));
        rec.bytes = Some(bytes);
        let table = match dir {
            Direction::ToClient => &mut self.pending,
            Direction::ToServer => &mut self.server_pending,
        };
        let resumed = self.resumed_until.is_some_and(|t| Instant::now() < t);
        let found = table.remove(&IdKey::of(id));
        if found.is_none() && resumed && dir == Direction::ToClient {
            rec.decision = Some("allow");
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
            rec.decision = Some("deny");
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
        rec.decision = Some("allow");
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
                rec.decision = Some("deny");
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
            let redact = m.result.is_some_and(|r| limits.may_redact(r.get()));
            let filter = p.method == "tools/list";
            if (redact || filter)
                && let Some(mut result) = m
                    .result
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok())
            {
                let redactions = if redact {
                    limits.redact(&mut result)
                } else {
                    0
                };
                let mut hidden = if filter && !m.is_error() {
                    self.pin_tools(&mut result)
                } else {
                    Vec::new()
                };
                if filter && !m.is_error() {
                    hidden.extend(self.hide_tools(&mut result));
                }
                if let Some(o) = rec.outcome.as_mut() {
                    o.redactions = redactions;
                }
                if !hidden.is_empty() {
                    rec.detail = Some(serde_json::json!({ "hidden_tools": hidden }));
                }
                if redactions > 0 || !hidden.is_empty() {
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

    /// Checks a `tools/list` page against the pins (pinning new tools) and removes the tools
    /// whose definition changed, raising an alert for each. Returns their names. If the pin
    /// store cannot be used, every tool is withheld (fail closed) and that is the alert.
    fn pin_tools(&mut self, result: &mut serde_json::Value) -> Vec<String> {
        let Some(pins) = self.pins.clone() else {
            return Vec::new();
        };
        let Some(tools) = result
            .get_mut("tools")
            .and_then(serde_json::Value::as_array_mut)
        else {
            return Vec::new();
        };
        let seen: Vec<(String, String)> = tools
            .iter()
            .filter_map(|t| {
                Some((
                    t.get("name")?.as_str()?.to_string(),
                    crate::pins::definition_sha256(t),
                ))
            })
            .collect();
        let changed = match pins.check(&self.name, self.subject.server_exe.as_deref(), &seen) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::error!(error = %e, path = %pins.path().display(), "tool pins unavailable; withholding the tool list");
                let mut alert = self.record("alert");
                alert.reason = Some(crate::identity::redact_text(&e.to_string()));
                alert.detail = Some(serde_json::json!({ "alert": "pins_unavailable" }));
                self.alerts.push(alert);
                let names = seen.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
                self.blocked.extend(names.iter().cloned());
                tools.clear();
                return names;
            }
        };
        for (name, _) in &seen {
            if !changed.iter().any(|c| &c.tool == name) {
                self.blocked.remove(name);
            }
        }
        let mut hidden = Vec::new();
        for c in changed {
            tracing::warn!(tool = %c.tool, server = %self.name, "tool definition changed since it was pinned; withheld");
            let mut alert = self.record("alert");
            alert.tool = Some(crate::identity::redact_text(&c.tool));
            alert.reason = Some("the tool's definition changed since it was pinned".into());
            alert.detail = Some(
                serde_json::json!({ "alert": "tool_definition_changed", "pinned_sha256": c.pinned, "seen_sha256": c.seen }),
            );
            self.alerts.push(alert);
            tools.retain(|t| {
                t.get("name").and_then(serde_json::Value::as_str) != Some(c.tool.as_str())
            });
            self.blocked.insert(c.tool.clone());
            hidden.push(crate::identity::redact_text(&c.tool));
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
        let mut rec = self.record("malformed");
        rec.direction = Some(dir.name());
        rec.decision = Some("deny");
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
                let error = answered.map(|p| {
                    rec.links = Some(p.record);
                    let message = format!("the server sent an unusable response: {m}");
                    error_line(&p.id, code::SERVER_FAILED, &message, None)
                });
                (Direction::ToClient, error)
            }
        };
        Judged {
            pass: false,
            record: Some(rec),
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

    /// Error responses for every client request still in flight, and their records.
    pub fn abandon(&mut self, why: &str) -> (Vec<u8>, Vec<Record>) {
        let mut out = Vec::new();
        let mut records = Vec::new();
        for (_, p) in std::mem::take(&mut self.pending) {
            out.extend(error_line(&p.id, code::SERVER_FAILED, why, None));
            out.push(b'\n');
            let mut rec = self.response_record();
            rec.direction = Some(Direction::ToClient.name());
            rec.decision = Some("deny");
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

/// The name records give a policy mode.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
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

#[cfg(test)]
mod tests;
