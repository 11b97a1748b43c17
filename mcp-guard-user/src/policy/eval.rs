//! Deciding one request: which rules match, which one decides, and why the others did not.
//!
//! Fail-closed semantics. A condition that cannot be evaluated (the principal, an
//! executable or the ancestry is unknown; an argument has the wrong JSON type; a path
//! cannot be resolved; a `${var}` has no value) counts as *matching* for deny and audit
//! rules and as *not matching* for allow rules. So missing information can only make a
//! request more likely to be denied. An argument that is absent is different: a constraint
//! on it does not match (for any action) unless it says `present = false`, because a server
//! cannot act on an argument it was not given.
//!
//! Arrays: value tests that look at one string or number (glob, regex, prefix, min/max,
//! path_under) are applied to each element of an array; a deny or audit rule matches when
//! *any* element passes, an allow rule only when *every* element does. `eq`, `one_of` and
//! `min_len`/`max_len` look at the value as a whole.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::compiled::{
    ANY_PATH, ArgRule, Dynamic, Expect, NO_ESCAPE, Rate, Rule, Test, glob_escape, regex_escape,
};
use super::{ACTING_METHODS, Action, Mode, Policy, RuleAction, path};

mod explain;
mod limiter;

use explain::describe;
pub use limiter::Limiter;

/// The user a request runs as, with what `${user}`, `${home}` and `${uid}` expand to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub uid: u32,
    pub user: Option<String>,
    pub home: Option<String>,
    /// Group ids (primary and supplementary).
    pub gids: Vec<u32>,
    /// Their names, where known.
    pub groups: Vec<String>,
}

/// One process above the server, nearest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub exe: Option<String>,
    pub comm: String,
}

impl Ancestor {
    /// An ancestor as a user names it: an executable path (its comm is the file name, cut
    /// to the kernel's 15 bytes), or a comm.
    pub fn named(a: &str) -> Ancestor {
        if a.contains('/') {
            let base = a.rsplit('/').next().unwrap_or(a);
            let mut comm = base.to_string();
            while comm.len() > 15 {
                comm.pop();
            }
            Ancestor {
                exe: Some(a.to_string()),
                comm,
            }
        } else {
            Ancestor {
                exe: None,
                comm: a.to_string(),
            }
        }
    }
}

/// What the engine looks at. Borrowed, so the shim fills it per request without copying:
/// the principal, ancestry and executables are read once per session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    /// The server's name in the host config (`--name`).
    pub server: &'a str,
    /// The executable the server runs.
    pub server_exe: Option<&'a str>,
    pub method: &'a str,
    /// The tool name; the prompt name for `prompts/get`, the URI for `resources/read`.
    pub tool: Option<&'a str>,
    pub principal: Option<&'a Principal>,
    /// The agent host's executable.
    pub host_exe: Option<&'a str>,
    /// Processes above the server, nearest first; `None` when unknown.
    pub ancestry: Option<&'a [Ancestor]>,
    /// The request's `arguments` (for `tools/call`) or params.
    pub arguments: Option<&'a Value>,
    /// The server's working directory: relative paths in arguments are taken against it.
    pub cwd: Option<&'a str>,
    /// The server's allowed roots: relative paths may be taken against them too.
    pub roots: &'a [String],
    /// Whether path tests also follow symlinks on this file system (the guard's sessions do;
    /// `explain` and the benchmarks judge the text alone).
    pub follow_links: bool,
}

/// The minimal request: server name, method, tool. Converts into a [`Query`] that knows
/// nothing else.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub server: &'a str,
    pub method: &'a str,
    pub tool: Option<&'a str>,
}

impl<'a> From<Request<'a>> for Query<'a> {
    fn from(r: Request<'a>) -> Query<'a> {
        Query {
            server: r.server,
            method: r.method,
            tool: r.tool,
            ..Query::default()
        }
    }
}

impl<'a> From<&Query<'a>> for Query<'a> {
    fn from(q: &Query<'a>) -> Query<'a> {
        *q
    }
}

