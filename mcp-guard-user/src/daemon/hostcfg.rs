//! Watching agent host configs: a stdio server entry that does not launch through
//! `mcp-guard wrap` (the host wrote its config back, a user added one) is reported, and
//! with `host_configs = "rewrap"` wrapped again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::config::{Config, HostConfigs};
use super::world::Procs;
use crate::audit::Alert;
use crate::hosts::{self, Transport};

/// The name the config of agent host `host` (its user's files and its working directory's)
/// gives the stdio server entry that launched `launched`. Policy rules name servers so.
pub fn config_name(procs: &impl Procs, host: u32, launched: &[String]) -> Option<String> {
    let uid = procs.principal(host)?.uid;
    let home = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()?
        .dir;
    let cwd = procs.cwd(host).map(PathBuf::from);
    hosts::scan(&home, &cwd.into_iter().collect::<Vec<_>>())
        .into_iter()
        .flat_map(|f| f.servers)
        .find(|s| {
            s.transport == Transport::Stdio
                && s.command
                    .as_deref()
                    .is_some_and(|c| super::procs::launched_by(launched, c, &s.args))
        })
        .map(|s| s.name)
}

/// Checks the agent host configs of every user (or of the configured homes); runs on the
/// scanner thread, away from the one that releases gated servers.
pub struct Check {
    mode: HostConfigs,
    homes: Vec<PathBuf>,
    /// (file, server name, command) already reported.
    reported: HashSet<(PathBuf, String, String)>,
}

impl Check {
    pub fn new(cfg: &Config) -> Check {
        Check {
            mode: cfg.host_configs,
            homes: cfg.homes.clone(),
            reported: HashSet::new(),
        }
    }

    /// Alerts for stdio entries that do not launch through the shim, each once (and each
    /// time one is wrapped again, with `host_configs = "rewrap"`).
    pub fn run(&mut self) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let mode = self.mode;
        if mode == HostConfigs::Off {
            return alerts;
        }
        // (home, owner uid when known)
        let homes: Vec<(PathBuf, Option<u32>)> = if self.homes.is_empty() {
            hosts::user_homes()
                .map(|v| v.into_iter().map(|(_, uid, h)| (h, Some(uid))).collect())
                .unwrap_or_default()
        } else {
            self.homes.iter().map(|h| (h.clone(), None)).collect()
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
                    && rewrap(&found.path, found.host, &bin, &home, uid);
                for (name, command) in unwrapped {
                    let key = (found.path.clone(), name.clone(), command.clone());
                    if !rewrapped && !self.reported.insert(key) {
                        continue;
                    }
                    let (file, host) = (found.path.clone(), found.host.slug());
                    let command = crate::identity::redact_text(&command);
                    alerts.push(if rewrapped {
                        Alert::HostConfigRewrapped {
                            file,
                            host,
                            server: name,
                            command,
                        }
                    } else {
                        Alert::HostConfigUnwrapped {
                            file,
                            host,
                            server: name,
                            command,
                        }
                    });
                }
            }
        }
        alerts
    }
}

/// Wraps a config's stdio entries again; false (and a warning) if it could not.
fn rewrap(path: &Path, host: hosts::Host, bin: &str, home: &Path, uid: Option<u32>) -> bool {
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
