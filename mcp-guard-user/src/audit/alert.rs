//! Every alert mcp-guard raises, and what each one carries. An alert record's `detail` is
//! one of these, with `alert` naming it; the README's lists of alerts and SIEM rules key on
//! those names and fields.

use std::path::PathBuf;

use serde::Serialize;

use crate::identity::Link;
use crate::pins::Program;
use crate::policy::Reaction;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "alert", rename_all = "snake_case")]
pub enum Alert {
    // The guard, in every transport.
    /// A request named one of mcp-guard's own files (the record's `rule` says which rule).
    GuardFilesTargeted {
        path: String,
    },
    /// The session wrote more records than its budget allows (`reason` says how many).
    AuditBudgetExceeded {
        audit_burst: u32,
        audit_rate: u32,
    },
    /// Requests were refused while the in-flight table was full.
    InFlightLimit {
        refused: u64,
        max_in_flight: usize,
    },
    /// The server's program is not the one pinned.
    ServerBinaryChanged {
        pinned: Program,
        seen: Program,
    },
    /// The pins file could not be read or written (`reason` says why).
    PinsUnavailable {},
    ToolDefinitionChanged {
        pinned_sha256: String,
        seen_sha256: String,
    },
    ToolAdded {
        seen_sha256: String,
        /// A pinned tool whose name looks like the new one.
        resembles: Option<String>,
    },
    DuplicateToolName {
        count: usize,
    },
    /// A changed policy did not load (`reason` says why); the one in force stays.
    PolicyReloadFailed {
        in_force: String,
    },

    // The observer.
    /// A stdio server nobody wrapped.
    UnwrappedServer {
        server: String,
        pid: u32,
        host: Option<Link>,
        /// Which listed agent host the host is, if any.
        host_kind: Option<String>,
        user: Option<String>,
        uid: u32,
        action: Reaction,
    },
    /// A call the policy denies went into an unwrapped server.
    DeniedCallObserved {
        pid: Option<u32>,
        tool: Option<String>,
        rule: Option<String>,
        action: Reaction,
        killed: bool,
    },
    /// A wrapped server read a request its shim never received from the host.
    InjectedMessage {
        server_pid: u32,
        shim_pid: u32,
        method: String,
        request_id: Option<String>,
        why: &'static str,
    },
    /// A shim read a request from its host and did not record it.
    UnrecordedRequest {
        shim_pid: u32,
        method: String,
        request_id: String,
        audit: PathBuf,
        why: &'static str,
    },
    /// A captured process moved bytes with a system call whose bytes are not copied.
    UnfollowedIo {
        pid: u32,
        fd: u32,
        call: &'static str,
        direction: &'static str,
        carries: &'static str,
        action: &'static str,
        killed: bool,
        cmdline: Vec<String>,
    },
    /// A gated reader is traced: its gate cannot hold it.
    TracedServer {
        pid: u32,
        tracer: u32,
        tracer_cmdline: Vec<String>,
        action: &'static str,
        killed: bool,
        why: &'static str,
    },
    /// Under `denied = "kill"`, a host's child stopped at start-up: a read no daemon judged.
    StoppedServerFound {
        pid: u32,
        cmdline: Vec<String>,
        action: &'static str,
        killed: bool,
        why: &'static str,
    },
    /// A host config launches a stdio server without the shim.
    HostConfigUnwrapped {
        file: PathBuf,
        host: &'static str,
        server: String,
        command: String,
    },
    /// ... and the daemon wrapped it again (`host_configs = "rewrap"`).
    HostConfigRewrapped {
        file: PathBuf,
        host: &'static str,
        server: String,
        command: String,
    },
}

impl Alert {
    /// The alert's name, as `detail.alert` carries it.
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("alert")?.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_serialize_as_their_records_always_did() {
        let a = Alert::DeniedCallObserved {
            pid: Some(7),
            tool: Some("write_file".into()),
            rule: None,
            action: Reaction::Kill,
            killed: true,
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"alert": "denied_call_observed", "pid": 7, "tool": "write_file",
                "rule": null, "action": "kill", "killed": true})
        );
        assert_eq!(a.name(), "denied_call_observed");
        assert_eq!(
            serde_json::to_value(Alert::PinsUnavailable {}).unwrap(),
            serde_json::json!({"alert": "pins_unavailable"})
        );
    }
}