impl<'a> Query<'a> {
    pub fn new(server: &'a str, method: &'a str) -> Query<'a> {
        Query {
            server,
            method,
            ..Query::default()
        }
    }
    pub fn tool(self, tool: &'a str) -> Self {
        Query {
            tool: Some(tool),
            ..self
        }
    }
    pub fn server_exe(self, exe: &'a str) -> Self {
        Query {
            server_exe: Some(exe),
            ..self
        }
    }
    pub fn principal(self, p: &'a Principal) -> Self {
        Query {
            principal: Some(p),
            ..self
        }
    }
    pub fn host_exe(self, exe: &'a str) -> Self {
        Query {
            host_exe: Some(exe),
            ..self
        }
    }
    pub fn ancestry(self, a: &'a [Ancestor]) -> Self {
        Query {
            ancestry: Some(a),
            ..self
        }
    }
    pub fn arguments(self, v: &'a Value) -> Self {
        Query {
            arguments: Some(v),
            ..self
        }
    }
    pub fn cwd(self, cwd: &'a str) -> Self {
        Query {
            cwd: Some(cwd),
            ..self
        }
    }
}

/// The outcome of asking the policy about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What happens to the request: in monitor mode always `Allow`.
    pub action: Action,
    /// The id of the rule that decided, or `default` / `plumbing`.
    pub rule: String,
    pub message: Option<String>,
    pub mode: Mode,
    /// Monitor mode: the policy would have denied this (`rule` says which rule).
    pub would_deny: bool,
    /// Monitor mode: the policy would have asked the person (`rule` says which rule).
    pub would_ask: bool,
    /// `action` is `Ask`: how to ask.
    pub ask: Option<super::compiled::Ask>,
    /// The first audit rule that matched: record this request with emphasis.
    pub audit: Option<String>,
    /// Denied (or would be) because a rule's `rate` was exceeded.
    pub rate_limited: bool,
    /// The deciding rule, or a matching audit rule, asks for the arguments in the record.
    pub record_arguments: bool,
    /// SHA-256 of the policy that decided.
    pub policy_sha256: Arc<str>,
}

/// A request replayed from its audit record (`policy test`).
#[derive(Debug)]
pub(crate) struct Replay {
    /// The decision, or why the record does not tell it.
    pub decision: Result<Decision, String>,
    /// The rules that match, by index.
    pub matched: Vec<usize>,
    /// The rules that may match, by index: a condition on a fact the record lacks.
    pub maybe: Vec<usize>,
}

/// Why each rule did or did not match: for `policy explain`.
#[derive(Debug)]
pub struct Explanation {
    pub decision: Decision,
    pub rules: Vec<RuleReport>,
}

#[derive(Debug)]
pub struct RuleReport {
    pub id: String,
    pub origin: String,
    pub action: RuleAction,
    /// `None` when the rule matched, else the first condition that failed.
    pub miss: Option<String>,
}

/// Which condition of a rule failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Miss {
    /// A field did not match; `true` when it failed because the value is unknown.
    Field(Field, bool),
    /// Constraint `n` on the arguments.
    Arg(usize, ArgMiss),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Method,
    Tool,
    Server,
    ServerExe,
    User,
    Uid,
    Group,
    Gid,
    HostExe,
    Ancestor,
    NotAncestor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ArgMiss {
    Absent,
    Present,
    /// Test `n` did not hold; `true` when it failed for an allow rule because it could not
    /// be evaluated.
    Test(usize, bool),
}

/// Three-valued truth: a condition that cannot be evaluated is `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Unknown,
}

impl Tri {
    fn of(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }
    fn not(self, negate: bool) -> Tri {
        match (self, negate) {
            (Tri::Yes, true) => Tri::No,
            (Tri::No, true) => Tri::Yes,
            (t, _) => t,
        }
    }
}

