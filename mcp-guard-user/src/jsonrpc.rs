//! JSON-RPC 2.0 messages as they cross the shim: parsed strictly, never re-serialized.
//!
//! The envelope is read in one pass that borrows its fields without copying (and rejects a
//! duplicated envelope field). The `params` of requests and notifications, what policy
//! decides on, are then built into a value with duplicate keys rejected at every depth, so
//! the guard and the server cannot read different values for the same key. Results are
//! validated as JSON but not taken apart.

use std::borrow::Cow;
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
    /// The server's response is larger than the policy allows.
    pub const RESPONSE_TOO_LARGE: i64 = -32086;
}

/// Why a line is not an acceptable message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("invalid UTF-8 at byte {offset}")]
    Utf8 { offset: usize },
    #[error("invalid JSON: {reason}")]
    Json { reason: String },
    #[error("not a JSON-RPC message: {reason}")]
    Shape { reason: String },
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
            Malformed::Invalid { .. } | Malformed::Shape { .. } | Malformed::EmptyBatch => {
                code::INVALID_REQUEST
            }
            Malformed::TooLong { .. } => code::TOO_LARGE,
        }
    }

    /// A short stable name for audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            Malformed::Utf8 { .. } => "invalid_utf8",
            Malformed::Json { .. } => "invalid_json",
            Malformed::DuplicateKey { .. } => "duplicate_key",
            Malformed::Invalid { .. } | Malformed::Shape { .. } => "invalid_message",
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
    /// The message's JSON text as received.
    pub raw: &'a str,
    pub kind: Kind,
    /// The id exactly as sent (`Request` and `Response` only).
    pub id: Option<&'a RawValue>,
    pub method: Option<Cow<'a, str>>,
    pub params: Option<&'a RawValue>,
    /// `params` as a value, for requests and notifications.
    pub params_value: Option<serde_json::Value>,
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
    let text = std::str::from_utf8(line).map_err(|e| Malformed::Utf8 {
        offset: e.valid_up_to(),
    })?;
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|e| json_error(&e, text))?;
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
        _ => match serde_json::from_str::<de::IgnoredAny>(text) {
            Ok(_) => Err(Malformed::Invalid {
                reason: "not an object or a batch",
            }),
            Err(e) => Err(json_error(&e, text)),
        },
    }
}

/// Invalid JSON is a parse error; valid JSON of the wrong shape is an invalid request.
fn json_error(e: &serde_json::Error, text: &str) -> Malformed {
    use serde_json::error::Category;
    let reason = e.to_string();
    match e.classify() {
        // A type error can come before a syntax error further on: only valid JSON is "data".
        Category::Data if serde_json::from_str::<de::IgnoredAny>(text).is_err() => {
            let reason = serde_json::from_str::<de::IgnoredAny>(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or(reason);
            Malformed::Json { reason }
        }
        Category::Data => match reason.strip_prefix("duplicate field `") {
            Some(rest) => Malformed::DuplicateKey {
                key: rest.split('`').next().unwrap_or_default().to_string(),
            },
            None => Malformed::Shape { reason },
        },
        _ => Malformed::Json { reason },
    }
}

fn message(text: &str) -> Result<Message<'_>, Malformed> {
    if !text.trim_start().starts_with('{') {
        return Err(Malformed::Invalid {
            reason: "not an object",
        });
    }
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| json_error(&e, text))?;
    if env.jsonrpc.as_deref() != Some("2.0") {
        return Err(Malformed::Invalid {
            reason: "`jsonrpc` is not \"2.0\"",
        });
    }
    if let Some(id) = env.id {
        let ok = matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'));
        // A response to a request whose id could not be read carries `null`.
        let null_answer = env.method.is_none() && id.get() == "null";
        if !ok && !null_answer {
            return Err(Malformed::Invalid {
                reason: "`id` is not a string or a number",
            });
        }
    }
    let kind = match (&env.method, env.id, env.result, env.error) {
        (Some(_), Some(_), None, None) => Kind::Request,
        (Some(_), None, None, None) => Kind::Notification,
        (None, Some(_), Some(_), None) | (None, Some(_), None, Some(_)) => Kind::Response,
        _ => {
            return Err(Malformed::Invalid {
                reason: "neither a request, a notification nor a response",
            });
        }
    };
    let params_value = match env.params {
        Some(p) if !matches!(p.get().as_bytes().first(), Some(b'{' | b'[')) => {
            return Err(Malformed::Invalid {
                reason: "`params` is not an object or an array",
            });
        }
        Some(p) if kind != Kind::Response => Some(checked_value(p.get())?),
        _ => None,
    };
    if let Some(body) = env.result.or(env.error) {
        check_no_duplicate_keys(body.get())?;
    }
    Ok(Message {
        raw: text,
        kind,
        id: env.id,
        method: env.method,
        params: env.params,
        params_value,
        result: env.result,
        error: env.error,
    })
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

