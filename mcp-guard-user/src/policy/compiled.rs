//! A compiled policy: its rules, their patterns and templates, and how they are written
//! back as text (diagnostics, `policy explain`). [`index`] finds the few rules that can match a request; [`validate`]
//! turns raw rules into these, or into diagnostics with line and column.
//!
//! Rules are indexed by method, then by exact tool name, then by exact server name; rules
//! whose tool and server are both globs (or absent) sit in a residual list. A request looks
//! at its method's bucket and the bucket of rules with method globs, and only checks the
//! rules listed under its tool, its server, and the residual lists.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde_json::Value;

use super::raw::{RawDefault, RawMode, RawPolicy};
use super::{Action, Diagnostic, Diagnostics, Error, Mode, RuleAction, Source};
use crate::digest::sha256_hex;

mod index;
mod validate;

pub(super) use index::Index;
use index::{Bucket, GlobIndex};
use validate::{Ctx, Lines};

/// A loaded, validated policy.
#[derive(Debug)]
pub struct Policy {
    pub(super) rules: Vec<Rule>,
    pub(super) index: Index,
    pub(super) default: Action,
    pub(super) mode: Mode,
    pub(super) sha256: Arc<str>,
    pub(super) origin: String,
    /// Globs and regexes with `${...}` in them, compiled per expansion.
    pub(super) dynamic: Mutex<HashMap<String, Option<Arc<Dynamic>>>>,
    /// What is done to responses: secrets redacted, a size limit.
    pub(super) responses: crate::redact::Responses,
    /// What the daemon's observer does about what it sees.
    pub(super) observer: Observer,
    /// The `[[test]]` tables, for `policy check`: enforcement never reads them.
    pub(super) tests: Vec<PolicyTest>,
}

/// One `[[test]]`: a request and the decision expected of the policy.
#[derive(Debug, Clone)]
pub struct PolicyTest {
    pub name: String,
    /// `file:line` of the table.
    pub origin: String,
    pub server: String,
    pub method: String,
    pub tool: Option<String>,
    pub arguments: Option<Value>,
    /// `None` when the test names no user, uid, group or home: unknown, as to the engine.
    pub principal: Option<super::Principal>,
    pub server_exe: Option<String>,
    pub host_exe: Option<String>,
    pub cwd: Option<String>,
    pub roots: Vec<String>,
    /// `None` when the test names no ancestors: unknown.
    pub ancestry: Option<Vec<super::Ancestor>>,
    pub expect: Action,
    pub rule: Option<String>,
}

/// `[observer]`, with defaults filled in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Observer {
    pub unwrapped: super::raw::Reaction,
    pub denied: super::raw::Reaction,
}

#[derive(Debug)]
pub(super) enum Dynamic {
    Glob(GlobMatcher),
    Regex(Regex),
}

/// One rule, ready to be checked.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub description: Option<String>,
    /// `file:line:column` of the rule.
    pub origin: String,
    pub action: RuleAction,
    pub message: Option<String>,
    pub(super) methods: Names,
    pub(super) server: Option<Names>,
    pub(super) server_exe: Option<Exes>,
    pub(super) tool: Option<Names>,
    pub(super) user: Option<Names>,
    pub(super) uid: Option<Vec<u32>>,
    pub(super) group: Option<Names>,
    pub(super) gid: Option<Vec<u32>>,
    pub(super) host_exe: Option<Exes>,
    pub(super) ancestor: Option<Exes>,
    pub(super) not_ancestor: Option<Exes>,
    pub(super) args: Vec<ArgRule>,
    pub(super) rate: Option<Rate>,
    /// Records of the calls this rule decides (or audits) keep their arguments in clear.
    pub record_arguments: bool,
    /// `action = "ask"`: how the person is asked.
    pub ask: Option<Ask>,
}

/// How an `ask` rule's approval works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// No answer within this long is a refusal.
    pub timeout: Duration,
    /// An approved (tool, arguments) passes again for the rest of the session.
    pub remember_session: bool,
}

impl Ask {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    /// Longest a call may be held: a host's request times out long before.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
}