/// Fail closed: for deny and audit rules an unknown counts as a match.
fn settle(t: Tri, fail_closed: bool) -> bool {
    match t {
        Tri::Yes => true,
        Tri::No => false,
        Tri::Unknown => fail_closed,
    }
}

fn field(t: Tri, fail_closed: bool, f: Field) -> Result<(), Miss> {
    if settle(t, fail_closed) {
        Ok(())
    } else {
        Err(Miss::Field(f, t == Tri::Unknown))
    }
}

fn known(v: Option<bool>) -> Tri {
    v.map_or(Tri::Unknown, Tri::of)
}

/// Facts a replayed request lacks (for `policy test`): the audit record does not keep
/// them, though the live engine knew them. A condition on one of them is neither true nor
/// false, so it is passed over and noted; the caller then knows the rule *may* match.
#[derive(Debug, Default)]
pub(crate) struct Gaps {
    /// The call's arguments are not known as the engine saw them (not recorded, or recorded
    /// redacted): every argument constraint is a gap.
    pub arguments: bool,
    /// Argument constraints that need the live machine (path tests: the server's cwd and
    /// roots, the file system's links; `${home}`) are gaps even when the arguments are known.
    pub machine: bool,
    /// The principal's groups as the engine read them (from the group database).
    pub groups: bool,
    /// The ancestry is known but for the shim's own process, which was its nearest member.
    pub shim_ancestor: bool,
    /// The first gap a check passed over.
    pub(super) hit: Cell<Option<&'static str>>,
}

impl Gaps {
    fn note(&self, what: &'static str) {
        if self.hit.get().is_none() {
            self.hit.set(Some(what));
        }
    }
}

impl Rule {
    /// Whether the rule matches: `Err` names the first condition that failed. The one
    /// function both `decide` and `explain` use, so they cannot disagree.
    pub(super) fn check(&self, q: &Query<'_>, policy: &Policy) -> Result<(), Miss> {
        self.check_with(q, policy, &Gaps::default())
    }

    /// [`Rule::check`], passing over (and noting in `gaps`) the conditions on facts it says
    /// are unknown. `Err` only when a known condition fails.
    fn check_with(&self, q: &Query<'_>, policy: &Policy, gaps: &Gaps) -> Result<(), Miss> {
        let fc = self.action != RuleAction::Allow;
        if !self.methods.is_match(q.method) {
            return Err(Miss::Field(Field::Method, false));
        }
        if let Some(t) = &self.tool {
            // A request without a tool name cannot be what a tool pattern names.
            if !q.tool.is_some_and(|x| t.is_match(x)) {
                return Err(Miss::Field(Field::Tool, false));
            }
        }
        if let Some(s) = &self.server
            && !s.is_match(q.server)
        {
            return Err(Miss::Field(Field::Server, false));
        }
        if let Some(e) = &self.server_exe {
            field(
                known(q.server_exe.map(|x| e.matches(Some(x), None))),
                fc,
                Field::ServerExe,
            )?;
        }
        let p = q.principal;
        if let Some(u) = &self.user {
            field(
                known(p.and_then(|p| p.user.as_deref()).map(|x| u.is_match(x))),
                fc,
                Field::User,
            )?;
        }
        if let Some(ids) = &self.uid {
            field(known(p.map(|p| ids.contains(&p.uid))), fc, Field::Uid)?;
        }
        // The groups of a known principal were read from the group database: not recorded.
        let groups_gap = gaps.groups && p.is_some();
        if groups_gap && (self.group.is_some() || self.gid.is_some()) {
            gaps.note("the principal's groups as the policy read them are not in the record");
        }
        if let Some(g) = &self.group
            && !groups_gap
        {
            field(
                known(p.map(|p| p.groups.iter().any(|x| g.is_match(x)))),
                fc,
                Field::Group,
            )?;
        }
        if let Some(ids) = &self.gid
            && !groups_gap
        {
            field(
                known(p.map(|p| p.gids.iter().any(|x| ids.contains(x)))),
                fc,
                Field::Gid,
            )?;
        }
        if let Some(e) = &self.host_exe {
            field(
                known(q.host_exe.map(|x| e.matches(Some(x), None))),
                fc,
                Field::HostExe,
            )?;
        }
        if let Some(e) = &self.ancestor {
            let any = q
                .ancestry
                .map(|a| a.iter().any(|x| e.matches(x.exe.as_deref(), Some(&x.comm))));
            if gaps.shim_ancestor && any == Some(false) {
                // The shim itself may have been the match.
                gaps.note("the shim's own process, the nearest ancestor, is not in the record");
            } else {
                field(known(any), fc, Field::Ancestor)?;
            }
        }
        if let Some(e) = &self.not_ancestor {
            let none = q
                .ancestry
                .map(|a| !a.iter().any(|x| e.matches(x.exe.as_deref(), Some(&x.comm))));
            if gaps.shim_ancestor && none == Some(true) {
                gaps.note("the shim's own process, the nearest ancestor, is not in the record");
            } else {
                field(known(none), fc, Field::NotAncestor)?;
            }
        }
        if !self.args.is_empty() && gaps.arguments {
            gaps.note("the call's arguments are not in the record");
            return Ok(());
        }
        for (i, a) in self.args.iter().enumerate() {
            let res = a.check(q, policy, fc);
            // An argument absent (or present against `present = false`) is decided by the
            // arguments alone; any other outcome of a test that reads the machine is a gap.
            let decided = matches!(res, Err(ArgMiss::Absent | ArgMiss::Present));
            if gaps.machine && !decided && a.needs_machine() {
                gaps.note(
                    "its path or ${home} tests need the server's cwd and roots, the user's home \
                     and the files as they were, which the record does not keep",
                );
            } else {
                res.map_err(|m| Miss::Arg(i, m))?;
            }
        }
        Ok(())
    }
}

