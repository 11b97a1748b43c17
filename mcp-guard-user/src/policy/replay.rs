//! `mcp-guard policy test`: the requests recorded in audit logs, decided again by another
//! policy, and every decision that would change.
//!
//! A record keeps what the engine looked at, save a few facts: the arguments (only their
//! SHA-256, unless a rule asked for them, and then with credentials redacted), the groups
//! read from the group database, the shim's own process in the ancestry, and what path
//! tests read (the server's cwd and roots, the user's home, the files' links). A rule with a
//! condition on one of those *may* match; when such a rule could change the decision, the
//! request is *undecidable*: reported with the reason, never guessed.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::eval::Gaps;
use super::{Action, Ancestor, Decision, Policy, Principal, Query};
use crate::audit::canonical_sha256;

/// Exit status: no decision would change.
pub const UNCHANGED: i32 = 0;
/// Exit status: some decision would change.
pub const CHANGED: i32 = 1;
/// Exit status: nothing would change among the requests that could be replayed, but some
/// could not (without `--allow-unknown`). 2 is every command's error status.
pub const UNKNOWN: i32 = 3;

/// `mcp-guard policy test`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Exit status: 0 no recorded decision would change; 1 some would \
    change; 2 an error (a file cannot be read, a line is not an audit record); 3 none would \
    change among the requests that could be replayed, but some could not be (an argument \
    constraint on a call whose arguments are not recorded, say): the answer is unknown, \
    so a CI job fails unless --allow-unknown."
)]
pub struct TestArgs {
    /// The policy to try (a file, or a directory with policy.toml and policy.d/).
    #[arg(long)]
    pub policy: PathBuf,
    /// Audit logs (shim, managed or daemon; rotated files too), `-` for standard input.
    #[arg(required = true, value_name = "AUDIT.jsonl")]
    pub logs: Vec<PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 rather than 3 when some requests cannot be replayed and none would change.
    #[arg(long)]
    pub allow_unknown: bool,
}

/// Rules of the guard itself, not of a policy: a request they decided says nothing about
/// what the policy said, and they apply whatever the policy.
const GUARD_RULES: &[&str] = &[
    crate::own_files::RULE,
    "id-in-flight",
    "in-flight-limit",
    "duplicate-tool-name",
    "pinned-tool-changed",
    "pinned-tool-added",
    "unlisted-tool",
    "pinned-server-changed",
    "pins-unavailable",
    "daemon-unavailable",
];

/// A decision as records and reports spell it: what the policy said (a monitor mode's
/// "would deny" is a deny) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub decision: String,
    pub rule: String,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.decision, self.rule)
    }
}

impl Verdict {
    fn of(d: &Decision) -> Verdict {
        let action = if d.would_deny { Action::Deny } else { d.action };
        Verdict {
            decision: action.to_string(),
            rule: d.rule.clone(),
        }
    }
}

/// One replayed request whose decision would change, or cannot be told.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `file:line` of the record.
    pub at: String,
    pub id: String,
    pub time: String,
    pub user: String,
    pub server: String,
    pub method: String,
    pub tool: String,
    pub old: Verdict,
    /// `None` when undecidable.
    pub new: Option<Verdict>,
    /// Why it is undecidable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// How one rule of the tried policy fared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleStats {
    pub rule: String,
    pub action: String,
    /// Requests it decided.
    pub decided: u64,
    /// Of those, decided otherwise before.
    pub changed: u64,
    /// Requests it certainly matched (deciding or not).
    pub matched: u64,
    /// Undecidable requests it may have matched.
    pub may_match: u64,
}

/// What a run found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub policy: String,
    pub policy_sha256: String,
    pub files: Vec<String>,
    /// Request records replayed.
    pub requests: u64,
    pub unchanged: u64,
    pub changed: Vec<Finding>,
    pub undecidable: Vec<Finding>,
    /// Requests decided by the guard itself (own files, pins, in-flight limits, a managed
    /// shim without its daemon), by rule: not a policy's decision, not replayed.
    pub guard: BTreeMap<String, u64>,
    /// Records of other kinds, by kind: not requests, not replayed.
    pub other: BTreeMap<String, u64>,
    /// Torn lines a later `recovery` record sealed.
    pub torn_sealed: u64,
    /// The tried policy's rules (its decisions by `default` and `plumbing` included).
    pub rules: Vec<RuleStats>,
    /// Rules that matched no request, not even possibly.
    pub never_matched: Vec<String>,
}

