//! The command line (a contract: tests and docs rely on it).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::audit::Durability;

#[derive(Debug, Parser)]
#[command(
    name = "mcp-guard",
    version,
    about = "Guards Model Context Protocol traffic on this host"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an MCP stdio server behind the guard: `mcp-guard wrap -- COMMAND [ARGS...]`.
    Wrap(Wrap),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work with audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Pinned tool definitions: list them, approve changed ones.
    #[command(subcommand)]
    Pins(PinsCommand),
    /// Agent host configs: find them, put their stdio servers behind `mcp-guard wrap`.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Install mcp-guard as a systemd system service, or remove it.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Run the observer: eBPF programs that see every stdio MCP session on this host,
    /// wrapped or not, judged by the system policy and recorded in the system audit log.
    Daemon {
        /// Configuration file [default: /etc/mcp-guard/config.toml, or built-in defaults if absent].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Check the configuration, the policy and the eBPF object, print what would be
        /// used, and exit (0: all good, 1: the first problem found, named) without starting.
        #[arg(long)]
        check_config: bool,
    },
    /// What the guard decides, as it happens: the records of an audit log, one line each
    /// (`-f` to follow, filters, `-o json`).
    Events(crate::events::Args),
    /// What the running daemon sees: programs, agent hosts, sessions, events, losses.
    /// Exit 3 when no daemon runs.
    Status {
        /// The daemon's configuration file (for its run directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the manual pages or the shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        /// `man` (mcp-guard.1 and one page per subcommand) or `completions` (bash, zsh,
        /// fish).
        what: Generated,
        /// Directory to write into (created).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// What `mcp-guard generate` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Generated {
    Man,
    Completions,
}