impl ArgRule {
    /// Whether a test reads more than the arguments: a path test (cwd, roots, links, home)
    /// or a `${home}` (conservatively: any spelling of it, `$${home}` too).
    fn needs_machine(&self) -> bool {
        let home = |t: &super::compiled::Template| t.source.contains("${home}");
        self.tests.iter().any(|t| match t {
            Test::PathUnder(..) => true,
            Test::Eq(e) => matches!(e, Expect::Str(t) if home(t)),
            Test::OneOf(es) => es.iter().any(|e| matches!(e, Expect::Str(t) if home(t))),
            Test::Glob { source, .. } | Test::Prefix(source) => source.iter().any(home),
            Test::Regex { source, .. } => home(source),
            Test::Len { .. } | Test::Range { .. } => false,
        })
    }

    fn check(&self, q: &Query<'_>, policy: &Policy, fc: bool) -> Result<(), ArgMiss> {
        let every_path;
        let v = if self.pointer == ANY_PATH {
            // Every path-like string, as if they were one array: deny and audit rules match
            // when any of them passes, allow rules only when all do.
            let mut found = Vec::new();
            if let Some(a) = q.arguments {
                path::path_like_strings(a, None, &mut found);
            }
            every_path = (!found.is_empty()).then(|| {
                Value::Array(
                    found
                        .into_iter()
                        .map(|s| Value::String(s.to_string()))
                        .collect(),
                )
            });
            every_path.as_ref()
        } else {
            q.arguments.and_then(|a| a.pointer(&self.pointer))
        };
        let Some(v) = v else {
            return if self.present == Some(false) {
                Ok(())
            } else {
                Err(ArgMiss::Absent)
            };
        };
        if self.present == Some(false) {
            return Err(ArgMiss::Present);
        }
        for (i, t) in self.tests.iter().enumerate() {
            let ok = match v {
                Value::Array(items) if t.per_element() => {
                    let mut each = items
                        .iter()
                        .map(|e| settle(t.eval(e, q, policy).not(self.negate), fc));
                    // Deny and audit: any element will do; allow: every element must pass.
                    if fc { each.any(|b| b) } else { each.all(|b| b) }
                }
                v => settle(t.eval(v, q, policy).not(self.negate), fc),
            };
            if !ok {
                let unknown = !fc && self.unknown_in(t, v, q, policy);
                return Err(ArgMiss::Test(i, unknown));
            }
        }
        Ok(())
    }

