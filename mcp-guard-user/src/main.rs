use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mcp_guard::audit::{self, Durability};
use mcp_guard::cli::{
    AuditCommand, Cli, Command, HostsCommand, HostsEdit, PinsCommand, PolicyCommand, Wrap,
};
use mcp_guard::shim;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MCP_GUARD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Wrap(w) => wrap(w),
        Command::Policy(PolicyCommand::Check {
            files,
            strict,
            hosts,
        }) => mcp_guard::policy::cmd::check_against(&files, strict, hosts.as_deref()),
        Command::Policy(PolicyCommand::Explain(a)) => mcp_guard::policy::cmd::explain(&a),
        Command::Policy(PolicyCommand::Test(a)) => mcp_guard::policy::replay::run(&a),
        Command::Audit(AuditCommand::Verify(args)) => audit::verify::run(&args),
        Command::Audit(AuditCommand::Forward(args)) => audit::forward::run(&args),
        Command::Hosts(HostsCommand::Scan {
            project,
            all_users,
            user,
            json,
            check,
        }) => hosts_scan(&project, all_users, &user, json, check),
        Command::Hosts(HostsCommand::Wrap(e)) => hosts_edit(&e, true),
        Command::Hosts(HostsCommand::Unwrap(e)) => hosts_edit(&e, false),
        Command::Pins(PinsCommand::List { pins }) => pins_list(pins),
        Command::Pins(PinsCommand::Approve { server, tool, pins }) => {
            pins_approve(pins, &server, tool.as_deref())
        }
        Command::Daemon {
            config,
            check_config,
        } => daemon(config.as_deref(), check_config),
        Command::Events(a) => mcp_guard::events::run(&a),
        Command::Generate { what, out } => mcp_guard::cli::generate(what, &out)
            .map(|()| 0)
            .map_err(|e| anyhow::anyhow!("cannot write into {}: {e}", out.display())),
        Command::Status { config, json } => mcp_guard::daemon::status::run(config.as_deref(), json),
        Command::Service(mcp_guard::cli::ServiceCommand::Install(a)) => {
            mcp_guard::service::install(&a)
        }
        Command::Service(mcp_guard::cli::ServiceCommand::Uninstall(a)) => {
            mcp_guard::service::uninstall(&a)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("mcp-guard: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn daemon(config: Option<&std::path::Path>, check: bool) -> anyhow::Result<i32> {
    let cfg = mcp_guard::daemon::config::Config::load(config)?;
    if check {
        return mcp_guard::daemon::check(&cfg);
    }
    mcp_guard::daemon::run(cfg)
}

/// Managed or not: a socket named on the command line or in the environment, or the
/// default one when it exists. The shim's own policy goes along, as restrictions.
fn managed(w: &Wrap) -> anyhow::Result<Option<shim::Managed>> {
    if w.standalone {
        return Ok(None);
    }
    let socket = match &w.daemon_socket {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(mcp_guard::managed::DEFAULT_SOCKET);
            if std::fs::symlink_metadata(&p).is_err() {
                return Ok(None);
            }
            p
        }
    };
    let own = match mcp_guard::policy::chosen(w.policy.as_deref()) {
        mcp_guard::policy::Chosen::File(p) => Some(p),
        _ => None,
    };
    let policy = match own {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read the policy {}", p.display()))?;
            Some((text, p.display().to_string()))
        }
    };
    Ok(Some(shim::Managed {
        socket,
        when_down: w.when_daemon_down,
        policy,
    }))
}

