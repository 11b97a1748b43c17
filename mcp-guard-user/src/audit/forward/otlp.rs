//! OpenTelemetry export: audit records as OTLP log records and `tools/call` spans, posted
//! as OTLP/HTTP protobuf to a collector. The mapping is documented as a table in the
//! README (OpenTelemetry); the snapshot tests pin it.
//!
//! The HTTP answer is the acknowledgement: a batch is with the collector once both its
//! logs and its spans were answered 2xx. Nothing needs to settle, unlike syslog over TCP.
//!
//! Ids are derived from the records, so a batch sent again after an outage carries the
//! same ids: the trace id from the session, the span id from the request's record id.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use serde_json::Value;

use super::Error;
use super::syslog::Severity;

/// The instrumentation scope of everything exported.
const SCOPE: &str = "mcp-guard.audit";
/// The largest response body read (an error message, a partial success).
const MAX_RESPONSE: u64 = 64 * 1024;
/// Requests remembered while their response is awaited; past this, the oldest are dropped
/// (their spans then lack the request's attributes, see [`Spans`]).
const MAX_PENDING: usize = 16_384;
/// How much of the log before the cursor a run reads to recover unanswered requests.
pub const RECOVER_BYTES: u64 = 64 << 20;
/// The longest a `Retry-After` is honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// An OTLP/HTTP endpoint: the base URL, to which `/v1/logs` and `/v1/traces` are appended
/// (as `OTEL_EXPORTER_OTLP_ENDPOINT` is used by OpenTelemetry SDKs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    base: String,
}

impl Endpoint {
    /// `url` must be http:// or https:// with a host; a trailing `/` is dropped.
    pub fn parse(url: &str) -> Option<Endpoint> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || rest.contains(['?', '#']) {
            return None;
        }
        Some(Endpoint {
            base: url.trim_end_matches('/').to_string(),
        })
    }

    /// Where log records are posted.
    pub fn logs(&self) -> String {
        format!("{}/v1/logs", self.base)
    }

    /// Where spans are posted.
    pub fn traces(&self) -> String {
        format!("{}/v1/traces", self.base)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

/// A request header for the collector (`--header k=v`), e.g. for authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl std::str::FromStr for Header {
    type Err = String;

    fn from_str(s: &str) -> Result<Header, String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected NAME=VALUE"))?;
        let k = k.trim();
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(format!("`{k}` is not a header name"));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("the value of `{k}` has a control character"));
        }
        Ok(Header {
            name: k.to_string(),
            value: v.trim().to_string(),
        })
    }
}

/// This host, as OpenTelemetry resource attributes.
pub fn resource(hostname: &str) -> Resource {
    let mut attributes = vec![
        kv("service.name", "mcp-guard"),
        kv("service.version", env!("CARGO_PKG_VERSION")),
        kv("host.name", hostname),
        kv("os.type", "linux"),
    ];
    // host.id: the machine id, as the semantic conventions recommend on Linux.
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        let id = id.trim();
        if !id.is_empty() {
            attributes.push(kv("host.id", id));
        }
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

fn any(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: any(any_value::Value::StringValue(v.into())),
        ..Default::default()
    }
}

fn kv_int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: any(any_value::Value::IntValue(v)),
        ..Default::default()
    }
}

fn kv_bool(key: &str, v: bool) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: any(any_value::Value::BoolValue(v)),
        ..Default::default()
    }
}

