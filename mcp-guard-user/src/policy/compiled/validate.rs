//! Compiling a policy file: raw rules in, validated rules or diagnostics with line and
//! column out.

use std::time::Duration;

use globset::{Glob, GlobSetBuilder};
use regex::Regex;
use serde_json::Value;
use toml::Spanned;

use crate::policy::raw::{Ids, Patterns, RawAction, RawArg, RawRule};
use crate::policy::{Diagnostic, RuleAction, Source, path};

use super::Ask;

use super::*;

/// Compiling one file: where errors go.
pub(super) struct Ctx<'a> {
    pub(super) src: &'a Source,
    pub(super) lines: Lines,
    pub(super) diags: &'a mut Vec<Diagnostic>,
}

/// Byte offsets of line starts, to turn spans into line and column quickly.
pub(super) struct Lines(pub(super) Vec<usize>);

impl Lines {
    pub(super) fn of(text: &str) -> Lines {
        Lines(
            std::iter::once(0)
                .chain(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1))
                .collect(),
        )
    }

    /// 1-based line and column (in characters) of byte `at`.
    pub(super) fn locate(&self, text: &str, at: usize) -> (usize, usize) {
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let line = self.0.partition_point(|&start| start <= at).max(1);
        let start = self.0.get(line - 1).copied().unwrap_or(0);
        (
            line,
            text.get(start..at).map_or(0, |s| s.chars().count()) + 1,
        )
    }
}