    /// Whether a failed test failed because something could not be evaluated (for `explain`).
    fn unknown_in(&self, t: &Test, v: &Value, q: &Query<'_>, policy: &Policy) -> bool {
        match v {
            Value::Array(items) if t.per_element() => {
                items.iter().any(|e| t.eval(e, q, policy) == Tri::Unknown)
            }
            v => t.eval(v, q, policy) == Tri::Unknown,
        }
    }
}

impl Test {
    pub(super) fn per_element(&self) -> bool {
        matches!(
            self,
            Test::Glob { .. }
                | Test::Regex { .. }
                | Test::Prefix(_)
                | Test::Range { .. }
                | Test::PathUnder(..)
        )
    }

    fn eval(&self, v: &Value, q: &Query<'_>, policy: &Policy) -> Tri {
        let p = q.principal;
        match self {
            Test::Eq(e) => e.eval(v, p),
            Test::OneOf(es) => {
                let mut out = Tri::No;
                for e in es {
                    match e.eval(v, p) {
                        Tri::Yes => return Tri::Yes,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::No => {}
                    }
                }
                out
            }
            Test::Glob { source, fixed } => {
                let Some(s) = v.as_str() else {
                    return Tri::Unknown;
                };
                if let Some(set) = fixed {
                    return Tri::of(set.is_match(s));
                }
                any_of(source.iter().map(|t| {
                    let pat = t.expand(p, glob_escape)?;
                    match policy.dynamic('g', &pat)?.as_ref() {
                        Dynamic::Glob(g) => Some(g.is_match(s)),
                        Dynamic::Regex(_) => None,
                    }
                }))
            }
            Test::Regex { source, fixed } => {
                let Some(s) = v.as_str() else {
                    return Tri::Unknown;
                };
                if let Some(re) = fixed {
                    return Tri::of(re.is_match(s));
                }
                let Some(pat) = source.expand(p, regex_escape) else {
                    return Tri::Unknown;
                };
                match policy.dynamic('r', &pat).as_deref() {
                    Some(Dynamic::Regex(re)) => Tri::of(re.is_match(s)),
                    _ => Tri::Unknown,
                }
            }
            Test::Prefix(ts) => {
                let Some(s) = v.as_str() else {
                    return Tri::Unknown;
                };
                any_of(
                    ts.iter()
                        .map(|t| Some(s.starts_with(&*t.expand(p, NO_ESCAPE)?))),
                )
            }
            Test::Len { min, max } => {
                let n = match v {
                    Value::String(s) => s.chars().count() as u64,
                    Value::Array(a) => a.len() as u64,
                    Value::Object(o) => o.len() as u64,
                    _ => return Tri::Unknown,
                };
                Tri::of(min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m))
            }
            Test::Range { min, max } => {
                let Some(n) = v.as_f64() else {
                    return Tri::Unknown;
                };
                Tri::of(min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m))
            }
            Test::PathUnder(roots, fixed) => {
                let Some(s) = v.as_str() else {
                    return Tri::Unknown;
                };
                let home = p.and_then(|p| p.home.as_deref());
                let tri = |b: Option<bool>| match b {
                    Some(true) => Tri::Yes,
                    Some(false) => Tri::No,
                    None => Tri::Unknown,
                };
                if let Some(fixed) = fixed
                    && !q.follow_links
                    && path::is_normal(s)
                {
                    // Absolute and normal, and the file system is not consulted: the text is
                    // the only reading (no allocation on this, the common, path).
                    return tri(path::under_any(&[s], fixed));
                }
                let bases = path::Bases {
                    cwd: q.cwd,
                    roots: q.roots,
                    follow_links: q.follow_links,
                };
                let Ok(readings) = path::resolutions(s, bases, home) else {
                    return Tri::Unknown;
                };
                if let Some(fixed) = fixed {
                    return tri(path::under_any(&readings, fixed));
                }
                let mut known: Vec<Cow<'_, str>> = Vec::with_capacity(roots.len());
                let mut unknown_root = false;
                for r in roots {
                    match &r.fixed {
                        Some(root) => known.push(Cow::Borrowed(root.as_str())),
                        None => match r
                            .source
                            .expand(p, NO_ESCAPE)
                            .and_then(|root| path::resolve(&root, None, home).ok())
                        {
                            Some(root) => known.push(Cow::Owned(root)),
                            None => unknown_root = true,
                        },
                    }
                }
                match path::under_any(&readings, &known) {
                    Some(true) => Tri::Yes,
                    Some(false) if !unknown_root => Tri::No,
                    // The readings disagree, or a root could not be expanded.
                    _ => Tri::Unknown,
                }
            }
        }
    }
}

