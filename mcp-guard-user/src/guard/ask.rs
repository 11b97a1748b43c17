//! `action = "ask"`: a call held until the person at the agent host approves it.
//!
//! The held request is not forwarded. The host gets an `elicitation/create` request of
//! the guard's own (an id no peer can guess) naming the server, the tool, the rule and the
//! salient arguments; its answer never reaches the server. `accept` forwards the held
//! bytes, exactly as received, once; `decline`, `cancel`, an error answer, or no answer
//! within the rule's timeout refuses the call with `-32080`. Each outcome is an `approval`
//! record linked to the request's, committed before it takes effect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::{Act, Direction, Judged, Pending, Session, error_line, recorded_id};
use crate::audit::{Decision, Kind as RecordKind, Record};
use crate::jsonrpc::{IdKey, Message, code};
use crate::policy::Decision as Verdict;

/// What every question's id starts with; a server's request may not use it.
pub const ASK_ID_PREFIX: &str = "mcp-guard-ask-";

/// The `_meta` key of a question that names the held request's id.
pub const HELD_META: &str = "mcp-guard/held-request";

/// A call waiting for the person's answer.
pub(super) struct Held {
    /// The request as received: what is forwarded if approved.
    line: Vec<u8>,
    /// The request's id, as sent.
    id: Box<RawValue>,
    method: String,
    /// The policies in force when it was held: a reload before the answer refuses it.
    policy: Arc<crate::policy::Policy>,
    restrictions: Option<Arc<crate::policy::Policy>>,
    key: IdKey,
    /// The request record's id.
    record: String,
    rule: String,
    /// As records show it (credentials redacted).
    tool: Option<String>,
    /// As sent: what an approval remembered for the session is bound to.
    tool_name: Option<String>,
    args_sha256: Option<String>,
    remember: bool,
    asked: Instant,
    deadline: Instant,
    /// The elicitation request's id, as sent to the host.
    ask_id: String,
}

/// The asks of one session.
#[derive(Default)]
pub(super) struct Asks {
    /// By the elicitation request's id.
    held: HashMap<IdKey, Held>,
    /// The host declared it can show a form (`capabilities.elicitation`).
    pub(super) supported: bool,
    /// (tool, arguments digest) approved with `remember = "session"`.
    remembered: std::collections::HashSet<(String, String)>,
    /// Messages for the host that no frame's act carries (closing a withdrawn question).
    pub(super) queued: Vec<Act>,
}

/// How an ask ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Approved,
    Declined,
    Cancelled,
    Timeout,
    /// The host cannot be asked: it did not declare the elicitation capability.
    Unsupported,
    /// The host answered the elicitation with an error.
    Failed,
    /// The host withdrew the call (`notifications/cancelled`) while it was held.
    Withdrawn,
    /// The call came inside a JSON-RPC batch, which is forwarded whole or not at all.
    InBatch,
    /// The policy was reloaded while the call was held: it is not approved under the new one.
    PolicyChanged,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Declined => "declined",
            Outcome::Cancelled => "cancelled",
            Outcome::Timeout => "timeout",
            Outcome::Unsupported => "unsupported",
            Outcome::Failed => "failed",
            Outcome::Withdrawn => "withdrawn",
            Outcome::InBatch => "in_batch",
            Outcome::PolicyChanged => "policy_changed",
        }
    }

    fn why(self) -> &'static str {
        match self {
            Outcome::Approved => "approved by the person at the host",
            Outcome::Declined => "the person at the host declined it",
            Outcome::Cancelled => "the person at the host cancelled the approval",
            Outcome::Timeout => "nobody approved it in time",
            Outcome::Unsupported => {
                "it needs a person's approval and the host cannot ask (it did not declare the elicitation capability)"
            }
            Outcome::Failed => "the host could not ask the person (its answer was an error)",
            Outcome::Withdrawn => "the host withdrew the call",
            Outcome::InBatch => {
                "it needs a person's approval, which cannot be asked for a call inside a batch; send it on its own"
            }
            Outcome::PolicyChanged => {
                "the policy changed while it waited for approval; send it again to be judged by the new one"
            }
        }
    }
}

/// Whether an `initialize` request's capabilities let the guard ask with a form: an
/// `elicitation` object, empty (form only) or naming `form`.
pub(super) fn can_ask(capabilities: Option<&serde_json::Value>) -> bool {
    match capabilities.and_then(|c| c.get("elicitation")) {
        Some(serde_json::Value::Object(e)) => e.is_empty() || e.contains_key("form"),
        _ => false,
    }
}

impl Asks {
    /// A held call's request id is in flight: no other request may reuse it.
    pub(super) fn holds(&self, key: &IdKey) -> bool {
        self.held.values().any(|h| h.key == *key)
    }

