//! Where each host keeps its config on Linux, as each host documents it.
//!
//! Three scopes: per user (under a home directory), per project (checked-in files, edited
//! only when asked), and system-wide (`/etc`, edited only by root). The URL beside each
//! path is the host's own documentation for it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::Host;

/// The VS Code builds whose user data holds `User/mcp.json` and `User/settings.json`,
/// relative to a home: desktop, Insiders, VSCodium, the Remote-SSH / WSL server, and the
/// Flatpak builds. https://code.visualstudio.com/docs/configure/settings#_settings-file-locations
/// https://code.visualstudio.com/docs/remote/faq (server data under `~/.vscode-server/data`)
const VSCODE_DATA: &[&str] = &[
    ".config/Code",
    ".config/Code - Insiders",
    ".config/VSCodium",
    ".vscode-server/data",
    ".vscode-server-insiders/data",
    ".var/app/com.visualstudio.code/config/Code",
    ".var/app/com.vscodium.codium/config/VSCodium",
];

/// Editors whose `globalStorage` can hold the Cline and Roo Code extensions' files: the
/// VS Code builds and Cursor (a VS Code fork).
const EXTENSION_HOSTS: &[&str] = &[".config/Cursor"];

/// Cline's file inside an editor's `User/globalStorage`.
/// https://docs.cline.bot/mcp/configuring-mcp-servers
const CLINE: &str = "globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json";
/// Roo Code's global file inside an editor's `User/globalStorage`.
/// https://docs.roocode.com/features/mcp/using-mcp-in-roo
const ROO: &str = "globalStorage/rooveterinaryinc.roo-cline/settings/mcp_settings.json";

