//! Where each host keeps its config on Linux, as each host documents it.

use std::path::{Path, PathBuf};

use super::Host;

/// Every config path a host may use: user-level under `home`, then the
/// project-level ones in each of `project_dirs`. Paths may not exist.
pub fn candidates(home: &Path, project_dirs: &[PathBuf]) -> Vec<(Host, PathBuf)> {
    let h = |p: &str| home.join(p);
    let cline = "globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json";
    let mut v = vec![
        (
            Host::ClaudeDesktop,
            h(".config/Claude/claude_desktop_config.json"),
        ),
        (
            Host::ClaudeDesktop,
            h(".config/claude/claude_desktop_config.json"),
        ),
        (Host::ClaudeCode, h(".claude.json")),
        (Host::Cursor, h(".cursor/mcp.json")),
        (Host::VsCode, h(".config/Code/User/mcp.json")),
        (Host::Cline, h(&format!(".config/Code/User/{cline}"))),
        (Host::Cline, h(&format!(".config/Cursor/User/{cline}"))),
        (Host::Windsurf, h(".codeium/windsurf/mcp_config.json")),
        (Host::GeminiCli, h(".gemini/settings.json")),
        (Host::Zed, h(".config/zed/settings.json")),
        (Host::Codex, h(".codex/config.toml")),
        // https://docs.continue.dev/reference#mcpservers; block files: `mcp_blocks`.
        (Host::Continue, h(".continue/config.yaml")),
        (Host::Goose, h(".config/goose/config.yaml")),
        (Host::LmStudio, h(".lmstudio/mcp.json")),
        (Host::OpenCode, h(".config/opencode/opencode.json")),
        (Host::Kiro, h(".kiro/settings/mcp.json")),
    ];
    v.extend(mcp_blocks(&h(".continue/mcpServers")));
    for p in project_dirs {
        v.extend(mcp_blocks(&p.join(".continue/mcpServers")));
        v.push((Host::ClaudeCode, p.join(".mcp.json")));
        v.push((Host::Cursor, p.join(".cursor/mcp.json")));
        v.push((Host::VsCode, p.join(".vscode/mcp.json")));
        v.push((Host::GeminiCli, p.join(".gemini/settings.json")));
    }
    // A path listed twice (home given as a project dir) is scanned once.
    // (Continue's block files are listed from their directory, sorted.)
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