/// Nanoseconds since the epoch of an RFC 3339 time; 0 (unknown, to OTLP) if unreadable.
fn epoch_ns(time: &str) -> u64 {
    humantime::parse_rfc3339(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// The trace of a session: the first 16 bytes of SHA-256 over the session id.
pub fn trace_id(session: &str) -> Vec<u8> {
    digest(&format!("mcp-guard trace {session}"), 16)
}

/// The span of a request: the first 8 bytes of SHA-256 over its record's id (which the
/// response names in `links`).
pub fn span_id(request_record: &str) -> Vec<u8> {
    digest(&format!("mcp-guard span {request_record}"), 8)
}

fn digest(s: &str, n: usize) -> Vec<u8> {
    let h = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut v = h.as_ref()[..n].to_vec();
    // All-zero ids are invalid in OTLP.
    if v.iter().all(|&b| b == 0) {
        v[n - 1] = 1;
    }
    v
}

/// Attributes every signal of a record carries (where the record has the field).
fn common_attributes(rec: &Value, out: &mut Vec<KeyValue>) {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    if let Some(v) = s("session") {
        out.push(kv("mcp.session.id", v));
    }
    if let Some(v) = s("method") {
        out.push(kv("mcp.method.name", v));
        match v {
            "tools/call" => {
                if let Some(t) = s("tool") {
                    out.push(kv("gen_ai.tool.name", t));
                }
                out.push(kv("gen_ai.operation.name", "execute_tool"));
            }
            "prompts/get" => {
                if let Some(t) = s("tool") {
                    out.push(kv("gen_ai.prompt.name", t));
                }
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                if let Some(t) = s("tool") {
                    out.push(kv("mcp.resource.uri", t));
                }
            }
            _ => {}
        }
    }
    if let Some(v) = s("request_id") {
        out.push(kv("jsonrpc.request.id", v));
    }
    if let Some(v) = s("protocol") {
        out.push(kv("mcp.protocol.version", v));
    }
    if let Some(v) = s("transport") {
        out.push(kv("mcp_guard.transport", v));
        if v.starts_with("stdio-") {
            out.push(kv("network.transport", "pipe"));
        }
    }
    for (key, field) in [
        ("mcp_guard.decision", "decision"),
        ("mcp_guard.rule", "rule"),
        ("mcp_guard.reason", "reason"),
        ("mcp_guard.audit_rule", "audit_rule"),
        ("mcp_guard.mode", "mode"),
        ("mcp_guard.policy_sha256", "policy_sha256"),
    ] {
        if let Some(v) = s(field) {
            out.push(kv(key, v));
        }
    }
    for (key, field) in [
        ("mcp_guard.would_deny", "would_deny"),
        ("mcp_guard.rate_limited", "rate_limited"),
    ] {
        if let Some(v) = rec.get(field).and_then(Value::as_bool) {
            out.push(kv_bool(key, v));
        }
    }
    if let Some(p) = rec.get("principal") {
        if let Some(uid) = p.get("uid").and_then(Value::as_u64) {
            out.push(kv("user.id", &uid.to_string()));
        }
        if let Some(name) = p.get("user").and_then(Value::as_str) {
            out.push(kv("user.name", name));
        }
    }
    for (prefix, field) in [
        ("mcp_guard.agent_host", "agent_host"),
        ("mcp_guard.server", "server"),
    ] {
        let Some(p) = rec.get(field) else { continue };
        if let Some(v) = p.get("name").and_then(Value::as_str) {
            out.push(kv(&format!("{prefix}.name"), v));
        }
        if let Some(v) = p.get("pid").and_then(Value::as_i64) {
            out.push(kv_int(&format!("{prefix}.pid"), v));
        }
        if let Some(v) = p.get("comm").and_then(Value::as_str) {
            out.push(kv(&format!("{prefix}.comm"), v));
        }
        if let Some(v) = p.get("exe").and_then(Value::as_str) {
            out.push(kv(&format!("{prefix}.exe"), v));
        }
        if let Some(v) = p.get("exec_id").and_then(Value::as_str) {
            out.push(kv(&format!("{prefix}.exec_id"), v));
        }
    }
}

/// OTLP severity (number and text) for a record, from the same reading as syslog's.
fn severity(rec: &Value) -> (i32, &'static str) {
    // SeverityNumber: INFO 9, INFO2 10, WARN 13, ERROR3 19 (the OpenTelemetry log data
    // model maps syslog's Alert to ERROR3, Notice to INFO2).
    match Severity::of(rec) {
        Severity::Alert => (19, "ALERT"),
        Severity::Warning => (13, "WARNING"),
        Severity::Notice => (10, "NOTICE"),
        Severity::Info => (9, "INFO"),
    }
}

/// The log record of an audit record. The body is the record's line as written, byte for
/// byte: it is what the hash chain covers, so a SIEM behind the collector can still check
/// it, and the mapping loses nothing. The salient fields are repeated as attributes, for
/// routing and search in the collector and the backend.
pub fn log_record(rec: &Value, line: &[u8]) -> LogRecord {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    let kind = s("kind").unwrap_or("record");
    let (severity_number, severity_text) = severity(rec);
    let mut attributes = Vec::new();
    if let Some(seq) = rec.get("seq").and_then(Value::as_u64) {
        attributes.push(kv_int(
            "mcp_guard.seq",
            i64::try_from(seq).unwrap_or(i64::MAX),
        ));
    }
    for (key, field) in [
        ("mcp_guard.record.id", "id"),
        ("mcp_guard.record.hash", "hash"),
        ("mcp_guard.kind", "kind"),
        ("mcp_guard.links", "links"),
    ] {
        if let Some(v) = s(field) {
            attributes.push(kv(key, v));
        }
    }
    common_attributes(rec, &mut attributes);
    if let Some(o) = rec.get("outcome") {
        if let Some(v) = o.get("latency_us").and_then(Value::as_i64) {
            attributes.push(kv_int("mcp_guard.latency_us", v));
        }
        if let Some(v) = o.get("error").and_then(Value::as_bool) {
            attributes.push(kv_bool("mcp_guard.error", v));
        }
        if let Some(v) = o.get("error_code").and_then(Value::as_i64) {
            attributes.push(kv("rpc.response.status_code", &v.to_string()));
        }
    }
    if let Some(a) = rec.pointer("/detail/alert").and_then(Value::as_str) {
        attributes.push(kv("mcp_guard.alert", a));
    }
    // Requests and responses of a call belong to its span.
    let (trace_id, span_id) = match (s("session"), span_of(rec)) {
        (Some(session), Some(req)) => (trace_id(session), span_id(req)),
        _ => (Vec::new(), Vec::new()),
    };
    LogRecord {
        time_unix_nano: s("time").map(epoch_ns).unwrap_or(0),
        observed_time_unix_nano: now_ns(),
        severity_number,
        severity_text: severity_text.into(),
        body: any(any_value::Value::StringValue(
            String::from_utf8_lossy(line).into_owned(),
        )),
        attributes,
        flags: if span_id.is_empty() { 0 } else { 1 },
        trace_id,
        span_id,
        event_name: format!("mcp_guard.{kind}"),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// The request record id whose span a record belongs to: a `tools/call` request's own, a
/// response's `links`.
fn span_of(rec: &Value) -> Option<&str> {
    if rec.get("method").and_then(Value::as_str) != Some("tools/call") {
        return None;
    }
    match rec.get("kind").and_then(Value::as_str) {
        Some("request") => rec.get("id").and_then(Value::as_str),
        Some("response" | "approval") => rec.get("links").and_then(Value::as_str),
        _ => None,
    }
}

/// What a pending request keeps of its record: the fields its span uses (not the
/// ancestry, arguments, claims or command lines, which can be large).
fn slim(rec: &Value) -> Value {
    const KEEP: &[&str] = &[
        "seq",
        "time",
        "id",
        "kind",
        "session",
        "method",
        "tool",
        "request_id",
        "protocol",
        "transport",
        "decision",
        "rule",
        "reason",
        "audit_rule",
        "mode",
        "policy_sha256",
        "would_deny",
        "rate_limited",
    ];
    const PROCESS: &[&str] = &["name", "pid", "comm", "exe", "exec_id"];
    let mut out = serde_json::Map::new();
    for k in KEEP {
        if let Some(v) = rec.get(*k) {
            out.insert((*k).into(), v.clone());
        }
    }
    if let Some(p) = rec.get("principal") {
        let mut m = serde_json::Map::new();
        for k in ["uid", "user"] {
            if let Some(v) = p.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
        out.insert("principal".into(), Value::Object(m));
    }
    for field in ["agent_host", "server"] {
        if let Some(p) = rec.get(field) {
            let mut m = serde_json::Map::new();
            for k in PROCESS {
                if let Some(v) = p.get(*k) {
                    m.insert((*k).into(), v.clone());
                }
            }
            out.insert(field.into(), Value::Object(m));
        }
    }
    Value::Object(out)
}

/// A `tools/call` request waiting for its response.
struct Pending {
    seq: u64,
    rec: Value,
    /// The seq of its response once read: the entry is kept (for a rewind that reads the
    /// response again) until the cursor is committed past it.
    answered: Option<u64>,
}

/// Builds one span per `tools/call`: when its response is read (start: the request's
/// time, end: the response's), or at once for a denied request (which has no response).
///
/// Allowed requests are remembered until their response; a run that starts from a cursor
/// first recovers the unanswered ones from the last [`RECOVER_BYTES`] of the log before
/// it ([`Spans::recover`]). A response whose request is still unknown (further back, in a
/// rotated file, or dropped past [`MAX_PENDING`]) still makes its span, from the response
/// alone: start = its time minus `outcome.latency_us`, and without the request's identity
/// attributes (user, agent host, server, rule); `mcp_guard.request.seen` is false on such
/// spans.
#[derive(Default)]
pub struct Spans {
    pending: HashMap<String, Pending>,
}

impl Spans {
    /// The span a record completes, if any.
    pub fn observe(&mut self, rec: &Value) -> Option<Span> {
        let s = |k: &str| rec.get(k).and_then(Value::as_str);
        let seq = rec.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if s("kind") == Some("session_end") {
            // No response comes after its session's end: its unanswered requests are done
            // with once the cursor is past it.
            let session = s("session");
            for p in self.pending.values_mut() {
                if p.answered.is_none() && p.rec.get("session").and_then(Value::as_str) == session {
                    p.answered = Some(seq);
                }
            }
            return None;
        }
        if s("method") != Some("tools/call") {
            return None;
        }
        match s("kind")? {
            "request" => {
                if s("decision") == Some("deny") {
                    return Some(span(rec, None));
                }
                let id = s("id")?.to_string();
                if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&id) {
                    self.evict();
                }
                self.pending.entry(id).or_insert_with(|| Pending {
                    seq,
                    rec: slim(rec),
                    answered: None,
                });
                None
            }
            // A call held for approval (`decision: ask`): refused, its span ends with the
            // approval record; approved, the response ends it, marked approved.
            "approval" => {
                let pending = s("links").and_then(|l| self.pending.get_mut(l));
                if s("decision") != Some("deny") {
                    if let Some(Value::Object(r)) = pending.map(|p| &mut p.rec) {
                        r.insert("approval".into(), Value::from("approved"));
                    }
                    return None;
                }
                let req = pending.map(|p| {
                    p.answered = Some(seq);
                    &p.rec
                });
                Some(span(rec, req))
            }
            "response" => {
                let req = s("links").and_then(|l| self.pending.get_mut(l));
                let req = req.map(|p| {
                    p.answered = Some(seq);
                    &p.rec
                });
                Some(span(rec, req))
            }
            _ => None,
        }
    }

    /// Learns from records sent by an earlier run (the log before the cursor, oldest
    /// first): the requests still waiting for their response, whose spans this run makes.
    pub fn recover(&mut self, before: &[u8]) {
        let lines = before.split(|&b| b == b'\n');
        // Only tools/call requests and responses, and session ends, matter: most lines
        // are not parsed.
        let wanted = lines.filter(|l| {
            memchr::memmem::find(l, b"\"tools/call\"").is_some()
                || memchr::memmem::find(l, b"\"session_end\"").is_some()
        });
        for line in wanted {
            if let Ok(rec) = serde_json::from_slice::<Value>(line) {
                let _ = self.observe(&rec);
            }
        }
        // Answered (or ended) before the cursor: sent, done with.
        self.pending.retain(|_, p| p.answered.is_none());
    }

    /// Requests waiting for their response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Forgets the requests answered at or before `seq` (committed: never read again).
    pub fn committed(&mut self, seq: u64) {
        self.pending
            .retain(|_, p| p.answered.is_none_or(|a| a > seq));
    }

    /// Drops the oldest tenth of the pending requests.
    fn evict(&mut self) {
        let mut seqs: Vec<u64> = self.pending.values().map(|p| p.seq).collect();
        seqs.sort_unstable();
        let cut = seqs.get(seqs.len() / 10).copied().unwrap_or(0);
        tracing::warn!(
            pending = self.pending.len(),
            "many tools/call requests without a response; the oldest are forgotten (their spans will lack the request's attributes)"
        );
        self.pending.retain(|_, p| p.seq > cut);
    }
}

/// The span of a `tools/call`: `rec` is the request (denied) or the response (with its
/// request `req` when known).
fn span(rec: &Value, req: Option<&Value>) -> Span {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    let is_response = s("kind") == Some("response");
    let is_approval = s("kind") == Some("approval");
    let request_record = if is_response || is_approval {
        s("links")
    } else {
        s("id")
    }
    .unwrap_or_default();
    let end = s("time").map(epoch_ns).unwrap_or(0);
    let latency_us = rec.pointer("/outcome/latency_us").and_then(Value::as_u64);
    let start = match (req, latency_us) {
        (Some(r), _) => r
            .get("time")
            .and_then(Value::as_str)
            .map(epoch_ns)
            .unwrap_or(end),
        (None, Some(us)) => end.saturating_sub(us.saturating_mul(1000)),
        (None, None) => end,
    };
    // The request's attributes (identity, rule) first; the response adds its outcome.
    let mut attributes = Vec::new();
    common_attributes(req.unwrap_or(rec), &mut attributes);
    let tool = s("tool")
        .or_else(|| req.and_then(|r| r.get("tool")).and_then(Value::as_str))
        .unwrap_or_default();
    let mut status = Status::default();
    if is_response {
        if let Some(us) = latency_us {
            attributes.push(kv_int(
                "mcp_guard.latency_us",
                i64::try_from(us).unwrap_or(i64::MAX),
            ));
        }
        let seq = rec.get("seq").and_then(Value::as_i64).unwrap_or(0);
        attributes.push(kv_int("mcp_guard.response.seq", seq));
        // Whether the request's record was read (its attributes are on the span).
        attributes.push(kv_bool("mcp_guard.request.seen", req.is_some()));
        if rec.pointer("/outcome/error").and_then(Value::as_bool) == Some(true) {
            let code = rec.pointer("/outcome/error_code").and_then(Value::as_i64);
            let ty = code.map_or_else(|| "error".to_string(), |c| c.to_string());
            if let Some(c) = code {
                attributes.push(kv("rpc.response.status_code", &c.to_string()));
            }
            attributes.push(kv("error.type", &ty));
            status = Status {
                code: status::StatusCode::Error as i32,
                message: format!("the server answered with an error ({ty})"),
            };
        }
    } else {
        let rule = s("rule").unwrap_or("?");
        let outcome = rec.pointer("/detail/outcome").and_then(Value::as_str);
        if let Some(o) = outcome.filter(|_| is_approval) {
            attributes.push(kv("mcp_guard.approval", o));
        }
        attributes.push(kv("error.type", "denied"));
        status = Status {
            code: status::StatusCode::Error as i32,
            message: match outcome.filter(|_| is_approval) {
                Some(o) => format!("not approved ({o}) under rule {rule}"),
                None => format!("denied by rule {rule}"),
            },
        };
    }
    if let Some(a) = req.and_then(|r| r.get("approval")).and_then(Value::as_str) {
        attributes.push(kv("mcp_guard.approval", a));
    }
    if let Some(r) = req.or((!is_response && !is_approval).then_some(rec)) {
        let seq = r.get("seq").and_then(Value::as_i64).unwrap_or(0);
        attributes.push(kv_int("mcp_guard.request.seq", seq));
    }
    attributes.push(kv("mcp_guard.request.record_id", request_record));
    Span {
        trace_id: trace_id(s("session").unwrap_or_default()),
        span_id: span_id(request_record),
        flags: 1,
        name: if tool.is_empty() {
            "tools/call".into()
        } else {
            format!("tools/call {tool}")
        },
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end.max(start),
        attributes,
        status: Some(status),
        ..Default::default()
    }
}

/// The CA certificates in the PEM file `path` (`--ca-file`), for [`Client::new`].
pub fn load_roots(path: &std::path::Path) -> Result<ureq::tls::RootCerts, Error> {
    let bad = |reason: String| Error::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| bad(e.to_string()))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            _ => return Err(bad("it holds something other than certificates".into())),
        }
    }
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// One batch, encoded: the logs request and, when the batch completes calls, the traces
/// request.
pub struct Payload {
    pub logs: Vec<u8>,
    pub traces: Option<Vec<u8>>,
    pub records: usize,
    pub spans: usize,
}

/// Encodes log records and spans as OTLP export requests for `resource`.
pub fn encode(resource: &Resource, logs: Vec<LogRecord>, spans: Vec<Span>) -> Payload {
    let records = logs.len();
    let n_spans = spans.len();
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: logs,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let traces = (!spans.is_empty()).then(|| {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    });
    Payload {
        logs,
        traces,
        records,
        spans: n_spans,
    }
}

/// Posts export requests to a collector.
pub struct Client {
    agent: ureq::Agent,
    endpoint: Endpoint,
    headers: Vec<Header>,
}

/// What the collector said it did not take, from a 2xx answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    pub count: i64,
    pub message: String,
}

impl Client {
    /// A client for `endpoint`; each request may take `timeout` in all. `roots`: the
    /// certificates an https collector's must chain to (the built-in Mozilla roots when
    /// `None`).
    pub fn new(
        endpoint: Endpoint,
        headers: Vec<Header>,
        timeout: Duration,
        roots: Option<ureq::tls::RootCerts>,
    ) -> Client {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(r) = roots {
            tls = tls.root_certs(r);
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            // A redirected POST may come back as a GET whose 2xx would pass for an
            // acknowledgement: a 3xx is a refusal naming the status instead.
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .user_agent(concat!("mcp-guard/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            agent,
            endpoint,
            headers,
        }
    }

    /// Sends a batch: its logs, then its spans; `Ok` once both were accepted.
    pub fn send(&self, payload: &Payload) -> Result<(), Error> {
        let url = self.endpoint.logs();
        let body = self.post(&url, &payload.logs)?;
        if let Some(r) = ExportLogsServiceResponse::decode(body.as_slice())
            .ok()
            .and_then(|r| r.partial_success)
            .filter(|p| p.rejected_log_records > 0 || !p.error_message.is_empty())
        {
            warn_rejected(
                &url,
                "log records",
                r.rejected_log_records,
                &r.error_message,
            );
        }
        if let Some(traces) = &payload.traces {
            let url = self.endpoint.traces();
            let body = self.post(&url, traces)?;
            if let Some(r) = ExportTraceServiceResponse::decode(body.as_slice())
                .ok()
                .and_then(|r| r.partial_success)
                .filter(|p| p.rejected_spans > 0 || !p.error_message.is_empty())
            {
                warn_rejected(&url, "spans", r.rejected_spans, &r.error_message);
            }
        }
        Ok(())
    }

    /// POSTs `body`; the response body of a 2xx answer, or why not.
    fn post(&self, url: &str, body: &[u8]) -> Result<Vec<u8>, Error> {
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/x-protobuf");
        for h in &self.headers {
            req = req.header(h.name.as_str(), h.value.as_str());
        }
        let mut resp = req.send(body).map_err(|e| Error::Http {
            url: url.to_string(),
            source: Box::new(e),
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let body = describe_body(&body, &content_type);
        if matches!(status, 429 | 502 | 503 | 504) {
            return Err(Error::Unavailable {
                url: url.to_string(),
                status,
                body,
                retry_after,
            });
        }
        Err(Error::Refused {
            url: url.to_string(),
            status,
            body,
        })
    }
}

/// An error body for a message: text as is (trimmed, cut), a protobuf `Status` by its message.
fn describe_body(body: &[u8], content_type: &str) -> String {
    if content_type.starts_with("application/x-protobuf") {
        // google.rpc.Status: field 2 is the message.
        #[derive(prost::Message)]
        struct RpcStatus {
            #[prost(int32, tag = "1")]
            code: i32,
            #[prost(string, tag = "2")]
            message: String,
        }
        if let Ok(s) = RpcStatus::decode(body) {
            return s.message;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(500) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

fn warn_rejected(url: &str, what: &str, count: i64, message: &str) {
    tracing::warn!(
        url,
        rejected = count,
        message,
        "the collector accepted the batch but rejected some {what}: they will not be sent again (see the collector's log)"
    );
    eprintln!(
        "mcp-guard: {url}: the collector rejected {count} {what} of a batch it accepted: {message}"
    );
}
