//! The audit record: its fields are a contract with SIEMs (see the README and
//! `docs/audit-record.schema.json`); the snapshot test pins its shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::policy::{hex, sha256_hex};

/// Version of the record format.
pub const SCHEMA_VERSION: u32 = 1;

/// Who and what a session is about; the same on every decision record of the session.
#[derive(Debug, Serialize)]
pub struct Context {
    #[serde(skip)]
    pub session: Arc<str>,
    pub transport: &'static str,
    pub policy_sha256: String,
    pub mode: &'static str,
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
    pub kind: &'static str,
    pub session: Arc<str>,
    /// The MCP protocol revision in use, once known (negotiated by `initialize`, or carried
    /// in each request's `_meta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Arc<str>>,
    /// Identity, on every record but responses (whose `links` names the request record that has it).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Arc<Context>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_sha256: Option<String>,
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
        Record { ctx: None, ..Record::new("response", ctx) }
    }

    /// A new record of `kind` in the session `ctx`, stamped now.
    pub fn new(kind: &'static str, ctx: &Arc<Context>) -> Record {
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
            method: None,
            tool: None,
            request_id: None,
            args_sha256: None,
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