impl Ctx<'_> {
    /// A `[[test]]`: the request it describes, as `policy explain` would build it.
    pub(super) fn test(&mut self, t: Spanned<crate::policy::raw::RawTest>) -> Option<PolicyTest> {
        let at = t.span().start;
        let t = t.into_inner();
        let (line, _) = self.lines.locate(&self.src.text, at);
        let (method, tool, arguments) = match &t.message {
            Some(m) => {
                if t.method.is_some() || t.tool.is_some() || t.args.is_some() {
                    self.err(
                        m.span().start,
                        "a test gives `message` or `method`, `tool` and `args`, not both",
                    );
                    return None;
                }
                match crate::policy::parse_request(m.get_ref()) {
                    Ok(parts) => parts,
                    Err(e) => {
                        self.err(m.span().start, &format!("`message`: {e}"));
                        return None;
                    }
                }
            }
            None => {
                if let Some(a) = &t.args
                    && !a.get_ref().is_object()
                {
                    self.err(
                        a.span().start,
                        "`args` must be a table (the call's arguments)",
                    );
                    return None;
                }
                (
                    t.method.unwrap_or_else(|| "tools/call".into()),
                    t.tool,
                    t.args.map(Spanned::into_inner),
                )
            }
        };
        let named = t.user.is_some()
            || t.uid.is_some()
            || !t.groups.is_empty()
            || !t.gids.is_empty()
            || t.home.is_some();
        let principal = named.then(|| crate::policy::Principal {
            uid: t.uid.unwrap_or(u32::MAX),
            user: t.user,
            home: t.home,
            gids: t.gids,
            groups: t.groups,
        });
        let ancestry = t.ancestors.map(|a| {
            a.iter()
                .map(|a| crate::policy::Ancestor::named(a))
                .collect()
        });
        Some(PolicyTest {
            name: t.name,
            origin: format!("{}:{line}", self.src.name),
            server: t.server,
            method,
            tool,
            arguments,
            principal,
            server_exe: t.server_exe,
            host_exe: t.host_exe,
            cwd: t.cwd,
            roots: t.roots,
            ancestry,
            expect: t.expect,
            rule: t.rule,
        })
    }

    pub(super) fn err(&mut self, at: usize, message: &str) {
        let (line, column) = self.lines.locate(&self.src.text, at);
        self.diags.push(Diagnostic {
            origin: self.src.name.clone(),
            line,
            column,
            message: message.to_string(),
        });
    }

    pub(super) fn place(&self, at: usize) -> String {
        let (line, column) = self.lines.locate(&self.src.text, at);
        format!("{}:{line}:{column}", self.src.name)
    }

    pub(super) fn names(
        &mut self,
        field: &str,
        p: &Option<Spanned<Patterns>>,
        literal_separator: bool,
    ) -> Option<Option<Names>> {
        let Some(p) = p else { return Some(None) };
        let at = p.span().start;
        let list = &p.get_ref().0;
        if !self.plain(field, at, list) {
            return None;
        }
        match Names::compile(list, literal_separator) {
            Ok(n) => Some(Some(n)),
            Err(e) => {
                self.err(at, &format!("`{field}`: {e}"));
                None
            }
        }
    }

    pub(super) fn exes(
        &mut self,
        field: &str,
        p: &Option<Spanned<Patterns>>,
    ) -> Option<Option<Exes>> {
        let Some(p) = p else { return Some(None) };
        let at = p.span().start;
        let list = &p.get_ref().0;
        if !self.plain(field, at, list) {
            return None;
        }
        match Exes::compile(list) {
            Ok(n) => Some(Some(n)),
            Err(e) => {
                self.err(at, &format!("`{field}`: {e}"));
                None
            }
        }
    }

    /// A non-empty list without variables (those are for argument constraints).
    pub(super) fn plain(&mut self, field: &str, at: usize, list: &[String]) -> bool {
        if list.is_empty() {
            self.err(at, &format!("`{field}`: an empty list matches nothing; leave the field out to match anything"));
            return false;
        }
        if list.iter().any(|p| p.contains("${")) {
            self.err(
                at,
                &format!("`{field}`: variables (${{...}}) are only expanded in `args` constraints"),
            );
            return false;
        }
        true
    }

    pub(super) fn ids(
        &mut self,
        field: &str,
        p: &Option<Spanned<Ids>>,
    ) -> Option<Option<Vec<u32>>> {
        let Some(p) = p else { return Some(None) };
        if p.get_ref().0.is_empty() {
            self.err(
                p.span().start,
                &format!("`{field}`: an empty list matches nothing"),
            );
            return None;
        }
        Some(Some(p.get_ref().0.clone()))
    }

    pub(super) fn rule(&mut self, r: RawRule, origin: String) -> Option<Rule> {
        let before = self.diags.len();
        let id_at = r.id.span().start;
        let id = r.id.into_inner();
        if id.is_empty()
            || id == "default"
            || id == "plumbing"
            || id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            self.err(
                id_at,
                &format!(
                    "rule id `{id}` is reserved or has blanks; use letters, digits, `-`, `_`, `.`"
                ),
            );
        }
        let action = match r.action.get_ref() {
            RawAction::Allow => RuleAction::Allow,
            RawAction::Deny => RuleAction::Deny,
            RawAction::Audit => RuleAction::Audit,
            RawAction::Ask => RuleAction::Ask,
        };
        let ask = self.ask(action, &r.timeout, &r.remember);
        let methods = match &r.method {
            Some(_) => self.names("method", &r.method, false).flatten(),
            None => Names::compile(&["tools/call".to_string()], false).ok(),
        };
        let server = self.names("server", &r.server, false);
        let server_exe = self.exes("server_exe", &r.server_exe);
        let tool = self.names("tool", &r.tool, false);
        let user = self.names("user", &r.user, false);
        let uid = self.ids("uid", &r.uid);
        let group = self.names("group", &r.group, false);
        let gid = self.ids("gid", &r.gid);
        let host_exe = self.exes("host_exe", &r.host_exe);
        let ancestor = self.exes("ancestor", &r.ancestor);
        let not_ancestor = self.exes("not_ancestor", &r.not_ancestor);
        let mut args = Vec::new();
        for a in r.args {
            let at = a.span().start;
            if let Some(a) = self.arg(a.into_inner(), at) {
                args.push(a);
            }
        }
        let rate = match r.rate {
            None => None,
            Some(s) => {
                let at = s.span().start;
                if action == RuleAction::Deny {
                    self.err(
                        at,
                        "`rate` on a deny rule means nothing: it already denies every call",
                    );
                }
                match parse_rate(s.get_ref()) {
                    Ok(rate) => Some(rate),
                    Err(e) => {
                        self.err(at, &e.to_string());
                        None
                    }
                }
            }
        };
        if self.diags.len() > before {
            return None;
        }
        Some(Rule {
            id,
            description: r.description,
            origin,
            action,
            message: r.message,
            methods: methods?,
            server: server?,
            server_exe: server_exe?,
            tool: tool?,
            user: user?,
            uid: uid?,
            group: group?,
            gid: gid?,
            host_exe: host_exe?,
            ancestor: ancestor?,
            not_ancestor: not_ancestor?,
            args,
            rate,
            record_arguments: r.record_arguments,
            ask,
        })
    }

    /// An ask rule's `timeout` and `remember`, which no other rule may have.
    fn ask(
        &mut self,
        action: RuleAction,
        timeout: &Option<Spanned<String>>,
        remember: &Option<Spanned<String>>,
    ) -> Option<Ask> {
        if action != RuleAction::Ask {
            for (name, field) in [("timeout", timeout), ("remember", remember)] {
                if let Some(f) = field {
                    self.err(
                        f.span().start,
                        &format!("`{name}` is for `action = \"ask\"` rules only"),
                    );
                }
            }
            return None;
        }
        let mut ask = Ask {
            timeout: Ask::DEFAULT_TIMEOUT,
            remember_session: false,
        };
        if let Some(t) = timeout {
            match humantime::parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() && d <= Ask::MAX_TIMEOUT => ask.timeout = d,
                Ok(_) => self.err(
                    t.span().start,
                    "`timeout`: more than zero and at most 1h (the host's own request times out)",
                ),
                Err(e) => self.err(
                    t.span().start,
                    &format!(
                        "`timeout`: `{}` is not a duration such as `90s` or `2m`: {e}",
                        t.get_ref()
                    ),
                ),
            }
        }
        if let Some(m) = remember {
            match m.get_ref().as_str() {
                "call" => {}
                "session" => ask.remember_session = true,
                other => self.err(
                    m.span().start,
                    &format!("`remember`: `{other}` is not `call` or `session`"),
                ),
            }
        }
        Some(ask)
    }

    pub(super) fn arg(&mut self, a: RawArg, at: usize) -> Option<ArgRule> {
        let before = self.diags.len();
        let pointer = a.pointer.get_ref().clone();
        if !(pointer.is_empty() || pointer.starts_with('/') || pointer == ANY_PATH) {
            self.err(a.pointer.span().start, "`pointer` is a JSON pointer into `arguments`: empty or starting with `/`, like `/path`; or `**` for every path-like argument");
        }
        let mut tests = Vec::new();
        let template = |ctx: &mut Self, at: usize, s: &str| -> Option<Template> {
            Template::parse(s)
                .map_err(|e| ctx.err(at, &e.to_string()))
                .ok()
        };
        let expect = |ctx: &mut Self, at: usize, v: Value| -> Option<Expect> {
            match v {
                Value::String(s) => template(ctx, at, &s).map(Expect::Str),
                v => Some(Expect::Value(v)),
            }
        };
        if let Some(v) = a.eq {
            let at = v.span().start;
            tests.extend(expect(self, at, v.into_inner()).map(Test::Eq));
        }
        if let Some(vs) = a.one_of {
            let at = vs.span().start;
            let vs = vs.into_inner();
            if vs.is_empty() {
                self.err(at, "`one_of`: an empty list matches nothing");
            }
            let es: Vec<Expect> = vs.into_iter().filter_map(|v| expect(self, at, v)).collect();
            tests.push(Test::OneOf(es));
        }
        if let Some(g) = a.glob {
            let at = g.span().start;
            let ts: Vec<Template> = g
                .get_ref()
                .0
                .iter()
                .filter_map(|s| template(self, at, s))
                .collect();
            if ts.is_empty() {
                self.err(at, "`glob`: an empty list matches nothing");
            }
            let mut fixed = GlobSetBuilder::new();
            let mut all_fixed = true;
            for t in &ts {
                match Glob::new(&t.sample()) {
                    Err(e) => self.err(
                        at,
                        &format!("`glob`: invalid pattern `{}`: {}", t.source, e.kind()),
                    ),
                    Ok(g) => match t.fixed() {
                        Some(_) => {
                            fixed.add(g);
                        }
                        None => all_fixed = false,
                    },
                }
            }
            let fixed = if all_fixed { fixed.build().ok() } else { None };
            tests.push(Test::Glob { source: ts, fixed });
        }
        if let Some(r) = a.regex {
            let at = r.span().start;
            if let Some(t) = template(self, at, r.get_ref()) {
                match Regex::new(&t.sample()) {
                    Err(e) => self.err(at, &format!("`regex`: {e}")),
                    Ok(re) => {
                        let fixed = t.fixed().is_some().then_some(re);
                        tests.push(Test::Regex { source: t, fixed });
                    }
                }
            }
        }
        if let Some(p) = a.prefix {
            let at = p.span().start;
            let ts: Vec<Template> = p
                .get_ref()
                .0
                .iter()
                .filter_map(|s| template(self, at, s))
                .collect();
            if ts.is_empty() {
                self.err(at, "`prefix`: an empty list matches nothing");
            }
            tests.push(Test::Prefix(ts));
        }
        if a.min_len.is_some() || a.max_len.is_some() {
            let (min, max) = (
                a.min_len.map(Spanned::into_inner),
                a.max_len.map(Spanned::into_inner),
            );
            if let (Some(lo), Some(hi)) = (min, max)
                && lo > hi
            {
                self.err(at, "`min_len` is greater than `max_len`");
            }
            tests.push(Test::Len { min, max });
        }
        if a.min.is_some() || a.max.is_some() {
            let (min, max) = (
                a.min.map(Spanned::into_inner),
                a.max.map(Spanned::into_inner),
            );
            if min.is_some_and(f64::is_nan) || max.is_some_and(f64::is_nan) {
                self.err(at, "`min`/`max` must be numbers, not nan");
            }
            if let (Some(lo), Some(hi)) = (min, max)
                && lo > hi
            {
                self.err(at, "`min` is greater than `max`");
            }
            tests.push(Test::Range { min, max });
        }
        if let Some(p) = a.path_under {
            let at = p.span().start;
            let mut roots = Vec::new();
            for s in &p.get_ref().0 {
                let Some(t) = template(self, at, s) else {
                    continue;
                };
                let sample = t.sample();
                if !(sample.starts_with('/') || sample.starts_with('~')) {
                    self.err(
                        at,
                        &format!(
                            "`path_under`: `{s}` must be absolute or start with `~` or `${{home}}`"
                        ),
                    );
                    continue;
                }
                let fixed = match t.fixed() {
                    Some(f) if f.starts_with('/') => Some(path::normalize(f)),
                    _ => None,
                };
                roots.push(Root { source: t, fixed });
            }
            if p.get_ref().0.is_empty() {
                self.err(at, "`path_under`: an empty list matches nothing");
            }
            let fixed: Option<Vec<String>> = roots.iter().map(|r| r.fixed.clone()).collect();
            tests.push(Test::PathUnder(roots, fixed));
        }
        let present = a.present.map(Spanned::into_inner);
        if present == Some(false) && !tests.is_empty() {
            self.err(
                at,
                "`present = false` cannot be combined with tests on the value",
            );
        }
        if present.is_none() && tests.is_empty() {
            self.err(at, "an `args` constraint needs a test: eq, one_of, glob, regex, prefix, min_len/max_len, min/max, path_under or present");
        }
        if a.negate && tests.len() != 1 {
            self.err(
                at,
                "`negate` takes exactly one test (write one constraint per negated test)",
            );
        }
        if pointer == ANY_PATH && tests.iter().any(|t| !t.per_element()) {
            self.err(at, "`pointer = \"**\"` takes the tests that look at one string: glob, regex, prefix, path_under");
        }
        if self.diags.len() > before {
            return None;
        }
        Some(ArgRule {
            pointer,
            present,
            negate: a.negate,
            tests,
        })
    }
}

/// `N/second`, `N/minute`, `N/hour`, `N/day`, or `N/<duration>` such as `5/30s`.
pub(super) fn parse_rate(s: &str) -> Result<Rate, ValueError> {
    let bad = || ValueError::Rate(s.to_string());
    let (n, per) = s.split_once('/').ok_or_else(bad)?;
    let calls: u32 = n.trim().parse().map_err(|_| bad())?;
    if calls == 0 {
        return Err(ValueError::ZeroRate);
    }
    let per_t = per.trim();
    let (dur, unit) = match per_t {
        "s" | "sec" | "second" => (Duration::from_secs(1), "second"),
        "m" | "min" | "minute" => (Duration::from_secs(60), "minute"),
        "h" | "hour" => (Duration::from_secs(3600), "hour"),
        "d" | "day" => (Duration::from_secs(86400), "day"),
        other => (humantime::parse_duration(other).map_err(|_| bad())?, ""),
    };
    if dur.is_zero() {
        return Err(bad());
    }
    Ok(Rate {
        calls,
        per: dur,
        unit,
    })
}
