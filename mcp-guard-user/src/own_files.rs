//! mcp-guard's own files: no guarded call may read or write them, whatever the policy says.
//!
//! A guarded server acts as the user who runs the shim, so it can reach the shim's policy,
//! signing key, pins and audit log like any other file. A call that names one (in any
//! path-like argument, at any depth, in any spelling [`crate::policy::path`] understands)
//! is refused by the built-in rule [`RULE`] and raises an alert. No policy can remove it.
//! What it cannot see: a tool that takes a shell command or a script rather than a path.

use std::path::Path;

use serde_json::Value;

use crate::policy::path::{self, Bases};

/// The rule id that refuses such calls.
pub const RULE: &str = "guard-own-files";

/// Directories and file families that belong to mcp-guard.
#[derive(Debug, Default, Clone)]
pub struct OwnFiles {
    /// Everything inside these.
    dirs: Vec<String>,
    /// These files and their siblings that extend the name (`audit.jsonl.head`,
    /// `audit.jsonl.1-800`, `audit.jsonl.cursor`).
    families: Vec<String>,
}

impl OwnFiles {
    /// The places every mcp-guard installation uses: the system config, state, log and run
    /// directories, the user's config and state directories, and this executable.
    pub fn standard() -> OwnFiles {
        let mut own = OwnFiles::default();
        for d in [
            "/etc/mcp-guard",
            "/var/lib/mcp-guard",
            "/var/log/mcp-guard",
            "/run/mcp-guard",
            "/usr/lib/mcp-guard",
        ] {
            own.add_dir(Path::new(d));
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from)
        };
        let home = env("HOME");
        if let Some(c) = env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")))
        {
            own.add_dir(&c.join("mcp-guard"));
        }
        if let Some(s) =
            env("XDG_STATE_HOME").or_else(|| home.as_ref().map(|h| h.join(".local/state")))
        {
            own.add_dir(&s.join("mcp-guard"));
        }
        if let Ok(exe) = std::env::current_exe() {
            own.add_family(&exe);
        }
        own
    }

    /// Everything inside `dir`.
    pub fn add_dir(&mut self, dir: &Path) {
        push_spellings(&mut self.dirs, dir);
    }

    /// `file` and the files beside it whose names extend its name with a dot.
    pub fn add_family(&mut self, file: &Path) {
        push_spellings(&mut self.families, file);
    }

    /// The first of mcp-guard's files a request's params name, if any. Every path-like
    /// string is read in every way the server may read it.
    pub fn named_in(&self, params: &Value, bases: Bases<'_>, home: Option<&str>) -> Option<String> {
        let mut found = Vec::new();
        path::path_like_strings(params, None, &mut found);
        for s in found {
            let Ok(readings) = path::resolutions(s, bases, home) else {
                continue;
            };
            for r in &readings {
                if self.holds(r) {
                    return Some(r.clone());
                }
            }
        }
        None
    }

    fn holds(&self, p: &str) -> bool {
        let dirs: Vec<&str> = self.dirs.iter().map(String::as_str).collect();
        if path::under_any(std::slice::from_ref(&p.to_string()), &dirs) != Some(false) {
            return true;
        }
        let folded = p.to_lowercase();
        self.families.iter().any(|f| {
            let f = f.to_lowercase();
            folded == f
                || folded
                    .strip_prefix(&f)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// `p` normalized, and as the kernel resolves it when it exists.
fn push_spellings(out: &mut Vec<String>, p: &Path) {
    let Some(s) = p.to_str() else { return };
    if !s.starts_with('/') {
        return;
    }
    let normal = path::normalize(s);
    let real = std::fs::canonicalize(&normal)
        .ok()
        .and_then(|r| r.to_str().map(str::to_string));
    for v in std::iter::once(normal).chain(real) {
        if !out.contains(&v) {
            out.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> OwnFiles {
        let mut o = OwnFiles::default();
        o.add_dir(Path::new("/home/a/.config/mcp-guard"));
        o.add_family(Path::new("/srv/logs/audit.jsonl"));
        o
    }

    fn named(v: Value, cwd: &str) -> Option<String> {
        own().named_in(
            &v,
            Bases {
                cwd: Some(cwd),
                roots: &[],
                follow_links: false,
            },
            Some("/home/a"),
        )
    }

    #[test]
    fn any_spelling_of_an_own_file_in_any_argument_is_found() {
        for v in [
            serde_json::json!({"name": "write_file", "arguments": {"path": "~/.config/mcp-guard/policy.toml"}}),
            serde_json::json!({"arguments": {"destination": ".config/mcp-guard/policy.toml"}}),
            serde_json::json!({"arguments": {"paths": ["/tmp/x", "/home/a/.config/./mcp-guard/../mcp-guard/pins.json"]}}),
            serde_json::json!({"uri": "file:///home/a/.config/mcp-guard/audit.key"}),
            serde_json::json!({"arguments": {"edits": [{"target": "/home/a/.CONFIG/MCP-GUARD/policy.toml"}]}}),
            serde_json::json!({"arguments": {"path": "/srv/logs/audit.jsonl.head"}}),
            serde_json::json!({"arguments": {"path": "../logs/audit.jsonl"}}),
        ] {
            assert!(
                named(v.clone(), "/srv/app").is_some() || named(v.clone(), "/home/a").is_some(),
                "{v}"
            );
        }
    }

    #[test]
    fn other_files_are_not() {
        for v in [
            serde_json::json!({"arguments": {"path": "/home/a/.config/other/x"}}),
            serde_json::json!({"arguments": {"path": "/srv/logs/audit.jsonlx"}}),
            serde_json::json!({"arguments": {"content": "see ~/.config/mcp-guard/policy.toml"}}),
        ] {
            assert_eq!(named(v.clone(), "/srv/app"), None, "{v}");
        }
    }
}
