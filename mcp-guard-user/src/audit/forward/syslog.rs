//! Syslog: RFC 5424 messages, framed by RFC 6587 octet counting on streams and one
//! datagram per message otherwise, over a unix socket, UDP or TCP.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Error;

/// Enterprise number in the structured-data id: 32473, the number RFC 5612 reserves for
/// documentation and examples.
pub const SD_ID: &str = "mcpguard@32473";
/// Largest UDP message every receiver is expected to take whole (RFC 5426 section 3.2).
pub const UDP_SAFE_SIZE: usize = 2048;
/// Largest payload of one UDP datagram over IPv4.
pub const UDP_MAX: usize = 65_507;
/// How long a connect or a blocked write may take before the connection counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Syslog facility (RFC 5424 section 6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Facility {
    User,
    Daemon,
    Auth,
    Authpriv,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    fn code(self) -> u8 {
        match self {
            Facility::User => 1,
            Facility::Daemon => 3,
            Facility::Auth => 4,
            Facility::Authpriv => 10,
            Facility::Local0 => 16,
            Facility::Local1 => 17,
            Facility::Local2 => 18,
            Facility::Local3 => 19,
            Facility::Local4 => 20,
            Facility::Local5 => 21,
            Facility::Local6 => 22,
            Facility::Local7 => 23,
        }
    }
}

/// Syslog severity (RFC 5424 section 6.2.1), from what a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Alert = 1,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

impl Severity {
    /// Gaps and alerts are alerts; denials and malformed messages warnings; recoveries
    /// notices; everything else (allowed decisions, responses, sessions) information.
    pub fn of(rec: &Value) -> Severity {
        let kind = rec.get("kind").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "gap" | "alert" => Severity::Alert,
            "malformed" => Severity::Warning,
            "recovery" => Severity::Notice,
            _ if rec.get("decision").and_then(Value::as_str) == Some("deny") => Severity::Warning,
            _ => Severity::Info,
        }
    }
}

/// The header fields that are the same for every message.
#[derive(Debug, Clone)]
pub struct Header {
    pub facility: Facility,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
}

impl Header {
    /// An RFC 5424 message for the record `rec` with `payload` as its MSG.
    pub fn message(&self, rec: &Value, payload: &[u8]) -> Vec<u8> {
        let str_field = |k: &str| rec.get(k).and_then(Value::as_str).unwrap_or_default();
        let pri = u16::from(self.facility.code()) * 8 + Severity::of(rec) as u16;
        let time = str_field("time");
        // RFC 5424 timestamps are RFC 3339 with at most 6 fractional digits: the record's.
        let time = if humantime::parse_rfc3339(time).is_ok() && time.len() <= 32 {
            time
        } else {
            "-"
        };
        let seq = rec.get("seq").and_then(Value::as_u64).unwrap_or_default();
        let mut out = Vec::with_capacity(payload.len() + 200);
        out.extend_from_slice(
            format!(
                "<{pri}>1 {time} {} {} {} {} [{SD_ID} seq=\"{seq}\" session=\"{}\" id=\"{}\"] ",
                header_field(&self.hostname, 255),
                header_field(&self.app_name, 48),
                header_field(&self.procid, 128),
                header_field(str_field("kind"), 32),
                sd_value(str_field("session")),
                sd_value(str_field("id")),
            )
            .as_bytes(),
        );
        // No BOM: the MSG is the record's JSON, byte for byte, which receivers take as is.
        out.extend_from_slice(payload);
        out
    }
}

/// A header field: printable US-ASCII, at most `max` characters; `-` when empty.
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

/// A structured-data parameter value, with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3).
fn sd_value(s: &str) -> String {
    let mut v = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            v.push('\\');
        }
        v.push(c);
    }
    v
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn octet_counted(msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg);
    out
}

/// This machine's host name, for the HOSTNAME field.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket: datagram (like `/dev/log`) or, if the socket is a stream, octet counted.
    Unix(PathBuf),
    Udp(String),
    Tcp(String),
}

