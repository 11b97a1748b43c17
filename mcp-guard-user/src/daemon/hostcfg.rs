//! Watching agent host configs: a stdio server entry that does not launch through
//! `mcp-guard wrap` (the host wrote its config back, a user added one) is reported, and
//! with `host_configs = "rewrap"` wrapped again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::Daemon;
use super::config::HostConfigs;
use crate::hosts::{self, Transport};

#[derive(Default)]
pub struct Watch {
    /// (file, server name, command) already reported.
    reported: HashSet<(PathBuf, String, String)>,
}

impl Daemon {
    /// The name an agent host's config gives the server `pid` belongs to: the entry that
    /// launched the host's child above (or at) `pid`. Policy rules name servers so.
    pub(super) fn config_name(&self, pid: u32, host: u32) -> Option<String> {
        // The host's direct child on the way up from `pid`.
        let mut child = pid;
        for _ in 0..64 {
            let parent = super::procs::parent(child)?;
            if parent == host {
                break;
            }
            child = parent;
        }
        let cmdline = self
            .launched
            .get(&child)
            .cloned()
            .unwrap_or_else(|| super::procs::cmdline(child));
        let uid = crate::identity::principal_of(host as i32)?.uid;
        let home = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()?
            .dir;
        let cwd = std::fs::read_link(format!("/proc/{host}/cwd")).ok();
        hosts::scan(&home, &cwd.into_iter().collect::<Vec<_>>())
            .into_iter()
            .flat_map(|f| f.servers)
            .find(|s| {
                s.transport == Transport::Stdio
                    && s.command
                        .as_deref()
                        .is_some_and(|c| super::procs::launched_by(&cmdline, c, &s.args))
            })
            .map(|s| s.name)
    }

    pub(super) fn check_host_configs(&mut self) {
        let mode = self.cfg.host_configs;
        if mode == HostConfigs::Off {
            return;
        }
        // (home, owner uid when known)
        let homes: Vec<(PathBuf, Option<u32>)> = if self.cfg.homes.is_empty() {
            hosts::user_homes()
                .map(|v| v.into_iter().map(|(_, uid, h)| (h, Some(uid))).collect())
                .unwrap_or_default()
        } else {
            self.cfg.homes.iter().map(|h| (h.clone(), None)).collect()
        };
        let bin = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "/usr/bin/mcp-guard".into());
        for (home, uid) in homes {
            for found in hosts::scan(&home, &[]) {
                let unwrapped: Vec<(String, String)> = found
                    .servers
                    .iter()
                    .filter(|s| s.transport == Transport::Stdio && !s.wrapped)
                    .map(|s| (s.name.clone(), s.command.clone().unwrap_or_default()))
                    .collect();
                if unwrapped.is_empty() {
                    continue;
                }
                let rewrapped = mode == HostConfigs::Rewrap
                    && self.rewrap(&found.path, found.host, &bin, &home, uid);
                for (name, command) in unwrapped {
                    let key = (found.path.clone(), name.clone(), command.clone());
                    if !rewrapped && !self.host_cfg.reported.insert(key) {
                        continue;
                    }
                    self.alert(None, serde_json::json!({
                        "alert": if rewrapped { "host_config_rewrapped" } else { "host_config_unwrapped" },
                        "file": found.path,
                        "host": found.host.slug(),
                        "server": name,
                        "command": crate::identity::redact_text(&command),
                    }));
                }
            }
        }
    }

    /// Wraps a config's stdio entries again; false (and a warning) if it could not.
    fn rewrap(
        &self,
        path: &Path,
        host: hosts::Host,
        bin: &str,
        home: &Path,
        uid: Option<u32>,
    ) -> bool {
        if uid.is_some_and(|u| !hosts::owned_by(path, u, home)) {
            tracing::warn!(path = %path.display(), "host config outside its user's home or not theirs; not rewritten");
            return false;
        }
        match hosts::wrap_file(path, host, bin).and_then(|edit| hosts::apply(&edit)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot rewrap a host config");
                false
            }
        }
    }
}
