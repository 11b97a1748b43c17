//! Agent host MCP configs: find them, and wrap / unwrap their stdio servers
//! behind `mcp-guard wrap`.
//!
//! Editing is format preserving by construction: a format's parser (jsonc-parser
//! for JSON/JSONC, toml_edit for TOML) reports byte spans, and only the spans of
//! the `command` value and the start of the `args` array are spliced. Everything
//! else (comments, key order, indentation, trailing commas, env, cwd) is copied
//! byte for byte. Unwrap moves the original command's source text back, so a
//! wrap followed by an unwrap gives the original file byte for byte.

mod json;
mod paths;
mod toml;
mod write;
mod yaml;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

pub use paths::{candidates, env_candidates, system_candidates};
pub use write::{apply, backup_path};

/// An agent host that keeps a list of MCP servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    ClaudeDesktop,
    ClaudeCode,
    Cursor,
    VsCode,
    Cline,
    Windsurf,
    GeminiCli,
    Zed,
    Codex,
    Continue,
    Goose,
    LmStudio,
    OpenCode,
    Kiro,
    /// GitHub Copilot CLI (`~/.copilot/mcp-config.json`).
    CopilotCli,
    /// Roo Code, the VS Code extension (globalStorage and `.roo/mcp.json`).
    RooCode,
    /// Amazon Q Developer CLI (`~/.aws/amazonq/`), legacy `mcp.json` and agent files.
    AmazonQ,
    /// Qwen Code (`~/.qwen/settings.json`, a Gemini CLI fork).
    QwenCode,
    /// Crush by Charm (`crush.json`, servers under `mcp`).
    Crush,
}

impl Host {
    pub const ALL: [Host; 19] = [
        Host::ClaudeDesktop,
        Host::ClaudeCode,
        Host::Cursor,
        Host::VsCode,
        Host::Cline,
        Host::Windsurf,
        Host::GeminiCli,
        Host::Zed,
        Host::Codex,
        Host::Continue,
        Host::Goose,
        Host::LmStudio,
        Host::OpenCode,
        Host::Kiro,
        Host::CopilotCli,
        Host::RooCode,
        Host::AmazonQ,
        Host::QwenCode,
        Host::Crush,
    ];

    /// The slug used on the command line (`--host`).
    pub fn slug(self) -> &'static str {
        match self {
            Host::ClaudeDesktop => "claude-desktop",
            Host::ClaudeCode => "claude-code",
            Host::Cursor => "cursor",
            Host::VsCode => "vscode",
            Host::Cline => "cline",
            Host::Windsurf => "windsurf",
            Host::GeminiCli => "gemini",
            Host::Zed => "zed",
            Host::Codex => "codex",
            Host::Continue => "continue",
            Host::Goose => "goose",
            Host::LmStudio => "lmstudio",
            Host::OpenCode => "opencode",
            Host::Kiro => "kiro",
            Host::CopilotCli => "copilot",
            Host::RooCode => "roo",
            Host::AmazonQ => "amazonq",
            Host::QwenCode => "qwen",
            Host::Crush => "crush",
        }
    }

    pub fn from_slug(s: &str) -> Option<Host> {
        Host::ALL.into_iter().find(|h| h.slug() == s)
    }

    /// The file format this host's config uses.
    pub fn format(self) -> Format {
        match self {
            // OpenCode and Qwen Code document comments in their files too.
            Host::VsCode | Host::Zed | Host::OpenCode | Host::QwenCode => Format::Jsonc,
            Host::Codex => Format::Toml,
            Host::Continue | Host::Goose => Format::Yaml,
            _ => Format::Json,
        }
    }

    /// The key under which the servers live (JSON/TOML hosts).
    fn servers_key(self) -> &'static str {
        match self {
            Host::VsCode => "servers",
            Host::Zed => "context_servers",
            Host::OpenCode | Host::Crush => "mcp",
            Host::Codex => "mcp_servers",
            Host::Goose => "extensions",
            _ => "mcpServers",
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// JSON with comments and trailing commas.
    Jsonc,
    Toml,
    /// Reported by `scan`, refused by `wrap_file` / `unwrap_file`.
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stdio,
    /// `url` / `serverUrl` / `httpUrl`, or `type` http / sse / remote: left alone.
    Remote,
    /// Neither a command nor a url; left alone.
    Unknown,
}