/// Every config path a host may use: user-level under `home`, then the
/// project-level ones in each of `project_dirs`. Paths may not exist.
pub fn candidates(home: &Path, project_dirs: &[PathBuf]) -> Vec<(Host, PathBuf)> {
    let h = |p: &str| home.join(p);
    let mut v = vec![
        (
            Host::ClaudeDesktop,
            h(".config/Claude/claude_desktop_config.json"),
        ),
        (
            Host::ClaudeDesktop,
            h(".config/claude/claude_desktop_config.json"),
        ),
        // https://code.claude.com/docs/en/mcp#mcp-installation-scopes
        (Host::ClaudeCode, h(".claude.json")),
        (Host::Cursor, h(".cursor/mcp.json")),
    ];
    for data in VSCODE_DATA {
        let user = home.join(data).join("User");
        // https://code.visualstudio.com/docs/copilot/customization/mcp-servers
        v.push((Host::VsCode, user.join("mcp.json")));
        v.push((Host::VsCode, user.join("settings.json")));
        // Each profile has its own `mcp.json`:
        // https://code.visualstudio.com/docs/configure/profiles
        for profile in subdirs(&user.join("profiles")) {
            v.push((Host::VsCode, profile.join("mcp.json")));
            v.push((Host::VsCode, profile.join("settings.json")));
        }
    }
    for data in VSCODE_DATA.iter().chain(EXTENSION_HOSTS) {
        let user = home.join(data).join("User");
        v.push((Host::Cline, user.join(CLINE)));
        v.push((Host::RooCode, user.join(ROO)));
    }
    v.extend([
        // Cline CLI (and the shared ~/.cline root): https://docs.cline.bot/getting-started/config
        (
            Host::Cline,
            h(".cline/data/settings/cline_mcp_settings.json"),
        ),
        (Host::Windsurf, h(".codeium/windsurf/mcp_config.json")),
        // https://geminicli.com/docs/reference/configuration
        (Host::GeminiCli, h(".gemini/settings.json")),
        (Host::Zed, h(".config/zed/settings.json")),
        // https://developers.openai.com/codex/config-basic
        (Host::Codex, h(".codex/config.toml")),
        // https://docs.continue.dev/reference#mcpservers; block files: `mcp_blocks`.
        (Host::Continue, h(".continue/config.yaml")),
        (Host::Goose, h(".config/goose/config.yaml")),
        (Host::LmStudio, h(".lmstudio/mcp.json")),
        // https://opencode.ai/docs/config/ (`opencode.json` or `opencode.jsonc`); OpenCode
        // also opens `config.json` there: https://github.com/anomalyco/opencode/issues/3407
        (Host::OpenCode, h(".config/opencode/opencode.json")),
        (Host::OpenCode, h(".config/opencode/opencode.jsonc")),
        (Host::OpenCode, h(".config/opencode/config.json")),
        // https://kiro.dev/docs/mcp/configuration
        (Host::Kiro, h(".kiro/settings/mcp.json")),
        // `~/.copilot/mcp-config.json` (`$COPILOT_HOME` moves it), entries `type` local / stdio
        // / http / sse with `tools`:
        // https://docs.github.com/en/copilot/how-tos/use-copilot-agents/use-copilot-cli
        (Host::CopilotCli, h(".copilot/mcp-config.json")),
        // Amazon Q Developer CLI's legacy global file (still read with `useLegacyMcpJson`):
        // https://docs.aws.amazon.com/amazonq/latest/qdeveloper-ug/command-line-mcp-configuration.html
        (Host::AmazonQ, h(".aws/amazonq/mcp.json")),
        // https://qwenlm.github.io/qwen-code-docs/en/users/features/mcp/
        (Host::QwenCode, h(".qwen/settings.json")),
        // Crush's JSON format (`.crush.json`, `crush.json`, then this one):
        // https://github.com/charmbracelet/crush/blob/main/README.md#configuration
        // Newer releases also read a Bash `crushrc`, which is not edited here:
        // https://github.com/charmbracelet/crush/blob/main/docs/config/README.md
        (Host::Crush, h(".config/crush/crush.json")),
    ]);
    // Gemini CLI extensions bring their own `mcpServers`, from `~/.gemini/extensions` and a
    // workspace's `.gemini/extensions`:
    // https://github.com/google-gemini/gemini-cli/blob/main/docs/extension.md
    for ext in subdirs(&h(".gemini/extensions")) {
        v.push((Host::GeminiCli, ext.join("gemini-extension.json")));
    }
    // Agent files with `mcpServers`: Amazon Q CLI (`cli-agents`, and the IDE's `agents`),
    // https://github.com/aws/amazon-q-developer-cli/blob/main/docs/agent-format.md
    // and Kiro CLI: https://kiro.dev/docs/cli/chat/configuration
    for dir in [".aws/amazonq/cli-agents", ".aws/amazonq/agents"] {
        v.extend(json_files(&h(dir)).map(|p| (Host::AmazonQ, p)));
    }
    v.extend(json_files(&h(".kiro/agents")).map(|p| (Host::Kiro, p)));

    // Continue's block files: https://docs.continue.dev/customize/deep-dives/mcp
    v.extend(mcp_blocks(&h(".continue/mcpServers")));
    for p in project_dirs {
        v.extend(mcp_blocks(&p.join(".continue/mcpServers")));
        v.push((Host::ClaudeCode, p.join(".mcp.json")));
        v.push((Host::Cursor, p.join(".cursor/mcp.json")));
        v.push((Host::VsCode, p.join(".vscode/mcp.json")));
        v.push((Host::GeminiCli, p.join(".gemini/settings.json")));
        // https://opencode.ai/docs/config/#per-project
        for f in [
            "opencode.json",
            "opencode.jsonc",
            ".opencode/opencode.json",
            ".opencode/opencode.jsonc",
        ] {
            v.push((Host::OpenCode, p.join(f)));
        }
        for ext in subdirs(&p.join(".gemini/extensions")) {
            v.push((Host::GeminiCli, ext.join("gemini-extension.json")));
        }
        v.push((Host::RooCode, p.join(".roo/mcp.json")));
        v.push((Host::Kiro, p.join(".kiro/settings/mcp.json")));
        // Read by Codex only in a project the user trusted:
        // https://developers.openai.com/codex/config-basic
        v.push((Host::Codex, p.join(".codex/config.toml")));
        v.push((Host::AmazonQ, p.join(".amazonq/mcp.json")));
        v.extend(json_files(&p.join(".amazonq/cli-agents")).map(|f| (Host::AmazonQ, f)));
        v.push((Host::QwenCode, p.join(".qwen/settings.json")));
        v.push((Host::QwenCode, p.join(".qwen/settings.local.json")));
        v.push((Host::Crush, p.join(".crush.json")));
        v.push((Host::Crush, p.join("crush.json")));
    }
    dedup(v)
}

