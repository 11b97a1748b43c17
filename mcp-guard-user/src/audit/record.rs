//! The audit record: its fields are a contract with SIEMs (see the README and
//! `docs/audit-record.schema.json`); the snapshot test pins its shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::digest::{hex, sha256_hex};
use crate::policy::Mode;

/// Version of the record format.
pub const SCHEMA_VERSION: u32 = 1;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A request from the agent host, judged.
    Request,
    /// A request from the server to the agent host (sampling, elicitation, roots), judged.
    ServerRequest,
    Response,
    /// A message that could not be judged (not JSON-RPC, too long, a bare `\r`, ...).
    Malformed,
    SessionStart,
    SessionEnd,
    PolicyLoaded,
    Alert,
    DaemonStart,
    DaemonStop,
    /// Records that were not written, and why (written by the log's writer or the observer).
    Gap,
    /// The log was rotated (first record of the new file).
    Rotated,
    /// The writer sealed a torn or unsigned tail it found.
    Recovery,
    /// A signature over the chain head, written within [`super::SEAL_WITHIN`] of the
    /// records it covers.
    Seal,
    /// How the person at the host answered a call held by an `ask` rule (linked to the
    /// request's record).
    Approval,
}

impl std::fmt::Display for Kind {
    /// As records spell it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(v.as_str().unwrap_or_default())
    }
}

/// What was done with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Held for the person's approval; an `approval` record follows with the outcome.
    Ask,
}

/// Which way a message travels, as records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    ClientToServer,
    ServerToClient,
}

/// How the session's messages reach mcp-guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transport {
    /// `mcp-guard wrap`, deciding itself.
    #[serde(rename = "stdio-shim")]
    Shim,
    /// `mcp-guard wrap` under the daemon, which decides.
    #[serde(rename = "stdio-managed")]
    Managed,
    /// A stdio session the daemon sees in the kernel.
    #[serde(rename = "stdio-observed")]
    StdioObserved,
    /// Newline JSON-RPC over a local socket the daemon sees.
    #[serde(rename = "socket-observed")]
    SocketObserved,
    /// JSON-RPC bodies of local HTTP the daemon sees.
    #[serde(rename = "http-observed")]
    HttpObserved,
}

/// Who and what a session is about; the same on every decision record of the session.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    #[serde(skip)]
    pub session: Arc<str>,
    pub transport: Transport,
    pub policy_sha256: String,
    pub mode: Mode,
    pub principal: Box<RawValue>,
    pub agent_host: Box<RawValue>,
    /// Process ancestry above the shim, nearest first.
    pub chain: Box<RawValue>,
    pub server: Box<RawValue>,
}

/// The outcome of a request, on `response` records.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outcome {
    pub error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    pub bytes: usize,
    /// Secrets replaced in the response before it was forwarded.
    pub redactions: u32,
    pub latency_us: u64,
}

/// One audit record. The writer fills in `seq`, `prev` and `hash`.
#[derive(Debug, Serialize)]
pub struct Record {
    pub v: u32,
    pub seq: u64,
    pub time: String,
    pub id: String,
    pub kind: Kind,
    pub session: Arc<str>,
    /// The MCP protocol revision in use, once known (negotiated by `initialize`, or carried
    /// in each request's `_meta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Arc<str>>,
    /// Identity, on every record but responses (whose `links` names the request record that has it).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Arc<Context>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Monitor mode: the policy would have denied this (`rule` names the rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_deny: Option<bool>,
    /// An `audit` rule that matched: the request is marked for review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_rule: Option<String>,
    /// Refused (or would be) because a rule's rate was exceeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<bool>,
    /// Secrets replaced in a server's request to the host (a response counts them in
    /// `outcome.redactions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redactions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_sha256: Option<String>,
    /// The arguments in clear, credentials redacted: only where a policy rule asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    /// The record id of the request a response answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Size of the message in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    /// What the peer says about itself (`clientInfo`, `protocolVersion`): a claim, not identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Value>,
    /// Free-form facts for session and notice records (exit status, counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    pub prev: String,
}

impl Record {
    /// A response record: linked to its request's record, which carries the identity.
    pub fn response(ctx: &Arc<Context>) -> Record {
        Record {
            ctx: None,
            ..Record::new(Kind::Response, ctx)
        }
    }

    /// An alert in the session `ctx`: what happened goes in `detail`, `alert` naming it.
    pub fn alert(ctx: &Arc<Context>, alert: &super::Alert) -> Record {
        Record {
            detail: Some(serde_json::to_value(alert).unwrap_or_default()),
            ..Record::new(Kind::Alert, ctx)
        }
    }

