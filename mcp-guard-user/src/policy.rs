//! Policy: which server may be asked which method and tool.
//!
//! Rules match on the server's name (glob), the method and the tool name (glob). Deny wins
//! over allow whatever the order. The default applies, when no rule matches, to the methods
//! that act (calling a tool, reading a resource, getting a prompt, and the server-to-client
//! requests); protocol plumbing (`initialize`, `ping`, listings, ...) is allowed unless a
//! rule names it.

use std::fmt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use ring::digest;
use serde::{Deserialize, Serialize};

/// The policy used when none is configured.
pub const BUILTIN: &str = include_str!("../../policies/default.toml");

/// Methods to which the policy's default applies.
pub const ACTING_METHODS: &[&str] = &[
    "tools/call",
    "resources/read",
    "prompts/get",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read policy {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: rule `{rule}`: invalid {field} pattern `{pattern}`: {source}")]
    BadPattern {
        origin: String,
        rule: String,
        field: &'static str,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("{origin}: rule id `{rule}` is used twice")]
    DuplicateRule { origin: String, rule: String },
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_action")]
    default: Action,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

fn default_action() -> Action {
    Action::Allow
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    server: Option<String>,
    method: Option<String>,
    tool: Option<String>,
    action: Action,
    message: Option<String>,
}

#[derive(Debug)]
struct Rule {
    id: String,
    server: Option<GlobMatcher>,
    method: String,
    tool: Option<GlobMatcher>,
    action: Action,
    message: Option<String>,
}

/// A loaded, validated policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Action,
    sha256: String,
    origin: String,
}

/// The outcome of asking the policy about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The id of the rule that decided, or `default` / `plumbing`.
    pub rule: String,
    pub message: Option<String>,
}

/// What is being asked for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub server: &'a str,
    pub method: &'a str,
    pub tool: Option<&'a str>,
}

impl Policy {
    /// Parses policy text; `origin` names it in errors and records.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, Error> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| Error::Parse { origin: origin.to_string(), message: e.to_string() })?;
        let glob = |rule: &str, field, pattern: &Option<String>| -> Result<Option<GlobMatcher>, Error> {
            pattern
                .as_ref()
                .map(|p| {
                    Glob::new(p).map(|g| g.compile_matcher()).map_err(|source| Error::BadPattern {
                        origin: origin.to_string(),
                        rule: rule.to_string(),
                        field,
                        pattern: p.clone(),
                        source,
                    })
                })
                .transpose()
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        for r in raw.rules {
            if rules.iter().any(|x| x.id == r.id) {
                return Err(Error::DuplicateRule { origin: origin.to_string(), rule: r.id });
            }
            rules.push(Rule {
                server: glob(&r.id, "server", &r.server)?,
                tool: glob(&r.id, "tool", &r.tool)?,
                method: r.method.unwrap_or_else(|| "tools/call".to_string()),
                id: r.id,
                action: r.action,
                message: r.message,
            });
        }
        Ok(Policy { rules, default: raw.default, sha256: sha256_hex(text.as_bytes()), origin: origin.to_string() })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        Policy::parse(&text, &path.display().to_string())
    }

    /// The built-in default policy.
    pub fn builtin() -> Policy {
        Policy::parse(BUILTIN, "built-in").expect("the built-in policy is valid (tested)")
    }

    /// SHA-256 of the policy text in force.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// How many rules it has.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether it has no rules (only a default).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Where the policy came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Decides one request. Deny wins over allow; the first matching rule of the winning
    /// action names the decision.
    pub fn decide(&self, req: Request<'_>) -> Decision {
        let mut allow = None;
        for rule in self.rules.iter().filter(|r| r.matches(req)) {
            match rule.action {
                Action::Deny => {
                    return Decision { action: Action::Deny, rule: rule.id.clone(), message: rule.message.clone() };
                }
                Action::Allow => {
                    allow.get_or_insert(rule);
                }
            }
        }
        if let Some(rule) = allow {
            return Decision { action: Action::Allow, rule: rule.id.clone(), message: rule.message.clone() };
        }
        if ACTING_METHODS.contains(&req.method) {
            Decision { action: self.default, rule: "default".to_string(), message: None }
        } else {
            Decision { action: Action::Allow, rule: "plumbing".to_string(), message: None }
        }
    }
}

impl Rule {
    fn matches(&self, req: Request<'_>) -> bool {
        self.method == req.method
            && self.server.as_ref().is_none_or(|g| g.is_match(req.server))
            && self.tool.as_ref().is_none_or(|g| req.tool.is_some_and(|t| g.is_match(t)))
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(server: &'a str, tool: &'a str) -> Request<'a> {
        Request { server, method: "tools/call", tool: Some(tool) }
    }

    #[test]
    fn builtin_policy_loads() {
        let p = Policy::builtin();
        assert_eq!(p.decide(req("any", "any")).action, Action::Allow);
    }

    #[test]
    fn every_shipped_policy_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    #[test]
    fn deny_wins_over_allow_whatever_the_order() {
        for text in [
            "[[rule]]\nid='a'\ntool='*'\naction='allow'\n[[rule]]\nid='d'\ntool='write_*'\naction='deny'\n",
            "[[rule]]\nid='d'\ntool='write_*'\naction='deny'\n[[rule]]\nid='a'\ntool='*'\naction='allow'\n",
        ] {
            let p = Policy::parse(text, "t").unwrap();
            assert_eq!(p.decide(req("fs", "write_file")).rule, "d");
            assert_eq!(p.decide(req("fs", "read_file")).rule, "a");
        }
    }

    #[test]
    fn default_applies_to_acting_methods_only() {
        let p = Policy::parse("default = 'deny'\n", "t").unwrap();
        assert_eq!(p.decide(req("fs", "x")).action, Action::Deny);
        let list = Request { server: "fs", method: "tools/list", tool: None };
        assert_eq!(p.decide(list), Decision { action: Action::Allow, rule: "plumbing".into(), message: None });
    }

    #[test]
    fn server_and_method_are_matched() {
        let text = "[[rule]]\nid='r'\nserver='file*'\nmethod='resources/read'\naction='deny'\n";
        let p = Policy::parse(text, "t").unwrap();
        let read = |server| Request { server, method: "resources/read", tool: None };
        assert_eq!(p.decide(read("filesystem")).action, Action::Deny);
        assert_eq!(p.decide(read("memory")).rule, "default");
        assert_eq!(p.decide(req("filesystem", "read")).rule, "default");
    }

    #[test]
    fn errors_name_the_place() {
        let e = Policy::parse("[[rule]]\nid='x'\naction='allow'\nbogus=1\n", "p.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("p.toml") && msg.contains("bogus") && msg.contains("line 4"), "{msg}");
        let e = Policy::parse("[[rule]]\nid='x'\ntool='[a'\naction='deny'\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("invalid tool pattern"), "{e}");
        let e = Policy::parse("[[rule]]\nid='x'\naction='deny'\n[[rule]]\nid='x'\naction='deny'\n", "p").unwrap_err();
        assert!(matches!(e, Error::DuplicateRule { .. }));
    }
}