/// Replays the logs and prints what would change; the exit status is documented on
/// [`TestArgs`].
pub fn run(args: &TestArgs) -> anyhow::Result<i32> {
    let policy = Policy::load(&args.policy)?;
    let report = replay(&policy, &args.logs)?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report)
    };
    // A reader that stops early (`| head`) does not change the verdict.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::from(e).context("cannot write the report"));
        }
        _ => {}
    }
    Ok(if !report.changed.is_empty() {
        CHANGED
    } else if !report.undecidable.is_empty() && !args.allow_unknown {
        UNKNOWN
    } else {
        UNCHANGED
    })
}

/// Reads every log and replays its requests against `policy`.
pub fn replay(policy: &Policy, logs: &[PathBuf]) -> anyhow::Result<Report> {
    let mut report = Report {
        policy: policy.origin().to_string(),
        policy_sha256: policy.sha256().to_string(),
        ..Report::default()
    };
    let mut stats: Vec<RuleStats> = policy
        .rules()
        .iter()
        .map(|r| RuleStats {
            rule: r.id.clone(),
            action: r.action.to_string(),
            ..RuleStats::default()
        })
        .collect();
    let mut pseudo: BTreeMap<String, RuleStats> = BTreeMap::new();
    for path in logs {
        let (name, reader): (String, Box<dyn Read>) = if path == Path::new("-") {
            ("<stdin>".into(), Box::new(std::io::stdin()))
        } else {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            (path.display().to_string(), Box::new(f))
        };
        report.files.push(name.clone());
        read_log(&name, reader, |at, rec| {
            replay_one(policy, at, rec, &mut report, &mut stats, &mut pseudo);
        })
        .map(|torn| report.torn_sealed += torn)?;
    }
    report.never_matched = stats
        .iter()
        .filter(|s| s.matched == 0 && s.may_match == 0)
        .map(|s| s.rule.clone())
        .collect();
    report.rules = stats.into_iter().chain(pseudo.into_values()).collect();
    Ok(report)
}

/// Calls `each` with every record of a log and its `file:line`; returns how many torn lines
/// a `recovery` record sealed. A line that is not an audit record is an error, as is a torn
/// line nothing sealed (the last line, cut short, says so).
fn read_log(
    name: &str,
    reader: impl Read,
    mut each: impl FnMut(&str, &Value),
) -> anyhow::Result<u64> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut n = 0usize;
    // Lines that are not JSON, waiting for a `recovery` record to seal them.
    let mut torn: Vec<(usize, String)> = Vec::new();
    let mut sealed = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {name}"))?;
        if read == 0 {
            break;
        }
        n += 1;
        let complete = line.last() == Some(&b'\n');
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) if !complete => anyhow::bail!(
                "{name}:{n}: the last line is cut short (no newline, and not JSON: {e}); \
                 is the log still being written, or was it truncated?"
            ),
            Err(e) => {
                torn.push((n, e.to_string()));
                continue;
            }
        };
        let kind = value.get("kind").and_then(Value::as_str);
        let v = value.get("v").and_then(Value::as_u64);
        let (Some(kind), Some(_)) = (kind, v) else {
            anyhow::bail!(
                "{name}:{n}: not an audit record (a JSON object with `v` and `kind` expected)"
            );
        };
        if kind == "recovery" {
            sealed += torn.len() as u64;
            torn.clear();
        }
        each(&format!("{name}:{n}"), &value);
    }
    if let Some((n, e)) = torn.first() {
        if *n == 1 {
            anyhow::bail!("{name}:1: not JSON ({e}): not an audit log");
        }
        anyhow::bail!(
            "{name}:{n}: not JSON ({e}), and no `recovery` record after it seals it as a torn line"
        );
    }
    Ok(sealed)
}

/// A string field, empty when absent.
fn text<'a>(r: &'a Value, path: &[&str]) -> &'a str {
    let mut v = r;
    for k in path {
        match v.get(k) {
            Some(x) => v = x,
            None => return "",
        }
    }
    v.as_str().unwrap_or("")
}