/// One server entry in a host config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    /// Claude Code per-project entries: the project path (`.projects[path]`).
    pub scope: Option<String>,
    pub transport: Transport,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub url: Option<String>,
    /// The command is `mcp-guard` (or a path ending in `/mcp-guard`) with first arg `wrap`.
    pub wrapped: bool,
}

/// One host config file that exists.
#[derive(Debug, Clone)]
pub struct Found {
    pub host: Host,
    pub path: PathBuf,
    pub format: Format,
    pub servers: Vec<Server>,
    /// Set when the file could not be read or parsed (or is YAML); `servers` is then empty.
    pub error: Option<String>,
}

/// A computed change to one config file; nothing is written until [`apply`].
#[derive(Debug, Clone)]
pub struct Edit {
    pub path: PathBuf,
    pub host: Host,
    pub old: String,
    pub new: String,
    /// Human-readable list of what changed ("wrapped NAME", ...).
    pub changes: Vec<String>,
}

impl Edit {
    pub fn is_noop(&self) -> bool {
        self.old == self.new
    }

    /// A unified diff of old and new (for `--dry-run`), named by the file's path.
    pub fn diff(&self) -> String {
        line_diff(&self.old, &self.new, &self.path.display().to_string())
    }
}

// ---------------------------------------------------------------------------
// Format-neutral view of the entries, with byte spans into the text.

/// A scalar with its source span; `value` is the decoded string, if it is one.
#[derive(Debug, Clone)]
pub(crate) struct Spanned {
    pub range: Range<usize>,
    pub value: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct ArgsArr {
    /// Byte index just after the `[` (a YAML block sequence: its first `-`).
    pub open: usize,
    pub elems: Vec<Spanned>,
    /// What goes between two items: `, `, or a YAML block sequence's line break,
    /// indentation and `- `.
    pub sep: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Shape {
    /// `command` string + optional `args` array.
    Separate {
        cmd: Spanned,
        args: Option<ArgsArr>,
        /// Where and with what prefix to add an `args` member when there is none.
        absent_insert: (usize, String),
        /// The span that removes the `args` member when wrap added it (it sits
        /// right after `command`, in the layout `absent_insert` produces).
        absent_removal: Option<Range<usize>>,
    },
    /// OpenCode: `command: [cmd, args...]`.
    Combined { arr: ArgsArr },
}

#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub name: String,
    pub scope: Option<String>,
    pub transport: Transport,
    pub url: Option<String>,
    pub shape: Option<Shape>,
}

fn is_guard_bin(cmd: &str) -> bool {
    cmd == "mcp-guard" || cmd.ends_with("/mcp-guard")
}

impl RawEntry {
    fn cmd_and_args(&self) -> (Option<String>, Vec<String>) {
        let strs = |v: &[Spanned]| -> Vec<String> {
            v.iter()
                .map(|s| s.value.clone().unwrap_or_default())
                .collect()
        };
        match &self.shape {
            None => (None, Vec::new()),
            Some(Shape::Separate { cmd, args, .. }) => (
                cmd.value.clone(),
                args.as_ref().map(|a| strs(&a.elems)).unwrap_or_default(),
            ),
            Some(Shape::Combined { arr }) => match arr.elems.split_first() {
                None => (None, Vec::new()),
                Some((c, rest)) => (c.value.clone(), strs(rest)),
            },
        }
    }

    fn wrapped(&self) -> bool {
        let (cmd, args) = self.cmd_and_args();
        cmd.as_deref().is_some_and(is_guard_bin) && args.first().map(String::as_str) == Some("wrap")
    }