/// Writes the manual pages or completions for this command line into `out`.
pub fn generate(what: Generated, out: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(out)?;
    let mut cmd = Cli::command();
    match what {
        Generated::Man => clap_mangen::generate_to(cmd, out),
        Generated::Completions => {
            for shell in [
                clap_complete::Shell::Bash,
                clap_complete::Shell::Zsh,
                clap_complete::Shell::Fish,
            ] {
                clap_complete::generate_to(shell, &mut cmd, "mcp-guard", out)?;
            }
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install the binary, eBPF object, unit, /etc/mcp-guard, /var/log/mcp-guard,
    /// /var/lib/mcp-guard and the audit signing key; enable and start the service. Existing
    /// configuration, policy, audit log and key are kept.
    Install(crate::service::InstallArgs),
    /// Stop and remove the unit, the binary and the eBPF object; configuration, audit log and
    /// key are kept unless --purge.
    Uninstall(crate::service::UninstallArgs),
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// A table of host config files and their servers: transport, wrapped or not.
    Scan {
        /// Project directories to look in [default: the current directory] (`.mcp.json`,
        /// `.cursor/`, `.vscode/`, `.gemini/`, `opencode.json`, `.codex/`, `.kiro/`, ...).
        #[arg(long)]
        project: Vec<PathBuf>,
        /// Every user's home directory (root and uids from 1000, as the system's name
        /// service lists them); needs root.
        #[arg(long)]
        all_users: bool,
        /// This user's home directory (repeatable); looked up by name, so it works for
        /// LDAP / SSSD users that `--all-users` cannot list. Needs root.
        #[arg(long, value_name = "NAME")]
        user: Vec<String>,
        /// Print what was found as JSON (one array of config files, each with its servers).
        #[arg(long)]
        json: bool,
        /// Exit 1 when any stdio server is not wrapped, or a config cannot be read (for CI and
        /// device management).
        #[arg(long)]
        check: bool,
    },
    /// Rewrite stdio server entries to launch through `mcp-guard wrap --name NAME --`.
    Wrap(HostsEdit),
    /// Restore the original commands of wrapped entries.
    Unwrap(HostsEdit),
}

#[derive(Debug, clap::Args)]
pub struct HostsEdit {
    /// Only this host (claude-desktop, claude-code, cursor, vscode, zed, codex, ...).
    #[arg(long)]
    pub host: Option<String>,
    /// Project directories whose files (`.mcp.json`, `.cursor/`, `.vscode/`, `.gemini/`,
    /// `opencode.json`, `.codex/`, `.kiro/`, ...) are edited too. Never by default: they are usually checked in and shared with a team.
    #[arg(long)]
    pub project: Vec<PathBuf>,
    /// Print what would change, as a diff, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The mcp-guard the hosts should launch [default: this program, absolute].
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Every user's home directory (root and uids from 1000, as the system's name service
    /// lists them); needs root. Files are kept with their owner and mode; a config that
    /// resolves outside its user's home or belongs to someone else is left alone.
    #[arg(long)]
    pub all_users: bool,
    /// This user's home directory (repeatable), as with `--all-users`; looked up by name, so
    /// it works for LDAP / SSSD users that enumeration does not list. Needs root.
    #[arg(long, value_name = "NAME")]
    pub user: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PinsCommand {
    /// List pinned tools and the changed definitions waiting for approval.
    List {
        /// The pin store [default: pins.json beside the default audit log].
        #[arg(long)]
        pins: Option<PathBuf>,
    },
    /// Pin the changed definitions of a server's tools (one, or all), unblocking them.
    Approve {
        #[arg(long)]
        server: String,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long)]
        pins: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct Wrap {
    /// The server's name in the host config; policy rules match on it.
    #[arg(long)]
    pub name: Option<String>,
    /// Policy file [default: $MCP_GUARD_POLICY, ~/.config/mcp-guard/policy.toml, built-in].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Audit log [default: $XDG_STATE_HOME/mcp-guard/audit.jsonl].
    #[arg(long)]
    pub audit: Option<PathBuf>,
    /// When an audit record counts as written [env: MCP_GUARD_AUDIT_DURABILITY; default: durable].
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,
    /// Rotate the audit log when a write takes it past this size, in bytes; 0: never.
    #[arg(long, default_value_t = crate::audit::DEFAULT_MAX_BYTES)]
    pub audit_max_bytes: u64,
    /// The audit signing key (created, mode 0600, if missing; its public half is written
    /// beside it with the extension `.pub`) [default: audit.key beside the audit log].
    #[arg(long)]
    pub audit_key: Option<PathBuf>,
    /// Copy the signed chain head to this file (appending, at most once a second, and when
    /// the log is closed), so `audit verify --checkpoint FILE` sees a log cut short. Keep it
    /// where the log's writer can only append (`chattr +a`) or away from the log.
    #[arg(long, env = "MCP_GUARD_AUDIT_CHECKPOINT", value_name = "FILE")]
    pub audit_checkpoint: Option<PathBuf>,
    /// Sign the record of every decision before it takes effect (an Ed25519 signature per
    /// decision, tens of microseconds each), instead of sealing the log within 10 ms.
    #[arg(long)]
    pub audit_sign_commits: bool,
    /// How often the policy files are checked for changes, in milliseconds (a policy that
    /// loads replaces the one in force; one that does not is reported and ignored); 0: never.
    #[arg(long, default_value_t = 2000)]
    pub policy_poll_ms: u64,
    /// Longest message accepted, in bytes, in either direction.
    #[arg(long, default_value_t = crate::frame::DEFAULT_MAX_MESSAGE)]
    pub max_message: usize,
    /// Most requests in flight (sent, not yet answered) per direction; more are refused
    /// with -32088 until some are answered; 0: no bound.
    #[arg(long, default_value_t = crate::guard::Limits::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Audit records one session may write at once (a token bucket's size); past it,
    /// requests are refused with -32089 and other records dropped, with one alert; 0: no budget.
    #[arg(long, default_value_t = crate::guard::Limits::DEFAULT_AUDIT_BURST)]
    pub audit_burst: u32,
    /// Audit records per second the session's budget refills with.
    #[arg(long, default_value_t = crate::guard::Limits::DEFAULT_AUDIT_RATE)]
    pub audit_rate: u32,
    /// After the client closes stdin: how long the server has to exit before SIGTERM, and
    /// again before SIGKILL.
    #[arg(long, default_value_t = 2000)]
    pub shutdown_grace_ms: u64,
    /// The daemon's socket. When it exists (or is given here or in $MCP_GUARD_SOCKET) the
    /// daemon decides and records, with the system policy; `--policy` then only adds
    /// denials [default: /run/mcp-guard/mcp-guard.sock].
    #[arg(long, env = "MCP_GUARD_SOCKET")]
    pub daemon_socket: Option<PathBuf>,
    /// Managed, while the daemon cannot be reached: refuse policy-relevant requests
    /// (denied, -32080, saying why) and reconnect, or judge with the shim's own policy.
    #[arg(
        long,
        value_enum,
        env = "MCP_GUARD_WHEN_DAEMON_DOWN",
        default_value = "refuse"
    )]
    pub when_daemon_down: crate::shim::WhenDown,
    /// Never ask the daemon, even when it runs: the shim decides with its own policy.
    #[arg(long)]
    pub standalone: bool,
    /// The server command and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum PolicyCommand {
    /// Validate policy files; errors name file, line and column. Runs their `[[test]]`
    /// tables and warns (on stderr) about rules that can never decide a request. Exit 1 on
    /// any error or failed test.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Exit 1 on warnings too.
        #[arg(long)]
        strict: bool,
        /// Also warn about rules naming a server no host config names: the configs under
        /// this home directory (e.g. `~`) and the current directory's project configs.
        #[arg(long, value_name = "HOME")]
        hosts: Option<PathBuf>,
    },
    /// Show how a policy decides one request, and why each rule did or did not match.
    Explain(crate::policy::cmd::ExplainArgs),
    /// Replay the requests of audit logs against a policy and print every decision that
    /// would change. Exit 1 when one would, 3 when some cannot be told, 2 on bad input.
    Test(crate::policy::replay::TestArgs),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check audit logs: hash chain, sequence, signatures. FILEs are one chain, oldest
    /// first (rotated files before the live one). Exit 1 at the first bad record.
    Verify(crate::audit::verify::Args),
    /// Send audit records to a SIEM (syslog RFC 5424, JSON or OCSF) or an OpenTelemetry
    /// collector (OTLP/HTTP logs and tools/call spans), resuming from a cursor.
    Forward(crate::audit::forward::Args),
}