fn wrap(w: Wrap) -> anyhow::Result<i32> {
    let managed = managed(&w)?;
    let policy_source = mcp_guard::policy::chosen(w.policy.as_deref());
    let policy = policy_source.load()?;
    let audit = match w.audit {
        Some(p) => p,
        None => audit::default_path()
            .context("no --audit given and neither XDG_STATE_HOME nor HOME is set")?,
    };
    let durability = match w.durability {
        Some(d) => d,
        None => Durability::from_env()?,
    };
    let name = w.name.unwrap_or_else(|| {
        let prog = PathBuf::from(&w.command[0]);
        prog.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    shim::run(shim::Options {
        name,
        policy,
        policy_source,
        policy_poll: Duration::from_millis(w.policy_poll_ms),
        audit,
        audit_opts: audit::Options {
            max_bytes: w.audit_max_bytes,
            key: w.audit_key,
            checkpoint: w.audit_checkpoint,
            // A shim's own log keeps every rotated file (the daemon's is configured).
            retention: audit::Retention::default(),
            sign_commits: w.audit_sign_commits,
        },
        durability,
        max_message: w.max_message,
        limits: mcp_guard::guard::Limits {
            max_in_flight: w.max_in_flight,
            audit_burst: w.audit_burst,
            audit_rate: w.audit_rate,
        },
        command: w.command,
        grace: Duration::from_millis(w.shutdown_grace_ms),
        managed,
    })
}

fn pin_store(path: Option<PathBuf>) -> anyhow::Result<mcp_guard::pins::Pins> {
    match path {
        Some(p) => Ok(mcp_guard::pins::Pins::at(p)),
        None => {
            let audit = audit::default_path()
                .context("no --pins given and neither XDG_STATE_HOME nor HOME is set")?;
            Ok(mcp_guard::pins::Pins::beside(&audit))
        }
    }
}

fn pins_list(path: Option<PathBuf>) -> anyhow::Result<i32> {
    let pins = pin_store(path)?;
    let store = pins.load()?;
    println!("{}", pins.path().display());
    let short = |h: &Option<String>| {
        h.as_deref()
            .map_or("-".to_string(), |h| h.chars().take(12).collect())
    };
    let program = |p: &mcp_guard::pins::Program| {
        let exe = format!("{} {}", p.exe.as_deref().unwrap_or("?"), short(&p.sha256));
        match &p.script {
            Some(s) => format!("{exe} + {s} {}", short(&p.script_sha256)),
            None => exe,
        }
    };
    for (server, s) in &store.servers {
        match (&s.program, &s.pending_program) {
            (Some(p), None) => println!("{server:<20} program {}", program(p)),
            (p, Some(q)) => println!(
                "{server:<20} program {} CHANGED to {} (seen {}), every tool blocked until approved",
                p.as_ref().map_or("-".to_string(), program),
                program(&q.program),
                q.seen_at
            ),
            (None, None) => {}
        }
        for (tool, pin) in &s.tools {
            let pinned_at = pin.pinned_at.as_deref().unwrap_or("-");
            let state = match (&pin.sha256, &pin.pending) {
                (None, Some(p)) => format!(
                    "NEW (seen {}, {}), blocked until approved",
                    p.seen_at,
                    short(&Some(p.sha256.clone()))
                ),
                (_, Some(p)) => format!(
                    "CHANGED (seen {}, {}), blocked until approved",
                    p.seen_at,
                    short(&Some(p.sha256.clone()))
                ),
                _ => "pinned".to_string(),
            };
            println!(
                "{server:<20} {tool:<32} {pinned_at} {} {state}",
                short(&pin.sha256)
            );
        }
    }
    Ok(0)
}

fn pins_approve(path: Option<PathBuf>, server: &str, tool: Option<&str>) -> anyhow::Result<i32> {
    let pins = pin_store(path)?;
    let n = pins.approve(server, tool)?;
    println!("approved {n} pending change(s) of {server}");
    Ok(i32::from(n == 0))
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// A user (name, uid) when editing on behalf of every user; `None`: the caller.
type Owner = Option<(String, u32)>;

/// The homes to look in: this user's, or with `all_users` every user's, or the users
/// named (root only for either).
fn homes(all_users: bool, users: &[String]) -> anyhow::Result<Vec<(Owner, PathBuf)>> {
    if !all_users && users.is_empty() {
        return Ok(vec![(None, home()?)]);
    }
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("--all-users / --user read and rewrite other users' files: run it as root");
    }
    let mut accounts = if all_users {
        mcp_guard::hosts::user_homes()?
    } else {
        Vec::new()
    };
    for name in users {
        let account = mcp_guard::hosts::user_home(name)?;
        if !accounts.iter().any(|(_, uid, _)| *uid == account.1) {
            accounts.push(account);
        }
    }
    Ok(accounts
        .into_iter()
        .map(|(n, u, h)| (Some((n, u)), h))
        .collect())
}

/// Every config file to look at: each home's (and, for the caller alone, the projects'
/// and the ones its environment points at), then the system-wide ones. Each file once;
/// `true` marks a system-wide file.
fn found_files(
    homes: Vec<(Owner, PathBuf)>,
    projects: &[PathBuf],
) -> Vec<(Owner, PathBuf, mcp_guard::hosts::Found, bool)> {
    use mcp_guard::hosts;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let just_me = homes.len() == 1 && homes[0].0.is_none();
    for (user, home) in homes {
        let mut found = hosts::scan(&home, if just_me { projects } else { &[] });
        if just_me {
            found.extend(hosts::scan_paths(hosts::env_candidates(&home, |v| {
                std::env::var_os(v)
            })));
        }
        for f in found {
            if seen.insert(f.path.clone()) {
                out.push((user.clone(), home.clone(), f, false));
            }
        }
    }
    let system = hosts::scan_paths(hosts::system_candidates(std::path::Path::new("/"), |v| {
        std::env::var_os(v)
    }));
    for f in system {
        if seen.insert(f.path.clone()) {
            out.push((None, PathBuf::from("/"), f, true));
        }
    }
    out
}

fn owned_by(path: &std::path::Path, user: &Owner, home: &std::path::Path) -> bool {
    user.as_ref()
        .is_none_or(|(_, uid)| mcp_guard::hosts::owned_by(path, *uid, home))
}

fn projects(given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        std::env::current_dir().into_iter().collect()
    } else {
        given.to_vec()
    }
}

fn hosts_scan(
    project: &[PathBuf],
    all_users: bool,
    users: &[String],
    json: bool,
    check: bool,
) -> anyhow::Result<i32> {
    use mcp_guard::hosts::Transport;
    let found: Vec<(Owner, mcp_guard::hosts::Found, bool)> =
        found_files(homes(all_users, users)?, &projects(project))
            .into_iter()
            .map(|(user, _, f, system)| (user, f, system))
            .collect();
    let transport = |t: &Transport| match t {
        Transport::Stdio => "stdio",
        Transport::Remote => "remote",
        Transport::Unknown => "unknown",
    };
    // Not clean: a stdio server that is not wrapped, or a config that could not be read.
    let unclean = found.iter().any(|(_, f, _)| {
        f.error.is_some()
            || f.servers
                .iter()
                .any(|s| matches!(s.transport, Transport::Stdio) && !s.wrapped)
    });
    let code = i32::from(check && unclean);
    if json {
        let out: Vec<serde_json::Value> = found
            .iter()
            .map(|(user, f, system)| {
                serde_json::json!({
                    "user": user.as_ref().map(|(name, _)| name),
                    "system": system,
                    "path": f.path,
                    "host": f.host.slug(),
                    "error": f.error.as_ref().map(|e| e.to_string()),
                    "servers": f.servers.iter().map(|s| serde_json::json!({
                        "name": s.name,
                        "transport": transport(&s.transport),
                        "wrapped": s.wrapped,
                        "command": s.command,
                        "url": s.url,
                        "scope": s.scope,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(code);
    }
    if found.is_empty() {
        println!("no agent host config found");
    }
    for (user, f, system) in &found {
        if let Some((name, _)) = user {
            print!("[{name}] ");
        }
        if *system {
            print!("[system] ");
        }
        println!("{} ({})", f.path.display(), f.host.slug());
        if let Some(e) = &f.error {
            println!("  cannot read: {e}");
        }
        for s in &f.servers {
            let transport = transport(&s.transport);
            let state = match s.transport {
                Transport::Stdio if s.wrapped => "wrapped",
                Transport::Stdio => "NOT WRAPPED",
                _ => "-",
            };
            let what = s
                .command
                .clone()
                .or_else(|| s.url.clone())
                .unwrap_or_default();
            let scope = s
                .scope
                .as_deref()
                .map(|p| format!(" [{p}]"))
                .unwrap_or_default();
            println!(
                "  {:<24} {:<8} {:<12} {what}{scope}",
                s.name, transport, state
            );
        }
    }
    Ok(code)
}

/// `--bin` as hosts will run it: a bare name is looked up on PATH (as a shell would now;
/// hosts often run servers with a smaller PATH, so the config gets the absolute path), a
/// path is made absolute; either way it must be an executable file.
fn resolve_bin(b: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let bare = b.components().count() == 1 && !b.to_string_lossy().contains('/');
    let path = if bare {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(b))
                    .find(|c| c.is_absolute() && executable(c))
            })
            .with_context(|| {
                format!(
                    "--bin {}: not found on PATH; give its path (every config would name it)",
                    b.display()
                )
            })?
    } else {
        std::path::absolute(b)?
    };
    if !executable(&path) {
        anyhow::bail!(
            "--bin {}: not an executable file (every config would launch it)",
            path.display()
        );
    }
    Ok(path)
}

fn hosts_edit(e: &HostsEdit, wrap: bool) -> anyhow::Result<i32> {
    use mcp_guard::hosts::{self, Host};
    let only = match &e.host {
        Some(slug) => Some(Host::from_slug(slug).with_context(|| {
            let all: Vec<&str> = Host::ALL.iter().map(|h| h.slug()).collect();
            format!("unknown host `{slug}` (one of: {})", all.join(", "))
        })?),
        None => None,
    };
    // Hosts often start servers with a minimal PATH: name this program absolutely.
    let bin = match &e.bin {
        Some(b) if wrap => resolve_bin(b)?,
        Some(b) => std::path::absolute(b)?,
        None => std::env::current_exe().context("cannot find this program's path")?,
    };
    let bin = bin.display().to_string();
    let mut failed = false;
    let mut changed = 0;
    // Project files only when named: run inside a repository, its checked-in files are
    // the team's, not this user's to rewrite unasked.
    let found = found_files(homes(e.all_users, &e.user)?, &e.project);
    let root = nix::unistd::geteuid().is_root();
    // Files mcp-guard found but cannot edit are reported, not counted as failures: the
    // file is as it was, and everything that could be done was done.
    let warn = |msg: &dyn std::fmt::Display| eprintln!("mcp-guard: warning: {msg}");
    for (user, home, f, system) in found {
        if only.is_some_and(|h| h != f.host) {
            continue;
        }
        if let Some(err) = &f.error {
            warn(&format_args!("{err}; left as it is"));
            continue;
        }
        if system && !root {
            if f.servers
                .iter()
                .any(|s| s.transport == hosts::Transport::Stdio)
            {
                warn(&format_args!(
                    "{}: a system-wide file, edited only by root; left as it is",
                    f.path.display()
                ));
            }
            continue;
        }
        if !system && !owned_by(&f.path, &user, &home) {
            failed = true;
            eprintln!(
                "mcp-guard: {}: not inside its user's home or not owned by them; left alone",
                f.path.display()
            );
            continue;
        }
        let edit = if wrap {
            hosts::wrap_file(&f.path, f.host, &bin)
        } else {
            hosts::unwrap_file(&f.path, f.host)
        };
        let edit = match edit {
            Ok(edit) => edit,
            Err(err) if err.is::<hosts::Unsupported>() => {
                warn(&err);
                continue;
            }
            Err(err) => {
                failed = true;
                eprintln!("mcp-guard: {err}");
                continue;
            }
        };
        if edit.is_noop() {
            continue;
        }
        changed += 1;
        if e.dry_run {
            print!("{}", edit.diff());
            continue;
        }
        if let Err(err) = hosts::apply(&edit) {
            failed = true;
            eprintln!("mcp-guard: {err}");
            continue;
        }
        println!("{} ({}):", f.path.display(), f.host.slug());
        for c in &edit.changes {
            println!("  {c}");
        }
        println!("  backup: {}", hosts::backup_path(&f.path).display());
    }
    if changed > 0 && !e.dry_run {
        println!("restart the agent hosts whose configs changed");
    }
    Ok(i32::from(failed))
}
