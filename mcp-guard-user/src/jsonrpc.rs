//! JSON-RPC 2.0 messages as they cross the shim: parsed strictly, never re-serialized.
//!
//! Parsing is two passes over the line: one that validates the whole document and rejects
//! duplicate object keys at any depth (so the guard and the server cannot read different
//! values for the same key), and one that borrows the envelope fields without copying.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Error codes the shim answers with. Documented in the README; never renumbered.
pub mod code {
    /// Invalid JSON or invalid UTF-8.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC 2.0 request, notification or response.
    pub const INVALID_REQUEST: i64 = -32600;
    /// A policy rule denied the request.
    pub const DENIED: i64 = -32080;
    /// The request was part of a batch in which another element was refused.
    pub const BATCH_REFUSED: i64 = -32081;
    /// The message is longer than the configured maximum.
    pub const TOO_LARGE: i64 = -32082;
    /// An object in the message has the same key twice.
    pub const DUPLICATE_KEY: i64 = -32083;
    /// The server exited, or sent something unusable, before answering.
    pub const SERVER_FAILED: i64 = -32084;
    /// The audit record could not be written, so the request was not forwarded.
    pub const AUDIT_UNAVAILABLE: i64 = -32085;
}

/// Why a line is not an acceptable message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("invalid UTF-8 at byte {offset}")]
    Utf8 { offset: usize },
    #[error("invalid JSON: {reason}")]
    Json { reason: String },
    #[error("duplicate key `{key}`")]
    DuplicateKey { key: String },
    #[error("not a JSON-RPC message: {reason}")]
    Invalid { reason: &'static str },
    #[error("empty batch")]
    EmptyBatch,
    #[error("message longer than {max} bytes")]
    TooLong { max: usize },
}

impl Malformed {
    /// The JSON-RPC error code for this fault.
    pub fn code(&self) -> i64 {
        match self {
            Malformed::Utf8 { .. } | Malformed::Json { .. } => code::PARSE_ERROR,
            Malformed::DuplicateKey { .. } => code::DUPLICATE_KEY,
            Malformed::Invalid { .. } | Malformed::EmptyBatch => code::INVALID_REQUEST,
            Malformed::TooLong { .. } => code::TOO_LARGE,
        }
    }

    /// A short stable name for audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            Malformed::Utf8 { .. } => "invalid_utf8",
            Malformed::Json { .. } => "invalid_json",
            Malformed::DuplicateKey { .. } => "duplicate_key",
            Malformed::Invalid { .. } => "invalid_message",
            Malformed::EmptyBatch => "empty_batch",
            Malformed::TooLong { .. } => "too_long",
        }
    }
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// One JSON-RPC message, borrowed from the line it came in.
#[derive(Debug)]
pub struct Message<'a> {
    pub kind: Kind,
    /// The id exactly as sent (`Request` and `Response` only).
    pub id: Option<&'a RawValue>,
    pub method: Option<Cow<'a, str>>,
    pub params: Option<&'a RawValue>,
    pub result: Option<&'a RawValue>,
    pub error: Option<&'a RawValue>,
}

impl Message<'_> {
    /// Whether a response carries `error` rather than `result`.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }
}

/// A parsed line: one message or a batch. Batch elements are judged one by one.
#[derive(Debug)]
pub enum Parsed<'a> {
    Single(Message<'a>),
    Batch(Vec<Result<Message<'a>, (Option<&'a RawValue>, Malformed)>>),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    // `deserialize_with` keeps an explicit `null` id distinguishable from a missing one.
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

fn present<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one line (without its ending).
pub fn parse(line: &[u8]) -> Result<Parsed<'_>, Malformed> {
    let text = std::str::from_utf8(line).map_err(|e| Malformed::Utf8 { offset: e.valid_up_to() })?;
    check_no_duplicate_keys(text)?;
    let first = text.trim_start().as_bytes().first().copied();
    match first {
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|e| Malformed::Json { reason: e.to_string() })?;
            if items.is_empty() {
                return Err(Malformed::EmptyBatch);
            }
            Ok(Parsed::Batch(
                items
                    .into_iter()
                    .map(|item| message(item.get()).map_err(|e| (sniff_id(item.get()), e)))
                    .collect(),
            ))
        }
        Some(b'{') => message(text).map(Parsed::Single),
        _ => Err(Malformed::Invalid { reason: "not an object or a batch" }),
    }
}

