//! Policy: which server may be asked which method and tool, by whom, with which arguments.
//!
//! `raw.rs` is the file schema (serde), `compiled/validate.rs` turns it into the rules of
//! `compiled.rs`, indexed by `compiled/index.rs`; `eval.rs` decides requests, `path.rs`
//! reads paths every way a server may, `load.rs` finds and reads files, `cmd.rs` is
//! `mcp-guard policy check | explain`, `replay.rs` is `mcp-guard policy test`, and
//! `selftest.rs` runs `[[test]]` tables and finds shadowed rules. The language is described
//! in the project's README (*Policy*).
//!
//! Deny wins over allow whatever the order. The default applies, when no allow or deny rule
//! matches, to the methods that act (calling a tool, reading a resource, getting a prompt,
//! and the server-to-client requests); protocol plumbing (`initialize`, `ping`, listings,
//! ...) is allowed unless a rule names it.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod cmd;
mod compiled;
mod eval;
mod load;
pub mod path;
mod raw;
pub mod replay;
mod selftest;

pub use compiled::{Ask, Observer, Policy, PolicyTest, Rate, Rule};
pub use eval::{Ancestor, Decision, Explanation, Limiter, Principal, Query, Request, RuleReport};
pub use load::{Chosen, SYSTEM_DIR, Source, chosen, dropins, standalone};
pub use raw::Reaction;

/// What the policy looks at in a request's `params`: the tool name (the URI for resources,
/// the prompt name for prompts) and the arguments (for calls and prompts; the whole params
/// otherwise, so a rule can look at a resource's `/uri` or a sampling request's messages).
/// The guard, `policy explain --message` and `[[test]]` all read requests through this.
pub fn call_parts<'a>(
    method: &str,
    params: Option<&'a serde_json::Value>,
) -> (Option<&'a str>, Option<&'a serde_json::Value>) {
    let field = |k: &str| params.and_then(|p| p.get(k));
    let tool = match method {
        "resources/read" | "resources/subscribe" => field("uri"),
        _ => field("name"),
    }
    .and_then(serde_json::Value::as_str);
    let arguments = match method {
        "tools/call" | "prompts/get" => field("arguments"),
        _ => params,
    };
    (tool, arguments)
}

/// A request as one JSON-RPC line (what a host sends): its method, tool and arguments,
/// read as the guard reads them. `Err` says why the line is not one request.
pub fn parse_request(
    line: &str,
) -> Result<(String, Option<String>, Option<serde_json::Value>), String> {
    let parsed = crate::jsonrpc::parse(line.trim_end_matches('\n').as_bytes())
        .map_err(|e| format!("not a JSON-RPC message: {e}"))?;
    let crate::jsonrpc::Parsed::Single(m) = parsed else {
        return Err("a batch: give one request".into());
    };
    if m.kind == crate::jsonrpc::Kind::Response {
        return Err("a response, not a request".into());
    }
    let method = m.method.as_deref().unwrap_or_default().to_string();
    let (tool, arguments) = call_parts(&method, m.params_value.as_ref());
    let (tool, arguments) = (tool.map(str::to_string), arguments.cloned());
    Ok((method, tool, arguments))
}

/// The policy used when none is configured.
pub const BUILTIN: &str = include_str!("../../../policies/default.toml");

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
    #[error(
        "refusing policy {}: owned by uid {owner} with mode {mode:o}; when running as root a policy \
         must be owned by root and not writable by group or others",
        path.display()
    )]
    Unsafe {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// One problem in a policy file, at a line and column (both from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.column, self.message
        )
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    /// Held until the person at the agent host approves it (`action = "ask"`).
    Ask,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Ask => "ask",
        })
    }
}

/// What a rule does when it matches. `Audit` never decides: it marks the request for the
/// audit record, whatever the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Allow,
    Deny,
    Audit,
    Ask,
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
            RuleAction::Audit => "audit",
            RuleAction::Ask => "ask",
        })
    }
}

/// `enforce` denies; `monitor` records what would be denied and forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Monitor,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        })
    }
}

impl Policy {
    /// Parses policy text; `origin` names it in errors and records.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, Error> {
        Policy::compile(&[Source {
            name: origin.to_string(),
            text: text.to_string(),
        }])
    }

    /// The built-in default policy.
    pub fn builtin() -> Policy {
        Policy::parse(BUILTIN, "built-in").expect("the built-in policy is valid (tested)")
    }

    /// SHA-256 of the policy text in force (see `compiled::digest` for several files).
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

    /// Where the policy came from: its files, comma-separated, in merge order.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Enforce or monitor.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What applies to acting methods when no rule decides.
    pub fn default_action(&self) -> Action {
        self.default
    }

    /// The rules, in merge order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests;