/// Why a `--to` target cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("unix: needs a socket path, e.g. unix:/dev/log")]
    NoPath,
    #[error("`{0}`: expected unix:PATH, udp://HOST:PORT or tcp://HOST:PORT")]
    NoScheme(String),
    #[error("`{target}`: expected HOST:PORT after {scheme}://")]
    NoPort { target: String, scheme: String },
    #[error("`{target}`: unknown scheme `{scheme}` (unix, udp or tcp)")]
    UnknownScheme { target: String, scheme: String },
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = p.strip_prefix("//").unwrap_or(p);
            if p.is_empty() {
                return Err(TargetError::NoPath);
            }
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        let (scheme, addr) = s
            .split_once("://")
            .ok_or_else(|| TargetError::NoScheme(s.to_string()))?;
        let addr = addr.trim_end_matches('/');
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(TargetError::NoPort {
                target: s.to_string(),
                scheme: scheme.to_string(),
            });
        }
        match scheme {
            "udp" => Ok(Target::Udp(addr.to_string())),
            "tcp" => Ok(Target::Tcp(addr.to_string())),
            other => Err(TargetError::UnknownScheme {
                target: s.to_string(),
                scheme: other.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Udp(a) => write!(f, "udp://{a}"),
            Target::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// A connection to the SIEM.
pub enum Transport {
    UnixDatagram(UnixDatagram),
    UnixStream(UnixStream),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// Counts UDP messages over the safe size, to warn about them without flooding the log.
static OVERSIZE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Transport {
    /// Connects to `target`.
    pub fn connect(target: &Target) -> Result<Transport, Error> {
        let err = |source| Error::Connect {
            target: target.to_string(),
            source,
        };
        match target {
            Target::Unix(path) => {
                let dgram = UnixDatagram::unbound().map_err(err)?;
                match dgram.connect(path) {
                    Ok(()) => Ok(Transport::UnixDatagram(dgram)),
                    // EPROTOTYPE: the socket is a stream socket.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EPROTOTYPE) => {
                        let s = UnixStream::connect(path).map_err(err)?;
                        s.set_write_timeout(Some(IO_TIMEOUT)).map_err(err)?;
                        Ok(Transport::UnixStream(s))
                    }
                    Err(e) => Err(err(e)),
                }
            }
            Target::Udp(addr) => {
                let to = resolve(addr).map_err(err)?;
                let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = UdpSocket::bind(bind).map_err(err)?;
                s.connect(to).map_err(err)?;
                Ok(Transport::Udp(s))
            }
            Target::Tcp(addr) => {
                let to = resolve(addr).map_err(err)?;
                let s = TcpStream::connect_timeout(&to, IO_TIMEOUT).map_err(err)?;
                s.set_write_timeout(Some(IO_TIMEOUT)).map_err(err)?;
                Ok(Transport::Tcp(s))
            }
        }
    }

    /// Sends one message (framed for streams).
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        let err = |source| Error::Send { source };
        match self {
            Transport::Tcp(s) => s.write_all(&octet_counted(msg)).map_err(err),
            Transport::UnixStream(s) => s.write_all(&octet_counted(msg)).map_err(err),
            Transport::Udp(s) => {
                let msg = udp_sized(msg);
                s.send(msg).map(drop).map_err(err)
            }
            Transport::UnixDatagram(s) => match s.send(msg) {
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(nix::libc::EMSGSIZE) => {
                    tracing::warn!(
                        bytes = msg.len(),
                        "message too large for the unix datagram socket; sent truncated"
                    );
                    s.send(&msg[..msg.len().min(UDP_MAX)])
                        .map(drop)
                        .map_err(err)
                }
                Err(e) => Err(err(e)),
            },
        }
    }

    /// Waits until the peer has acknowledged every byte sent (TCP: `SIOCOUTQ` is 0; unix
    /// stream: the peer has read them all), or fails after `timeout`.
    pub fn wait_acked(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            let unacked = outq(self.fd()).map_err(|source| Error::Send { source })?;
            if unacked == 0 {
                // A reset empties the send queue too: only a live connection counts.
                return self.check_alive();
            }
            // After a reset the count stays where it was (Linux keeps the sequence numbers
            // it is computed from), so the connection itself is checked while waiting.
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(Error::NotAcked {
                    bytes: unacked,
                    after: timeout,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Fails if the peer has closed or reset the connection (or, for datagrams, reported
    /// that nobody listens).
    pub fn check_alive(&mut self) -> Result<(), Error> {
        let mut buf = [0u8; 512];
        let res = match self {
            Transport::Tcp(s) => nonblocking(s.as_raw_fd(), || s.read(&mut buf)),
            Transport::UnixStream(s) => nonblocking(s.as_raw_fd(), || s.read(&mut buf)),
            Transport::Udp(s) => nonblocking(s.as_raw_fd(), || s.recv(&mut buf)),
            Transport::UnixDatagram(s) => nonblocking(s.as_raw_fd(), || s.recv(&mut buf)),
        };
        let stream = matches!(self, Transport::Tcp(_) | Transport::UnixStream(_));
        match res {
            Ok(0) if stream => Err(Error::Closed),
            // Syslog receivers send nothing; whatever came is dropped.
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(source) => Err(Error::Send { source }),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Transport::Tcp(s) => s.as_raw_fd(),
            Transport::UnixStream(s) => s.as_raw_fd(),
            Transport::Udp(s) => s.as_raw_fd(),
            Transport::UnixDatagram(s) => s.as_raw_fd(),
        }
    }
}

/// A UDP message cut to what one datagram can carry; messages over the safe size are
/// sent whole but noted.
fn udp_sized(msg: &[u8]) -> &[u8] {
    if msg.len() > UDP_SAFE_SIZE {
        let n = OVERSIZE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_power_of_two() || n == 0 {
            tracing::warn!(
                bytes = msg.len(),
                safe = UDP_SAFE_SIZE,
                count = n + 1,
                "UDP syslog message over the safe size: receivers may truncate or drop it"
            );
        }
    }
    if msg.len() > UDP_MAX {
        tracing::warn!(
            bytes = msg.len(),
            max = UDP_MAX,
            "UDP syslog message truncated to the largest datagram"
        );
        return &msg[..UDP_MAX];
    }
    msg
}

fn resolve(addr: &str) -> io::Result<std::net::SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address")))
}

/// Runs `f` with the socket `fd` in non-blocking mode.
fn nonblocking<T>(fd: RawFd, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    // SAFETY: `fd` is a socket owned by the caller, open for the whole call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    let res = f();
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    res
}

/// Bytes sent on socket `fd` that the peer has not acknowledged yet (`SIOCOUTQ`).
fn outq(fd: RawFd) -> io::Result<u64> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int to the pointer, which is valid.
    let r = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(n).unwrap_or(0))
}