/// The files the caller's environment points at (`XDG_CONFIG_HOME`, `CODEX_HOME`,
/// `COPILOT_HOME`, ...): the hosts read these instead of, or beside, the defaults. Only for the user running
/// mcp-guard: other users' environments are not known.
pub fn env_candidates(home: &Path, env: impl Fn(&str) -> Option<OsString>) -> Vec<(Host, PathBuf)> {
    let dir = |var: &str| env(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut v = Vec::new();
    // `$XDG_CONFIG_HOME` replaces `~/.config` for the hosts that follow the XDG base
    // directory spec (VS Code, Cursor, OpenCode, Crush, Zed, Goose, Claude Desktop, ...):
    // https://specifications.freedesktop.org/basedir-spec/latest/
    if let Some(xdg) = dir("XDG_CONFIG_HOME").filter(|d| d.is_absolute()) {
        let dot_config = home.join(".config");
        let moved = |p: &Path| p.strip_prefix(&dot_config).ok().map(|rest| xdg.join(rest));
        for (host, p) in candidates(home, &[]) {
            if let Some(m) = moved(&p) {
                v.push((host, m));
            }
        }
        // VS Code profiles are listed by looking, so look under the moved directory too.
        for data in VSCODE_DATA
            .iter()
            .filter_map(|d| d.strip_prefix(".config/"))
        {
            let user = xdg.join(data).join("User");
            for profile in subdirs(&user.join("profiles")) {
                v.push((Host::VsCode, profile.join("mcp.json")));
                v.push((Host::VsCode, profile.join("settings.json")));
            }
        }
    }
    // https://developers.openai.com/codex/environment-variables (`CODEX_HOME`, default ~/.codex)
    if let Some(d) = dir("CODEX_HOME") {
        v.push((Host::Codex, d.join("config.toml")));
    }
    // https://code.visualstudio.com/docs/agents/reference/mcp-configuration
    if let Some(d) = dir("COPILOT_HOME") {
        v.push((Host::CopilotCli, d.join("mcp-config.json")));
    }
    // https://code.claude.com/docs/en/settings (`CLAUDE_CONFIG_DIR`)
    if let Some(d) = dir("CLAUDE_CONFIG_DIR") {
        v.push((Host::ClaudeCode, d.join(".claude.json")));
    }
    // https://www.developersdigest.tech/mcp-servers/clients/cline (from Cline's CLI docs)
    if let Some(f) = dir("CLINE_MCP_SETTINGS_PATH") {
        v.push((Host::Cline, f));
    }
    // https://opencode.ai/docs/config/#custom-path
    if let Some(f) = dir("OPENCODE_CONFIG") {
        v.push((Host::OpenCode, f));
    }
    dedup(v)
}

/// System-wide files under `root` (`/` but in tests): what an administrator deploys for
/// every user. Written only by root. `env` gives the overrides the hosts honour.
pub fn system_candidates(
    root: &Path,
    env: impl Fn(&str) -> Option<OsString>,
) -> Vec<(Host, PathBuf)> {
    let r = |p: &str| root.join(p);
    let file = |var: &str, default: &str| {
        env(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| r(default))
    };
    dedup(vec![
        // Claude Code's managed servers (the only ones loaded when present):
        // https://code.claude.com/docs/en/managed-mcp
        (Host::ClaudeCode, r("etc/claude-code/managed-mcp.json")),
        // https://geminicli.com/docs/reference/configuration#settings-files
        (
            Host::GeminiCli,
            file(
                "GEMINI_CLI_SYSTEM_SETTINGS_PATH",
                "etc/gemini-cli/settings.json",
            ),
        ),
        (
            Host::GeminiCli,
            file(
                "GEMINI_CLI_SYSTEM_DEFAULTS_PATH",
                "etc/gemini-cli/system-defaults.json",
            ),
        ),
        // https://qwenlm.github.io/qwen-code-docs/en/cli/configuration-v1
        (
            Host::QwenCode,
            file(
                "QWEN_CODE_SYSTEM_SETTINGS_PATH",
                "etc/qwen-code/settings.json",
            ),
        ),
        (
            Host::QwenCode,
            file(
                "QWEN_CODE_SYSTEM_DEFAULTS_PATH",
                "etc/qwen-code/system-defaults.json",
            ),
        ),
        // https://opencode.ai/docs/config/#locations
        (Host::OpenCode, r("etc/opencode/opencode.json")),
        (Host::OpenCode, r("etc/opencode/opencode.jsonc")),
    ])
}

/// The directories in `dir`, sorted (none if it does not exist).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// The `*.json` files in `dir`, sorted.
fn json_files(dir: &Path) -> impl Iterator<Item = PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
        .collect();
    v.sort();
    v.into_iter()
}

/// A path listed twice (home given as a project dir, `CODEX_HOME=~/.codex`) is scanned once.
fn dedup(mut v: Vec<(Host, PathBuf)>) -> Vec<(Host, PathBuf)> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|(_, p)| seen.insert(p.clone()));
    v
}

/// Continue's block files: every `*.yaml`, `*.yml` and `*.json` in `dir`
/// (https://docs.continue.dev/customize/deep-dives/mcp: "place them in
/// `.continue/mcpServers`"; JSON files copied from Claude Desktop, Cursor or Cline work too).
fn mcp_blocks(dir: &Path) -> Vec<(Host, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        })
        .collect();
    files.sort();
    files.into_iter().map(|p| (Host::Continue, p)).collect()
}
