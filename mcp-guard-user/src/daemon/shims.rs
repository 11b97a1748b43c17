//! The daemon's side of managed shims (see `crate::managed`): one task per connected shim,
//! judging its messages with the system policy and recording them in the system audit log.
//! Who the shim is comes from the kernel (SO_PEERCRED) and /proc, never from the shim.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{UnixListener, UnixStream};

use crate::audit::{self, Audit, Record};
use crate::guard::{self, Session};
use crate::identity::{self, Process};
use crate::jsonrpc::code;
use crate::managed::{self, End, Hello, Welcome};
use crate::policy::Policy;

/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one user may hold at once: a user cannot exhaust the daemon.
const MAX_PER_USER: usize = 256;
/// After a daemon restart, how long answers to earlier requests are let through.
const RESUME_GRACE: Duration = Duration::from_secs(30);

/// What every connection shares: the system policy in force (enforced, not monitored),
/// the audit log, the limits.
pub struct Shared {
    pub policy: RwLock<Arc<Policy>>,
    pub audit: Audit,
    pub max_message: usize,
    /// The audit log's path: the pin store is beside it.
    pub audit_path: std::path::PathBuf,
    /// Commits wait for fdatasync: done on a blocking thread rather than the event loop.
    pub durable: bool,
    /// Live managed sessions by shim pid, for `mcp-guard status`.
    pub live: std::sync::Mutex<std::collections::HashMap<u32, super::status::Session>>,
    /// Open connections per uid.
    pub per_user: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
}

/// Counts a user's connection while it lives.
struct Slot<'a>(&'a Shared, u32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.per_user.lock()
            && let Some(n) = m.get_mut(&self.1)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// Listens at `path` (any local user may connect; each is identified by the kernel).
