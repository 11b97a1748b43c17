//! The daemon's configuration file (`/etc/mcp-guard/config.toml`); every key optional.
//! The shipped file, `config/config.toml`, documents each key with its default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::audit::Durability;

/// Where the daemon reads its configuration when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/mcp-guard/config.toml";

/// Agent hosts watched by default: comm, executable name, or script name.
pub const DEFAULT_HOSTS: &[&str] = &[
    "claude",
    "Claude",
    "claude-desktop",
    "cursor",
    "Cursor",
    "code",
    "code-insiders",
    "codium",
    "windsurf",
    "Windsurf",
    "gemini",
    "codex",
    "zed",
    "zed-editor",
    "lm-studio",
    "LM Studio",
    "kiro",
    "opencode",
    "goose",
    "cline",
];

/// The default per-message limit.
pub const DEFAULT_MAX_MESSAGE: usize = 4 << 20;

/// The smallest per-message limit: the observer must see 1 MiB messages whole.
pub const MIN_MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: PathBuf,
    pub audit: PathBuf,
    pub audit_key: PathBuf,
    pub durability: Durability,
    pub run_dir: PathBuf,
    pub bpf_object: Option<PathBuf>,
    pub hosts: Vec<String>,
    pub detect: Detect,
    pub max_message: usize,
    pub ring_bytes: u32,
    pub rescan_ms: u64,
    /// What the daemon does about agent host configs that launch a stdio server without
    /// `mcp-guard wrap`.
    pub host_configs: HostConfigs,
    /// Homes whose host configs are watched; empty: every user's (root and uid ≥ 1000).
    pub homes: Vec<PathBuf>,
    /// Where the Prometheus metrics are served (`metrics = "127.0.0.1:9464"`); none: off.
    pub metrics: Option<std::net::SocketAddr>,
    /// The audit log is rotated past this size (bytes; 0: never).
    pub max_bytes: u64,
    /// Rotated audit logs kept: the newest `keep_rotated` (0: all), none older than
    /// `keep_days` days (0: no age limit).
    pub keep_rotated: usize,
    pub keep_days: u64,
    /// Sign every decision's record before the decision takes effect, rather than within
    /// `audit::SEAL_WITHIN` (see `audit::Options::sign_commits`).
    pub sign_commits: bool,
    /// `[otlp]`: the daemon's own audit log is exported to an OpenTelemetry collector.
    pub otlp: Option<Otlp>,
}

/// Where the daemon's cursor of the OTLP export is kept when `[otlp] cursor` is not set.
pub const DEFAULT_OTLP_CURSOR: &str = "/var/lib/mcp-guard/otlp.cursor";

/// `[otlp]`: what `mcp-guard audit forward --follow --to ENDPOINT` would do, on a thread
/// of the daemon, over its audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    pub endpoint: crate::audit::forward::otlp::Endpoint,
    /// Request headers (collector authentication): `headers = { authorization = "..." }`.
    pub headers: Vec<crate::audit::forward::otlp::Header>,
    pub timeout_ms: u64,
    /// The CA certificates (PEM) an https collector's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// The forwarder's position in the log, in the daemon's state directory by default.
    pub cursor: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: String,
    headers: Option<std::collections::BTreeMap<String, String>>,
    timeout_ms: Option<u64>,
    ca_file: Option<PathBuf>,
    cursor: Option<PathBuf>,
}

/// `detect`: how stdio MCP sessions are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Detect {
    /// By what a process reads: every new program with pipes or sockets for stdin and
    /// stdout is probed; the listed hosts' children are captured as well.
    Any,
    /// Only processes the listed agent hosts start.
    Hosts,
}

