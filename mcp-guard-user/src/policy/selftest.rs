//! What `policy check` finds beyond syntax: `[[test]]` tables whose expectation the policy
//! does not meet, and rules that can never decide a request.

use super::{Action, Policy, PolicyTest, Query, Rule, RuleAction};

impl PolicyTest {
    /// The request, as `policy explain` builds it (links followed on this machine).
    fn query(&self) -> Query<'_> {
        Query {
            server: &self.server,
            server_exe: self.server_exe.as_deref(),
            method: &self.method,
            tool: self.tool.as_deref(),
            principal: self.principal.as_ref(),
            host_exe: self.host_exe.as_deref(),
            ancestry: self.ancestry.as_deref(),
            arguments: self.arguments.as_ref(),
            cwd: self.cwd.as_deref(),
            roots: &self.roots,
            follow_links: true,
        }
    }
}

impl Policy {
    /// Runs the `[[test]]` tables: one line per failure, `file:line: test "name": expected
    /// deny (rule x), got allow (default)`. What the policy says is compared (in monitor
    /// mode a request it would deny is `deny`), and the rule when the test names one.
    pub fn run_tests(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for t in &self.tests {
            let d = self.decide(t.query());
            let got = if d.would_deny { Action::Deny } else { d.action };
            if got == t.expect && t.rule.as_ref().is_none_or(|r| *r == d.rule) {
                continue;
            }
            let want = match &t.rule {
                Some(r) => format!("{} (rule {r})", t.expect),
                None => t.expect.to_string(),
            };
            failures.push(format!(
                "{}: test \"{}\": expected {want}, got {got} ({})",
                t.origin, t.name, d.rule
            ));
        }
        failures
    }

    /// Rules that provably never decide a request, one warning each: another rule matches
    /// every request they match and wins (a deny rule over an allow rule; an earlier rule
    /// of the same action). Only rules whose conditions are a method, server and tool
    /// are taken as covering others, and only when their patterns are `*` or cover the
    /// other's exact names: anything less certain is not reported.
    pub fn shadowed(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (j, b) in self.rules.iter().enumerate() {
            let by = self.rules.iter().enumerate().find(|&(i, a)| {
                i != j
                    && wins_over(a, b, i < j)
                    && only_names(a)
                    && a.methods.covers(&b.methods)
                    && a.server.as_ref().is_none_or(|s| {
                        b.server.as_ref().is_some_and(|t| s.covers(t)) || is_star(&s.source)
                    })
                    && a.tool
                        .as_ref()
                        .is_none_or(|s| b.tool.as_ref().is_some_and(|t| s.covers(t)))
            });
            if let Some((_, a)) = by {
                let why = if a.action == RuleAction::Deny && b.action == RuleAction::Allow {
                    "deny wins"
                } else {
                    "it is written first"
                };
                out.push(format!(
                    "{}: warning: rule `{}` can never decide a request: {} rule `{}` ({}) \
                     matches every request it does, and {why}",
                    b.origin, b.id, a.action, a.id, a.origin
                ));
            }
        }
        out
    }
}

impl Policy {
    /// Rules whose `server` patterns match none of `names` (the servers host configs name):
    /// they can never match a request from those hosts. One warning each.
    pub fn unnamed_servers(&self, names: &[String]) -> Vec<String> {
        self.rules
            .iter()
            .filter_map(|r| {
                let s = r.server.as_ref()?;
                if names.iter().any(|n| s.is_match(n)) {
                    return None;
                }
                Some(format!(
                    "{}: warning: rule `{}` names server {s}, which no host config names",
                    r.origin, r.id
                ))
            })
            .collect()
    }
}

/// Whether `a`, matching whenever `b` does, takes the decision (or the audit mark) from it.
/// A rated rule still counts its calls when another decides, unless a deny rule does.
fn wins_over(a: &Rule, b: &Rule, a_first: bool) -> bool {
    match (a.action, b.action) {
        (RuleAction::Deny, RuleAction::Allow) => true,
        (RuleAction::Deny, RuleAction::Deny) => a_first,
        (RuleAction::Allow, RuleAction::Allow) | (RuleAction::Audit, RuleAction::Audit) => {
            a_first && b.rate.is_none()
        }
        _ => false,
    }
}

/// A rule whose only conditions are names (method, server, tool): no principal, process
/// or argument conditions, and no rate (an allow rule over its rate denies).
fn only_names(r: &Rule) -> bool {
    r.server_exe.is_none()
        && r.user.is_none()
        && r.uid.is_none()
        && r.group.is_none()
        && r.gid.is_none()
        && r.host_exe.is_none()
        && r.ancestor.is_none()
        && r.not_ancestor.is_none()
        && r.args.is_empty()
        && r.rate.is_none()
}

/// Whether the patterns include `*` (every name).
fn is_star(patterns: &[String]) -> bool {
    patterns.iter().any(|p| p == "*")
}
