//! Secrets in responses: replaced before they reach the host, and counted.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::identity::REDACTED;

/// Common credentials: cloud keys, GitHub, Slack and OpenAI-style tokens, JWTs, private keys.
static BUILTIN: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        r"(?i)aws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+=]{40}",
        r"\bgh[pousr]_[A-Za-z0-9]{20,}\b",
        r"\bgithub_pat_[A-Za-z0-9_]{20,}\b",
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        r"\bAIza[0-9A-Za-z_-]{35}\b",
        r"\bsk-[A-Za-z0-9_-]{20,}",
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+",
    ]
    .iter()
    .map(|p| Regex::new(p).expect("static regex"))
    .collect()
});

/// Markers of the built-in patterns as they appear in raw JSON text (escapes included), to
/// skip parsing the responses that cannot contain one.
static BUILTIN_HINT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"PRIVATE KEY-----|AKIA|ASIA|(?i:aws_secret_access_key)|gh[pousr]_|github_pat_|xox[abposr]-|AIza|sk-|eyJ[A-Za-z0-9_-]{8,}\.eyJ")
        .expect("static regex")
});

/// The `[responses]` section of a policy.
#[derive(Debug, Default)]
pub struct Responses {
    builtin: bool,
    extra: Vec<Regex>,
    /// Largest response forwarded; 0: no limit.
    pub max_bytes: u64,
}

impl Responses {
    pub fn new(builtin: bool, extra: Vec<Regex>, max_bytes: u64) -> Responses {
        Responses {
            builtin,
            extra,
            max_bytes,
        }
    }

    /// The built-in set on, no limit: what a policy without `[responses]` gets.
    pub fn standard() -> Responses {
        Responses::new(true, Vec::new(), 0)
    }

    /// Whether `raw` (a response's JSON text) may hold something to redact.
    pub fn may_redact(&self, raw: &str) -> bool {
        !self.extra.is_empty() || (self.builtin && BUILTIN_HINT.is_match(raw))
    }

    /// Replaces every match in every string of `v`; returns how many were replaced.
    pub fn redact(&self, v: &mut Value) -> u32 {
        match v {
            Value::String(s) => {
                let mut n = 0;
                let patterns = self
                    .builtin
                    .then_some(&*BUILTIN)
                    .into_iter()
                    .flatten()
                    .chain(&self.extra);
                for re in patterns {
                    let found = re.find_iter(s).count() as u32;
                    if found > 0 {
                        *s = re.replace_all(s, REDACTED).into_owned();
                        n += found;
                    }
                }
                n
            }
            Value::Array(a) => a.iter_mut().map(|v| self.redact(v)).sum(),
            Value::Object(o) => o.values_mut().map(|v| self.redact(v)).sum(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_secrets_are_replaced_and_counted() {
        let key =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        let mut v = serde_json::json!({"content": [{"type": "text", "text": format!(
            "aws AKIAABCDEFGHIJKLMNOP gh ghp_abcdefghijklmnopqrstuvwxyz0123 slack xoxb-1234567890-abc jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.sig key {key} fine"
        )}]});
        let raw = v.to_string();
        let r = Responses::standard();
        assert!(r.may_redact(&raw));
        assert_eq!(r.redact(&mut v), 5);
        let text = v["content"][0]["text"].as_str().unwrap();
        assert!(
            !text.contains("AKIA")
                && !text.contains("ghp_")
                && !text.contains("xoxb")
                && !text.contains("MIIE"),
            "{text}"
        );
        assert!(text.ends_with("key [REDACTED] fine"), "{text}");
    }

    #[test]
    fn clean_responses_are_not_parsed() {
        let r = Responses::standard();
        assert!(!r.may_redact(r#"{"content":[{"type":"text","text":"hello"}]}"#));
        let off = Responses::new(false, Vec::new(), 0);
        assert!(!off.may_redact("AKIAABCDEFGHIJKLMNOP"));
    }

    #[test]
    fn policy_patterns_add_to_the_builtin_set() {
        let r = Responses::new(true, vec![Regex::new(r"internal-\d+").unwrap()], 0);
        let mut v = serde_json::json!(["see internal-42 and internal-7"]);
        assert_eq!(r.redact(&mut v), 2);
        assert_eq!(v[0], "see [REDACTED] and [REDACTED]");
    }
}
