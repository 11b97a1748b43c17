//! How every guarded session begins, whatever carries it (the shim, a managed shim, a stdio
//! session or socket the daemon observes): who is on each end, as the kernel and /proc tell
//! it → the records' [`Context`] → the policy's [`Subject`] → the [`Session`] → its
//! `session_start` record.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Session, Subject};
use crate::audit::{self, Context, Record, Transport};
use crate::identity::{self, Link, Principal, Process};
use crate::policy::{Ancestor, Policy};

/// The server, as records describe it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub name: String,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    /// Credentials in it redacted.
    pub argv: Option<Vec<String>>,
    pub exec_id: Option<String>,
    /// For a server reached over a local socket: `unix`, `localhost:PORT`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl ServerInfo {
    /// Server `name`, running as `process` (when it could be read) with command line `argv`.
    pub fn new(
        name: String,
        pid: Option<u32>,
        process: Option<&Process>,
        argv: Option<&[String]>,
    ) -> Self {
        ServerInfo {
            name,
            pid,
            exe: process.and_then(|p| p.exe.clone()),
            argv: argv.map(identity::redact_args),
            exec_id: process.map(|p| p.exec_id.clone()),
            address: None,
        }
    }

    /// As [`Context::server`] carries it.
    pub fn raw(&self) -> Box<RawValue> {
        raw(self)
    }
}

/// Who a session is between.
pub struct Parties {
    /// Whose session it is: the user the agent host runs as.
    pub principal: Option<Principal>,
    /// The agent host.
    pub host: Option<Process>,
    /// The shim between host and server, when there is one.
    pub shim: Option<Process>,
    /// The processes above the shim (or, without one, above the server), nearest first.
    pub chain: Vec<Process>,
}

/// A session to start.
pub struct Start {
    pub transport: Transport,
    pub policy: Arc<Policy>,
    pub max_message: usize,
    pub parties: Parties,
    pub server: ServerInfo,
    /// The server's executable, for `server_exe` rules (under a shim it may differ from what
    /// records say of the server until it settles).
    pub server_exe: Option<String>,
    /// The server's working directory, and its command line as it runs (directories on it
    /// are roots relative paths may resolve against).
    pub cwd: Option<String>,
    pub argv: Vec<String>,
    /// Facts for the `session_start` record besides the agent host and the chain.
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// The session, its context, and its `session_start` record (to be committed before the
/// session's first message is acted on).
pub struct Started {
    pub session: Session,
    pub ctx: Arc<Context>,
    pub record: Record,
}

pub fn start(s: Start) -> Started {
    let Parties {
        principal,
        host,
        shim,
        chain,
    } = s.parties;
    let ctx = Arc::new(Context {
        session: audit::random_id().into(),
        transport: s.transport,
        policy_sha256: s.policy.sha256().to_string(),
        mode: s.policy.mode(),
        principal: raw(&principal),
        agent_host: raw(&host.as_ref().map(Link::long)),
        chain: raw(&chain.iter().map(Link::short).collect::<Vec<_>>()),
        server: s.server.raw(),
    });
    let subject = Subject {
        principal: principal
            .as_ref()
            .map(|p| crate::policy::Principal::from_uid(p.uid)),
        ancestry: Some(
            shim.iter()
                .chain(chain.iter())
                .map(|p| Ancestor {
                    exe: p.exe.clone(),
                    comm: p.comm.clone(),
                })
                .collect(),
        ),
        host_exe: host.as_ref().and_then(|h| h.exe.clone()),
        server_exe: s.server_exe,
        roots: Subject::roots_from_argv(&s.argv, s.cwd.as_deref()),
        cwd: s.cwd,
    };
    let session = Session::new(
        s.server.name.clone(),
        s.policy,
        ctx.clone(),
        s.max_message,
        subject,
    );
    let mut detail = s.detail;
    detail.insert(
        "agent_host".into(),
        serde_json::to_value(&host).unwrap_or_default(),
    );
    detail.insert(
        "chain".into(),
        serde_json::to_value(&chain).unwrap_or_default(),
    );
    let mut record = Record::new(audit::Kind::SessionStart, &ctx);
    record.detail = Some(serde_json::Value::Object(detail));
    Started {
        session,
        ctx,
        record,
    }
}

/// A value as a raw JSON field of records, its object keys in order.
pub fn raw<T: Serialize>(v: &T) -> Box<RawValue> {
    serde_json::to_value(v)
        .and_then(|v| serde_json::value::to_raw_value(&v))
        .unwrap_or_else(|_| crate::jsonrpc::null_id().to_owned())
}