/// Parses a JSON document into a value, rejecting a duplicate key in any object.
pub fn checked_value(text: &str) -> Result<serde_json::Value, Malformed> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut dup = None;
    let res = Checked { dup: &mut dup }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (res, dup) {
        (_, Some(key)) => Err(Malformed::DuplicateKey { key }),
        (Err(e), None) => Err(json_error(&e, text)),
        (Ok(v), None) => Ok(v),
    }
}

/// Rejects a duplicate key at any depth without building anything (for results, which
/// are passed on, not interpreted).
pub fn check_no_duplicate_keys(text: &str) -> Result<(), Malformed> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut dup = None;
    let res = NoDupes { dup: &mut dup }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match (res, dup) {
        (_, Some(key)) => Err(Malformed::DuplicateKey { key }),
        (Err(e), None) => Err(json_error(&e, text)),
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

impl<'de> Visitor<'de> for NoDupes<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(NoDupes {
                dup: &mut *self.dup,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys borrow from the input unless they contain escapes; small objects stay on a Vec.
        let mut keys: Vec<std::borrow::Cow<'de, str>> = Vec::new();
        let mut set: std::collections::HashSet<std::borrow::Cow<'de, str>> =
            std::collections::HashSet::new();
        while let Some(key) = map.next_key::<BorrowedKey<'de>>()? {
            let key = key.0;
            let seen = if set.is_empty() && keys.len() < 16 {
                let dup = keys.contains(&key);
                keys.push(key.clone());
                dup
            } else {
                if set.is_empty() {
                    set.extend(keys.drain(..));
                }
                !set.insert(key.clone())
            };
            if seen {
                *self.dup = Some(key.into_owned());
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(NoDupes {
                dup: &mut *self.dup,
            })?;
        }
        Ok(())
    }
}

/// A map key, borrowed when the input allows.
struct BorrowedKey<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for BorrowedKey<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedKey(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedKey(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Builds a `Value`, stopping at the first duplicate key (recorded in `dup`).
struct Checked<'d> {
    dup: &'d mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Checked<'_> {
    type Value = serde_json::Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<serde_json::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked<'_> {
    type Value = serde_json::Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map_or(serde_json::Value::Null, serde_json::Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Checked {
            dup: &mut *self.dup,
        })? {
            out.push(v);
        }
        Ok(out.into())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                *self.dup = Some(key);
                return Err(de::Error::custom("duplicate key"));
            }
            let v = map.next_value_seed(Checked {
                dup: &mut *self.dup,
            })?;
            out.insert(key, v);
        }
        Ok(out.into())
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
        if id.get().starts_with('"') {
            return match serde_json::from_str::<String>(id.get()) {
                Ok(s) => IdKey::Str(s),
                Err(_) => IdKey::Other(id.get().to_string()),
            };
        }
        if let Ok(i) = id.get().parse::<i64>() {
            return IdKey::Int(i.into());
        }
        if let Ok(n) = serde_json::from_str::<serde_json::Number>(id.get()) {
            if let Some(i) = n.as_i64() {
                return IdKey::Int(i.into());
            }
            if let Some(u) = n.as_u64() {
                return IdKey::Int(u.into());
            }
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                return IdKey::Int(f as i128);
            }
        }
        IdKey::Other(id.get().to_string())
    }
}

