//! Local socket transports: newline JSON-RPC over unix or loopback TCP sockets, and
//! HTTP/1.1 whose bodies are JSON-RPC (local Streamable HTTP), seen from the connecting
//! (or accepting) watched process.

use super::super::http::{self, HttpStream};
use super::{Core, Observed, judge_into};
use crate::audit::{self, Record};
use crate::daemon::world::{Kernel, Procs};
use crate::ebpf::{Data, Socket};
use crate::frame::{Frame, Framer};
use crate::guard::{self, Direction};
use mcp_guard_common::origin;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Unknown,
    Lines,
    Http,
    Other,
}

pub struct Conn {
    /// The watched process is the server side.
    accepted: bool,
    family: u16,
    port: u16,
    proto: Proto,
    up: Framer,
    down: Framer,
    http_up: HttpStream,
    http_down: HttpStream,
    session: Option<Box<Observed>>,
    /// The process serving the connection, when known.
    server_pid: Option<u32>,
    /// Chunks were lost: each direction skips to its next newline ([up, down]).
    resync: [bool; 2],
}

const AF_UNIX: u16 = 1;

impl<K: Kernel, P: Procs> Core<K, P> {
    /// After lost chunks: newline streams drop their partial line and skip to the next
    /// newline; HTTP streams start over (a message cut in the middle is not judged).
    pub(super) fn resync_conns(&mut self) {
        let max = self.cfg.max_message;
        for c in self.conns.values_mut() {
            c.up = Framer::new(max);
            c.down = Framer::new(max);
            c.resync = [true; 2];
            c.http_up = HttpStream::new(false, max);
            c.http_down = HttpStream::new(true, max);
        }
    }

    pub(super) fn socket_opened(&mut self, s: Socket) {
        let max = self.cfg.max_message;
        if let Some(old) = self.conns.remove(&(s.tgid, s.fd)) {
            self.end_conn(s.tgid, old);
        }
        self.conns.insert(
            (s.tgid, s.fd),
            Conn {
                accepted: s.accepted,
                family: s.family,
                port: s.port,
                proto: Proto::Unknown,
                up: Framer::new(max),
                down: Framer::new(max),
                http_up: HttpStream::new(false, max),
                http_down: HttpStream::new(true, max),
                session: None,
                server_pid: if s.accepted { Some(s.tgid) } else { None },
                resync: [false; 2],
            },
        );
    }

    pub(super) fn close_conns(&mut self, tgid: u32) {
        let keys: Vec<(u32, u32)> = self
            .conns
            .keys()
            .copied()
            .filter(|(t, _)| *t == tgid)
            .collect();
        for k in keys {
            if let Some(c) = self.conns.remove(&k) {
                self.end_conn(tgid, c);
            }
        }
    }

    fn end_conn(&mut self, tgid: u32, c: Conn) {
        if let Some(s) = c.session {
            let mut rec = Record::new(audit::Kind::SessionEnd, s.guard.ctx());
            rec.detail = Some(
                serde_json::json!({ "reason": "closed", "pid": tgid, "messages": s.messages, "counters": s.guard.counters }),
            );
            self.records.push(rec);
        }
    }

    pub(super) fn socket_data(&mut self, d: Data) {
        self.counters.bytes += d.payload.len() as u64;
        let key = (d.tgid, d.fd);
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let dir = if d.inbound == conn.accepted {
            Direction::ToServer
        } else {
            Direction::ToClient
        };
        if conn.proto == Proto::Unknown {
            // The client speaks first in both protocols.
            if dir == Direction::ToClient {
                return;
            }
            let first = d.payload.iter().position(|b| !b.is_ascii_whitespace());
            conn.proto = match first.map(|i| &d.payload[i..]) {
                None => return,
                Some(b) if b[0] == b'{' || b[0] == b'[' => Proto::Lines,
                Some(b) if http::looks_like_request(b) => Proto::Http,
                Some(_) => Proto::Other,
            };
            if conn.proto == Proto::Other {
                let _ = self.kernel.set_fd(d.tgid, d.fd, origin::NONE);
                return;
            }
        }
        let mut messages: Vec<Vec<u8>> = Vec::new();
        match conn.proto {
            Proto::Lines => {
                let (framer, resync) = if dir == Direction::ToServer {
                    (&mut conn.up, &mut conn.resync[0])
                } else {
                    (&mut conn.down, &mut conn.resync[1])
                };
                let mut payload = &d.payload[..];
                if *resync {
                    match memchr::memchr(b'\n', payload) {
                        Some(i) => {
                            *resync = false;
                            payload = &payload[i + 1..];
                        }
                        None => payload = &[],
                    }
                }
                if let Some(spare) = framer.spare(payload.len()).get_mut(..payload.len()) {
                    spare.copy_from_slice(payload);
                }
                framer.filled(payload.len());
                let mut frames = Vec::new();
                while let Some(f) = framer.next_frame() {
                    frames.push(f);
                }
                if frames.is_empty() {
                    return;
                }
                let data = framer.data().to_vec();
                return self.conn_frames(key, dir, &data, frames);
            }
            Proto::Http => {
                let stream = if dir == Direction::ToServer {
                    &mut conn.http_up
                } else {
                    &mut conn.http_down
                };
                stream.push(&d.payload, &mut messages);
                if let Some(why) = stream.broken.take() {
                    tracing::info!(
                        pid = d.tgid,
                        fd = d.fd,
                        why,
                        "no longer following a local HTTP connection"
                    );
                    conn.proto = Proto::Other;
                    let _ = self.kernel.set_fd(d.tgid, d.fd, origin::NONE);
                }
            }
            Proto::Unknown | Proto::Other => return,
        }
        for body in messages {
            let frames = vec![Frame::Line {
                msg: 0..body.len(),
                raw: 0..body.len(),
            }];
            self.conn_frames(key, dir, &body, frames);
        }
    }

