//! The words `policy explain` uses for a condition that did not hold.

use std::fmt;

use serde_json::Value;

use super::*;

/// Words for a failed condition, with the request's value.
pub(super) fn describe(miss: Miss, r: &Rule, q: &Query<'_>) -> String {
    let unknown_note = "unknown (allow rules need it known)";
    match miss {
        Miss::Field(f, unknown) => {
            let (name, pats, value): (&str, String, Option<String>) = match f {
                Field::Method => ("method", show(&r.methods), Some(q.method.to_string())),
                Field::Tool => ("tool", opt_show(&r.tool), q.tool.map(str::to_string)),
                Field::Server => ("server", opt_show(&r.server), Some(q.server.to_string())),
                Field::ServerExe => (
                    "server_exe",
                    opt_show(&r.server_exe),
                    q.server_exe.map(str::to_string),
                ),
                Field::User => (
                    "user",
                    opt_show(&r.user),
                    q.principal.and_then(|p| p.user.clone()),
                ),
                Field::Uid => (
                    "uid",
                    format!("{:?}", r.uid.as_deref().unwrap_or_default()),
                    q.principal.map(|p| p.uid.to_string()),
                ),
                Field::Group => (
                    "group",
                    opt_show(&r.group),
                    q.principal.map(|p| format!("{:?}", p.groups)),
                ),
                Field::Gid => (
                    "gid",
                    format!("{:?}", r.gid.as_deref().unwrap_or_default()),
                    q.principal.map(|p| format!("{:?}", p.gids)),
                ),
                Field::HostExe => (
                    "host_exe",
                    opt_show(&r.host_exe),
                    q.host_exe.map(str::to_string),
                ),
                Field::Ancestor => ("ancestor", opt_show(&r.ancestor), None),
                Field::NotAncestor => ("not_ancestor", opt_show(&r.not_ancestor), None),
            };
            match (f, unknown, value) {
                (_, true, _) => format!("{name} is {unknown_note}"),
                (Field::Ancestor, ..) => format!("no ancestor matches {pats}"),
                (Field::NotAncestor, ..) => {
                    let hit = q.ancestry.unwrap_or_default().iter().find(|a| {
                        r.not_ancestor
                            .as_ref()
                            .is_some_and(|e| e.matches(a.exe.as_deref(), Some(&a.comm)))
                    });
                    let who = hit.map_or(String::new(), |a| {
                        format!(" (`{}`)", a.exe.as_deref().unwrap_or(&a.comm))
                    });
                    format!("an ancestor{who} matches {pats}")
                }
                (_, false, None) => format!("{name}: the request has none; the rule wants {pats}"),
                (_, false, Some(v)) => format!("{name} `{v}` does not match {pats}"),
            }
        }
        Miss::Arg(i, why) => {
            let Some(a) = r.args.get(i) else {
                return "argument constraint".into();
            };
            let ptr = if a.pointer.is_empty() {
                "arguments"
            } else {
                a.pointer.as_str()
            };
            match why {
                ArgMiss::Absent if q.arguments.is_none() => {
                    format!("args `{ptr}`: the request has no arguments")
                }
                ArgMiss::Absent => format!("args `{ptr}`: absent"),
                ArgMiss::Present => format!("args `{ptr}`: present, the rule wants it absent"),
                ArgMiss::Test(t, unknown) => {
                    let test = a.tests.get(t).map_or(String::new(), ToString::to_string);
                    let not = if a.negate { "not " } else { "" };
                    let value = q
                        .arguments
                        .and_then(|v| v.pointer(&a.pointer))
                        .map(short)
                        .unwrap_or_default();
                    if unknown {
                        format!(
                            "args `{ptr}` = {value}: `{not}{test}` cannot be evaluated (wrong type, unresolvable path or unknown variable); allow rules fail closed"
                        )
                    } else {
                        format!("args `{ptr}` = {value}: `{not}{test}` does not hold")
                    }
                }
            }
        }
    }
}

pub(super) fn show<T: fmt::Display>(v: &T) -> String {
    v.to_string()
}

pub(super) fn opt_show<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or(String::new(), ToString::to_string)
}

/// A JSON value cut to a readable length.
pub(super) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}