fn message(text: &str) -> Result<Message<'_>, Malformed> {
    if !text.trim_start().starts_with('{') {
        return Err(Malformed::Invalid { reason: "not an object" });
    }
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| Malformed::Json { reason: e.to_string() })?;
    if env.jsonrpc.as_deref() != Some("2.0") {
        return Err(Malformed::Invalid { reason: "`jsonrpc` is not \"2.0\"" });
    }
    if let Some(id) = env.id {
        let ok = matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'));
        if !ok && !(env.method.is_none() && id.get() == "null") {
            // A response to a request whose id could not be read carries `null`.
            return Err(Malformed::Invalid { reason: "`id` is not a string or a number" });
        }
    }
    let kind = match (&env.method, env.id, env.result, env.error) {
        (Some(_), Some(_), None, None) => Kind::Request,
        (Some(_), None, None, None) => Kind::Notification,
        (None, Some(_), Some(_), None) | (None, Some(_), None, Some(_)) => Kind::Response,
        _ => return Err(Malformed::Invalid { reason: "neither a request, a notification nor a response" }),
    };
    if let Some(p) = env.params {
        if !matches!(p.get().as_bytes().first(), Some(b'{' | b'[')) {
            return Err(Malformed::Invalid { reason: "`params` is not an object or an array" });
        }
    }
    Ok(Message { kind, id: env.id, method: env.method, params: env.params, result: env.result, error: env.error })
}

/// Recovers the id of a message that failed to parse, when it can be read unambiguously
/// from its beginning (a top-level `"id"` among the first keys). Used to answer the sender.
pub fn sniff_id(text: &str) -> Option<&RawValue> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?[0-9]+|"(?:[^"\\\x00-\x1f]|\\.){0,256}")\s*[,}]"#,
        )
        .expect("static regex")
    });
    let caps = RE.captures(text)?;
    let raw = caps.get(1)?.as_str();
    serde_json::from_str::<&RawValue>(raw).ok()
}

/// Rejects documents that are not JSON or that have a duplicate key in any object.
pub fn check_no_duplicate_keys(text: &str) -> Result<(), Malformed> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut dup = None;
    let res = NoDupes { dup: &mut dup }.deserialize(&mut de).and_then(|()| de.end());
    match (res, dup) {
        (_, Some(key)) => Err(Malformed::DuplicateKey { key }),
        (Err(e), None) => Err(Malformed::Json { reason: e.to_string() }),
        (Ok(()), None) => Ok(()),
    }
}

struct NoDupes<'d> {
    dup: &'d mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for NoDupes<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! accept {
    ($($f:ident: $t:ty),*) => { $(fn $f<E: de::Error>(self, _: $t) -> Result<(), E> { Ok(()) })* };
}

impl<'de> Visitor<'de> for NoDupes<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    accept!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDupes { dup: &mut *self.dup })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if keys.contains(&key) {
                *self.dup = Some(key.into_owned());
                // Stop here; the caller reports the duplicate, not this error.
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(NoDupes { dup: &mut *self.dup })?;
            if self.dup.is_some() {
                return Err(de::Error::custom("duplicate key"));
            }
            keys.insert(key);
        }
        Ok(())
    }
}

/// A key under which an id is tracked: ids are compared by JSON value, not spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdKey {
    Str(String),
    Int(i128),
    Other(String),
}

impl IdKey {
    pub fn of(id: &RawValue) -> IdKey {
        if let Ok(s) = serde_json::from_str::<String>(id.get()) {
            return IdKey::Str(s);
        }
        if let Ok(n) = serde_json::from_str::<serde_json::Number>(id.get()) {
            if let Some(i) = n.as_i64() {
                return IdKey::Int(i.into());
            }
            if let Some(u) = n.as_u64() {
                return IdKey::Int(u.into());
            }
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    return IdKey::Int(f as i128);
                }
            }
        }
        IdKey::Other(id.get().to_string())
    }
}

/// The id of a message as a plain string for records (strings unquoted).
pub fn id_text(id: &RawValue) -> String {
    serde_json::from_str::<String>(id.get()).unwrap_or_else(|_| id.get().to_string())
}

#[derive(Serialize)]
struct ErrorResponse<'a> {
    jsonrpc: &'static str,
    id: &'a RawValue,
    error: ErrorObject<'a>,
}