    fn conn_frames(&mut self, key: (u32, u32), dir: Direction, data: &[u8], frames: Vec<Frame>) {
        if self.conns.get(&key).is_some_and(|c| c.session.is_none()) {
            self.open_conn_session(key);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(s) = conn.session.as_mut() else {
            return;
        };
        let (denied, ctx) = judge_into(s, dir, data, frames, &mut self.records, &mut self.counters);
        if denied.is_empty() || dir != Direction::ToServer {
            return;
        }
        let server = conn.server_pid;
        self.react_to_denied(&ctx, server, true, denied);
    }

    fn open_conn_session(&mut self, (tgid, fd): (u32, u32)) {
        let Some(conn) = self.conns.get(&(tgid, fd)) else {
            return;
        };
        let (accepted, family, port, proto) = (conn.accepted, conn.family, conn.port, conn.proto);
        let server_pid = if accepted {
            Some(tgid)
        } else if port != 0 {
            self.sys.tcp_listener(port)
        } else {
            None
        };
        let address = match (family, port) {
            (AF_UNIX, _) => "unix".to_string(),
            (_, 0) => "local".to_string(),
            (_, p) => format!("localhost:{p}"),
        };
        let scheme = if proto == Proto::Http { "http" } else { "tcp" };
        let name = server_pid
            .map(|p| crate::daemon::procs::server_name(&self.sys.cmdline(p)))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{scheme}://{address}"));
        // The client is the watched process when it connected; unknown when it accepted.
        let client = if accepted { None } else { Some(tgid) };
        let host = client.and_then(|c| {
            if self.hosts.contains_key(&c) {
                Some(c)
            } else {
                self.host_of(c)
            }
        });
        let host_proc = host.and_then(|h| self.hosts.get(&h).cloned());
        let server = server_pid.and_then(|p| self.sys.process(p));
        let who = client.unwrap_or(tgid);
        let principal = self.sys.principal(who);
        let chain = self.sys.ancestry(who);
        let user = principal.as_ref().and_then(|p| p.user.clone());
        let uid = principal.as_ref().map_or(u32::MAX, |p| p.uid);
        let mut info = guard::ServerInfo::new(
            name.clone(),
            server_pid,
            server.as_ref(),
            server.as_ref().map(|p| p.cmdline.as_slice()),
        );
        info.address = Some(format!("{scheme}://{address}"));
        let mut detail = serde_json::Map::new();
        detail.insert("observed".into(), true.into());
        detail.insert(
            "socket".into(),
            serde_json::json!({ "pid": tgid, "fd": fd, "accepted": accepted }),
        );
        let (session, _) = self.observe(
            guard::Start {
                transport: if proto == Proto::Http {
                    audit::Transport::HttpObserved
                } else {
                    audit::Transport::SocketObserved
                },
                policy: self.policy.clone(),
                max_message: self.cfg.max_message,
                parties: guard::Parties {
                    principal,
                    host: host_proc.clone(),
                    shim: None,
                    chain,
                },
                server: info,
                server_exe: server.as_ref().and_then(|p| p.exe.clone()),
                cwd: server_pid.and_then(|p| self.sys.cwd(p)),
                argv: server.map(|p| p.cmdline).unwrap_or_default(),
                detail,
            },
            host_proc,
            user,
            uid,
        );
        if let Some(c) = self.conns.get_mut(&(tgid, fd)) {
            c.server_pid = server_pid;
            c.session = Some(session);
        }
    }

    /// Counters as the status file shows them, for the sessions over sockets.
    pub(super) fn socket_sessions(&self) -> Vec<crate::daemon::status::Session> {
        self.conns
            .values()
            .filter_map(|c| {
                let s = c.session.as_ref()?;
                Some(crate::daemon::status::Session {
                    pid: c.server_pid.unwrap_or(0),
                    server: s.name.clone(),
                    host: s.host.as_ref().map(|h| h.comm.clone()),
                    user: s.user.clone(),
                    wrapped: false,
                    messages: s.messages,
                })
            })
            .collect()
    }
}