/// `Yes` if any is yes, else `Unknown` if any is unknown, else `No`.
fn any_of(it: impl Iterator<Item = Option<bool>>) -> Tri {
    let mut out = Tri::No;
    for v in it {
        match v {
            Some(true) => return Tri::Yes,
            None => out = Tri::Unknown,
            Some(false) => {}
        }
    }
    out
}

impl Expect {
    fn eval(&self, v: &Value, p: Option<&Principal>) -> Tri {
        match self {
            Expect::Value(x) => Tri::of(json_eq(x, v)),
            Expect::Str(t) => match t.expand(p, NO_ESCAPE) {
                Some(s) => Tri::of(v.as_str() == Some(&*s)),
                None => Tri::Unknown,
            },
        }
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || x.as_f64().is_some_and(|x| y.as_f64() == Some(x))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        (a, b) => a == b,
    }
}

/// The matching rules of each action, lowest index (first written) first.
#[derive(Default)]
struct Matched {
    deny: Option<u32>,
    ask: Option<u32>,
    allow: Option<u32>,
    audit: Option<u32>,
    rated: Vec<u32>,
}

impl Matched {
    fn note(&mut self, i: u32, r: &Rule) {
        let slot = match r.action {
            RuleAction::Deny => &mut self.deny,
            RuleAction::Allow => &mut self.allow,
            RuleAction::Audit => &mut self.audit,
            RuleAction::Ask => &mut self.ask,
        };
        if slot.is_none_or(|j| i < j) {
            *slot = Some(i);
        }
        if r.rate.is_some() {
            self.rated.push(i);
        }
    }
}