/// The `error` member of a JSON-RPC error response.
#[derive(Serialize)]
pub struct ErrorObject<'a> {
    pub code: i64,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The JSON text `null`, for errors about messages whose id is unknown.
pub fn null_id() -> &'static RawValue {
    static NULL: std::sync::LazyLock<Box<RawValue>> =
        std::sync::LazyLock::new(|| RawValue::from_string("null".into()).expect("null is JSON"));
    &NULL
}

/// Serializes an error response for `id` (without a line ending).
pub fn error_response(id: &RawValue, error: ErrorObject<'_>) -> Vec<u8> {
    let resp = ErrorResponse { jsonrpc: "2.0", id, error };
    // Serializing plain strings, numbers and a `Value` cannot fail.
    serde_json::to_vec(&resp).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(s: &str) -> Message<'_> {
        match parse(s.as_bytes()) {
            Ok(Parsed::Single(m)) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn classifies_requests_notifications_and_responses() {
        let m = single(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#);
        assert_eq!((m.kind, m.id.map(|i| i.get()), m.method.as_deref()), (Kind::Request, Some("7"), Some("tools/call")));
        assert_eq!(single(r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#).kind, Kind::Notification);
        let r = single(r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"m"}}"#);
        assert_eq!((r.kind, r.is_error()), (Kind::Response, true));
    }

    #[test]
    fn ids_of_every_allowed_type_are_kept_verbatim() {
        for id in ["0", "-1", "1.5", "1e3", "18446744073709551616", r#""""#, r#""\u00e9x""#] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            assert_eq!(single(&line).id.map(|i| i.get().to_string()), Some(id.to_string()));
        }
    }

    #[test]
    fn bad_ids_are_invalid_requests() {
        for id in ["true", "{}", "[1]", "null"] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            assert!(matches!(parse(line.as_bytes()), Err(Malformed::Invalid { .. })), "{id}");
        }
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth_and_through_escapes() {
        let cases = [
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"p":1,"p":2}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","na\u006de":"write"}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"x","params":[{"a":1,"a":1}]}]"#,
        ];
        for c in cases {
            assert!(matches!(parse(c.as_bytes()), Err(Malformed::DuplicateKey { .. })), "{c}");
        }
    }

    #[test]
    fn invalid_utf8_and_json_are_parse_errors() {
        assert_eq!(parse(b"{\"a\":\"\xff\"}").unwrap_err(), Malformed::Utf8 { offset: 6 });
        assert!(matches!(parse(b"{\"a\":"), Err(Malformed::Json { .. })));
        assert!(matches!(parse(b"{} {}"), Err(Malformed::Json { .. })));
        assert_eq!(parse(b"42").unwrap_err().code(), code::INVALID_REQUEST);
        assert_eq!(parse(b"[]").unwrap_err(), Malformed::EmptyBatch);
    }

    #[test]
    fn batch_elements_are_judged_one_by_one() {
        let line = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 3, {"jsonrpc":"2.0","id":"b","oops":1}]"#;
        let Ok(Parsed::Batch(items)) = parse(line) else { panic!() };
        assert!(items[0].is_ok());
        assert!(matches!(&items[1], Err((None, Malformed::Invalid { .. }))));
        assert!(matches!(&items[2], Err((Some(id), _)) if id.get() == "\"b\""));
    }

    #[test]
    fn sniffs_the_id_of_an_unparsable_message() {
        assert_eq!(sniff_id(r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"#).map(|i| i.get()), Some("42"));
        assert_eq!(sniff_id(r#" { "id" : "x\"y", "#).map(|i| i.get()), Some(r#""x\"y""#));
        assert!(sniff_id(r#"{"method":"a","id":1"#).is_none());
    }

    #[test]
    fn ids_compare_by_value() {
        let k = |s: &str| IdKey::of(serde_json::from_str::<&RawValue>(s).unwrap());
        assert_eq!(k("1"), k("1.0"));
        assert_ne!(k("1"), k("\"1\""));
        assert_eq!(k("\"\\u0061\""), k("\"a\""));
    }

    #[test]
    fn error_response_echoes_the_id_verbatim() {
        let id: &RawValue = serde_json::from_str("1.50").unwrap();
        let out = error_response(id, ErrorObject { code: code::DENIED, message: "no", data: None });
        assert_eq!(out, br#"{"jsonrpc":"2.0","id":1.50,"error":{"code":-32080,"message":"no"}}"#);
    }
}
