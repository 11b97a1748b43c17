//! `mcp-guard audit forward`: sends audit records to a SIEM over syslog, or to an
//! OpenTelemetry collector over OTLP/HTTP, at least once.
//!
//! The audit file is the source of truth. The forwarder reads it from a persisted cursor
//! (file identity, byte offset, last seq and hash), sends each record as an RFC 5424
//! message whose structured data carries the record's `seq` (for deduplication), and moves
//! the cursor only past records that are safely with the receiver:
//!
//! - after a batch is written, it waits until the peer has acknowledged every byte
//!   (`SIOCOUTQ` is 0; for a unix stream socket, until the peer has read them);
//! - an acknowledged batch is committed only after `--settle-ms` more, and only if the
//!   connection is still up then: a receiver that dies with acknowledged bytes still
//!   unread in its socket buffer resets the connection, and that batch is sent again;
//! - on any failure (connect, write, reset, no acknowledgement in time) the connection is
//!   dropped and sending resumes from the last committed position.
//!
//! So a record is sent again only if its connection failed before it was committed:
//! once per outage, at most. Without application-level acknowledgements (syslog over TCP
//! has none) a receiver that acknowledges, reads, and then loses records in its own
//! memory more than `--settle-ms` later is beyond what the sender can see.
//!
//! OTLP (`--to http://...`, see [`otlp`]) has application-level acknowledgements: a batch
//! is committed as soon as the collector has answered 2xx to its logs and its spans, with
//! no settling. Retryable failures (no connection, timeouts, 429, 502, 503, 504, with
//! `Retry-After` honoured) resend from the last committed record after a back-off; any
//! other answer is a refusal, which ends a run without `--follow` and is retried, loudly,
//! with it: records are never skipped.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod cursor;
pub mod ocsf;
pub mod otlp;
pub mod source;
pub mod syslog;

use cursor::Cursor;
use source::{Entry, Source};
use syslog::{Facility, Header, Target, Transport};

/// Records read and sent per batch (the peer's acknowledgement is awaited per batch).
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long the peer may take to acknowledge a batch before the connection counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Shortest time between two cursor saves while records flow (the last one is always saved).
const SAVE_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or write the cursor {}", path.display())]
    Cursor {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cursor {} is unreadable: {reason}", path.display())]
    CursorFormat { path: PathBuf, reason: String },
    #[error("another forwarder is using the cursor {}", path.display())]
    CursorBusy { path: PathBuf },
    #[error("the log file of the committed position is no longer open")]
    LostFile,
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send to the SIEM")]
    Send {
        #[source]
        source: std::io::Error,
    },
    #[error("the SIEM did not acknowledge {bytes} bytes within {after:?}")]
    NotAcked { bytes: u64, after: Duration },
    #[error("the SIEM closed the connection")]
    Closed,
    #[error("cannot post to {url}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url} answered {status} (retryable): {body}")]
    Unavailable {
        url: String,
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("--ca-file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("{url} refused the batch with {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
}

impl Error {
    /// How long the receiver asked to be left alone (`Retry-After`).
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The receiver refused the records themselves: sending them again as they are is
    /// not expected to help, a person has to look.
    fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused { .. })
    }
}

/// Where records go: a syslog receiver, or an OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Syslog(Target),
    Otlp(otlp::Endpoint),
}

impl std::str::FromStr for Destination {
    type Err = syslog::TargetError;

    fn from_str(s: &str) -> Result<Destination, syslog::TargetError> {
        if s.starts_with("http://") || s.starts_with("https://") {
            return otlp::Endpoint::parse(s)
                .map(Destination::Otlp)
                .ok_or_else(|| syslog::TargetError::NoPort {
                    target: s.to_string(),
                    scheme: s.split("://").next().unwrap_or_default().to_string(),
                });
        }
        s.parse().map(Destination::Syslog)
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Syslog(t) => t.fmt(f),
            Destination::Otlp(e) => e.fmt(f),
        }
    }
}

/// The payload of each syslog message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The record's line as written in the log, byte for byte.
    Json,
    /// An OCSF API Activity event (class 6003).
    Ocsf,
}

/// Where and how to forward.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to send: unix:PATH (e.g. unix:/dev/log), udp://HOST:PORT or tcp://HOST:PORT
    /// (syslog); http://HOST:PORT or https://HOST:PORT (OTLP/HTTP; a path is the base that
    /// /v1/logs and /v1/traces are appended to, as with OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    pub to: Destination,
    /// OTLP: a header for every request, e.g. `authorization=Bearer TOKEN` (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<otlp::Header>,
    /// OTLP over https: the CA certificates (PEM) the collector's certificate must chain
    /// to, instead of the built-in Mozilla roots (for a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// OTLP: how long one request may take before it counts as failed.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Syslog: the message payload, the record as written or mapped to OCSF.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Where the position reached is kept [default: FILE.cursor].
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<PathBuf>,
    /// Keep running: send new records as they are written, across log rotation and SIEM
    /// outages. Without it: send what is there, then exit.
    #[arg(long)]
    pub follow: bool,
    /// Syslog: facility.
    #[arg(long, value_enum, default_value_t = Facility::Authpriv)]
    pub facility: Facility,
    /// Syslog: APP-NAME of the messages.
    #[arg(long, default_value = "mcp-guard")]
    pub app_name: String,
    /// HOSTNAME of the syslog messages, `host.name` of OTLP's resource [default: this
    /// host's name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Syslog: how long acknowledged records must stay acknowledged on a live connection
    /// before the cursor moves past them (OTLP answers each batch: nothing to settle).
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub settle_ms: u64,
    /// With --follow: how often the log is checked for new records.
    #[arg(long, default_value_t = 250, value_name = "MS")]
    pub poll_ms: u64,
    /// The audit log to read.
    pub file: PathBuf,
}