/// The id of a message as a plain string for records (strings unquoted).
pub fn id_text(id: &RawValue) -> String {
    if id.get().starts_with('"')
        && let Ok(s) = serde_json::from_str::<String>(id.get())
    {
        return s;
    }
    id.get().to_string()
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
    let resp = ErrorResponse {
        jsonrpc: "2.0",
        id,
        error,
    };
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
        assert_eq!(
            (m.kind, m.id.map(|i| i.get()), m.method.as_deref()),
            (Kind::Request, Some("7"), Some("tools/call"))
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#).kind,
            Kind::Notification
        );
        let r = single(r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"m"}}"#);
        assert_eq!((r.kind, r.is_error()), (Kind::Response, true));
    }

    #[test]
    fn ids_of_every_allowed_type_are_kept_verbatim() {
        for id in [
            "0",
            "-1",
            "1.5",
            "1e3",
            "18446744073709551616",
            r#""""#,
            r#""\u00e9x""#,
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            assert_eq!(
                single(&line).id.map(|i| i.get().to_string()),
                Some(id.to_string())
            );
        }
    }

    #[test]
    fn bad_ids_are_invalid_requests() {
        for id in ["true", "{}", "[1]", "null"] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            assert!(
                matches!(parse(line.as_bytes()), Err(Malformed::Invalid { .. })),
                "{id}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth_and_through_escapes() {
        let cases = [
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"p":1,"p":2}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","na\u006de":"write"}}"#,
        ];
        for c in cases {
            assert!(
                matches!(parse(c.as_bytes()), Err(Malformed::DuplicateKey { .. })),
                "{c}"
            );
        }
        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"x","params":[{"a":1,"a":1}]}]"#;
        let Ok(Parsed::Batch(items)) = parse(batch) else {
            panic!()
        };
        assert!(matches!(
            &items[0],
            Err((_, Malformed::DuplicateKey { .. }))
        ));
    }

    #[test]
    fn invalid_utf8_and_json_are_parse_errors() {
        assert_eq!(
            parse(b"{\"a\":\"\xff\"}").unwrap_err(),
            Malformed::Utf8 { offset: 6 }
        );
        assert!(matches!(parse(b"{\"a\":"), Err(Malformed::Json { .. })));
        assert!(matches!(parse(b"{} {}"), Err(Malformed::Json { .. })));
        assert!(matches!(parse(b"garbage"), Err(Malformed::Json { .. })));
        assert!(matches!(
            parse(br#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#),
            Err(Malformed::Shape { .. })
        ));
        assert_eq!(parse(b"42").unwrap_err().code(), code::INVALID_REQUEST);
        assert_eq!(parse(b"[]").unwrap_err(), Malformed::EmptyBatch);
    }

    #[test]
    fn batch_elements_are_judged_one_by_one() {
        let line = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 3, {"jsonrpc":"2.0","id":"b","oops":1}]"#;
        let Ok(Parsed::Batch(items)) = parse(line) else {
            panic!()
        };
        assert!(items[0].is_ok());
        assert!(matches!(&items[1], Err((None, Malformed::Invalid { .. }))));
        assert!(matches!(&items[2], Err((Some(id), _)) if id.get() == "\"b\""));
    }

    #[test]
    fn sniffs_the_id_of_an_unparsable_message() {
        assert_eq!(
            sniff_id(r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"#)
                .map(|i| i.get()),
            Some("42")
        );
        assert_eq!(
            sniff_id(r#" { "id" : "x\"y", "#).map(|i| i.get()),
            Some(r#""x\"y""#)
        );
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
        let out = error_response(
            id,
            ErrorObject {
                code: code::DENIED,
                message: "no",
                data: None,
            },
        );
        assert_eq!(
            out,
            br#"{"jsonrpc":"2.0","id":1.50,"error":{"code":-32080,"message":"no"}}"#
        );
    }
}
