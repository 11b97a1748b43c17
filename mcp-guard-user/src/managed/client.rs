//! The shim's side: a connection to the daemon that judges for it, reconnected on demand.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, oneshot};

use super::wire::{End, Hello, Welcome};
use crate::frame::Frame;
use crate::guard::{Act, Direction};

/// How long a connection attempt (and its hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Least time between two reconnection attempts.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Why there is no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The daemon answered and said no: the shim must not run.
    #[error("the mcp-guard daemon refused this shim: {0}")]
    Refused(String),
    #[error("the mcp-guard daemon at {path} is unreachable: {why}")]
    Unreachable { path: PathBuf, why: String },
}

type Waiting = Arc<Mutex<VecDeque<(u64, oneshot::Sender<Vec<u8>>)>>>;

struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Waiting,
    alive: Arc<AtomicBool>,
}

pub struct Client {
    path: PathBuf,
    max_message: Cell<usize>,
    hello: RefCell<Hello>,
    conn: RefCell<Option<Conn>>,
    seq: Cell<u64>,
    last_try: Cell<Option<Instant>>,
}

impl Client {
    /// Connects and says hello. Must be called inside a tokio runtime.
    pub fn connect(path: PathBuf, hello: Hello) -> Result<Client, ConnectError> {
        let c = Client::down(path, hello);
        let conn = c.open()?;
        *c.conn.borrow_mut() = Some(conn);
        Ok(c)
    }

    /// A client with no connection yet: it connects on first use.
    pub fn down(path: PathBuf, hello: Hello) -> Client {
        Client {
            path,
            max_message: Cell::new(usize::MAX),
            hello: RefCell::new(hello),
            conn: RefCell::new(None),
            seq: Cell::new(1),
            last_try: Cell::new(None),
        }
    }

    fn open(&self) -> Result<Conn, ConnectError> {
        self.last_try.set(Some(Instant::now()));
        let unreachable = |why: String| ConnectError::Unreachable {
            path: self.path.clone(),
            why,
        };
        let mut s = std::os::unix::net::UnixStream::connect(&self.path)
            .map_err(|e| unreachable(e.to_string()))?;
        s.set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| unreachable(e.to_string()))?;
        s.set_write_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| unreachable(e.to_string()))?;
        let hello =
            serde_json::to_vec(&*self.hello.borrow()).map_err(|e| unreachable(e.to_string()))?;
        let mut out = Vec::new();
        super::wire::frame(&mut out, super::wire::HELLO, &hello);
        s.write_all(&out).map_err(|e| unreachable(e.to_string()))?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len)
            .map_err(|e| unreachable(format!("no welcome: {e}")))?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > 1 << 20 {
            return Err(unreachable("bad welcome".into()));
        }
        let mut buf = vec![0; len];
        s.read_exact(&mut buf)
            .map_err(|e| unreachable(format!("no welcome: {e}")))?;
        if buf[0] != super::wire::WELCOME {
            return Err(unreachable("bad welcome".into()));
        }
        let w: Welcome = serde_json::from_slice(&buf[1..])
            .map_err(|e| unreachable(format!("bad welcome: {e}")))?;
        if !w.ok {
            return Err(ConnectError::Refused(w.error.unwrap_or_default()));
        }
        self.max_message.set(w.max_message.unwrap_or(usize::MAX));
        s.set_nonblocking(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let s = tokio::net::UnixStream::from_std(s).map_err(|e| unreachable(e.to_string()))?;
        let (rd, mut wr) = s.into_split();
        // A frame's length, kind and body in one read rather than four.
        let mut rd = tokio::io::BufReader::new(rd);
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let waiting: Waiting = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (w2, a2) = (waiting.clone(), alive.clone());
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                match super::wire::read_frame(&mut rd, super::wire::MAX_FRAME).await {
                    Ok(Some((super::wire::PLAN, payload))) if payload.len() >= 8 => {
                        let seq = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                        let mut q = w2.lock().unwrap_or_else(|p| p.into_inner());
                        match q.pop_front() {
                            Some((s, reply)) if s == seq => {
                                let _ = reply.send(payload);
                            }
                            _ => break,
                        }
                    }
                    _ => break,
                }
            }
            a2.store(false, Ordering::SeqCst);
            // Whoever waits learns the connection is gone.
            w2.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        Ok(Conn { tx, waiting, alive })
    }

    /// The live connection, reconnecting (at most every [`RETRY_EVERY`]) when it is gone.
    fn live(&self) -> bool {
        let up = self
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| c.alive.load(Ordering::SeqCst));
        if up {
            return true;
        }
        if self
            .last_try
            .get()
            .is_some_and(|t| t.elapsed() < RETRY_EVERY)
        {
            return false;
        }
        self.hello.borrow_mut().resumed = true;
        match self.open() {
            Ok(c) => {
                tracing::info!(path = %self.path.display(), "reconnected to the mcp-guard daemon");
                *self.conn.borrow_mut() = Some(c);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the mcp-guard daemon is still unreachable");
                *self.conn.borrow_mut() = None;
                false
            }
        }
    }

    fn send(&self, kind: u8, payload: &[u8], seq: u64) -> Option<oneshot::Receiver<Vec<u8>>> {
        if !self.live() {
            return None;
        }
        let conn = self.conn.borrow();
        let conn = conn.as_ref()?;
        let (reply, rx) = oneshot::channel();
        let mut frame = Vec::with_capacity(payload.len() + 5);
        super::wire::frame(&mut frame, kind, payload);
        // Queued before sending, so the reader finds it whatever the timing.
        conn.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((seq, reply));
        conn.tx.send(frame).ok()?;
        Some(rx)
    }

    /// The longest message the daemon judges.
    pub fn max_message(&self) -> usize {
        self.max_message.get()
    }

    /// Sends frames to be judged; `None` when the daemon cannot be reached.
    pub fn judge(
        &self,
        dir: Direction,
        data: &[u8],
        frames: &[Frame],
    ) -> Option<oneshot::Receiver<Vec<u8>>> {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        self.send(
            super::wire::JUDGE,
            &super::wire::encode_judge(seq, dir, data, frames),
            seq,
        )
    }

    /// Ends the session: the daemon records it and returns errors for the client's
    /// requests still in flight. `None` when the daemon cannot be reached.
    pub async fn end(&self, end: End) -> Option<Vec<Act>> {
        let payload = serde_json::to_vec(&end).ok()?;
        let rx = self.send(super::wire::END, &payload, 0)?;
        let reply = tokio::time::timeout(CONNECT_TIMEOUT, rx).await.ok()?.ok()?;
        super::wire::decode_plan(&reply, 0)
            .ok()
            .map(|(_, acts)| acts)
    }
}