/// Forwards records; returns the exit status: 0 when everything was sent (without
/// --follow), 1 when the SIEM could not be reached, failed or refused records (the cursor
/// keeps what was committed, a later run resumes there).
pub fn run(args: &Args) -> anyhow::Result<i32> {
    if matches!(args.to, Destination::Otlp(_)) && args.format == Format::Ocsf {
        anyhow::bail!(
            "--format ocsf is for syslog; OTLP log records carry the record as written, with attributes"
        );
    }
    let cursor_path = args
        .cursor
        .clone()
        .unwrap_or_else(|| cursor::default_path(&args.file));
    let _lock = cursor::lock(&cursor_path)?;
    let saved = cursor::load(&cursor_path)?;
    let mut exclude = cursor::companions(&cursor_path).to_vec();
    exclude.push(cursor_path.clone());
    let poll = Duration::from_millis(args.poll_ms.max(1));
    let source = loop {
        match Source::open(&args.file, saved.as_ref(), &exclude) {
            Err(Error::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && args.follow =>
            {
                std::thread::sleep(poll);
            }
            res => break res?,
        }
    };
    let hostname = args.hostname.clone().unwrap_or_else(syslog::hostname);
    let mut otlp = match &args.to {
        Destination::Otlp(endpoint) => Some(Otlp {
            client: otlp::Client::new(
                endpoint.clone(),
                args.headers.clone(),
                Duration::from_millis(args.timeout_ms.max(1)),
                args.ca_file.as_deref().map(otlp::load_roots).transpose()?,
            ),
            resource: otlp::resource(&hostname),
            spans: otlp::Spans::default(),
        }),
        Destination::Syslog(_) => None,
    };
    if let Some(o) = &mut otlp
        && saved.is_some()
    {
        o.spans.recover(&source.read_before(otlp::RECOVER_BYTES)?);
        tracing::debug!(
            pending = o.spans.pending(),
            "tools/call requests sent by an earlier run and not answered yet"
        );
    }
    let mut fwd = Forwarder {
        otlp,
        header: Header {
            facility: args.facility,
            hostname,
            app_name: args.app_name.clone(),
            procid: std::process::id().to_string(),
        },
        committed: source.position().clone(),
        source,
        saved,
        saved_at: None,
        cursor_path,
        sink: None,
        inflight: VecDeque::new(),
        // OTLP answers each batch: nothing to settle.
        settle: match args.to {
            Destination::Otlp(_) => Duration::ZERO,
            Destination::Syslog(_) => Duration::from_millis(args.settle_ms),
        },
        poll,
        target: args.to.clone(),
        format: args.format,
        follow: args.follow,
    };
    Ok(fwd.run()?)
}

/// The OTLP side of a forwarder.
struct Otlp {
    client: otlp::Client,
    resource: opentelemetry_proto::tonic::resource::v1::Resource,
    spans: otlp::Spans,
}

struct Forwarder {
    header: Header,
    target: Destination,
    /// Set when the target is an OTLP collector.
    otlp: Option<Otlp>,
    format: Format,
    follow: bool,
    settle: Duration,
    poll: Duration,
    source: Source,
    sink: Option<Transport>,
    /// Sent and acknowledged, waiting to settle: the position after each batch, and when
    /// it was acknowledged.
    inflight: VecDeque<(Cursor, Instant)>,
    /// Everything up to here is with the receiver; a failure resumes from here.
    committed: Cursor,
    cursor_path: PathBuf,
    saved: Option<Cursor>,
    saved_at: Option<Instant>,
}

impl Forwarder {
    fn run(&mut self) -> Result<i32, Error> {
        let mut backoff = BACKOFF_MIN;
        loop {
            if let Err(e) = self.commit_settled() {
                let e = self.fail(e)?;
                tracing::warn!(error = %e, "connection to the SIEM lost; resending from the last committed record");
            }
            self.save(false)?;
            let batch = self.source.next_batch(MAX_BATCH, MAX_BATCH_BYTES)?;
            if batch.is_empty() {
                if self.inflight.is_empty() {
                    self.save(true)?;
                    if !self.follow {
                        return Ok(0);
                    }
                }
                let wait = match self.inflight.front() {
                    Some((_, at)) => (*at + self.settle)
                        .saturating_duration_since(Instant::now())
                        .min(self.poll),
                    None => self.poll,
                };
                std::thread::sleep(wait.max(Duration::from_millis(1)));
                continue;
            }
            match self.send(&batch) {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    let e = self.fail(e)?;
                    if !self.follow {
                        self.save(true)?;
                        eprintln!(
                            "mcp-guard: {}: {}; a later run resumes after seq {}",
                            self.target,
                            chain(&e),
                            self.committed.seq
                        );
                        return Ok(1);
                    }
                    let mut wait = backoff.max(e.retry_after().unwrap_or_default());
                    if e.is_refusal() {
                        // Nothing is skipped: the same records are offered again until the
                        // receiver takes them, once someone fixes what it objects to.
                        wait = wait.max(BACKOFF_MAX);
                        tracing::error!(error = %chain(&e), target = %self.target, after_seq = self.committed.seq, retry_in = ?wait, "the receiver refuses records; nothing is skipped: retrying until it takes them");
                    } else {
                        tracing::warn!(error = %chain(&e), target = %self.target, retry_in = ?wait, "SIEM unreachable; will resend from the last committed record");
                    }
                    std::thread::sleep(wait);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Sends a batch and waits for the peer's acknowledgement.
    fn send(&mut self, batch: &[Entry]) -> Result<(), Error> {
        let Some(last) = batch.last().map(|e| e.pos.clone()) else {
            return Ok(());
        };
        if batch.iter().all(|e| e.record.is_none()) {
            self.inflight.push_back((last, Instant::now()));
            return Ok(());
        }
        if let Some(otlp) = &mut self.otlp {
            let mut logs = Vec::with_capacity(batch.len());
            let mut spans = Vec::new();
            for rec in batch.iter().filter_map(|e| e.record.as_ref()) {
                logs.push(otlp::log_record(&rec.value, &rec.bytes));
                spans.extend(otlp.spans.observe(&rec.value));
            }
            let payload = otlp::encode(&otlp.resource, logs, spans);
            otlp.client.send(&payload)?;
            tracing::debug!(
                records = payload.records,
                spans = payload.spans,
                through_seq = last.seq,
                "batch accepted by the collector"
            );
            // The 2xx answer is the acknowledgement: nothing to settle.
            self.inflight.push_back((last, Instant::now()));
            return Ok(());
        }
        let Destination::Syslog(target) = &self.target else {
            return Ok(());
        };
        let mut sink = match self.sink.take() {
            Some(mut s) => {
                s.check_alive()?;
                s
            }
            None => {
                let s = Transport::connect(target)?;
                tracing::info!(target = %self.target, after_seq = self.committed.seq, "connected to the SIEM");
                s
            }
        };
        for rec in batch.iter().filter_map(|e| e.record.as_ref()) {
            let msg = match self.format {
                Format::Json => self.header.message(&rec.value, &rec.bytes),
                Format::Ocsf => {
                    let event = ocsf::event(&rec.value, &self.header.hostname);
                    self.header
                        .message(&rec.value, event.to_string().as_bytes())
                }
            };
            sink.send(&msg)?;
        }
        sink.wait_acked(ACK_TIMEOUT)?;
        self.sink = Some(sink);
        self.inflight.push_back((last, Instant::now()));
        Ok(())
    }

    /// Commits the batches acknowledged at least `settle` ago, if the connection is still up.
    fn commit_settled(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let due = self
            .inflight
            .iter()
            .take_while(|(_, at)| now >= *at + self.settle)
            .count();
        if due == 0 {
            return Ok(());
        }
        if let Some(sink) = &mut self.sink {
            sink.check_alive()?;
        }
        if let Some((pos, _)) = self.inflight.drain(..due).next_back() {
            self.committed = pos;
            self.source.forget_before(&self.committed);
            if let Some(otlp) = &mut self.otlp {
                otlp.spans.committed(self.committed.seq);
            }
        }
        Ok(())
    }

    /// Drops the connection and goes back to the last committed position; returns `e`.
    fn fail(&mut self, e: Error) -> Result<Error, Error> {
        self.sink = None;
        self.inflight.clear();
        self.source.rewind(&self.committed)?;
        Ok(e)
    }

    /// Saves the committed position if it moved (at most every [`SAVE_INTERVAL`] unless `now`).
    fn save(&mut self, now: bool) -> Result<(), Error> {
        if self.saved.as_ref() == Some(&self.committed)
            || (self.saved.is_none() && self.committed.offset == 0)
        {
            return Ok(());
        }
        if !now && self.saved_at.is_some_and(|at| at.elapsed() < SAVE_INTERVAL) {
            return Ok(());
        }
        cursor::save(&self.cursor_path, &self.committed)?;
        tracing::debug!(
            seq = self.committed.seq,
            offset = self.committed.offset,
            "cursor saved"
        );
        self.saved = Some(self.committed.clone());
        self.saved_at = Some(Instant::now());
        Ok(())
    }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