/// Calls per interval, per principal and tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub calls: u32,
    pub per: Duration,
    /// As written, for messages.
    unit: &'static str,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unit.is_empty() {
            write!(f, "{}/{}", self.calls, humantime::format_duration(self.per))
        } else {
            write!(f, "{}/{}", self.calls, self.unit)
        }
    }
}

/// Name patterns: exact names looked up directly, globs in one set.
#[derive(Debug)]
pub(super) struct Names {
    pub(super) source: Vec<String>,
    literals: Vec<String>,
    glob_source: Vec<String>,
    globs: Option<GlobSet>,
}

/// Executable patterns: with a `/` they match the path, without it the comm or file name.
#[derive(Debug)]
pub(super) struct Exes {
    pub(super) source: Vec<String>,
    paths: Names,
    names: Names,
}

/// The `pointer` that stands for every path-like string at any depth of the arguments.
pub(super) const ANY_PATH: &str = "**";

/// One argument constraint.
#[derive(Debug)]
pub(super) struct ArgRule {
    pub(super) pointer: String,
    pub(super) present: Option<bool>,
    pub(super) negate: bool,
    pub(super) tests: Vec<Test>,
}

#[derive(Debug)]
pub(super) enum Test {
    Eq(Expect),
    OneOf(Vec<Expect>),
    Glob {
        source: Vec<Template>,
        fixed: Option<GlobSet>,
    },
    Regex {
        source: Template,
        fixed: Option<Regex>,
    },
    Prefix(Vec<Template>),
    Len {
        min: Option<u64>,
        max: Option<u64>,
    },
    Range {
        min: Option<f64>,
        max: Option<f64>,
    },
    /// The roots, and all of them normalized when none needs expanding.
    PathUnder(Vec<Root>, Option<Vec<String>>),
}

#[derive(Debug)]
pub(super) enum Expect {
    Value(Value),
    Str(Template),
}

#[derive(Debug)]
pub(super) struct Root {
    pub(super) source: Template,
    /// The normalized root when it needs no expansion.
    pub(super) fixed: Option<String>,
}

/// A string with `${user}`, `${home}` or `${uid}` in it.
#[derive(Debug, Clone)]
pub(super) struct Template {
    pub(super) source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Var(Var),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Var {
    User,
    Home,
    Uid,
}

/// Why a pattern, a template or a rate in a policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum ValueError {
    #[error("invalid pattern `{pattern}`: {kind}")]
    Pattern {
        pattern: String,
        kind: globset::ErrorKind,
    },
    #[error("invalid patterns: {0}")]
    Patterns(globset::Error),
    #[error("unclosed `${{` in `{0}`")]
    UnclosedVariable(String),
    #[error("unknown variable `${{{0}}}` (known: ${{user}}, ${{home}}, ${{uid}})")]
    UnknownVariable(String),
    #[error("`rate`: `{0}` is not `CALLS/INTERVAL` such as `10/minute` or `5/30s`")]
    Rate(String),
    #[error("`rate`: zero calls per interval; use `action = \"deny\"` instead")]
    ZeroRate,
}

fn bad_pattern(pattern: &str, e: &globset::Error) -> ValueError {
    ValueError::Pattern {
        pattern: pattern.to_string(),
        kind: e.kind().clone(),
    }
}

impl Names {
    fn compile(patterns: &[String], literal_separator: bool) -> Result<Names, ValueError> {
        let mut literals = Vec::new();
        let mut glob_source = Vec::new();
        let mut set = GlobSetBuilder::new();
        let mut any_glob = false;
        for p in patterns {
            match literal_forms(p) {
                Some(lits) => literals.extend(lits),
                None => {
                    let g = GlobBuilder::new(p)
                        .literal_separator(literal_separator)
                        .build()
                        .map_err(|e| bad_pattern(p, &e))?;
                    set.add(g);
                    glob_source.push(p.clone());
                    any_glob = true;
                }
            }
        }
        let globs = if any_glob {
            Some(set.build().map_err(ValueError::Patterns)?)
        } else {
            None
        };
        Ok(Names {
            source: patterns.to_vec(),
            literals,
            glob_source,
            globs,
        })
    }