    fn to_server(&self) -> Server {
        let (command, args) = self.cmd_and_args();
        Server {
            name: self.name.clone(),
            scope: self.scope.clone(),
            transport: self.transport,
            wrapped: self.wrapped(),
            command,
            args,
            url: self.url.clone(),
        }
    }

    fn label(&self) -> String {
        match &self.scope {
            Some(s) => format!("{} (project {s})", self.name),
            None => self.name.clone(),
        }
    }
}

/// Where the line holding byte `at` of `text` starts.
pub(crate) fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |i| i + 1)
}

/// Encodes a string as a JSON string literal; also a valid TOML basic string.
pub(crate) fn enc(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

fn parse_entries(host: Host, text: &str) -> std::result::Result<Vec<RawEntry>, String> {
    match host.format() {
        Format::Json | Format::Jsonc => json::entries(host, text),
        Format::Toml => toml::entries(host, text),
        // A Continue block file may be JSON copied from another host.
        Format::Yaml if yaml::is_json(text) => json::entries(host, text),
        Format::Yaml => yaml::entries(host, text),
    }
}

// ---------------------------------------------------------------------------
// scan

/// Every host config file present under `home` (and the project-level files in
/// `project_dirs`), with its servers.
pub fn scan(home: &Path, project_dirs: &[PathBuf]) -> Vec<Found> {
    scan_paths(candidates(home, project_dirs))
}

/// VS Code's `settings.json` holds every editor setting: it is an MCP config only when it
/// has servers (or cannot be read), otherwise listing it would be noise.
fn worth_listing(f: &Found) -> bool {
    let general =
        f.host == Host::VsCode && f.path.file_name().is_some_and(|n| n == "settings.json");
    !general || !f.servers.is_empty() || f.error.is_some()
}

/// The files among `paths` that exist, each with its servers (for the paths that
/// [`env_candidates`] and [`system_candidates`] give).
pub fn scan_paths(paths: Vec<(Host, PathBuf)>) -> Vec<Found> {
    paths
        .into_iter()
        .filter(|(_, p)| p.is_file())
        .map(|(host, p)| scan_file(&p, host))
        .filter(worth_listing)
        .collect()
}

/// Reads and lists one config file.
pub fn scan_file(path: &Path, host: Host) -> Found {
    let mut found = Found {
        host,
        path: path.to_path_buf(),
        format: host.format(),
        servers: Vec::new(),
        error: None,
    };
    match std::fs::read_to_string(path) {
        Err(e) => found.error = Some(format!("{}: cannot read: {e}", path.display())),
        Ok(text) => match parse_entries(host, &text) {
            _ if found.format == Format::Yaml && yaml::is_json(&text) => {
                found.format = Format::Json;
                match parse_entries(host, &text) {
                    Ok(entries) => {
                        found.servers = entries.iter().map(RawEntry::to_server).collect()
                    }
                    Err(e) => found.error = Some(format!("{}: {e}", path.display())),
                }
            }
            Ok(entries) => found.servers = entries.iter().map(RawEntry::to_server).collect(),
            Err(e) => found.error = Some(format!("{}: {e}", path.display())),
        },
    }
    found
}

// ---------------------------------------------------------------------------
// wrap / unwrap

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Wrap,
    Unwrap,
}

/// Computes the edit that puts every unwrapped stdio server in `path` behind
/// `mcp_guard_bin wrap --name NAME -- CMD ARGS...`. Nothing is written.
pub fn wrap_file(path: &Path, host: Host, mcp_guard_bin: &str) -> Result<Edit> {
    edit_file(path, host, Op::Wrap, mcp_guard_bin)
}

/// Computes the edit that restores every wrapped stdio server in `path`.
pub fn unwrap_file(path: &Path, host: Host) -> Result<Edit> {
    edit_file(path, host, Op::Unwrap, "")
}

