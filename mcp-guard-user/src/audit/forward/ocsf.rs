//! Records as OCSF API Activity events (class 6003, category Application Activity), OCSF
//! schema [`VERSION`], with the Security Control and Host profiles. The mapping is
//! documented as a table in the README (Audit, SIEM forwarding); the snapshot tests pin it.

use serde_json::{Map, Value, json};

use super::syslog::Severity;

/// The OCSF schema version the events follow.
pub const VERSION: &str = "1.3.0";
const CLASS_UID: u64 = 6003;
const CATEGORY_UID: u64 = 6;

/// Record fields carried over into OCSF attributes in full; every other field goes to
/// `unmapped` under its own name.
const MAPPED: &[&str] = &[
    "seq",
    "time",
    "id",
    "session",
    "method",
    "tool",
    "request_id",
    "decision",
    "reason",
    "protocol",
];

/// The OCSF event for the record `rec`; `hostname` is the device the log was written on.
pub fn event(rec: &Value, hostname: &str) -> Value {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    let kind = s("kind").unwrap_or_default();
    let method = s("method");
    let (activity_id, activity_name) = activity(kind, method);
    let severity = Severity::of(rec);
    let severity_id = match severity {
        Severity::Alert => 4,
        Severity::Warning => 3,
        Severity::Notice => 2,
        Severity::Info => 1,
    };
    let error = rec.pointer("/outcome/error").and_then(Value::as_bool);
    let decision = s("decision");
    let (status_id, status) = match (decision, error) {
        (Some("deny"), _) | (_, Some(true)) => (2, "Failure"),
        (Some("allow"), _) | (_, Some(false)) => (1, "Success"),
        _ => (0, "Unknown"),
    };

    let mut ev = Map::new();
    ev.insert("class_uid".into(), json!(CLASS_UID));
    ev.insert("class_name".into(), json!("API Activity"));
    ev.insert("category_uid".into(), json!(CATEGORY_UID));
    ev.insert("category_name".into(), json!("Application Activity"));
    ev.insert("activity_id".into(), json!(activity_id));
    ev.insert("activity_name".into(), json!(activity_name));
    ev.insert("type_uid".into(), json!(CLASS_UID * 100 + activity_id));
    ev.insert(
        "type_name".into(),
        json!(format!("API Activity: {activity_name}")),
    );
    if let Some(ms) = s("time").and_then(epoch_ms) {
        ev.insert("time".into(), json!(ms));
    }
    ev.insert("severity_id".into(), json!(severity_id));
    ev.insert(
        "severity".into(),
        json!(["", "Informational", "Low", "Medium", "High"][severity_id]),
    );
    ev.insert("status_id".into(), json!(status_id));
    ev.insert("status".into(), json!(status));
    if let Some(reason) = s("reason") {
        ev.insert("status_detail".into(), json!(reason));
    }
    if let Some(code) = rec.pointer("/outcome/error_code").and_then(Value::as_i64) {
        ev.insert("status_code".into(), json!(code.to_string()));
    }
    match decision {
        Some("allow") => {
            ev.insert("action_id".into(), json!(1));
            ev.insert("action".into(), json!("Allowed"));
            ev.insert("disposition_id".into(), json!(1));
            ev.insert("disposition".into(), json!("Allowed"));
        }
        Some("deny") => {
            ev.insert("action_id".into(), json!(2));
            ev.insert("action".into(), json!("Denied"));
            ev.insert("disposition_id".into(), json!(2));
            ev.insert("disposition".into(), json!("Blocked"));
        }
        Some("ask") => {
            // Held for a person's approval; the `approval` record says how it ended.
            ev.insert("action_id".into(), json!(99));
            ev.insert("action".into(), json!("Held for approval"));
            ev.insert("disposition_id".into(), json!(99));
            ev.insert("disposition".into(), json!("Held for approval"));
        }
        _ => {}
    }
    ev.insert("message".into(), json!(message(rec)));
    ev.insert("actor".into(), actor(rec));
    ev.insert("api".into(), api(rec));
    if let Some(r) = resource(rec) {
        ev.insert("resources".into(), json!([r]));
    }
    ev.insert(
        "device".into(),
        json!({ "hostname": hostname, "type_id": 0, "type": "Unknown" }),
    );
    let mut metadata = json!({
        "version": VERSION,
        "product": { "name": "mcp-guard", "vendor_name": "mcp-guard", "version": env!("CARGO_PKG_VERSION") },
        "profiles": ["security_control", "host"],
        "log_name": "audit",
    });
    for (to, from) in [
        ("uid", "id"),
        ("correlation_uid", "session"),
        ("original_time", "time"),
    ] {
        if let Some(v) = s(from) {
            metadata[to] = json!(v);
        }
    }
    if let Some(seq) = rec.get("seq").and_then(Value::as_u64) {
        metadata["sequence"] = json!(seq);
    }
    ev.insert("metadata".into(), metadata);
    let unmapped: Map<String, Value> = rec
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !MAPPED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    ev.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(ev)
}