/// `host_configs`: watch agent host configs for unwrapped stdio servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostConfigs {
    Off,
    /// An alert record per unwrapped entry (once per entry and command).
    Alert,
    /// Wrap the entry again (as `mcp-guard hosts wrap` would) and record an alert.
    Rewrap,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: PathBuf::from("/etc/mcp-guard/policy.toml"),
            audit: PathBuf::from("/var/log/mcp-guard/audit.jsonl"),
            audit_key: PathBuf::from("/var/lib/mcp-guard/audit.key"),
            durability: Durability::Durable,
            run_dir: PathBuf::from("/run/mcp-guard"),
            bpf_object: None,
            hosts: DEFAULT_HOSTS.iter().map(|s| s.to_string()).collect(),
            detect: Detect::Any,
            max_message: DEFAULT_MAX_MESSAGE,
            ring_bytes: crate::ebpf::DEFAULT_RING_BYTES,
            rescan_ms: 2000,
            host_configs: HostConfigs::Alert,
            homes: Vec::new(),
            metrics: None,
            max_bytes: crate::audit::DEFAULT_MAX_BYTES,
            keep_rotated: 10,
            keep_days: 0,
            sign_commits: false,
            otlp: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    policy: Option<PathBuf>,
    audit: Option<PathBuf>,
    audit_key: Option<PathBuf>,
    durability: Option<String>,
    run_dir: Option<PathBuf>,
    bpf_object: Option<PathBuf>,
    hosts: Option<Vec<String>>,
    detect: Option<Detect>,
    max_message: Option<usize>,
    ring_bytes: Option<u32>,
    rescan_ms: Option<u64>,
    host_configs: Option<HostConfigs>,
    homes: Option<Vec<PathBuf>>,
    metrics: Option<String>,
    max_bytes: Option<u64>,
    keep_rotated: Option<usize>,
    keep_days: Option<u64>,
    sign_commits: Option<bool>,
    otlp: Option<RawOtlp>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path`; a missing file at the default path means the defaults, a missing
    /// file named on the command line is an error.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        let (path, named) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path),
            Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(Error::Read { path, source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        let invalid = |message: String| Error::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let d = Config::default();
        let durability = match raw.durability {
            None => d.durability,
            Some(s) => <Durability as clap::ValueEnum>::from_str(&s, false).map_err(|_| {
                invalid(format!(
                    "durability: `{s}` is neither `durable` nor `page-cache`"
                ))
            })?,
        };
        let max_message = raw.max_message.unwrap_or(d.max_message);
        if max_message < MIN_MAX_MESSAGE {
            return Err(invalid(format!(
                "max_message: {max_message} is below the minimum of {MIN_MAX_MESSAGE} bytes"
            )));
        }
        let ring_bytes = raw.ring_bytes.unwrap_or(d.ring_bytes);
        if !ring_bytes.is_power_of_two() || ring_bytes < 4096 {
            return Err(invalid(format!(
                "ring_bytes: {ring_bytes} is not a power of two of at least 4096"
            )));
        }
        let hosts = raw.hosts.unwrap_or(d.hosts);
        let metrics = match raw.metrics.as_deref() {
            None | Some("") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(format!(
                    "metrics: `{a}` is not an address and port (e.g. 127.0.0.1:9464)"
                ))
            })?),
        };
        let otlp = match raw.otlp {
            None => None,
            Some(o) => {
                let endpoint =
                    crate::audit::forward::otlp::Endpoint::parse(&o.endpoint).ok_or_else(|| {
                        invalid(format!(
                            "otlp.endpoint: `{}` is not an http:// or https:// URL (e.g. http://collector:4318)",
                            o.endpoint
                        ))
                    })?;
                let mut headers = Vec::new();
                for (k, v) in o.headers.unwrap_or_default() {
                    headers.push(
                        format!("{k}={v}")
                            .parse()
                            .map_err(|e| invalid(format!("otlp.headers: {e}")))?,
                    );
                }
                let timeout_ms = o.timeout_ms.unwrap_or(10_000);
                if timeout_ms == 0 {
                    return Err(invalid("otlp.timeout_ms: must be more than 0".into()));
                }
                Some(Otlp {
                    endpoint,
                    headers,
                    timeout_ms,
                    ca_file: o.ca_file,
                    cursor: o
                        .cursor
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_OTLP_CURSOR)),
                })
            }
        };
        Ok(Config {
            otlp,
            policy: raw.policy.unwrap_or(d.policy),
            audit: raw.audit.unwrap_or(d.audit),
            audit_key: raw.audit_key.unwrap_or(d.audit_key),
            durability,
            run_dir: raw.run_dir.unwrap_or(d.run_dir),
            bpf_object: raw.bpf_object,
            hosts,
            detect: raw.detect.unwrap_or(d.detect),
            max_message,
            ring_bytes,
            rescan_ms: raw.rescan_ms.unwrap_or(d.rescan_ms),
            host_configs: raw.host_configs.unwrap_or(d.host_configs),
            homes: raw.homes.unwrap_or(d.homes),
            metrics,
            max_bytes: raw.max_bytes.unwrap_or(d.max_bytes),
            keep_rotated: raw.keep_rotated.unwrap_or(d.keep_rotated),
            keep_days: raw.keep_days.unwrap_or(d.keep_days),
            sign_commits: raw.sign_commits.unwrap_or(d.sign_commits),
        })
    }

    /// What rotated audit logs are kept.
    pub fn retention(&self) -> crate::audit::Retention {
        crate::audit::Retention {
            keep_files: self.keep_rotated,
            keep_age: (self.keep_days > 0)
                .then(|| std::time::Duration::from_secs(self.keep_days * 86400)),
        }
    }

    /// The status file `mcp-guard status` reads.
    pub fn status_path(&self) -> PathBuf {
        self.run_dir.join("status.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_states_the_defaults() {
        let text = include_str!("../../../config/config.toml");
        let c = Config::parse(text, Path::new("config.toml")).expect("shipped config parses");
        let d = Config::default();
        assert_eq!(c.policy, d.policy);
        assert_eq!(c.audit, d.audit);
        assert_eq!(c.audit_key, d.audit_key);
        assert_eq!(c.run_dir, d.run_dir);
        assert_eq!(c.hosts, d.hosts);
        assert_eq!(c.detect, d.detect);
        assert_eq!(
            (c.max_message, c.ring_bytes, c.rescan_ms),
            (d.max_message, d.ring_bytes, d.rescan_ms)
        );
        assert_eq!(c.durability, d.durability);
        assert_eq!((c.host_configs, c.homes), (d.host_configs, d.homes));
        assert_eq!(
            (c.max_bytes, c.keep_rotated, c.keep_days, c.metrics),
            (d.max_bytes, d.keep_rotated, d.keep_days, d.metrics)
        );
        assert_eq!(c.otlp, d.otlp);
    }

    #[test]
    fn otlp_table_is_read() {
        let c = Config::parse(
            "[otlp]\nendpoint = \"http://collector:4318/\"\nheaders = { authorization = \"Bearer x\" }\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(o.endpoint.logs(), "http://collector:4318/v1/logs");
        assert_eq!(o.headers[0].name, "authorization");
        assert_eq!(o.headers[0].value, "Bearer x");
        assert_eq!(o.timeout_ms, 10_000);
        assert_eq!(o.cursor, PathBuf::from(DEFAULT_OTLP_CURSOR));
        let c = Config::parse(
            "[otlp]\nendpoint = \"https://c/otlp\"\ntimeout_ms = 500\ncursor = \"/tmp/x.cursor\"\nca_file = \"/etc/ca.pem\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(
            (o.timeout_ms, o.cursor),
            (500, PathBuf::from("/tmp/x.cursor"))
        );
        assert_eq!(o.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("max_message = 10", "max_message"),
            ("ring_bytes = 5000", "ring_bytes"),
            ("durability = \"sometimes\"", "durability"),
            ("detect = \"some\"", "detect"),
            ("colour = 1", "unknown field"),
            ("metrics = \"localhost\"", "metrics"),
            ("keep_rotated = -1", "keep_rotated"),
            ("[otlp]\nendpoint = \"tcp://c:4317\"", "otlp.endpoint"),
            (
                "[otlp]\nendpoint = \"http://c:4318\"\nheaders = { \"a b\" = \"x\" }",
                "otlp.headers",
            ),
            (
                "[otlp]\nendpoint = \"http://c:4318\"\ntimeout_ms = 0",
                "otlp.timeout_ms",
            ),
            ("[otlp]\nheaders = {}", "endpoint"),
            (
                "[otlp]\nendpoint = \"http://c:4318\"\nport = 1",
                "unknown field",
            ),
        ] {
            let err = Config::parse(text, Path::new("c.toml"))
                .expect_err(text)
                .to_string();
            assert!(
                err.contains(key) && err.starts_with("c.toml"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn missing_named_file_is_an_error() {
        assert!(Config::load(Some(Path::new("/nonexistent/mcp-guard.toml"))).is_err());
    }
}