    pub(super) fn is_match(&self, s: &str) -> bool {
        self.literals.iter().any(|l| l == s) || self.globs.as_ref().is_some_and(|g| g.is_match(s))
    }

    /// Whether every name `other` matches is matched by this one too: this is `*`, or
    /// `other` is exact names this matches. Conservative: `false` when not sure.
    pub(super) fn covers(&self, other: &Names) -> bool {
        self.source.iter().any(|p| p == "*")
            || other
                .literals_only()
                .is_some_and(|names| names.iter().all(|n| self.is_match(n)))
    }

    fn literals_only(&self) -> Option<&[String]> {
        self.globs.is_none().then_some(self.literals.as_slice())
    }
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show_list(f, &self.source)
    }
}

impl fmt::Display for Exes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show_list(f, &self.source)
    }
}

fn show_list(f: &mut fmt::Formatter<'_>, items: &[String]) -> fmt::Result {
    match items {
        [one] => write!(f, "`{one}`"),
        many => {
            f.write_str("[")?;
            for (i, s) in many.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "`{s}`")?;
            }
            f.write_str("]")
        }
    }
}

/// The exact names a pattern stands for, when it has no wildcard: `name`, or `{a,b,c}`.
fn literal_forms(p: &str) -> Option<Vec<String>> {
    const META: &[char] = &['*', '?', '[', ']', '{', '}', '\\', ','];
    if !p.contains(META) {
        return Some(vec![p.to_string()]);
    }
    let inner = p.strip_prefix('{')?.strip_suffix('}')?;
    if inner.contains(['*', '?', '[', ']', '{', '}', '\\']) {
        return None;
    }
    Some(inner.split(',').map(str::to_string).collect())
}

impl Exes {
    fn compile(patterns: &[String]) -> Result<Exes, ValueError> {
        let (paths, names): (Vec<String>, Vec<String>) =
            patterns.iter().cloned().partition(|p| p.contains('/'));
        Ok(Exes {
            source: patterns.to_vec(),
            paths: Names::compile(&paths, true)?,
            names: Names::compile(&names, false)?,
        })
    }

    /// Whether an executable path or a comm matches.
    pub(super) fn matches(&self, exe: Option<&str>, comm: Option<&str>) -> bool {
        if let Some(e) = exe {
            let base = e.rsplit('/').next().unwrap_or(e);
            if self.paths.is_match(e) || self.names.is_match(base) {
                return true;
            }
        }
        comm.is_some_and(|c| self.names.is_match(c))
    }
}

impl Template {
    pub(super) fn parse(s: &str) -> Result<Template, ValueError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(t) = tail.strip_prefix("$${") {
                lit.push_str("${");
                rest = t;
            } else if let Some(t) = tail.strip_prefix("${") {
                let end = t
                    .find('}')
                    .ok_or_else(|| ValueError::UnclosedVariable(s.to_string()))?;
                let var = match &t[..end] {
                    "user" => Var::User,
                    "home" => Var::Home,
                    "uid" => Var::Uid,
                    other => return Err(ValueError::UnknownVariable(other.to_string())),
                };
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var(var));
                rest = &t[end + 1..];
            } else {
                lit.push('$');
                rest = &tail[1..];
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() || parts.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            source: s.to_string(),
            parts,
        })
    }

    /// The text when it has no variables.
    pub(super) fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// The text with variables replaced (each value passed through `escape`); `None` when
    /// a variable's value is not known.
    pub(super) fn expand<'t>(
        &'t self,
        p: Option<&super::Principal>,
        escape: fn(&str) -> Cow<'_, str>,
    ) -> Option<Cow<'t, str>> {
        if let Some(s) = self.fixed() {
            return Some(Cow::Borrowed(s));
        }
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(Var::User) => out.push_str(&escape(p?.user.as_deref()?)),
                Part::Var(Var::Home) => out.push_str(&escape(p?.home.as_deref()?)),
                Part::Var(Var::Uid) => out.push_str(&p?.uid.to_string()),
            }
        }
        Some(Cow::Owned(out))
    }

    /// Expanded with stand-in values: to validate patterns at load time.
    fn sample(&self) -> String {
        let p = super::Principal {
            uid: 1000,
            user: Some("user".into()),
            home: Some("/home/user".into()),
            ..Default::default()
        };
        self.expand(Some(&p), NO_ESCAPE)
            .map(Cow::into_owned)
            .unwrap_or_default()
    }
}

