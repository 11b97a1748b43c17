//! `mcp-guard policy check` and `mcp-guard policy explain`.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{Action, Ancestor, Error, Policy, Principal, Query};

/// `mcp-guard policy explain`: how the policy decides one request.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// Policy file (a directory: its policy.toml and policy.d/*.toml).
    #[arg(long)]
    pub policy: PathBuf,
    /// The user asking, by name or uid [default: you].
    #[arg(long)]
    pub user: Option<String>,
    /// The server's name in the host config.
    #[arg(long)]
    pub server: String,
    /// The method.
    #[arg(long, default_value = "tools/call")]
    pub method: String,
    /// The tool name (prompt name for prompts/get, URI for resources/read).
    #[arg(long)]
    pub tool: Option<String>,
    /// The call's arguments, as a JSON object.
    #[arg(long)]
    pub args: Option<String>,
    /// The request as one JSON-RPC line, as the host sends it: method, tool and arguments
    /// are read from it as the guard reads them (instead of --method, --tool, --args).
    #[arg(long, value_name = "JSON-RPC", conflicts_with_all = ["method", "tool", "args"])]
    pub message: Option<String>,
    /// The server's executable.
    #[arg(long)]
    pub server_exe: Option<String>,
    /// The server's working directory (relative paths in arguments are taken against it).
    #[arg(long)]
    pub cwd: Option<String>,
    /// A directory the server may also resolve relative paths against (its allowed roots;
    /// repeatable).
    #[arg(long = "root", value_name = "DIR")]
    pub roots: Vec<String>,
    /// The agent host's executable.
    #[arg(long)]
    pub host_exe: Option<String>,
    /// An ancestor process (executable path or comm), nearest first; repeat for each.
    /// Without any, the ancestry is unknown.
    #[arg(long = "ancestor")]
    pub ancestors: Vec<String>,
}

/// Validates files; each error on its own line as `file:line:column: message`. A
/// directory is checked as a main file and its drop-ins together. Then runs each policy's
/// `[[test]]` tables (a failure: `file:line: test "name": expected ..., got ...`) and warns
/// about rules that can never decide a request. 1 when a file fails to load or a test
/// fails; warnings too with `strict`.
pub fn check(files: &[PathBuf], strict: bool) -> anyhow::Result<i32> {
    check_against(files, strict, None)
}

/// [`check`], also warning about rules naming a server that none of the host configs under
/// `hosts` (a home directory, and the current directory's project configs) names.
pub fn check_against(
    files: &[PathBuf],
    strict: bool,
    hosts: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    let names: Option<Vec<String>> = hosts.map(|home| {
        let projects: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
        let found = crate::hosts::scan(home, &projects);
        for f in &found {
            if let Some(e) = &f.error {
                eprintln!("warning: {e}");
            }
        }
        found
            .into_iter()
            .flat_map(|f| f.servers.into_iter().map(|s| s.name))
            .collect()
    });
    let mut failed = false;
    for f in files {
        match Policy::load(f) {
            Ok(p) => {
                let mut warnings = p.shadowed();
                if let Some(names) = &names {
                    warnings.extend(p.unnamed_servers(names));
                }
                for w in &warnings {
                    eprintln!("{w}");
                }
                let failures = p.run_tests();
                for t in &failures {
                    eprintln!("{t}");
                }
                let tests = p.tests().len();
                if !failures.is_empty() {
                    failed = true;
                    println!(
                        "{}: {} of {tests} tests failed",
                        f.display(),
                        failures.len()
                    );
                    continue;
                }
                if strict && !warnings.is_empty() {
                    failed = true;
                    println!("{}: {} warnings (--strict)", f.display(), warnings.len());
                    continue;
                }
                let passed = if tests > 0 {
                    format!(", {tests} tests passed")
                } else {
                    String::new()
                };
                println!(
                    "{}: ok ({} rules, mode {}, default {}{passed}, sha256 {})",
                    f.display(),
                    p.len(),
                    p.mode(),
                    p.default_action(),
                    p.sha256()
                );
            }
            Err(Error::Invalid(d)) => {
                failed = true;
                eprintln!("{d}");
            }
            Err(e) => {
                failed = true;
                eprintln!("{:#}", anyhow::Error::from(e));
            }
        }
    }
    Ok(i32::from(failed))
}

/// Prints the decision, the rule that made it and why each other rule did not match.
/// 0 when the request would be forwarded, 1 when denied or held for approval.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<i32> {
    let policy = Policy::load(&args.policy)?;
    let principal = match &args.user {
        None => Principal::from_uid(nix::unistd::getuid().as_raw()),
        Some(u) => match u.parse::<u32>() {
            Ok(uid) => Principal::from_uid(uid),
            Err(_) => {
                Principal::from_name(u).with_context(|| format!("no user `{u}` on this host"))?
            }
        },
    };
    let (method, tool, arguments) = match &args.message {
        Some(line) => super::parse_request(line).map_err(|e| anyhow::anyhow!("--message: {e}"))?,
        None => (
            args.method.clone(),
            args.tool.clone(),
            args.args
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .context("--args is not valid JSON")?,
        ),
    };
    let ancestry: Vec<Ancestor> = args.ancestors.iter().map(|a| Ancestor::named(a)).collect();
    let q = Query {
        server: &args.server,
        server_exe: args.server_exe.as_deref(),
        method: &method,
        tool: tool.as_deref(),
        principal: Some(&principal),
        host_exe: args.host_exe.as_deref(),
        ancestry: (!ancestry.is_empty()).then_some(ancestry.as_slice()),
        arguments: arguments.as_ref(),
        cwd: args.cwd.as_deref(),
        roots: &args.roots,
        follow_links: true,
    };
    let ex = policy.explain(&q);
    let d = &ex.decision;
    let verdict = if d.would_deny {
        "allow (monitor mode: would deny)".to_string()
    } else {
        d.action.to_string()
    };
    println!("decision: {verdict}");
    let origin = ex
        .rules
        .iter()
        .find(|r| r.id == d.rule)
        .map(|r| format!(" ({})", r.origin))
        .unwrap_or_default();
    let how = match d.rule.as_str() {
        "default" => " (no allow or deny rule matched; the policy's default)".to_string(),
        "plumbing" => " (protocol plumbing, allowed unless a rule names it)".to_string(),
        _ => origin,
    };
    println!("rule: {}{how}", d.rule);
    if let Some(m) = &d.message {
        println!("message: {m}");
    }
    if d.rate_limited {
        println!("rate limited: yes");
    }
    if let Some(a) = &d.audit {
        println!("audit: marked by rule {a}");
    }
    println!(
        "principal: {} (uid {})",
        principal.user.as_deref().unwrap_or("?"),
        principal.uid
    );
    println!(
        "policy: {} (sha256 {}, mode {})",
        policy.origin(),
        d.policy_sha256,
        d.mode
    );
    if !ex.rules.is_empty() {
        println!("rules:");
        let width = ex.rules.iter().map(|r| r.id.len()).max().unwrap_or(0);
        for r in &ex.rules {
            let mark = if r.id == d.rule { "*" } else { " " };
            let what = match &r.miss {
                None => "matched".to_string(),
                Some(why) => format!("no match: {why}"),
            };
            println!(
                "  {mark} {:<width$}  {:<5}  {what}",
                r.id,
                r.action.to_string()
            );
        }
    }
    Ok(match d.action {
        Action::Allow => 0,
        // Held for a person's approval: not forwarded on the policy's word alone.
        Action::Deny | Action::Ask => 1,
    })
}
