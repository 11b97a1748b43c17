//! The index that finds the few rules that can match a request.

use std::collections::HashMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::*;

/// Rules by method, then by tool or server name.
#[derive(Debug, Default)]
pub(in crate::policy) struct Index {
    pub(super) methods: HashMap<String, Bucket>,
    /// Rules whose method is a glob.
    pub(super) wild: Bucket,
}

/// The rules of one method. A rule with a tool pattern is found by its tool (exact names
/// in a map, globs in one set matched at once); a rule without one by its server, the same
/// way; a rule with neither is always a candidate.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    pub(super) by_tool: HashMap<String, Vec<u32>>,
    pub(super) tool_globs: GlobIndex,
    pub(super) by_server: HashMap<String, Vec<u32>>,
    pub(super) server_globs: GlobIndex,
    pub(super) rest: Vec<u32>,
}

/// Glob patterns of many rules in one set: one match finds every rule whose pattern matches.
#[derive(Debug, Default)]
pub(super) struct GlobIndex {
    pub(super) patterns: Vec<(String, u32)>,
    pub(super) set: Option<GlobSet>,
}

impl GlobIndex {
    pub(super) fn finish(&mut self) -> Result<(), ValueError> {
        if self.patterns.is_empty() {
            return Ok(());
        }
        let mut b = GlobSetBuilder::new();
        for (p, _) in &self.patterns {
            b.add(Glob::new(p).map_err(|e| bad_pattern(p, &e))?);
        }
        self.set = Some(b.build().map_err(ValueError::Patterns)?);
        Ok(())
    }

    pub(super) fn each(&self, s: &str, f: &mut impl FnMut(u32)) {
        if let Some(set) = &self.set {
            for i in set.matches(s) {
                if let Some((_, rule)) = self.patterns.get(i) {
                    f(*rule);
                }
            }
        }
    }
}

impl Bucket {
    pub(super) fn each(&self, server: &str, tool: Option<&str>, f: &mut impl FnMut(u32)) {
        // Rules with a tool pattern cannot match a request without a tool.
        if let Some(t) = tool {
            for &i in self.by_tool.get(t).map_or(&[][..], Vec::as_slice) {
                f(i);
            }
            self.tool_globs.each(t, f);
        }
        for &i in self.by_server.get(server).map_or(&[][..], Vec::as_slice) {
            f(i);
        }
        self.server_globs.each(server, f);
        for &i in &self.rest {
            f(i);
        }
    }

    pub(super) fn insert(&mut self, i: u32, rule: &Rule) {
        if let Some(tool) = &rule.tool {
            for t in dedup(&tool.literals) {
                self.by_tool.entry(t).or_default().push(i);
            }
            for g in &tool.glob_source {
                self.tool_globs.patterns.push((g.clone(), i));
            }
        } else if let Some(server) = &rule.server {
            for s in dedup(&server.literals) {
                self.by_server.entry(s).or_default().push(i);
            }
            for g in &server.glob_source {
                self.server_globs.patterns.push((g.clone(), i));
            }
        } else {
            self.rest.push(i);
        }
    }

    pub(super) fn finish(&mut self) -> Result<(), ValueError> {
        self.tool_globs.finish()?;
        self.server_globs.finish()
    }
}

pub(super) fn dedup(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

impl Index {
    /// Calls `f` with every rule that may match (some more than once).
    pub(in crate::policy) fn each_candidate(
        &self,
        method: &str,
        server: &str,
        tool: Option<&str>,
        mut f: impl FnMut(u32),
    ) {
        if let Some(b) = self.methods.get(method) {
            b.each(server, tool, &mut f);
        }
        self.wild.each(server, tool, &mut f);
    }

    pub(super) fn insert(&mut self, i: u32, rule: &Rule) {
        match rule.methods.literals_only() {
            Some(ms) => {
                for m in dedup(ms) {
                    self.methods.entry(m).or_default().insert(i, rule);
                }
            }
            None => self.wild.insert(i, rule),
        }
    }

    pub(super) fn finish(&mut self) -> Result<(), ValueError> {
        for b in self.methods.values_mut() {
            b.finish()?;
        }
        self.wild.finish()
    }
}