fn no_escape(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

pub(super) fn glob_escape(s: &str) -> Cow<'_, str> {
    Cow::Owned(globset::escape(s))
}

pub(super) fn regex_escape(s: &str) -> Cow<'_, str> {
    Cow::Owned(regex::escape(s))
}

pub(super) const NO_ESCAPE: fn(&str) -> Cow<'_, str> = no_escape;

impl Policy {
    /// Compiles sources: the first is the main file, the rest are drop-ins, in order.
    pub fn compile(sources: &[Source]) -> Result<Policy, Error> {
        let mut diags = Vec::new();
        let mut raws = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            match toml::from_str::<RawPolicy>(&src.text) {
                Ok(raw) => raws.push((i, raw)),
                Err(e) => {
                    let at = e.span().map_or(0, |s| s.start);
                    diags.push(Diagnostic::at(
                        &src.name,
                        &src.text,
                        at,
                        e.message().trim_end().to_string(),
                    ));
                }
            }
        }
        let mut default = Action::Allow;
        let mut mode = Mode::Enforce;
        let mut responses = crate::redact::Responses::standard();
        let mut observer = Observer::default();
        let mut rules: Vec<Rule> = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut tests = Vec::new();
        for (i, raw) in raws {
            let src = &sources[i];
            let mut ctx = Ctx {
                src,
                lines: Lines::of(&src.text),
                diags: &mut diags,
            };
            if i == 0 {
                if let Some(d) = raw.default {
                    default = match d.into_inner() {
                        RawDefault::Allow => Action::Allow,
                        RawDefault::Deny => Action::Deny,
                    };
                }
                if let Some(m) = raw.mode {
                    mode = match m.into_inner() {
                        RawMode::Enforce => Mode::Enforce,
                        RawMode::Monitor => Mode::Monitor,
                    };
                }
                if let Some(r) = raw.responses {
                    let r = r.into_inner();
                    let mut extra = Vec::new();
                    for p in &r.redact {
                        match Regex::new(p.get_ref()) {
                            Ok(re) => extra.push(re),
                            Err(e) => {
                                ctx.err(p.span().start, &format!("invalid redact regex: {e}"))
                            }
                        }
                    }
                    responses = crate::redact::Responses::new(
                        r.redact_builtin.unwrap_or(true),
                        extra,
                        r.max_bytes.unwrap_or(0),
                    );
                }
                if let Some(o) = raw.observer {
                    let o = o.into_inner();
                    observer = Observer {
                        unwrapped: o.unwrapped.unwrap_or_default(),
                        denied: o.denied.unwrap_or_default(),
                    };
                }
            } else {
                if let Some(r) = &raw.responses {
                    ctx.err(
                        r.span().start,
                        "`[responses]` may only be set in the main policy file, not in a drop-in",
                    );
                }
                if let Some(o) = &raw.observer {
                    ctx.err(
                        o.span().start,
                        "`[observer]` may only be set in the main policy file, not in a drop-in",
                    );
                }
                if let Some(d) = &raw.default {
                    ctx.err(
                        d.span().start,
                        "`default` may only be set in the main policy file, not in a drop-in",
                    );
                }
                if let Some(m) = &raw.mode {
                    ctx.err(
                        m.span().start,
                        "`mode` may only be set in the main policy file, not in a drop-in",
                    );
                }
            }
            for r in raw.rules {
                let at = r.span().start;
                let id_at = r.get_ref().id.span().start;
                let id = r.get_ref().id.get_ref().clone();
                let here = ctx.place(at);
                if let Some(first) = seen.get(&id) {
                    ctx.err(id_at, &format!("rule id `{id}` is already used at {first}"));
                    continue;
                }
                seen.insert(id, here.clone());
                if let Some(rule) = ctx.rule(r.into_inner(), here) {
                    rules.push(rule);
                }
            }
            for t in raw.tests {
                if let Some(t) = ctx.test(t) {
                    tests.push(t);
                }
            }
        }
        if !diags.is_empty() {
            return Err(Error::Invalid(Diagnostics(diags)));
        }
        let mut index = Index::default();
        for (i, r) in rules.iter().enumerate() {
            let i = u32::try_from(i).map_err(|_| {
                Error::Invalid(Diagnostics(vec![Diagnostic {
                    origin: sources.first().map(|s| s.name.clone()).unwrap_or_default(),
                    line: 1,
                    column: 1,
                    message: "too many rules".into(),
                }]))
            })?;
            index.insert(i, r);
        }
        // Every pattern here was compiled once already, as part of its rule.
        index.finish().map_err(|e| {
            Error::Invalid(Diagnostics(vec![Diagnostic {
                origin: sources.first().map(|s| s.name.clone()).unwrap_or_default(),
                line: 1,
                column: 1,
                message: e.to_string(),
            }]))
        })?;
        Ok(Policy {
            rules,
            index,
            default,
            mode,
            sha256: digest(sources).into(),
            origin: sources
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            dynamic: Mutex::new(HashMap::new()),
            responses,
            observer,
            tests,
        })
    }

    /// The `[[test]]` tables of its files, in order.
    pub fn tests(&self) -> &[PolicyTest] {
        &self.tests
    }

    /// What the daemon's observer does about unwrapped servers and denied calls.
    pub fn observer(&self) -> Observer {
        self.observer
    }

    /// The same policy in monitor mode: it records what it would deny and denies nothing.
    /// The observer judges with it: it sees traffic it cannot stop.
    pub fn into_monitor(mut self) -> Policy {
        self.mode = Mode::Monitor;
        self
    }

    /// What is done to responses.
    pub fn responses(&self) -> &crate::redact::Responses {
        &self.responses
    }

    /// The compiled form, as text: rules in order with their normalized fields, and the
    /// index. For snapshot tests and `policy check --verbose`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mode = {}, default = {}, rules = {}",
            self.mode,
            self.default,
            self.rules.len()
        );
        for r in &self.rules {
            let _ = writeln!(s, "rule {} ({}) at {}", r.id, r.action, r.origin);
            let _ = writeln!(s, "  method {}", r.methods);
            let opt = |s: &mut String, name: &str, v: Option<String>| {
                if let Some(v) = v {
                    let _ = writeln!(s, "  {name} {v}");
                }
            };
            opt(&mut s, "server", r.server.as_ref().map(ToString::to_string));
            opt(
                &mut s,
                "server_exe",
                r.server_exe.as_ref().map(ToString::to_string),
            );
            opt(&mut s, "tool", r.tool.as_ref().map(ToString::to_string));
            opt(&mut s, "user", r.user.as_ref().map(ToString::to_string));
            opt(&mut s, "uid", r.uid.as_ref().map(|v| format!("{v:?}")));
            opt(&mut s, "group", r.group.as_ref().map(ToString::to_string));
            opt(&mut s, "gid", r.gid.as_ref().map(|v| format!("{v:?}")));
            opt(
                &mut s,
                "host_exe",
                r.host_exe.as_ref().map(ToString::to_string),
            );
            opt(
                &mut s,
                "ancestor",
                r.ancestor.as_ref().map(ToString::to_string),
            );
            opt(
                &mut s,
                "not_ancestor",
                r.not_ancestor.as_ref().map(ToString::to_string),
            );
            for a in &r.args {
                let _ = writeln!(s, "  arg {}", a);
            }
            opt(&mut s, "rate", r.rate.map(|r| r.to_string()));
            opt(
                &mut s,
                "message",
                r.message.as_ref().map(|m| format!("{m:?}")),
            );
        }
        let mut methods: Vec<_> = self.index.methods.iter().collect();
        methods.sort_by(|a, b| a.0.cmp(b.0));
        let name = |i: &u32| self.rules.get(*i as usize).map_or("?", |r| r.id.as_str());
        let bucket = |s: &mut String, label: &str, b: &Bucket| {
            let keyed = |s: &mut String, kind: &str, m: &HashMap<String, Vec<u32>>| {
                let mut keys: Vec<_> = m.iter().collect();
                keys.sort_by(|a, b| a.0.cmp(b.0));
                for (k, ids) in keys {
                    let _ = writeln!(
                        s,
                        "  {label} {kind} {k:?}: {}",
                        ids.iter().map(name).collect::<Vec<_>>().join(", ")
                    );
                }
            };
            let globbed = |s: &mut String, kind: &str, g: &GlobIndex| {
                for (p, i) in &g.patterns {
                    let _ = writeln!(s, "  {label} {kind} glob {p:?}: {}", name(i));
                }
            };
            keyed(s, "tool", &b.by_tool);
            globbed(s, "tool", &b.tool_globs);
            keyed(s, "server", &b.by_server);
            globbed(s, "server", &b.server_globs);
            if !b.rest.is_empty() {
                let _ = writeln!(
                    s,
                    "  {label} rest: {}",
                    b.rest.iter().map(name).collect::<Vec<_>>().join(", ")
                );
            }
        };
        s.push_str("index\n");
        for (m, b) in methods {
            bucket(&mut s, m, b);
        }
        bucket(&mut s, "*", &self.index.wild);
        s
    }
}