impl Policy {
    /// Decides one request without rate limits (see [`Policy::decide_limited`]). Deny wins
    /// over allow; the first-written matching rule of the winning action names the decision.
    pub fn decide<'a>(&self, q: impl Into<Query<'a>>) -> Decision {
        let q = q.into();
        self.conclude(&q, self.matched(&q), None)
    }

    /// Decides one request, counting it against the `rate` of the rules that match.
    pub fn decide_limited(&self, q: &Query<'_>, limiter: &Limiter, now: Instant) -> Decision {
        self.conclude(q, self.matched(q), Some((limiter, now)))
    }

    /// The decision and, for every rule, whether it matched and if not why.
    pub fn explain(&self, q: &Query<'_>) -> Explanation {
        let mut m = Matched::default();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let res = r.check(q, self);
            if res.is_ok() {
                m.note(u32::try_from(i).unwrap_or(u32::MAX), r);
            }
            rules.push(RuleReport {
                id: r.id.clone(),
                origin: r.origin.clone(),
                action: r.action,
                miss: res.err().map(|miss| describe(miss, r, q)),
            });
        }
        Explanation {
            decision: self.conclude(q, m, None),
            rules,
        }
    }

    /// Whether no call of `q.tool` by this principal can be allowed, whatever its arguments:
    /// a deny rule without argument constraints matches, or the default denies and no allow
    /// rule could match. Used to hide such tools from `tools/list`. Never in monitor mode.
    pub fn never_allows(&self, q: &Query<'_>) -> bool {
        if self.mode == Mode::Monitor {
            return false;
        }
        let (mut denied, mut could_allow) = (false, false);
        let no_args = Gaps {
            arguments: true,
            ..Gaps::default()
        };
        self.index.each_candidate(q.method, q.server, q.tool, |i| {
            let Some(r) = self.rules.get(i as usize) else {
                return;
            };
            match r.action {
                RuleAction::Deny
                    if r.args.is_empty() && r.check_with(q, self, &no_args).is_ok() =>
                {
                    denied = true
                }
                RuleAction::Allow | RuleAction::Ask if r.check_with(q, self, &no_args).is_ok() => {
                    could_allow = true
                }
                _ => {}
            }
        });
        denied
            || (!could_allow && self.default == Action::Deny && ACTING_METHODS.contains(&q.method))
    }

    /// Decides a request from what an audit record keeps. The decision is `Ok` when the
    /// facts the record lacks (`gaps`) cannot change it (action and rule), else `Err`
    /// saying which rule may or may not match, and why. Rates are not counted (as
    /// [`Policy::decide`]).
    pub(crate) fn replay(&self, q: &Query<'_>, gaps: &Gaps) -> Replay {
        let mut m = Matched::default();
        let mut out = Replay {
            decision: Err(String::new()),
            matched: Vec::new(),
            maybe: Vec::new(),
        };
        // The first rule of each action that may match, and why it may.
        let mut deny: Option<(u32, &str)> = None;
        let mut allow: Option<(u32, &str)> = None;
        for (i, r) in self.rules.iter().enumerate() {
            let n = u32::try_from(i).unwrap_or(u32::MAX);
            gaps.hit.set(None);
            if r.check_with(q, self, gaps).is_err() {
                continue;
            }
            let Some(why) = gaps.hit.take() else {
                m.note(n, r);
                out.matched.push(i);
                continue;
            };
            out.maybe.push(i);
            // Audit rules decide nothing. A rule of any other action that may match counts
            // as a deny rule that may: the decision is open unless a known deny comes first.
            let slot = if r.action == RuleAction::Audit {
                continue;
            } else if r.action == RuleAction::Allow {
                &mut allow
            } else {
                &mut deny
            };
            if slot.is_none() {
                *slot = Some((n, why));
            }
        }
        let unknown = |(i, why): (u32, &str)| {
            format!(
                "rule `{}` may or may not match: {why}",
                self.rules[i as usize].id
            )
        };
        out.decision = if let Some(d) = deny
            && m.deny.is_none_or(|j| d.0 < j)
        {
            Err(unknown(d))
        } else if let Some(a) = allow
            && m.deny.is_none()
            && m.allow.is_none_or(|j| a.0 < j)
        {
            Err(unknown(a))
        } else {
            Ok(self.conclude(q, m, None))
        };
        out
    }

    fn matched(&self, q: &Query<'_>) -> Matched {
        let mut m = Matched::default();
        self.index.each_candidate(q.method, q.server, q.tool, |i| {
            if let Some(r) = self.rules.get(i as usize)
                && r.check(q, self).is_ok()
            {
                m.note(i, r);
            }
        });
        // A rule found twice (two of its patterns matched) takes one rate token.
        m.rated.sort_unstable();
        m.rated.dedup();
        m
    }

    fn conclude(
        &self,
        q: &Query<'_>,
        m: Matched,
        limiter: Option<(&Limiter, Instant)>,
    ) -> Decision {
        let rule = |i: u32| &self.rules[i as usize];
        let mut rate_limited = false;
        let mut decider = None;
        let (verdict, id, message) = if let Some(i) = m.deny {
            decider = Some(i);
            (Action::Deny, rule(i).id.clone(), rule(i).message.clone())
        } else if let Some((i, rate)) = limiter.and_then(|(lim, now)| {
            let uid = q.principal.map(|p| p.uid);
            let tool = q.tool.unwrap_or("");
            // Every rated rule takes its token, so each limit counts every call it covers.
            let mut over = None;
            for &i in &m.rated {
                if let Some(rate) = rule(i).rate
                    && !lim.admit(&rule(i).id, uid, tool, rate, now)
                    && over.is_none()
                {
                    over = Some((i, rate));
                }
            }
            over
        }) {
            rate_limited = true;
            decider = Some(i);
            let msg = rule(i)
                .message
                .clone()
                .unwrap_or_else(|| format!("rate limit of {rate} exceeded"));
            (Action::Deny, rule(i).id.clone(), Some(msg))
        } else if let Some(i) = m.ask {
            decider = Some(i);
            (Action::Ask, rule(i).id.clone(), rule(i).message.clone())
        } else if let Some(i) = m.allow {
            decider = Some(i);
            (Action::Allow, rule(i).id.clone(), rule(i).message.clone())
        } else if ACTING_METHODS.contains(&q.method) {
            (self.default, "default".to_string(), None)
        } else {
            (Action::Allow, "plumbing".to_string(), None)
        };
        let monitor = self.mode == Mode::Monitor;
        Decision {
            action: if monitor { Action::Allow } else { verdict },
            rule: id,
            message,
            mode: self.mode,
            would_deny: monitor && verdict == Action::Deny,
            would_ask: monitor && verdict == Action::Ask,
            ask: (verdict == Action::Ask && !monitor)
                .then(|| decider.and_then(|i| rule(i).ask))
                .flatten(),
            audit: m.audit.map(|i| rule(i).id.clone()),
            rate_limited,
            record_arguments: decider
                .into_iter()
                .chain(m.audit)
                .any(|i| rule(i).record_arguments),
            policy_sha256: self.sha256.clone(),
        }
    }

    /// A glob or regex with variables, compiled for one expansion and kept.
    pub(super) fn dynamic(&self, kind: char, pattern: &str) -> Option<Arc<Dynamic>> {
        // A poisoned cache: compile without it.
        let compile = || -> Option<Arc<Dynamic>> {
            match kind {
                'g' => globset::Glob::new(pattern)
                    .ok()
                    .map(|g| Arc::new(Dynamic::Glob(g.compile_matcher()))),
                _ => regex::Regex::new(pattern)
                    .ok()
                    .map(|r| Arc::new(Dynamic::Regex(r))),
            }
        };
        let Ok(mut cache) = self.dynamic.lock() else {
            return compile();
        };
        let key = format!("{kind}{pattern}");
        if let Some(hit) = cache.get(&key) {
            return hit.clone();
        }
        if cache.len() >= 4096 {
            cache.clear();
        }
        let d = compile();
        cache.insert(key, d.clone());
        d
    }
}

impl Principal {
    /// The user with this uid, from the passwd and group databases; unknown fields stay empty.
    pub fn from_uid(uid: u32) -> Principal {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        Principal::from_user(uid, user)
    }

    /// The user with this name; `None` when there is none.
    pub fn from_name(name: &str) -> Option<Principal> {
        let user = nix::unistd::User::from_name(name).ok().flatten()?;
        Some(Principal::from_user(user.uid.as_raw(), Some(user)))
    }

    fn from_user(uid: u32, user: Option<nix::unistd::User>) -> Principal {
        let Some(u) = user else {
            return Principal {
                uid,
                ..Principal::default()
            };
        };
        let gids: Vec<u32> = std::ffi::CString::new(u.name.clone())
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, u.gid).ok())
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|| vec![u.gid.as_raw()]);
        let groups = gids
            .iter()
            .filter_map(|g| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*g))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .collect();
        Principal {
            uid,
            user: Some(u.name),
            home: Some(u.dir.display().to_string()),
            gids,
            groups,
        }
    }
}
