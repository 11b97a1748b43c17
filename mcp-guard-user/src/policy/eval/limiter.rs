//! Rate limits: a token bucket per rule, principal and tool.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::*;

/// Calls per rule, principal and tool, counted for rules with a `rate`. One per guard
/// (a shim session, or the daemon); the policy asks it while deciding.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<BucketKey, Bucket>>,
}

/// Rule id, principal uid, tool.
type BucketKey = (String, Option<u32>, String);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// More buckets than this and the full (idle) ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl Limiter {
    pub fn new() -> Limiter {
        Limiter::default()
    }

    /// Takes one call from the token bucket of (rule, uid, tool): `rate.calls` calls at
    /// once, refilled evenly over `rate.per`. `false` when it is empty.
    pub fn admit(
        &self,
        rule: &str,
        uid: Option<u32>,
        tool: &str,
        rate: Rate,
        now: Instant,
    ) -> bool {
        // A poisoned lock means another thread panicked mid-update: deny (fail closed).
        let Ok(mut map) = self.buckets.lock() else {
            return false;
        };
        let cap = f64::from(rate.calls);
        let per_token = rate.per.as_secs_f64() / cap;
        if map.len() >= MAX_BUCKETS {
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() / per_token < cap
            });
        }
        let b = map
            .entry((rule.to_string(), uid, tool.to_string()))
            .or_insert(Bucket {
                tokens: cap,
                at: now,
            });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() / per_token;
        b.tokens = (b.tokens + refill).min(cap);
        b.at = now.max(b.at);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