/// API Activity's activity: Read for methods that only read, Other (named after the
/// method, or the record kind when there is none) for the rest.
fn activity(kind: &str, method: Option<&str>) -> (u64, String) {
    match method {
        Some(m) if is_read(m) => (2, "Read".into()),
        Some(m) => (99, m.to_string()),
        None => (99, kind.to_string()),
    }
}

fn is_read(method: &str) -> bool {
    matches!(
        method,
        "resources/read" | "prompts/get" | "roots/list" | "ping" | "server/discover"
    ) || method.ends_with("/list")
        || method.ends_with("/templates/list")
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn epoch_ms(time: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(time).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// A one-line summary: `tools/call write_file denied by rule fs-no-writes`.
fn message(rec: &Value) -> String {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    let mut m = s("method").or(s("kind")).unwrap_or("record").to_string();
    if let Some(t) = s("tool") {
        m.push(' ');
        m.push_str(t);
    }
    match (s("decision"), s("rule")) {
        (Some("deny"), Some(r)) => m.push_str(&format!(" denied by rule {r}")),
        (Some("allow"), Some(r)) => m.push_str(&format!(" allowed by rule {r}")),
        (Some("ask"), Some(r)) => m.push_str(&format!(" held for approval by rule {r}")),
        _ => {}
    }
    m
}

/// The user (from the kernel) and the process that made the request: the agent host for
/// requests from the client, the server for requests from the server.
fn actor(rec: &Value) -> Value {
    let mut actor = Map::new();
    if let Some(p) = rec.get("principal") {
        let mut user = Map::new();
        if let Some(uid) = p.get("uid").and_then(Value::as_u64) {
            user.insert("uid".into(), json!(uid.to_string()));
        }
        if let Some(name) = p.get("user").and_then(Value::as_str) {
            user.insert("name".into(), json!(name));
        }
        if let Some(groups) = p.get("groups").and_then(Value::as_array) {
            let groups: Vec<Value> = groups
                .iter()
                .filter_map(Value::as_u64)
                .map(|g| json!({ "uid": g.to_string() }))
                .collect();
            user.insert("groups".into(), Value::Array(groups));
        }
        actor.insert("user".into(), Value::Object(user));
    }
    let from_server = rec.get("direction").and_then(Value::as_str) == Some("server_to_client")
        && rec.get("kind").and_then(Value::as_str) != Some("response");
    let who = if from_server {
        rec.get("server")
    } else {
        rec.get("agent_host")
    };
    if let Some(p) = who.and_then(process) {
        actor.insert("process".into(), p);
    }
    if let Some(session) = rec.get("session").and_then(Value::as_str) {
        actor.insert("session".into(), json!({ "uid": session }));
    }
    actor.insert("app_name".into(), json!("mcp-guard"));
    Value::Object(actor)
}

/// An OCSF Process from a record's process (`pid`, `comm`, `exe`, `exec_id`, and the
/// command line as `cmdline` or `argv`).
fn process(p: &Value) -> Option<Value> {
    let o = p.as_object()?;
    let mut out = Map::new();
    if let Some(pid) = o.get("pid").and_then(Value::as_i64) {
        out.insert("pid".into(), json!(pid));
    }
    if let Some(exec_id) = o.get("exec_id").and_then(Value::as_str) {
        out.insert("uid".into(), json!(exec_id));
    }
    if let Some(comm) = o.get("comm").and_then(Value::as_str) {
        out.insert("name".into(), json!(comm));
    }
    if let Some(exe) = o.get("exe").and_then(Value::as_str) {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        out.insert(
            "file".into(),
            json!({ "path": exe, "name": name, "type_id": 1, "type": "Regular File" }),
        );
    }
    let argv = o
        .get("cmdline")
        .or_else(|| o.get("argv"))
        .and_then(Value::as_array);
    if let Some(argv) = argv {
        let words: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
        out.insert("cmd_line".into(), json!(words.join(" ")));
    }
    Some(Value::Object(out))
}

/// The API call: the MCP method on the named server, with the JSON-RPC id.
fn api(rec: &Value) -> Value {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    let mut api = json!({ "operation": s("method").or(s("kind")).unwrap_or_default() });
    if let Some(name) = rec.pointer("/server/name").and_then(Value::as_str) {
        api["service"] = json!({ "name": name });
    }
    if let Some(v) = s("protocol") {
        api["version"] = json!(v);
    }
    if let Some(id) = s("request_id") {
        api["request"] = json!({ "uid": id });
    }
    if let Some(outcome) = rec.get("outcome") {
        let mut response = Map::new();
        if let Some(code) = outcome.get("error_code").and_then(Value::as_i64) {
            response.insert("code".into(), json!(code));
        }
        if outcome.get("error").and_then(Value::as_bool) == Some(true) {
            response.insert("error".into(), json!("error"));
        }
        api["response"] = Value::Object(response);
    }
    api
}

/// What the call acts on: the tool (`tools/call`), prompt (`prompts/get`) or resource URI
/// (`resources/read`).
fn resource(rec: &Value) -> Option<Value> {
    let name = rec.get("tool").and_then(Value::as_str)?;
    let kind = match rec.get("method").and_then(Value::as_str) {
        Some("prompts/get") => "prompt",
        Some("resources/read") => "resource",
        _ => "tool",
    };
    Some(json!({ "name": name, "type": kind }))
}