impl fmt::Display for ArgRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.pointer)?;
        if self.negate {
            f.write_str(" not")?;
        }
        match self.present {
            Some(true) => f.write_str(" present")?,
            Some(false) => f.write_str(" absent")?,
            None => {}
        }
        for t in &self.tests {
            write!(f, " {t}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, ts: &[Template]| {
            show_list(f, &ts.iter().map(|t| t.source.clone()).collect::<Vec<_>>())
        };
        match self {
            Test::Eq(e) => write!(f, "eq {e}"),
            Test::OneOf(es) => {
                f.write_str("one_of [")?;
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str("]")
            }
            Test::Glob { source, .. } => {
                f.write_str("glob ")?;
                list(f, source)
            }
            Test::Regex { source, .. } => write!(f, "regex `{}`", source.source),
            Test::Prefix(ts) => {
                f.write_str("prefix ")?;
                list(f, ts)
            }
            Test::Len { min, max } => write!(f, "length {}..={}", show_opt(min), show_opt(max)),
            Test::Range { min, max } => write!(f, "range {}..={}", show_opt(min), show_opt(max)),
            Test::PathUnder(roots, _) => {
                f.write_str("path_under ")?;
                show_list(
                    f,
                    &roots
                        .iter()
                        .map(|r| r.fixed.clone().unwrap_or_else(|| r.source.source.clone()))
                        .collect::<Vec<_>>(),
                )
            }
        }
    }
}

fn show_opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or(String::new(), ToString::to_string)
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Value(v) => write!(f, "{v}"),
            Expect::Str(t) => write!(f, "{:?}", t.source),
        }
    }
}

/// SHA-256 of the policy in force: of the file itself when there is one (so it can be
/// compared with `sha256sum`), else of each file's name, length and text in order.
fn digest(sources: &[Source]) -> String {
    match sources {
        [one] => sha256_hex(one.text.as_bytes()),
        many => {
            let mut buf = Vec::new();
            for s in many {
                buf.extend_from_slice(s.name.as_bytes());
                buf.push(0);
                buf.extend_from_slice(s.text.len().to_string().as_bytes());
                buf.push(0);
                buf.extend_from_slice(s.text.as_bytes());
            }
            sha256_hex(&buf)
        }
    }
}

impl Diagnostic {
    /// A message about byte `at` of `text`.
    pub(super) fn at(origin: &str, text: &str, at: usize, message: String) -> Diagnostic {
        let (line, column) = Lines::of(text).locate(text, at);
        Diagnostic {
            origin: origin.to_string(),
            line,
            column,
            message,
        }
    }
}
