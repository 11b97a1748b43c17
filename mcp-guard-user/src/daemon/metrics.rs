//! The daemon's metrics, in the Prometheus text format, served on `metrics` (a local address
//! in the configuration): decisions by server, tool and decision; alerts by kind; live
//! sessions; events lost; how long commits take to be on disk.
//!
//! Counted from what the audit log writes (an [`audit::Tap`]), so the figures and the
//! records are one source: every decision a managed shim or the observer records counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::audit::{self, Kind, Record};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    server: String,
    tool: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    alert: String,
}

pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    sessions: Gauge,
    lost: Counter,
    lost_seen: AtomicU64,
    commits: Histogram,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("mcp_guard");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Requests judged, by server, tool and decision",
            decisions.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register("alerts", "Alerts raised, by kind", alerts.clone());
        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "MCP sessions the daemon follows now (observed and managed)",
            sessions.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "lost_events",
            "Kernel events lost (ring buffer full or sequence gaps)",
            lost.clone(),
        );
        // 50 us to about 1.6 s.
        let commits = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register(
            "audit_commit_seconds",
            "Time for a commit to be written, signed and (durable) on disk",
            commits.clone(),
        );
        Arc::new(Metrics {
            registry,
            decisions,
            alerts,
            sessions,
            lost,
            lost_seen: AtomicU64::new(0),
            commits,
        })
    }

    /// The live session count and the cumulative loss count, from the daemon's status.
    pub fn update(&self, sessions: usize, lost_total: u64) {
        self.sessions.set(sessions as i64);
        let before = self.lost_seen.swap(lost_total, Ordering::Relaxed);
        if lost_total > before {
            self.lost.inc_by(lost_total - before);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The name a record's server goes by.
fn server_name(r: &Record) -> String {
    r.ctx
        .as_ref()
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c.server.get()).ok())
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

impl audit::Tap for Metrics {
    fn written(&self, records: &[Record]) {
        for r in records {
            match r.kind {
                Kind::Request | Kind::ServerRequest => {
                    let Some(decision) = r.decision else { continue };
                    let decision = serde_json::to_value(decision)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    self.decisions
                        .get_or_create(&DecisionLabels {
                            server: server_name(r),
                            tool: r.tool.clone().unwrap_or_default(),
                            decision,
                        })
                        .inc();
                }
                Kind::Alert => {
                    let alert = r
                        .detail
                        .as_ref()
                        .and_then(|d| d.get("alert"))
                        .and_then(|a| a.as_str())
                        .unwrap_or("unknown")
                        .to_owned();
                    self.alerts.get_or_create(&AlertLabels { alert }).inc();
                }
                _ => {}
            }
        }
    }

    fn committed(&self, took: Duration) {
        self.commits.observe(took.as_secs_f64());
    }
}

/// Answers `GET /metrics` on `listener` until the task is dropped; anything else is 404.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // The request head, bounded; a client that sends nothing is dropped.
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let ok = head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?");
            let (status, body) = if ok {
                ("200 OK", metrics.render())
            } else {
                (
                    "404 Not Found",
                    "only /metrics is served here\n".to_string(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Tap as _;

    #[test]
    fn decisions_alerts_and_losses_are_counted() {
        let m = Metrics::new();
        let ctx = crate::audit::tests::ctx();
        let deny = || {
            let mut r = Record::new(Kind::Request, &ctx);
            r.decision = Some(crate::audit::Decision::Deny);
            r.tool = Some("write_file".into());
            r
        };
        let alert = Record::alert(
            &ctx,
            &crate::audit::Alert::PolicyReloadFailed {
                in_force: "x".into(),
            },
        );
        let response = Record::response(&ctx);
        m.written(&[deny(), deny(), alert, response]);
        m.update(3, 5);
        m.update(3, 7);
        m.committed(Duration::from_micros(120));
        let text = m.render();
        assert!(
            text.contains(
                "mcp_guard_decisions_total{server=\"t\",tool=\"write_file\",decision=\"deny\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("mcp_guard_alerts_total{alert=\"policy_reload_failed\"} 1"),
            "{text}"
        );
        assert!(text.contains("mcp_guard_sessions 3"), "{text}");
        assert!(text.contains("mcp_guard_lost_events_total 7"), "{text}");
        assert!(
            text.contains("mcp_guard_audit_commit_seconds_count 1"),
            "{text}"
        );
    }
}