/// Why a file found could not be edited when nothing went wrong on our side: it does not
/// parse, or its format is not one mcp-guard edits (YAML).
/// The CLI reports these as warnings, not failures: the user's file is as it was and
/// everything else was done. Carried inside the `anyhow::Error` of
/// [`wrap_file`] / [`unwrap_file`]; test with `err.is::<Unsupported>()`.
#[derive(Debug)]
pub struct Unsupported(pub String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

fn edit_file(path: &Path, host: Host, op: Op, bin: &str) -> Result<Edit> {
    let old = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    // A text that does not parse (or is YAML) is the file's state, not our failure.
    if let Err(e) = parse_entries(host, &old) {
        return Err(anyhow::Error::new(Unsupported(format!(
            "{}: {e}; file left untouched",
            path.display()
        ))));
    }
    let (new, changes) = match op {
        Op::Wrap => wrap_text(host, &old, bin),
        Op::Unwrap => unwrap_text(host, &old),
    }
    .map_err(|e| anyhow!("{}: {e}; file left untouched", path.display()))?;
    Ok(Edit {
        path: path.to_path_buf(),
        host,
        old,
        new,
        changes,
    })
}

/// Wraps the stdio servers in a config text.
pub fn wrap_text(host: Host, text: &str, bin: &str) -> Result<(String, Vec<String>)> {
    if bin.is_empty() {
        bail!("empty mcp-guard path");
    }
    let entries = parse_entries(host, text).map_err(|e| anyhow!("{e}"))?;
    let mut splices: Vec<(Range<usize>, String)> = Vec::new();
    let mut changes = Vec::new();
    for e in &entries {
        if e.transport != Transport::Stdio || e.wrapped() {
            continue;
        }
        let Some(shape) = &e.shape else { continue };
        let yaml = host.format() == Format::Yaml && !yaml::is_json(text);
        let prefix = |raw_cmd: &str, value: &str, sep: &str| {
            let moved = if yaml {
                yaml::movable(raw_cmd, value, sep == ", ")
            } else {
                raw_cmd.to_string()
            };
            let mut items = vec![enc("wrap")];
            items.extend(name_args(&e.name));
            items.extend([enc("--"), moved]);
            items.join(sep)
        };
        match shape {
            Shape::Separate {
                cmd,
                args,
                absent_insert,
                ..
            } => {
                let Some(value) = &cmd.value else {
                    continue;
                };
                let sep = args.as_ref().map_or(", ", |a| a.sep.as_str());
                let p = prefix(&text[cmd.range.clone()], value, sep);
                splices.push((cmd.range.clone(), enc(bin)));
                match args {
                    Some(a) if !a.elems.is_empty() => {
                        let at = a.elems[0].range.start;
                        splices.push((at..at, format!("{p}{sep}")));
                    }
                    Some(a) => splices.push((a.open..a.open, p)),
                    None => {
                        // Written so unwrap can tell it from an `args` the user had: TOML with a
                        // trailing comma, JSON with a space inside each bracket.
                        let (at, lead) = absent_insert;
                        let created = match host.format() {
                            Format::Toml => format!("{lead}[{p},]"),
                            _ => format!("{lead}[ {p} ]"),
                        };
                        splices.push((*at..*at, created));
                    }
                }
            }
            Shape::Combined { arr } => {
                let Some(first) = arr.elems.first() else {
                    continue;
                };
                let at = first.range.start;
                let mut items = vec![enc(bin), enc("wrap")];
                items.extend(name_args(&e.name));
                items.push(enc("--"));
                splices.push((at..at, format!("{}, ", items.join(", "))));
            }
        }
        changes.push(format!("wrapped {}", e.label()));
    }
    let new = splice(text, splices)?;
    verify(host, &new, Op::Wrap)?;
    Ok((new, changes))
}

/// Whether an `args` array is one wrap created (see `wrap_text`): only then does unwrap
/// remove the key; an `args` the user had keeps its (empty) brackets.
fn created_args(
    format: Format,
    text: &str,
    open: usize,
    last_end: usize,
    array_end: usize,
) -> bool {
    let tail = text.get(last_end..array_end);
    match format {
        Format::Toml => tail == Some(",]"),
        _ => text.get(open..open + 1) == Some(" ") && tail == Some(" ]"),
    }
}

/// Unwraps the wrapped stdio servers in a config text.
pub fn unwrap_text(host: Host, text: &str) -> Result<(String, Vec<String>)> {
    let entries = parse_entries(host, text).map_err(|e| anyhow!("{e}"))?;
    let mut splices: Vec<(Range<usize>, String)> = Vec::new();
    let mut changes = Vec::new();
    for e in &entries {
        if e.transport != Transport::Stdio || !e.wrapped() {
            continue;
        }
        let Some(shape) = &e.shape else { continue };
        match shape {
            Shape::Separate {
                cmd,
                args,
                absent_removal,
                ..
            } => {
                let Some(a) = args.as_ref() else {
                    bail!("server {}: wrapped but has no args", e.label());
                };
                // args = ["wrap", opts..., "--", CMD, ARGS...]
                let Some(dd) = separator(&a.elems, 1) else {
                    bail!("server {}: wrapped but no `--` in args", e.label());
                };
                let Some(orig) = a.elems.get(dd + 1) else {
                    bail!("server {}: wrapped but no command after `--`", e.label());
                };
                splices.push((cmd.range.clone(), text[orig.range.clone()].to_string()));
                if let Some(rest) = a.elems.get(dd + 2) {
                    splices.push((a.elems[0].range.start..rest.range.start, String::new()));
                } else if let Some(r) = absent_removal
                    .as_ref()
                    .filter(|r| created_args(host.format(), text, a.open, orig.range.end, r.end))
                {
                    splices.push((r.clone(), String::new()));
                } else {
                    splices.push((a.elems[0].range.start..orig.range.end, String::new()));
                }
            }
            Shape::Combined { arr } => {
                let Some(dd) = separator(&arr.elems, 2) else {
                    bail!("server {}: wrapped but no `--` in command", e.label());
                };
                let Some(orig) = arr.elems.get(dd + 1) else {
                    bail!("server {}: wrapped but no command after `--`", e.label());
                };
                splices.push((arr.elems[0].range.start..orig.range.start, String::new()));
            }
        }
        changes.push(format!("unwrapped {}", e.label()));
    }
    let new = splice(text, splices)?;
    verify(host, &new, Op::Unwrap)?;
    Ok((new, changes))
}

/// `--name NAME` as wrap writes it: `--name=NAME` for a name that starts with `-`, which
/// would otherwise read as an option (or, as `--`, as the end of them).
fn name_args(name: &str) -> Vec<String> {
    if name.starts_with('-') {
        vec![enc(&format!("--name={name}"))]
    } else {
        vec![enc("--name"), enc(name)]
    }
}

/// Where the `--` that ends `wrap`'s options is, reading them from `from`: `--name` takes
/// the next item as its value, whatever it is.
fn separator(elems: &[Spanned], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(e) = elems.get(i) {
        match e.value.as_deref() {
            Some("--") => return Some(i),
            Some("--name") => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Re-parses the result: it must parse, and no stdio entry may be left in the
/// wrong state.
fn verify(host: Host, new: &str, op: Op) -> Result<()> {
    let entries = parse_entries(host, new)
        .map_err(|e| anyhow!("internal error: edited text does not parse: {e}"))?;
    for e in entries
        .iter()
        .filter(|e| e.transport == Transport::Stdio && e.shape.is_some())
    {
        let (cmd, _) = e.cmd_and_args();
        if cmd.is_none() {
            continue;
        }
        if (op == Op::Wrap) != e.wrapped() {
            bail!(
                "internal error: server {} not {} after edit",
                e.label(),
                if op == Op::Wrap {
                    "wrapped"
                } else {
                    "unwrapped"
                }
            );
        }
    }
    Ok(())
}

fn splice(text: &str, mut splices: Vec<(Range<usize>, String)>) -> Result<String> {
    splices.sort_by(|a, b| b.0.start.cmp(&a.0.start).then(b.0.end.cmp(&a.0.end)));
    let mut out = text.to_string();
    let mut limit = usize::MAX;
    for (r, s) in splices {
        if r.end > limit || r.start > r.end || r.end > text.len() {
            bail!("internal error: overlapping edits");
        }
        out.replace_range(r.clone(), &s);
        limit = r.start;
    }
    Ok(out)
}

/// A unified diff of `old` into `new` for the file `name` (three lines of context), which
/// `git apply --unsafe-paths -p0` (or `patch`) applies; empty when they are the same.
fn line_diff(old: &str, new: &str, name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(name, name)
        .to_string()
}

#[cfg(test)]
mod tests;

/// Every account the system's name service lists (NSS: /etc/passwd, and LDAP / SSSD /
/// NIS where `/etc/nsswitch.conf` names them) that is root or a regular user (uid 1000 to
/// 59999) and has a home directory: (name, uid, home), each account once.
///
/// Directory services often do not enumerate (SSSD's default `enumerate = false`, LDAP
/// sites with large directories): then only local accounts and those already cached are
/// listed. Name such users explicitly (`hosts ... --user NAME`), which looks each one up
/// directly and works whatever the enumeration setting.
pub fn user_homes() -> Result<Vec<(String, u32, PathBuf)>> {
    let mut out: Vec<(String, u32, PathBuf)> = Vec::new();
    for (name, uid, dir) in nss_accounts() {
        if (uid == 0 || (1000..60000).contains(&uid))
            && dir.is_dir()
            && !out.iter().any(|(n, u, _)| *n == name || *u == uid)
        {
            out.push((name, uid, dir));
        }
    }
    if out.is_empty() {
        bail!("the name service lists no accounts (getpwent)");
    }
    Ok(out)
}

/// One account looked up by name through NSS (works where enumeration is off).
pub fn user_home(name: &str) -> Result<(String, u32, PathBuf)> {
    let u = nix::unistd::User::from_name(name)
        .with_context(|| format!("cannot look up user {name}"))?
        .with_context(|| format!("no user named {name}"))?;
    Ok((u.name, u.uid.as_raw(), u.dir))
}

/// Every entry `getpwent(3)` gives: (name, uid, home).
fn nss_accounts() -> Vec<(String, u32, PathBuf)> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt as _;
    use std::sync::Mutex;
    // getpwent walks process-wide state: one walk at a time.
    static WALK: Mutex<()> = Mutex::new(());
    let _guard = WALK.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    // SAFETY: setpwent/getpwent/endpwent are called under WALK, so no other walk in this
    // process interleaves; each returned record is copied out before the next call, which
    // may overwrite it; the pointers are checked for null before they are read.
    unsafe {
        nix::libc::setpwent();
        loop {
            let pw = nix::libc::getpwent();
            if pw.is_null() {
                break;
            }
            let pw = &*pw;
            if pw.pw_name.is_null() || pw.pw_dir.is_null() {
                continue;
            }
            let name = CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned();
            let dir = PathBuf::from(std::ffi::OsStr::from_bytes(
                CStr::from_ptr(pw.pw_dir).to_bytes(),
            ));
            out.push((name, pw.pw_uid, dir));
        }
        nix::libc::endpwent();
    }
    out
}

/// Whether `path` resolves inside `home` and belongs to `uid`: what root checks before it
/// edits a user's config, so that a symlink cannot steer it into someone else's file.
pub fn owned_by(path: &Path, uid: u32, home: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(real), Ok(home)) = (std::fs::canonicalize(path), std::fs::canonicalize(home)) else {
        return false;
    };
    real.starts_with(&home) && std::fs::metadata(&real).is_ok_and(|m| m.uid() == uid)
}

#[cfg(test)]
mod yaml_tests;