/// Replays one record: counts it by kind or guard rule, or decides it again and files it as
/// unchanged, changed or undecidable, with the rules' tallies.
fn replay_one(
    policy: &Policy,
    at: &str,
    rec: &Value,
    report: &mut Report,
    stats: &mut [RuleStats],
    pseudo: &mut BTreeMap<String, RuleStats>,
) {
    let kind = text(rec, &["kind"]);
    if kind != "request" && kind != "server_request" {
        *report.other.entry(kind.to_string()).or_default() += 1;
        return;
    }
    let old_rule = text(rec, &["rule"]);
    if GUARD_RULES.contains(&old_rule) {
        *report.guard.entry(old_rule.to_string()).or_default() += 1;
        return;
    }
    report.requests += 1;
    let old_decision = if rec.get("would_deny").and_then(Value::as_bool) == Some(true) {
        "deny"
    } else {
        text(rec, &["decision"])
    };
    let user = match rec.get("principal") {
        Some(p) if p.is_object() => match p.get("user").and_then(Value::as_str) {
            Some(u) => u.to_string(),
            None => p.get("uid").map(Value::to_string).unwrap_or_default(),
        },
        _ => String::new(),
    };
    let mut finding = Finding {
        at: at.to_string(),
        id: text(rec, &["id"]).to_string(),
        time: text(rec, &["time"]).to_string(),
        user,
        server: text(rec, &["server", "name"]).to_string(),
        method: text(rec, &["method"]).to_string(),
        tool: text(rec, &["tool"]).to_string(),
        old: Verdict {
            decision: old_decision.to_string(),
            rule: old_rule.to_string(),
        },
        new: None,
        why: None,
    };
    let outcome = judge(policy, rec);
    for &i in &outcome.matched {
        if let Some(s) = stats.get_mut(i) {
            s.matched += 1;
        }
    }
    let decision = match outcome.decision {
        Ok(d) => d,
        Err(why) => {
            for &i in &outcome.maybe {
                if let Some(s) = stats.get_mut(i) {
                    s.may_match += 1;
                }
            }
            finding.why = Some(why);
            report.undecidable.push(finding);
            return;
        }
    };
    let new = Verdict::of(&decision);
    let changed = new != finding.old;
    let s = match policy.rules().iter().position(|r| r.id == new.rule) {
        Some(i) => &mut stats[i],
        None => pseudo.entry(new.rule.clone()).or_insert_with(|| RuleStats {
            rule: new.rule.clone(),
            action: new.decision.clone(),
            ..RuleStats::default()
        }),
    };
    s.decided += 1;
    if changed {
        s.changed += 1;
        finding.new = Some(new);
        report.changed.push(finding);
    } else {
        report.unchanged += 1;
    }
}

/// The new decision of one request record, and the rules that matched it.
pub(super) struct Outcome {
    pub decision: Result<Decision, String>,
    pub matched: Vec<usize>,
    pub maybe: Vec<usize>,
}

/// Rebuilds the query the engine saw from the record, with the facts it lacks as gaps,
/// and replays it.
pub(super) fn judge(policy: &Policy, rec: &Value) -> Outcome {
    let fail = |why: &str| Outcome {
        decision: Err(why.to_string()),
        matched: Vec::new(),
        maybe: Vec::new(),
    };
    if rec.get("rate_limited").and_then(Value::as_bool) == Some(true) {
        return fail("a rate limit decided it; rates are not replayed");
    }
    let old_rule = text(rec, &["rule"]);
    if old_rule.starts_with("user:") {
        return fail(
            "the managed shim's own policy decided it, layered on the daemon's; one policy is \
             replayed",
        );
    }
    let Some(server) = rec.pointer("/server/name").and_then(Value::as_str) else {
        return fail("the record names no server");
    };
    let Some(method) = rec.get("method").and_then(Value::as_str) else {
        return fail("the record names no method");
    };
    let tool = rec.get("tool").and_then(Value::as_str);
    if tool.is_some_and(|t| t.contains(crate::identity::REDACTED)) {
        return fail("the tool name is recorded redacted");
    }
    // Unknown to the engine too when the record has none: judged as it was, fail-closed.
    let principal = rec.get("principal").and_then(|p| {
        Some(Principal {
            uid: u32::try_from(p.get("uid")?.as_u64()?).ok()?,
            user: p.get("user").and_then(Value::as_str).map(str::to_string),
            ..Principal::default()
        })
    });
    let ancestry: Option<Vec<Ancestor>> = rec.get("chain").and_then(Value::as_array).map(|a| {
        a.iter()
            .map(|x| Ancestor {
                exe: x.get("exe").and_then(Value::as_str).map(str::to_string),
                comm: text(x, &["comm"]).to_string(),
            })
            .collect()
    });
    let transport = text(rec, &["transport"]);
    let (arguments, arguments_gap) = arguments(rec, method);
    let gaps = Gaps {
        arguments: arguments_gap,
        machine: true,
        groups: true,
        shim_ancestor: transport == "stdio-shim" || transport == "stdio-managed",
        ..Gaps::default()
    };
    let q = Query {
        server,
        server_exe: rec.pointer("/server/exe").and_then(Value::as_str),
        method,
        tool,
        principal: principal.as_ref(),
        host_exe: rec.pointer("/agent_host/exe").and_then(Value::as_str),
        ancestry: ancestry.as_deref(),
        arguments: arguments.as_ref(),
        cwd: None,
        roots: &[],
        follow_links: false,
    };
    let r = policy.replay(&q, &gaps);
    Outcome {
        decision: r.decision,
        matched: r.matched,
        maybe: r.maybe,
    }
}