    /// When the first held call times out.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.held.values().map(|h| h.deadline).min()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether `m` is the host's answer to one of the guard's questions.
    pub(super) fn answers(&self, m: &Message<'_>) -> bool {
        m.kind == crate::jsonrpc::Kind::Response
            && m.id
                .is_some_and(|id| self.held.contains_key(&IdKey::of(id)))
    }
}

impl Session {
    /// A request the policy says to ask about (`rec` is its record, decision `ask`):
    /// passed when approved earlier in the session with `remember = "session"`, refused
    /// when the host cannot be asked, else held and the host asked.
    pub(super) fn ask(
        &mut self,
        m: &Message<'_>,
        key: IdKey,
        decision: &Verdict,
        mut rec: Record,
        arguments: Option<&serde_json::Value>,
    ) -> Judged {
        let id = m.id.unwrap_or(crate::jsonrpc::null_id());
        let ask = decision.ask.unwrap_or(crate::policy::Ask {
            timeout: crate::policy::Ask::DEFAULT_TIMEOUT,
            remember_session: false,
        });
        let tool_name = m
            .params_value
            .as_ref()
            .and_then(|p| p.get("name"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        let remembered = match (&tool_name, &rec.args_sha256) {
            (Some(t), Some(d)) => self.asks.remembered.contains(&(t.clone(), d.clone())),
            _ => false,
        };
        if ask.remember_session && remembered {
            rec.decision = Some(Decision::Allow);
            rec.reason = Some(format!(
                "approved earlier in this session (rule `{}`, remember = \"session\")",
                decision.rule
            ));
            let pending = Pending {
                record: rec.id.clone(),
                method: m.method.as_deref().unwrap_or_default().to_string(),
                tool: rec.tool.clone(),
                since: Instant::now(),
                id: id.to_owned(),
            };
            self.batch_keys.push(key.clone());
            return Judged {
                pass: true,
                record: Some(rec),
                durable: true,
                track: Some((key, pending)),
                error: None,
                reply_to: Direction::ToClient,
                replace: None,
            };
        }
        let now = Instant::now();
        // 128 random bits per question: no id can be guessed from another (records name
        // them), and the server's requests may not use the prefix at all (`admit`).
        let mut random = [0u8; 16];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).is_err() {
            self.counters.denied += 1;
            rec.decision = Some(Decision::Deny);
            rec.reason = Some("no randomness for the approval question's id".into());
            let error = error_line(
                id,
                code::DENIED,
                "refused by mcp-guard: cannot ask (no randomness)",
                None,
            );
            return to_client(rec, error);
        }
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let ask_id = format!("{ASK_ID_PREFIX}{hex}");
        let held = Held {
            line: m.raw.as_bytes().to_vec(),
            id: id.to_owned(),
            method: m.method.as_deref().unwrap_or_default().to_string(),
            policy: self.policy.clone(),
            restrictions: self.restrictions.clone(),
            key,
            record: rec.id.clone(),
            rule: decision.rule.clone(),
            tool: rec.tool.clone(),
            tool_name,
            args_sha256: rec.args_sha256.clone(),
            remember: ask.remember_session,
            asked: now,
            deadline: now + ask.timeout,
            ask_id: ask_id.clone(),
        };
        let cannot = if !self.asks.supported {
            Some(Outcome::Unsupported)
        } else if self.in_batch {
            Some(Outcome::InBatch)
        } else {
            None
        };
        if let Some(why) = cannot {
            self.counters.denied += 1;
            let outcome = self.outcome(&held, why);
            let error = self.refusal_of(&held, why);
            rec.reason = Some(why.why().to_string());
            // After the request's own record, in the same commit.
            self.alerts.push(outcome);
            return to_client(rec, error);
        }
        let held_id = serde_json::from_str::<serde_json::Value>(id.get()).unwrap_or_default();
        let request = serde_json::json!({
            "jsonrpc": "2.0",
            "id": ask_id,
            "method": "elicitation/create",
            "params": {
                // Which request the question holds: a managed shim answers it if the daemon
                // holding it goes away.
                "_meta": { HELD_META: held_id },
                "message": self.question(&held, decision.message.as_deref(), arguments, ask.timeout),
                "requestedSchema": {"type": "object", "properties": {}},
            },
        });
        rec.reason = Some(format!(
            "held for the approval of the person at the host (elicitation {ask_id}, timeout {}s)",
            ask.timeout.as_secs()
        ));
        rec.detail = Some(serde_json::json!({ "elicitation": ask_id }));
        self.asks.held.insert(IdKey::Str(ask_id), held);
        Judged {
            pass: false,
            record: Some(rec),
            durable: true,
            track: None,
            error: Some(request.to_string().into_bytes()),
            reply_to: Direction::ToClient,
            replace: None,
        }
    }

    /// What the person is asked: the server, the tool, the rule and its message, and the
    /// arguments (credentials and secrets redacted, long values cut).
    fn question(
        &self,
        held: &Held,
        message: Option<&str>,
        arguments: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> String {
        let mut lines = Vec::new();
        let mut hidden = 0usize;
        if let Some(serde_json::Value::Object(args)) = arguments {
            // Secrets are redacted by what they are (the response scanner's patterns), not
            // by the name of the key they sit under: a key proves nothing about its value.
            let mut args = serde_json::Value::Object(args.clone());
            self.policy.responses().redact(&mut args);
            if let serde_json::Value::Object(args) = args {
                for (k, v) in &args {
                    // As JSON: a value cannot start a line of its own in the question (no raw
                    // newlines or control characters to fake a header or another rule).
                    let (shown, cut) = shown(&v.to_string(), QUESTION_VALUE);
                    hidden += cut;
                    lines.push(format!(
                        "  {}: {shown}",
                        serde_json::Value::from(k.as_str())
                    ));
                }
            }
        }
        let mut q = String::new();
        if hidden > 0 {
            q.push_str(&format!(
                "WARNING: this call is too long to show in full: {hidden} characters of its arguments are NOT shown below.\n"
            ));
        }
        q.push_str(&format!(
            "mcp-guard: allow the call of {} on the MCP server {}?\nRule {}",
            serde_json::Value::from(held.tool.as_deref().unwrap_or("?")),
            serde_json::Value::from(self.name.as_str()),
            serde_json::Value::from(held.rule.as_str()),
        ));
        if let Some(msg) = message {
            q.push_str(": ");
            q.push_str(&crate::identity::redact_text(msg));
        }
        q.push('\n');
        for l in lines {
            q.push_str(&l);
            q.push('\n');
        }
        q.push_str(&format!(
            "Accept runs this call once. Decline, cancel or no answer within {}s refuses it.",
            timeout.as_secs()
        ));
        q
    }

    /// The host's answer to one of the guard's elicitations, or `None` for any other
    /// response. Never forwarded: the server did not ask.
    pub(super) fn answer(&mut self, m: &Message<'_>) -> Option<Judged> {
        let id = m.id?;
        let held = self.asks.held.remove(&IdKey::of(id))?;
        #[derive(serde::Deserialize)]
        struct Answer {
            action: String,
        }
        let same_policy = Arc::ptr_eq(&held.policy, &self.policy)
            && match (&held.restrictions, &self.restrictions) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
        let outcome = match m.result.map(|r| serde_json::from_str::<Answer>(r.get())) {
            Some(Ok(a)) if a.action == "accept" && !same_policy => Outcome::PolicyChanged,
            Some(Ok(a)) if a.action == "accept" => Outcome::Approved,
            Some(Ok(a)) if a.action == "decline" => Outcome::Declined,
            Some(Ok(a)) if a.action == "cancel" => Outcome::Cancelled,
            _ => Outcome::Failed,
        };
        let record = self.outcome(&held, outcome);
        if outcome != Outcome::Approved {
            self.counters.denied += 1;
            let error = self.refusal_of(&held, outcome);
            return Some(to_client(record, error));
        }
        if held.remember
            && let (Some(t), Some(d)) = (&held.tool_name, &held.args_sha256)
        {
            self.asks.remembered.insert((t.clone(), d.clone()));
        }
        self.pending.insert(
            held.key.clone(),
            Pending {
                record: held.record.clone(),
                method: held.method.clone(),
                tool: held.tool.clone(),
                since: Instant::now(),
                id: held.id.clone(),
            },
        );
        // The held bytes go to the server: the answer's own refusal slot carries them.
        Some(Judged {
            pass: false,
            record: Some(record),
            durable: true,
            track: None,
            error: Some(held.line),
            reply_to: Direction::ToServer,
            replace: None,
        })
    }

    /// The host withdrew a request (`notifications/cancelled`): if it is held, it is
    /// dropped, and the host told to close the question.
    pub(super) fn withdraw(&mut self, m: &Message<'_>) -> Option<()> {
        let request = m.params_value.as_ref()?.get("requestId")?;
        let raw = RawValue::from_string(request.to_string()).ok()?;
        let key = IdKey::of(&raw);
        let ask = self
            .asks
            .held
            .iter()
            .find(|(_, h)| h.key == key)
            .map(|(k, _)| k.clone())?;
        let held = self.asks.held.remove(&ask)?;
        let record = self.outcome(&held, Outcome::Withdrawn);
        self.alerts.push(record);
        self.asks.queued.push(Act::ToClient(cancel_line(
            &held.ask_id,
            "the call was cancelled",
        )));
        Some(())
    }

    /// Held calls past their deadline: refused, and the host told to close the question.
    pub(super) fn expire(&mut self, now: Instant, acts: &mut Vec<Act>) {
        if self.asks.is_empty() {
            return;
        }
        let due: Vec<IdKey> = self
            .asks
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let Some(held) = self.asks.held.remove(&k) else {
                continue;
            };
            self.counters.denied += 1;
            let record = self.outcome(&held, Outcome::Timeout);
            self.alerts.push(record);
            acts.push(Act::ToClient(cancel_line(&held.ask_id, "timed out")));
            let mut e = self.refusal_of(&held, Outcome::Timeout);
            e.push(b'\n');
            acts.push(Act::ToClient(e));
        }
    }

    /// Held calls when the session ends: refused, recorded.
    pub(super) fn abandon_asks(&mut self, why: &str, out: &mut Vec<u8>, records: &mut Vec<Record>) {
        for (_, held) in std::mem::take(&mut self.asks.held) {
            out.extend(error_line(&held.id, code::SERVER_FAILED, why, None));
            out.push(b'\n');
            let mut rec = self.outcome(&held, Outcome::Cancelled);
            rec.reason = Some(format!("still held when the session ended: {why}"));
            records.push(rec);
        }
    }

    /// The `approval` record of an outcome, linked to the request's record.
    fn outcome(&self, held: &Held, outcome: Outcome) -> Record {
        let mut rec = self.record(RecordKind::Approval);
        rec.direction = Some(Direction::ToServer.flow());
        rec.decision = Some(if outcome == Outcome::Approved {
            Decision::Allow
        } else {
            Decision::Deny
        });
        rec.rule = Some(held.rule.clone());
        rec.reason = Some(outcome.why().to_string());
        rec.method = Some(held.method.clone());
        rec.tool = held.tool.clone();
        rec.request_id = Some(recorded_id(&held.id));
        rec.args_sha256 = held.args_sha256.clone();
        rec.links = Some(held.record.clone());
        rec.detail = Some(serde_json::json!({
            "outcome": outcome.name(),
            "elicitation": held.ask_id,
            "waited_ms": held.asked.elapsed().as_millis() as u64,
            "remember": if held.remember { "session" } else { "call" },
        }));
        rec
    }

    /// The error the host gets for a refused held call.
    fn refusal_of(&self, held: &Held, outcome: Outcome) -> Vec<u8> {
        let message = format!(
            "refused by mcp-guard rule `{}`: {}",
            held.rule,
            outcome.why()
        );
        let data = serde_json::json!({ "mcp_guard": {
            "rule": held.rule,
            "record": held.record,
            "approval": outcome.name(),
        }});
        error_line(&held.id, code::DENIED, &message, Some(data))
    }
}

/// Characters of one argument value a question shows (head and tail of a longer one).
const QUESTION_VALUE: usize = 4000;

/// `text` as the question shows it: runs of blanks longer than 8 written as their count
/// (so padding cannot push the rest out of sight), and at most `max` characters, the head
/// and the tail of a longer text with the count of those left out. Returns the text and
/// how many characters it leaves out.
fn shown(text: &str, max: usize) -> (String, usize) {
    let mut out = String::with_capacity(text.len().min(max + 64));
    let mut run = 0usize;
    let flush = |out: &mut String, run: usize| {
        if run > 8 {
            out.push_str(&format!("⟨{run} blanks⟩"));
        } else {
            out.extend(std::iter::repeat_n(' ', run));
        }
    };
    for c in text.chars() {
        if c == ' ' {
            run += 1;
            continue;
        }
        flush(&mut out, run);
        run = 0;
        out.push(c);
    }
    flush(&mut out, run);
    let n = out.chars().count();
    if n <= max {
        return (out, 0);
    }
    let half = max / 2;
    let head: String = out.chars().take(half).collect();
    let tail: String = out.chars().skip(n - half).collect();
    let cut = n - 2 * half;
    (format!("{head}⟨… {cut} characters NOT shown …⟩{tail}"), cut)
}

/// Not forwarded: `record` committed, then `line` sent to the host.
fn to_client(record: Record, line: Vec<u8>) -> Judged {
    Judged {
        pass: false,
        record: Some(record),
        durable: true,
        track: None,
        error: Some(line),
        reply_to: Direction::ToClient,
        replace: None,
    }
}

/// `notifications/cancelled` for the guard's own elicitation, so the host closes it.
fn cancel_line(ask_id: &str, reason: &str) -> Vec<u8> {
    let mut line = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": { "requestId": ask_id, "reason": reason },
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}