pub fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot replace {}", path.display())));
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        anyhow::Error::new(e).context(format!("cannot listen at {}", path.display()))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves connections until dropped; dropping it ends every connection too.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        // Finished connections are reaped as new ones come.
        while tasks.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tasks.spawn(async move {
                    if let Err(e) = connection(stream, shared).await {
                        tracing::warn!(error = %e, "managed shim connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A shim's connection, read through a buffer.
type Conn = tokio::io::BufReader<UnixStream>;

async fn send(stream: &mut Conn, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    managed::frame(&mut out, kind, payload);
    stream.write_all(&out).await
}

async fn refuse(stream: &mut Conn, why: String) -> anyhow::Result<()> {
    tracing::warn!(why, "refused a managed shim");
    let w = Welcome {
        ok: false,
        error: Some(why),
        session: None,
        policy_sha256: None,
        max_message: None,
    };
    send(stream, managed::WELCOME, &serde_json::to_vec(&w)?).await?;
    Ok(())
}

/// Why a managed session's records were not committed.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error(transparent)]
    Audit(#[from] audit::Error),
    #[error("the audit task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

async fn commit(shared: &Shared, records: Vec<Record>) -> Result<(), CommitError> {
    if !shared.durable {
        // A page-cache write and a signature: cheaper here than a hop to another thread.
        return Ok(shared.audit.commit_blocking(records)?);
    }
    let audit = shared.audit.clone();
    Ok(tokio::task::spawn_blocking(move || audit.commit_blocking(records)).await??)
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let cred = stream.peer_cred()?;
    // A frame's length, kind and body in one read rather than four.
    let mut stream = Conn::new(stream);
    let open = shared.per_user.lock().map(|mut m| {
        let n = m.entry(cred.uid()).or_insert(0);
        *n += 1;
        *n
    });
    let _slot = Slot(&shared, cred.uid());
    if open.is_ok_and(|n| n > MAX_PER_USER) {
        return refuse(
            &mut stream,
            format!(
                "user {} has {MAX_PER_USER} connections open already",
                cred.uid()
            ),
        )
        .await;
    }
    let Some(peer) = cred.pid().filter(|p| *p > 0) else {
        return refuse(
            &mut stream,
            "the kernel did not name the connecting process".into(),
        )
        .await;
    };
    let hello = match tokio::time::timeout(
        HELLO_TIMEOUT,
        managed::read_frame(&mut stream, managed::MAX_HELLO),
    )
    .await
    {
        Ok(Ok(Some((managed::HELLO, payload)))) => {
            match serde_json::from_slice::<Hello>(&payload) {
                Ok(h) => h,
                Err(e) => return refuse(&mut stream, format!("bad hello: {e}")).await,
            }
        }
        Ok(Ok(Some(_))) => return refuse(&mut stream, "expected a hello".into()).await,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return refuse(&mut stream, format!("bad frame: {e}")).await,
        Err(_) => return refuse(&mut stream, "no hello within 5 s".into()).await,
    };
    // Everything about who is asking comes from the kernel and /proc.
    let Some(principal) = identity::principal_of(peer) else {
        return refuse(&mut stream, format!("cannot read /proc/{peer}")).await;
    };
    if principal.uid != cred.uid() {
        return refuse(
            &mut stream,
            "the connecting process changed identity".into(),
        )
        .await;
    }
    let Some(server) = Process::read(hello.server_pid as i32)
        .ok()
        .filter(|s| s.ppid == peer)
    else {
        return refuse(
            &mut stream,
            format!(
                "process {} is not a child of the connecting process {peer}",
                hello.server_pid
            ),
        )
        .await;
    };
    let restrictions = match &hello.policy {
        None => None,
        Some(text) => {
            let origin = hello
                .policy_origin
                .clone()
                .unwrap_or_else(|| "shim policy".into());
            match Policy::parse(text, &origin) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    return refuse(
                        &mut stream,
                        format!("the shim's policy cannot be used: {e}"),
                    )
                    .await;
                }
            }
        }
    };
    let me = Process::read(peer).ok();
    let host = me.as_ref().and_then(|m| Process::read(m.ppid).ok());
    let chain = identity::ancestry(peer);
    let policy = shared
        .policy
        .read()
        .map(|p| p.clone())
        .map_err(|_| anyhow::anyhow!("policy lock poisoned"))?;
    let mut detail = serde_json::Map::new();
    detail.insert("managed".into(), true.into());
    detail.insert("shim_pid".into(), peer.into());
    detail.insert("resumed".into(), hello.resumed.into());
    detail.insert("shim_policy".into(), hello.policy_origin.clone().into());
    detail.insert(
        "shim_policy_sha256".into(),
        restrictions.as_ref().map(|p| p.sha256().to_string()).into(),
    );
    let started = guard::start(guard::Start {
        transport: audit::Transport::Managed,
        policy: policy.clone(),
        max_message: shared.max_message,
        parties: guard::Parties {
            principal: Some(principal.clone()),
            host: host.clone(),
            shim: me,
            chain,
        },
        server: guard::ServerInfo::new(
            hello.name.clone(),
            Some(server.pid as u32),
            Some(&server),
            Some(&server.cmdline),
        ),
        server_exe: server.exe.clone(),
        cwd: std::fs::read_link(format!("/proc/{}/cwd", server.pid))
            .ok()
            .map(|p| p.display().to_string()),
        argv: server.cmdline.clone(),
        detail,
    });
    let (mut session, ctx, start) = (started.session, started.ctx, started.record);
    session.set_pins(crate::pins::Pins::beside(&shared.audit_path));
    session.set_server_pid(server.pid);
    if let Some(r) = restrictions.clone() {
        session.set_restrictions(r);
    }
    if hello.resumed {
        session.resume(RESUME_GRACE);
    }
    if let Err(e) = commit(&shared, vec![start]).await {
        return refuse(&mut stream, format!("the audit log cannot be written: {e}")).await;
    }
    let w = Welcome {
        ok: true,
        error: None,
        session: Some(ctx.session.to_string()),
        policy_sha256: Some(policy.sha256().to_string()),
        max_message: Some(shared.max_message),
    };
    // Known as managed before the shim hears back, so the observer never takes it for a
    // standalone shim whose own log it should check.
    let entry = super::status::Session {
        pid: server.pid as u32,
        server: hello.name.clone(),
        host: host.as_ref().map(|h| h.comm.clone()),
        user: principal.user.clone().or(Some(principal.uid.to_string())),
        wrapped: true,
        messages: 0,
    };
    if let Ok(mut live) = shared.live.lock() {
        live.insert(peer as u32, entry);
    }
    if let Err(e) = send(&mut stream, managed::WELCOME, &serde_json::to_vec(&w)?).await {
        if let Ok(mut live) = shared.live.lock() {
            live.remove(&(peer as u32));
        }
        return Err(e.into());
    }
    let result = serve_session(&mut stream, &shared, &mut session, policy, peer).await;
    if let Ok(mut live) = shared.live.lock() {
        live.remove(&(peer as u32));
    }
    result
}

/// Judges a welcomed shim's frames until it ends or goes away.
async fn serve_session(
    stream: &mut Conn,
    shared: &Shared,
    session: &mut Session,
    policy: Arc<Policy>,
    peer: i32,
) -> anyhow::Result<()> {
    let mut ended = false;
    loop {
        let frame = match managed::read_frame(stream, managed::max_judge_frame(shared.max_message))
            .await
        {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, pid = peer, "bad frame from a managed shim; closing");
                break;
            }
        };
        match frame {
            (managed::JUDGE, payload) => {
                let j = managed::decode_judge(&payload)?;
                // A reloaded policy applies from the next message on.
                if let Ok(p) = shared.policy.read()
                    && !Arc::ptr_eq(&p, &policy)
                {
                    session.set_policy(p.clone());
                }
                let plan = session.judge(j.dir, &j.data, j.frames.iter().cloned());
                let acts = match commit(shared, plan.commit).await {
                    Ok(()) => plan.acts,
                    Err(e) => session.refuse_unrecorded(
                        j.dir,
                        &j.data,
                        &j.frames,
                        code::AUDIT_UNAVAILABLE,
                        &e.to_string(),
                    ),
                };
                send(stream, managed::PLAN, &managed::encode_plan(j.seq, &acts)).await?;
                shared.audit.append(plan.append);
                if let Ok(mut live) = shared.live.lock()
                    && let Some(s) = live.get_mut(&(peer as u32))
                {
                    s.messages += j.frames.len() as u64;
                }
            }
            (managed::END, payload) => {
                let end: End = serde_json::from_slice(&payload).unwrap_or(End {
                    exit_code: None,
                    signal: None,
                });
                let (errors, mut records) = session.abandon("the server exited before answering");
                let mut rec = Record::new(audit::Kind::SessionEnd, session.ctx());
                rec.detail = Some(
                    serde_json::json!({ "exit_code": end.exit_code, "signal": end.signal, "counters": session.counters }),
                );
                records.push(rec);
                let _ = commit(shared, records).await;
                let acts = if errors.is_empty() {
                    Vec::new()
                } else {
                    vec![crate::guard::Act::ToClient(errors)]
                };
                send(stream, managed::PLAN, &managed::encode_plan(0, &acts)).await?;
                ended = true;
                break;
            }
            (kind, _) => {
                tracing::warn!(
                    kind,
                    pid = peer,
                    "unexpected frame from a managed shim; closing"
                );
                break;
            }
        }
    }
    if !ended {
        let mut records = session.drop_held("the managed shim disconnected");
        let mut rec = Record::new(audit::Kind::SessionEnd, session.ctx());
        rec.detail = Some(
            serde_json::json!({ "reason": "shim disconnected", "counters": session.counters }),
        );
        records.push(rec);
        let _ = commit(shared, records).await;
    }
    Ok(())
}