    /// A new record of `kind` in the session `ctx`, stamped now.
    pub fn new(kind: Kind, ctx: &Arc<Context>) -> Record {
        // Unique without a system call per record: the session id is random, the counter is not.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Record {
            v: SCHEMA_VERSION,
            seq: 0,
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            id: format!("{}-{:x}", ctx.session, NEXT.fetch_add(1, Ordering::Relaxed)),
            kind,
            session: ctx.session.clone(),
            protocol: None,
            ctx: Some(ctx.clone()),
            direction: None,
            decision: None,
            rule: None,
            reason: None,
            would_deny: None,
            audit_rule: None,
            rate_limited: None,
            redactions: None,
            method: None,
            tool: None,
            request_id: None,
            args_sha256: None,
            args: None,
            links: None,
            outcome: None,
            bytes: None,
            claims: None,
            detail: None,
            prev: String::new(),
        }
    }
}

/// 128 random bits as hex.
pub fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // The system RNG does not fail on Linux once booted; an all-zero id would still be unique per seq.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex(&b)
}

/// SHA-256 of a JSON value's canonical form (object keys sorted, no whitespace).
pub fn canonical_sha256(v: &serde_json::Value) -> String {
    // serde_json's default map is ordered by key, so this serialization is canonical.
    sha256_hex(&serde_json::to_vec(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Arc<Context> {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        Arc::new(Context {
            session: "0123456789abcdef0123456789abcdef".into(),
            transport: Transport::Shim,
            policy_sha256: "ab".repeat(32),
            mode: Mode::Enforce,
            principal: raw(
                r#"{"uid":1000,"euid":1000,"user":"alice","gid":1000,"groups":[1000,27]}"#,
            ),
            agent_host: raw(
                r#"{"pid":4242,"comm":"claude","exe":"/usr/bin/node","exec_id":"b00t:100:4242","cmdline":["claude"]}"#,
            ),
            chain: raw(
                r#"[{"pid":4242,"comm":"claude","exe":"/usr/bin/node"},{"pid":4000,"comm":"bash","exe":"/usr/bin/bash"}]"#,
            ),
            server: raw(
                r#"{"name":"filesystem","pid":4300,"exe":"/usr/bin/node","argv":["mcp-server-filesystem","/home/alice"],"exec_id":"b00t:120:4300"}"#,
            ),
        })
    }

    /// The record shape is a contract with SIEMs: a change here is a schema change.
    #[test]
    fn record_shapes_are_stable() {
        let ctx = ctx();
        let stamp = |mut r: Record, seq: u64| {
            r.time = "2026-01-02T03:04:05.123456Z".into();
            r.id = format!("{}-{seq}", ctx.session);
            r.seq = seq;
            r.prev = "00".repeat(32);
            serde_json::to_value(&r).unwrap()
        };
        let mut req = Record::new(Kind::Request, &ctx);
        req.protocol = Some("2025-06-18".into());
        req.direction = Some(Flow::ClientToServer);
        req.decision = Some(Decision::Deny);
        req.rule = Some("fs-no-writes".into());
        req.reason = Some("the filesystem server is read-only here".into());
        req.method = Some("tools/call".into());
        req.tool = Some("write_file".into());
        req.request_id = Some("7".into());
        req.args_sha256 = Some("cd".repeat(32));
        req.bytes = Some(180);
        let mut resp = Record::response(&ctx);
        resp.direction = Some(Flow::ServerToClient);
        resp.decision = Some(Decision::Allow);
        resp.method = Some("tools/call".into());
        resp.tool = Some("read_text_file".into());
        resp.request_id = Some("8".into());
        resp.links = Some(format!("{}-3", ctx.session));
        resp.outcome = Some(Outcome {
            error: false,
            error_code: None,
            bytes: 95,
            redactions: 0,
            latency_us: 412,
        });
        resp.bytes = Some(95);
        insta::assert_json_snapshot!("request", stamp(req, 3));
        insta::assert_json_snapshot!("response", stamp(resp, 4));
    }

    #[test]
    fn records_validate_against_the_published_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/audit-record.schema.json")).unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let props = schema["properties"].as_object().unwrap();
        let ctx = ctx();
        let mut rec = serde_json::to_value(Record::new(Kind::Request, &ctx)).unwrap();
        rec["hash"] = "00".into();
        for key in &required {
            assert!(
                rec.get(key).is_some(),
                "required `{key}` missing from a record"
            );
        }
        for key in rec.as_object().unwrap().keys() {
            assert!(
                props.contains_key(key),
                "record field `{key}` is not in the schema"
            );
        }
    }
}
