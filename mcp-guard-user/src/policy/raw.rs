//! The file schema, as serde reads it. Nothing here is validated beyond its TOML type;
//! `compiled.rs` turns these into rules. Every field that can be wrong in a way TOML cannot
//! see keeps its span, so errors point at it.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

/// A whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub default: Option<Spanned<RawDefault>>,
    pub mode: Option<Spanned<RawMode>>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RawRule>>,
    pub responses: Option<Spanned<RawResponses>>,
    pub observer: Option<Spanned<RawObserver>>,
    #[serde(default, rename = "test")]
    pub tests: Vec<Spanned<RawTest>>,
}

/// One `[[test]]`: a request, as `policy explain` takes it, and the decision the policy
/// must make. Run by `policy check`; enforcement only validates it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: String,
    pub server: String,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub args: Option<Spanned<serde_json::Value>>,
    /// The request as one JSON-RPC line, instead of `method`, `tool` and `args`.
    pub message: Option<Spanned<String>>,
    pub user: Option<String>,
    pub uid: Option<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub gids: Vec<u32>,
    pub home: Option<String>,
    pub server_exe: Option<String>,
    pub host_exe: Option<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub roots: Vec<String>,
    pub ancestors: Option<Vec<String>>,
    pub expect: super::Action,
    pub rule: Option<String>,
}

/// `[observer]`: what the daemon does about sessions it sees from the kernel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObserver {
    /// A stdio MCP server running without `mcp-guard wrap`.
    pub unwrapped: Option<Reaction>,
    /// A call the policy denies, seen going into an unwrapped server.
    pub denied: Option<Reaction>,
}

/// What the observer does about a finding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    /// An alert record.
    #[default]
    Alert,
    /// An alert record, and the server is killed (SIGKILL).
    Kill,
}

/// `[responses]`: what happens to what servers send back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    /// The built-in set of secret patterns (default true).
    pub redact_builtin: Option<bool>,
    /// More regexes whose matches are replaced.
    #[serde(default)]
    pub redact: Vec<Spanned<String>>,
    /// Largest response forwarded, in bytes; 0: no limit.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawDefault {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawMode {
    Enforce,
    Monitor,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawAction {
    Allow,
    Deny,
    Audit,
    Ask,
}

/// One `[[rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: Spanned<String>,
    pub description: Option<String>,
    pub server: Option<Spanned<Patterns>>,
    pub server_exe: Option<Spanned<Patterns>>,
    pub method: Option<Spanned<Patterns>>,
    pub tool: Option<Spanned<Patterns>>,
    pub user: Option<Spanned<Patterns>>,
    pub uid: Option<Spanned<Ids>>,
    pub group: Option<Spanned<Patterns>>,
    pub gid: Option<Spanned<Ids>>,
    pub host_exe: Option<Spanned<Patterns>>,
    pub ancestor: Option<Spanned<Patterns>>,
    pub not_ancestor: Option<Spanned<Patterns>>,
    #[serde(default)]
    pub args: Vec<Spanned<RawArg>>,
    pub action: Spanned<RawAction>,
    pub message: Option<String>,
    pub rate: Option<Spanned<String>>,
    /// Keep the call's arguments in clear (credentials redacted) in its audit record.
    #[serde(default)]
    pub record_arguments: bool,
    /// `action = "ask"`: how long the person has to answer (`90s`, `2m`; default 60 s).
    pub timeout: Option<Spanned<String>>,
    /// `action = "ask"`: `"call"` (default: each approval is for one call) or `"session"`
    /// (an approved tool with the same arguments passes again in the same session).
    pub remember: Option<Spanned<String>>,
}

/// One `[[rule.args]]`: a JSON pointer and what the value there must satisfy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArg {
    pub pointer: Spanned<String>,
    pub eq: Option<Spanned<serde_json::Value>>,
    pub one_of: Option<Spanned<Vec<serde_json::Value>>>,
    pub glob: Option<Spanned<Patterns>>,
    pub regex: Option<Spanned<String>>,
    pub prefix: Option<Spanned<Patterns>>,
    pub min_len: Option<Spanned<u64>>,
    pub max_len: Option<Spanned<u64>>,
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    pub present: Option<Spanned<bool>>,
    pub path_under: Option<Spanned<Patterns>>,
    #[serde(default)]
    pub negate: bool,
}

/// A string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patterns(pub Vec<String>);

/// An integer or an array of integers (uids, gids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids(pub Vec<u32>);

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Patterns, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Patterns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Patterns, E> {
                Ok(Patterns(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Patterns, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Patterns(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Ids {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ids, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ids;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer id or an array of them")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ids, E> {
                u32::try_from(v)
                    .map(|v| Ids(vec![v]))
                    .map_err(|_| E::custom(format!("{v} is not a valid id")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ids, E> {
                u32::try_from(v)
                    .map(|v| Ids(vec![v]))
                    .map_err(|_| E::custom(format!("{v} is not a valid id")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ids, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<u32>()? {
                    out.push(v);
                }
                Ok(Ids(out))
            }
        }
        d.deserialize_any(V)
    }
}