/// The arguments as the engine saw them, when the record keeps them exactly; the flag is
/// true when it does not (a gap). A call recorded without `args_sha256` had no arguments.
fn arguments(rec: &Value, method: &str) -> (Option<Value>, bool) {
    let calls = method == "tools/call" || method == "prompts/get";
    let digest = rec.get("args_sha256").and_then(Value::as_str);
    match rec.get("args") {
        Some(args) if !redacted(args) => {
            // For calls the digest proves the recorded arguments are the ones sent.
            let exact = !calls || digest == Some(canonical_sha256(args).as_str());
            (exact.then(|| args.clone()), !exact)
        }
        Some(_) => (None, true),
        None if calls && digest.is_none() => (None, false),
        None => (None, true),
    }
}

/// Whether a value has a string redaction replaced (or one that spells the same).
fn redacted(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(crate::identity::REDACTED),
        Value::Array(a) => a.iter().any(redacted),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.contains(crate::identity::REDACTED) || redacted(v)),
        _ => false,
    }
}

/// The report as the table `policy test` prints.
fn render(r: &Report) -> String {
    let mut o = String::new();
    let cells = |f: &Finding, new: String| -> [String; 7] {
        let what = if f.tool.is_empty() {
            &f.method
        } else {
            &f.tool
        };
        [
            f.at.clone(),
            f.id.clone(),
            f.time.clone(),
            or_dash(&f.user).to_string(),
            or_dash(&f.server).to_string(),
            or_dash(what).to_string(),
            format!("{} -> {new}", f.old),
        ]
    };
    let changed: Vec<[String; 7]> = r
        .changed
        .iter()
        .map(|f| {
            cells(
                f,
                f.new.as_ref().map(Verdict::to_string).unwrap_or_default(),
            )
        })
        .collect();
    let unknown: Vec<[String; 7]> = r.undecidable.iter().map(|f| cells(f, "?".into())).collect();
    let header = [
        "RECORD",
        "ID",
        "TIME",
        "USER",
        "SERVER",
        "TOOL",
        "OLD -> NEW",
    ]
    .map(String::from);
    let mut width = [0usize; 7];
    for row in std::iter::once(&header).chain(&changed).chain(&unknown) {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |o: &mut String, row: &[String; 7]| {
        let mut out = String::from(" ");
        for (i, (c, w)) in row.iter().zip(width).enumerate() {
            out.push(' ');
            out.push_str(c);
            if i + 1 < row.len() {
                out.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 1));
            }
        }
        let _ = writeln!(o, "{out}");
    };
    if !changed.is_empty() {
        let _ = writeln!(o, "changed ({}):", changed.len());
        line(&mut o, &header);
        for row in &changed {
            line(&mut o, row);
        }
    }
    if !unknown.is_empty() {
        let _ = writeln!(o, "undecidable ({}):", unknown.len());
        line(&mut o, &header);
        for (row, f) in unknown.iter().zip(&r.undecidable) {
            line(&mut o, row);
            let _ = writeln!(o, "      why: {}", f.why.as_deref().unwrap_or_default());
        }
    }
    let _ = writeln!(
        o,
        "policy {} (sha256 {}): {} requests replayed from {}: {} changed, {} unchanged, {} \
         undecidable",
        r.policy,
        r.policy_sha256,
        r.requests,
        r.files.join(", "),
        r.changed.len(),
        r.unchanged,
        r.undecidable.len()
    );
    if !r.guard.is_empty() {
        let _ = writeln!(
            o,
            "decided by the guard itself, not replayed: {}",
            counts(&r.guard)
        );
    }
    if !r.other.is_empty() {
        let _ = writeln!(o, "other records, not requests: {}", counts(&r.other));
    }
    if r.torn_sealed > 0 {
        let _ = writeln!(
            o,
            "torn lines sealed by a recovery record: {}",
            r.torn_sealed
        );
    }
    let _ = writeln!(o, "by rule:");
    let width = r.rules.iter().map(|s| s.rule.len()).max().unwrap_or(0);
    for s in &r.rules {
        let mut line = format!(
            "  {:<width$}  {:<5}  decided {}, changed {}, matched {}",
            s.rule, s.action, s.decided, s.changed, s.matched
        );
        if s.may_match > 0 {
            line.push_str(&format!(", may have matched {} undecidable", s.may_match));
        }
        let _ = writeln!(o, "{line}");
    }
    if !r.never_matched.is_empty() {
        let _ = writeln!(o, "never matched: {}", r.never_matched.join(", "));
    }
    o
}

/// An empty cell as `-`.
fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `key n, key n, ...`.
fn counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
