//! Secrets in what a server sends the host: replaced before they reach it, and counted.
//!
//! Every string of every server-to-client message is scanned (results, errors, notifications,
//! the server's requests), with a rule set modelled on gitleaks': provider tokens with fixed
//! prefixes, key blocks from their first line (a block cut by `head` is still a key),
//! credentials in assignments (`AWS_SECRET_ACCESS_KEY="..."`, `"SecretAccessKey": "..."`,
//! `password=...` when the value looks random), URLs with passwords. Base64 runs (a
//! resource `blob`, an image's `data`, an encoded line in a text) are decoded and scanned
//! too: one that hides a secret is replaced whole.

use std::borrow::Cow;
use std::sync::LazyLock;

use base64::Engine as _;
use regex::{Regex, RegexSet};
use serde_json::Value;

use crate::identity::REDACTED;

/// One kind of secret. `group` is the capture that holds the secret itself (0: the whole
/// match); `entropy` is the least Shannon entropy, in bits per character, the secret must
/// have (for rules that also match ordinary words).
struct Rule {
    re: Regex,
    group: usize,
    entropy: Option<f64>,
}

/// (name, pattern, group, entropy)
const RULES: &[(&str, &str, usize, Option<f64>)] = &[
    // Key blocks, from the BEGIN line to the END line or, cut short, to the end of the text.
    (
        "private-key",
        r"-----BEGIN[ A-Z0-9_-]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END[ A-Z0-9_-]*PRIVATE KEY(?: BLOCK)?-----|\z)",
        0,
        None,
    ),
    (
        "putty-key",
        r"PuTTY-User-Key-File-\d+:[\s\S]*?(?:Private-MAC: *[0-9a-fA-F]+|\z)",
        0,
        None,
    ),
    (
        "age-secret-key",
        r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
        0,
        None,
    ),
    // Cloud.
    (
        "aws-access-key-id",
        r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
        0,
        None,
    ),
    (
        "aws-secret-access-key",
        r#"(?i)secret_?access_?key[\\"'\s]*(?:[:=]|=>)[\\"'\s]*([A-Za-z0-9/+=]{40})"#,
        1,
        None,
    ),
    (
        "aws-session-token",
        r#"(?i)(?:session_?token|security_?token)[\\"'\s]*(?:[:=]|=>)[\\"'\s]*([A-Za-z0-9/+=]{100,})"#,
        1,
        None,
    ),
    ("gcp-api-key", r"\bAIza[0-9A-Za-z_-]{35}\b", 0, None),
    ("gcp-oauth-secret", r"\bGOCSPX-[A-Za-z0-9_-]{28}\b", 0, None),
    (
        "azure-storage-key",
        r"(?i)AccountKey=([A-Za-z0-9+/=]{40,})",
        1,
        None,
    ),
    (
        "digitalocean-token",
        r"\bdo[opr]_v1_[a-f0-9]{64}\b",
        0,
        None,
    ),
    (
        "heroku-api-key",
        r#"(?i)heroku[a-z0-9_ .,-]{0,25}[\\"'\s]*(?:[:=]|=>)[\\"'\s]*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"#,
        1,
        None,
    ),
    (
        "hashicorp-vault-token",
        r"\bhv[sb]\.[A-Za-z0-9_-]{24,}",
        0,
        None,
    ),
    ("databricks-token", r"\bdapi[a-f0-9]{32}(?:-\d)?\b", 0, None),
    ("pulumi-token", r"\bpul-[a-f0-9]{40}\b", 0, None),
    // Code hosting and packages.
    ("github-token", r"\bgh[pousr]_[A-Za-z0-9]{20,}\b", 0, None),
    (
        "github-fine-grained-token",
        r"\bgithub_pat_[A-Za-z0-9_]{20,}\b",
        0,
        None,
    ),
    (
        "gitlab-token",
        r"\bgl(?:pat|ptt|dt|rt|cbt|oas)-[A-Za-z0-9_-]{20,}",
        0,
        None,
    ),
    ("npm-token", r"\bnpm_[A-Za-z0-9]{36}\b", 0, None),
    (
        "pypi-token",
        r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
        0,
        None,
    ),
    (
        "docker-hub-token",
        r"\bdckr_pat_[A-Za-z0-9_-]{27,}",
        0,
        None,
    ),
    // Messaging, payments, SaaS.
    ("slack-token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}", 0, None),
    (
        "slack-webhook",
        r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9+/]{20,}",
        0,
        None,
    ),
    (
        "discord-webhook",
        r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_-]{60,}",
        0,
        None,
    ),
    (
        "telegram-bot-token",
        r"\b\d{8,10}:AA[0-9A-Za-z_-]{33}\b",
        0,
        None,
    ),
    (
        "stripe-key",
        r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{24,}\b",
        0,
        None,
    ),
    (
        "square-token",
        r"\b(?:sq0atp|sq0csp|EAAA)[0-9A-Za-z_-]{22,}\b",
        0,
        None,
    ),
    (
        "shopify-token",
        r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",
        0,
        None,
    ),
    ("twilio-api-key", r"\bSK[0-9a-fA-F]{32}\b", 0, None),
    (
        "sendgrid-api-key",
        r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b",
        0,
        None,
    ),
    ("mailgun-key", r"\bkey-[0-9a-zA-Z]{32}\b", 0, None),
    ("linear-api-key", r"\blin_api_[A-Za-z0-9]{40}\b", 0, None),
    (
        "postman-api-key",
        r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b",
        0,
        None,
    ),
    (
        "sentry-token",
        r"\bsntry[su]_[A-Za-z0-9_=+/-]{40,}",
        0,
        None,
    ),
    ("huggingface-token", r"\bhf_[A-Za-z]{34}\b", 0, None),
    (
        "doppler-token",
        r"\bdp\.(?:st|ct|sa|scim|audit)\.[A-Za-z0-9_-]{40,}",
        0,
        None,
    ),
    // AI providers.
    (
        "openai-or-anthropic-key",
        r"\bsk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        0,
        None,
    ),
    ("groq-key", r"\bgsk_[A-Za-z0-9]{48,}\b", 0, None),
    // Tokens in general.
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
        0,
        None,
    ),
    (
        "url-password",
        r#"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@"'<>]+:([^\s@/"'<>]{3,})@"#,
        1,
        None,
    ),
    (
        "generic-credential",
        r#"(?i)(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|auth[_-]?key|client[_-]?secret|private[_-]?key|credentials?)[A-Za-z0-9_-]*[\\"'\s]*(?:[:=]|=>)[\\"'\s]*([^\s"'\\,;<>]{8,})"#,
        1,
        Some(3.0),
    ),
];

/// A rule's pattern as compiled: word boundaries are ASCII ones. Secrets are ASCII, so a
/// token right after a non-ASCII letter (`éAKIA...`) still starts at a boundary; and a
/// Unicode boundary would stop the lazy DFA at the first non-ASCII byte, leaving a slow
/// engine to read the rest of the text.
fn pattern(p: &str) -> String {
    p.replace(r"\b", r"(?-u:\b)")
}

static BUILTIN: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    RULES
        .iter()
        .map(|&(_id, p, group, entropy)| Rule {
            re: Regex::new(&pattern(p)).expect("static regex"),
            group,
            entropy,
        })
        .collect()
});

/// The built-in patterns as one automaton: a text is read once to learn which rules can
/// match in it, and only those are run for their captures.
static BUILTIN_SET: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(RULES.iter().map(|r| pattern(r.1))).expect("static regex set"));

/// The same patterns over a message's raw JSON text, for the quick decision whether to
/// parse it at all; plus long base64 runs, which may hide any of them.
static HINT: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(
        RULES
            .iter()
            .map(|r| pattern(r.1))
            .chain([BASE64_RUN.to_string()]),
    )
    .expect("static regex set")
});

/// A run of base64 (or base64url) long enough to hide a secret.
const BASE64_RUN: &str = r"[A-Za-z0-9+/_-]{24,}={0,2}";

/// Fewer characters than any rule matches (`pwd=` and 8 characters of value; a URL with
/// a password: `a://b:ccc@`).
const SECRET_MIN: usize = 10;

/// The shortest base64 run looked into (`BASE64_RUN`'s count).
const BASE64_MIN: usize = 24;

/// The runs `BASE64_RUN` matches, found by a plain scan: the longest runs of the base64
/// and base64url alphabets at least [`BASE64_MIN`] long, with up to two `=` after them.
fn base64_runs(text: &str) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    static ALPHABET: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-');
            c += 1;
        }
        t
    };
    let b = text.as_bytes();
    let alphabet = |c: u8| ALPHABET[c as usize];
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            if !alphabet(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && alphabet(b[i]) {
                i += 1;
            }
            if i - start < BASE64_MIN {
                continue;
            }
            let pad = b[i..].iter().take(2).take_while(|&&c| c == b'=').count();
            i += pad;
            return Some(start..i);
        }
        None
    })
}

/// Whether a value found after a credential-like name is a secret rather than a word, a
/// placeholder (`${API_KEY}`, `<token>`, `********`) or code (`next_token(&mut lexer)`):
/// random enough, and mixing character classes.
fn looks_random(v: &str, min_entropy: f64) -> bool {
    // A name of the next assignment (`api_key:`), a placeholder, or a call.
    if v.starts_with(['$', '<', '{', '%', '*']) || v.ends_with([':', '=']) || v.contains(['(', ')'])
    {
        return false;
    }
    let classes = [
        v.bytes().any(|b| b.is_ascii_lowercase()),
        v.bytes().any(|b| b.is_ascii_uppercase()),
        v.bytes().any(|b| b.is_ascii_digit()),
        v.bytes().any(|b| !b.is_ascii_alphanumeric()),
    ];
    classes.iter().filter(|&&c| c).count() >= 2
        && v.bytes().any(|b| !b.is_ascii_alphabetic())
        && entropy(v) >= min_entropy
}

/// Shannon entropy of `s`, in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0f64;
    for c in s.chars() {
        *counts.entry(c).or_insert(0f64) += 1.0;
        n += 1.0;
    }
    counts.values().map(|&k| -(k / n) * (k / n).log2()).sum()
}

/// Free text with every secret the built-in rules find replaced (base64 runs decoded):
/// what records keep of error messages, reasons and command lines.
pub fn text(text: &str) -> String {
    static STANDARD: LazyLock<Responses> = LazyLock::new(Responses::standard);
    STANDARD.redact_text(text, true).0.into_owned()
}

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

    /// Whether `raw` (a message's JSON text) may hold something to redact. Never false for
    /// a message [`Responses::redact`] would change: the built-in patterns are searched in
    /// the raw text too, a JSON escape other than the common ones (which could spell a
    /// pattern's letters) means yes, and so does any long base64 run.
    pub fn may_redact(&self, raw: &str) -> bool {
        if !self.extra.is_empty() {
            return true;
        }
        if !self.builtin {
            return false;
        }
        // Without escapes, each string's text is its bytes in the raw line, so a pattern
        // that matches the one matches the other; with any escape (`\n` included) the two
        // differ (`password\n= ...` reads as a newline, not as `\` and `n`), so the
        // strings are parsed and read one by one.
        memchr::memchr(b'\\', raw.as_bytes()).is_some() || HINT.is_match(raw)
    }

    /// Replaces every secret in every string of `v`; returns how many were replaced.
    pub fn redact(&self, v: &mut Value) -> u32 {
        match v {
            Value::String(s) => {
                let (out, n) = self.redact_text(s, true);
                if n > 0 {
                    *s = out.into_owned();
                }
                n
            }
            Value::Array(a) => a.iter_mut().map(|v| self.redact(v)).sum(),
            Value::Object(o) => o.values_mut().map(|v| self.redact(v)).sum(),
            _ => 0,
        }
    }

    /// `text` with its secrets replaced, and how many; base64 runs in it are decoded and
    /// scanned when `decode` (one level: what a decoded run holds is not decoded again).
    fn redact_text<'a>(&self, text: &'a str, decode: bool) -> (Cow<'a, str>, u32) {
        let mut out = Cow::Borrowed(text);
        let mut n = 0;
        // Whether any rule matches is one forward pass that can stop early; which ones is a
        // slower, overlapping pass, made only when some do.
        if self.builtin && BUILTIN_SET.is_match(text) {
            for i in BUILTIN_SET.matches(text).iter() {
                let (next, k) = apply(&BUILTIN[i], &out);
                if k > 0 {
                    out = Cow::Owned(next);
                    n += k;
                }
            }
        }
        for re in &self.extra {
            let k = re.find_iter(&out).count() as u32;
            if k > 0 {
                out = Cow::Owned(re.replace_all(&out, REDACTED).into_owned());
                n += k;
            }
        }
        if decode && self.builtin {
            let (next, k) = self.redact_base64(&out);
            if k > 0 {
                out = Cow::Owned(next);
                n += k;
            }
        }
        (out, n)
    }

    /// How many secrets decoded bytes hold (0: none), whatever surrounds them: every
    /// stretch of printable ASCII (tabs and line breaks included) long enough to hold one is
    /// searched as text, by every rule and policy pattern. A secret is such a stretch, so
    /// binary around it hides nothing; random binary has few such stretches, so it costs
    /// one pass over the bytes. (A policy pattern that matches fewer than [`SECRET_MIN`]
    /// characters is not looked for inside binary.)
    fn secrets_in_binary(&self, bytes: &[u8]) -> u32 {
        printable_stretches(bytes, SECRET_MIN)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .map(|s| self.redact_text(s, false).1)
            .sum()
    }

    /// Base64 runs that decode to text holding a secret are replaced: by the encoding of the
    /// redacted text when it was valid UTF-8 (the string stays what it was, a blob), else by
    /// the marker.
    fn redact_base64(&self, text: &str) -> (String, u32) {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        let mut n = 0;
        for m in base64_runs(text) {
            let run = &text[m.clone()];
            // Hex digests and identifiers are not base64 of text: it mixes cases.
            if !(run.bytes().any(|b| b.is_ascii_uppercase())
                && run.bytes().any(|b| b.is_ascii_lowercase()))
            {
                continue;
            }
            let bits = Bits::of(run);
            let plain = match &bits {
                Some(b) => b.reading(0),
                None => decode_base64(run),
            };
            let (mut k, mut clean) = match plain {
                Some(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(decoded) => {
                        let (clean, k) = self.redact_text(decoded, false);
                        (k, Some(clean.into_owned()))
                    }
                    Err(_) => (self.secrets_in_binary(&bytes), None),
                },
                None => (0, None),
            };
            if k == 0 {
                // Read otherwise: a secret found that way replaces the run whole.
                let found =
                    |bytes: Vec<u8>| Some(self.secrets_in_binary(&bytes)).filter(|&k| k > 0);
                k = match &bits {
                    Some(b) => (1..4).filter_map(|shift| b.reading(shift)).find_map(found),
                    None => other_readings(run)
                        .filter_map(decode_base64)
                        .find_map(found),
                }
                .unwrap_or(0);
                clean = None;
            }
            if k == 0 {
                continue;
            }
            n += k;
            out.push_str(&text[last..m.start]);
            match clean {
                Some(clean) => out
                    .push_str(&base64::engine::general_purpose::STANDARD.encode(clean.as_bytes())),
                None => out.push_str(REDACTED),
            }
            last = m.end;
        }
        if n == 0 {
            return (String::new(), 0);
        }
        out.push_str(&text[last..]);
        (out, n)
    }
}

/// The other ways a run can be read, each a stretch of it that decodes on its own: from its
/// second, third and fourth character (characters glued in front shift every 4-character
/// group, and what they encode with them), and, when the run mixes the two alphabets' extra
/// characters (`+/` and `-_`), each stretch in one alphabet, from each of its first four
/// characters.
fn other_readings(run: &str) -> impl Iterator<Item = &str> {
    let run = run.trim_end_matches('=');
    let mixed = run.contains(['+', '/']) && run.contains(['-', '_']);
    let stretches: Vec<&str> = if mixed {
        run.split(['-', '_'])
            .chain(run.split(['+', '/']))
            .filter(|s| s.len() >= BASE64_MIN)
            .collect()
    } else {
        vec![run]
    };
    stretches.into_iter().flat_map(move |s| {
        (usize::from(!mixed)..4)
            .filter(move |&shift| s.len() >= BASE64_MIN + shift)
            .map(move |shift| &s[shift..])
    })
}

/// The maximal stretches of printable ASCII (tabs and line breaks included) in `bytes` at
/// least `min` long: what `bytes.split(not printable)` keeps of that length, found without
/// looking at every byte (a stretch of `min` has its last byte printable, so a position
/// whose byte is not rules out the `min` starts before it).
fn printable_stretches(bytes: &[u8], min: usize) -> impl Iterator<Item = &[u8]> {
    static PRINTABLE: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = b' ';
        while b <= b'~' {
            t[b as usize] = true;
            b += 1;
        }
        t[b'\t' as usize] = true;
        t[b'\n' as usize] = true;
        t[b'\r' as usize] = true;
        t
    };
    let p = |b: u8| PRINTABLE[b as usize];
    let min = min.max(1);
    // `i` always follows a byte that is not printable (or is 0).
    let mut i = 0;
    std::iter::from_fn(move || {
        while i + min <= bytes.len() {
            let last = i + min - 1;
            if !p(bytes[last]) {
                i = last + 1;
                continue;
            }
            match (i..last).rev().find(|&j| !p(bytes[j])) {
                Some(j) => i = j + 1,
                None => {
                    let start = i;
                    let end = (last + 1..bytes.len())
                        .find(|&j| !p(bytes[j]))
                        .unwrap_or(bytes.len());
                    i = end + 1;
                    return Some(&bytes[start..end]);
                }
            }
        }
        None
    })
}

/// The bits a base64 run in one alphabet spells, decoded once: each way of reading it from
/// its first characters on is a stretch of them (a character is 6 bits), so the readings
/// from the second, third and fourth character cost a shift rather than a decode each.
struct Bits {
    /// The run's bits, zeros after them up to a whole byte.
    bytes: Vec<u8>,
    /// Characters in the run, padding not counted.
    chars: usize,
}

impl Bits {
    /// `None` for a run mixing both alphabets' extra characters (read stretch by stretch).
    fn of(run: &str) -> Option<Bits> {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let run = run.trim_end_matches('=');
        let url = run.contains(['-', '_']);
        if url && run.contains(['+', '/']) {
            return None;
        }
        let mut padded = String::with_capacity(run.len() + 3);
        padded.push_str(run);
        // `A` is six zero bits: whole groups of four, which decode strictly.
        padded.extend(std::iter::repeat_n('A', (4 - run.len() % 4) % 4));
        let bytes = match url {
            true => URL_SAFE_NO_PAD.decode(&padded),
            false => STANDARD_NO_PAD.decode(&padded),
        }
        .ok()?;
        Some(Bits {
            bytes,
            chars: run.len(),
        })
    }

    /// What [`decode_base64`] makes of the run without its first `shift` characters, when
    /// what is left is at least [`BASE64_MIN`] long.
    fn reading(&self, shift: usize) -> Option<Vec<u8>> {
        let mut chars = self.chars.checked_sub(shift)?;
        if shift > 0 && chars < BASE64_MIN {
            return None;
        }
        if chars % 4 == 1 {
            chars -= 1;
        }
        let len = chars * 6 / 8;
        let (skip, bit) = (shift * 6 / 8, (shift * 6 % 8) as u32);
        let src = self.bytes.get(skip..)?;
        if bit == 0 {
            return src.get(..len).map(<[u8]>::to_vec);
        }
        let src = src.get(..len)?;
        // The byte after the last one taken, if the run has one.
        let after = self.bytes.get(skip + len).copied().unwrap_or(0);
        let mut out = Vec::with_capacity(len);
        // Seven bytes at a time: the eight they are made of, as one big-endian number,
        // shifted.
        let mut k = 0;
        while k + 8 <= len {
            let mut w = [0u8; 8];
            w.copy_from_slice(&src[k..k + 8]);
            out.extend_from_slice(&(u64::from_be_bytes(w) << bit).to_be_bytes()[..7]);
            k += 7;
        }
        let next = src[k..].iter().skip(1).chain(std::iter::once(&after));
        out.extend(
            src[k..]
                .iter()
                .zip(next)
                .map(|(&a, &b)| (a << bit) | (b >> (8 - bit))),
        );
        Some(out)
    }
}

/// Standard or URL-safe base64, padded or not: decoded once, with the alphabet the run
/// uses (a run of letters and digits only reads the same in both). A run mixing both
/// alphabets' extra characters is neither. Leniently, as a reader would: a last character
/// with bits to spare, or one left over (a length of 4n+1), does not stop it.
fn decode_base64(run: &str) -> Option<Vec<u8>> {
    use base64::alphabet::{STANDARD, URL_SAFE};
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const STD: GeneralPurpose = GeneralPurpose::new(&STANDARD, CONFIG);
    const URL: GeneralPurpose = GeneralPurpose::new(&URL_SAFE, CONFIG);
    // Padding says nothing the length does not: it is dropped, so a wrong count of `=`
    // does not hide a run.
    let run = run.trim_end_matches('=');
    let run = if run.len() % 4 == 1 {
        &run[..run.len() - 1]
    } else {
        run
    };
    let url = run.bytes().any(|b| b == b'-' || b == b'_');
    if url {
        URL.decode(run)
    } else {
        STD.decode(run)
    }
    .ok()
}

/// Replaces what `rule` finds in `text` (its secret group, or the whole match). A value a
/// rule's entropy test rejects is searched again as text (`"credential": "api_key: ..."`:
/// the first name's value holds the next name).
fn apply(rule: &Rule, text: &str) -> (String, u32) {
    let mut out = String::new();
    let mut last = 0;
    let mut n = 0;
    let mut at = 0;
    while let Some(caps) = rule.re.captures_at(text, at) {
        let whole = caps.get(0).map_or(at..at, |m| m.range());
        let Some(m) = caps.get(rule.group) else {
            at = whole.end.max(at + 1);
            continue;
        };
        if rule
            .entropy
            .is_some_and(|min| !looks_random(m.as_str(), min))
        {
            at = m.start().max(whole.start + 1);
            continue;
        }
        out.push_str(&text[last..m.start()]);
        out.push_str(REDACTED);
        last = m.end();
        at = m.end().max(at + 1);
        n += 1;
    }
    if n == 0 {
        return (String::new(), 0);
    }
    out.push_str(&text[last..]);
    (out, n)
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

    /// `may_redact` is a shortcut: it must say yes for every message `redact` would change.
    /// Escapes are where the raw text and the strings differ.
    #[test]
    fn the_raw_shortcut_misses_nothing_an_escape_hides() {
        let r = Responses::standard();
        for text in [
            r"password\n= Xy7#kd9!qZ",
            r"password\t:\tXy7#kd9!qZ",
            r"\u0041KIAABCDEFGHIJKLMNOP",
            r"AKIAABCDEFGHIJKLM\u004eOP",
            r"token\r\n=\\\\Xy7#kd9!qZ",
            r"ghp\/abcdefghijklmnopqrstuvwxyz0123",
        ] {
            let raw = format!(r#"{{"content":[{{"type":"text","text":"{text}"}}]}}"#);
            let mut v: serde_json::Value = serde_json::from_str(&raw).unwrap();
            let n = r.redact(&mut v);
            assert!(n == 0 || r.may_redact(&raw), "{raw}: {n} secrets, no parse");
        }
        let mut v: serde_json::Value =
            serde_json::from_str(r#"["password\n= Xy7#kd9!qZ"]"#).unwrap();
        assert_eq!(r.redact(&mut v), 1, "{v}");
    }

    /// The plain scan finds exactly the runs the pattern does.
    #[test]
    fn the_base64_scan_agrees_with_the_pattern() {
        let re = Regex::new(BASE64_RUN).unwrap();
        let mut runner = proptest::test_runner::TestRunner::default();
        let strat = proptest::string::string_regex("[A-Za-z0-9+/_=. -]{0,120}").unwrap();
        runner
            .run(&strat, |text| {
                let want: Vec<_> = re.find_iter(&text).map(|m| m.range()).collect();
                let got: Vec<_> = base64_runs(&text).collect();
                proptest::prop_assert_eq!(got, want, "{}", text);
                Ok(())
            })
            .unwrap();
    }

    /// The stretches found by skipping are exactly those a split at every byte finds.
    #[test]
    fn printable_stretches_agree_with_a_split() {
        use proptest::prelude::*;
        let bytes = proptest::collection::vec(
            prop_oneof![3 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'\n')],
            0..300,
        );
        proptest::test_runner::TestRunner::default()
            .run(&(bytes, 1usize..16), |(b, min)| {
                let want: Vec<&[u8]> = b
                    .split(|&c| !matches!(c, b' '..=b'~' | b'\t' | b'\n' | b'\r'))
                    .filter(|s| s.len() >= min)
                    .collect();
                let got: Vec<&[u8]> = printable_stretches(&b, min).collect();
                prop_assert_eq!(got, want);
                Ok(())
            })
            .unwrap();
    }

    /// Each reading taken from the run's bits is what decoding the shortened run gives.
    #[test]
    fn shifted_readings_agree_with_decoding() {
        use proptest::prelude::*;
        let chars = |extra: &'static str| {
            proptest::collection::vec(
                prop_oneof![
                    8 => proptest::char::range('A', 'Z'),
                    8 => proptest::char::range('a', 'z'),
                    4 => proptest::char::range('0', '9'),
                    1 => proptest::sample::select(extra.chars().collect::<Vec<_>>()),
                ],
                BASE64_MIN..120,
            )
            .prop_map(|v| v.into_iter().collect::<String>())
        };
        let run = (prop_oneof![chars("+/"), chars("-_")], 0usize..3)
            .prop_map(|(r, pad)| format!("{r}{}", "=".repeat(pad)));
        proptest::test_runner::TestRunner::default()
            .run(&run, |run| {
                let bits = Bits::of(&run).expect("one alphabet");
                let trimmed = run.trim_end_matches('=');
                prop_assert_eq!(bits.reading(0), decode_base64(&run), "{}", run);
                for shift in 1..4 {
                    let want = (trimmed.len() >= BASE64_MIN + shift)
                        .then(|| decode_base64(&trimmed[shift..]))
                        .flatten();
                    prop_assert_eq!(bits.reading(shift), want, "{} from {}", run, shift);
                }
                Ok(())
            })
            .unwrap();
    }

    /// A secret in base64 of binary data is found: the bytes around it hide nothing.
    #[test]
    fn a_secret_inside_encoded_binary_is_found() {
        use base64::engine::general_purpose::STANDARD;
        let r = Responses::standard();
        let mut blob = vec![0xff, 0xfe, 0x00, 0x89];
        blob.extend_from_slice(b"AKIAABCDEFGHIJKLMNOP");
        blob.extend_from_slice(&[0xc3, 0x28, 0xa0, 0xa1]);
        let mut v = serde_json::json!([STANDARD.encode(&blob)]);
        assert_eq!(r.redact(&mut v), 1, "{v}");
        assert_eq!(v[0], REDACTED);
        // Random-looking binary without a secret stays.
        let noise: Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8 | 0x80).collect();
        let mut v = serde_json::json!([STANDARD.encode(&noise)]);
        assert_eq!(r.redact(&mut v), 0, "{v}");
    }

    /// A run that does not read as plain base64 (characters glued before or after it, the
    /// two alphabets mixed) is read every other way a reader could.
    #[test]
    fn base64_hides_nothing_by_misalignment_or_mixed_alphabets() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let secret = "aws key AKIAABCDEFGHIJKLMNOP for prod, do not share???";
        let std = STANDARD.encode(secret);
        let url = URL_SAFE_NO_PAD.encode(secret);
        // Both alphabets' extra characters are in play (`???` encodes to `Pz8/`).
        assert!(std.contains('/') && url.contains('_'), "{std} {url}");
        let r = Responses::standard();
        for run in [
            format!("x{std}"),
            format!("xy{std}"),
            format!("xyz{std}"),
            format!("{std}A"),
            format!("{std}-"),
            format!("_{std}"),
            format!("{url}+"),
            format!("Q{url}"),
        ] {
            let mut v = serde_json::json!([format!("see {run} here")]);
            assert!(r.redact(&mut v) >= 1, "{run}: {v}");
            assert!(!v[0].as_str().unwrap().contains(&std[4..]), "{v}");
        }
    }

    /// Base64 runs are read whatever their padding and alphabet.
    #[test]
    fn base64_hides_nothing_by_padding_or_alphabet() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let secret = "key AKIAABCDEFGHIJKLMNOP here?>>";
        let r = Responses::standard();
        for run in [
            STANDARD.encode(secret),
            format!("{}=", STANDARD.encode(secret)),
            STANDARD.encode(secret).trim_end_matches('=').to_string(),
            URL_SAFE_NO_PAD.encode(secret),
        ] {
            let mut v = serde_json::json!([format!("blob {run} end")]);
            assert_eq!(r.redact(&mut v), 1, "{run}");
        }
    }

    /// A token right after a non-ASCII letter is still a token.
    #[test]
    fn a_secret_glued_to_a_non_ascii_letter_is_found() {
        let r = Responses::standard();
        let raw = r#"["éAKIAABCDEFGHIJKLMNOP", "ключ:ghp_abcdefghijklmnopqrstuvwxyz0123"]"#;
        let mut v: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert!(r.may_redact(raw));
        assert_eq!(r.redact(&mut v), 2, "{v}");
    }

    #[test]
    fn policy_patterns_add_to_the_builtin_set() {
        let r = Responses::new(true, vec![Regex::new(r"internal-\d+").unwrap()], 0);
        let mut v = serde_json::json!(["see internal-42 and internal-7"]);
        assert_eq!(r.redact(&mut v), 2);
        assert_eq!(v[0], "see [REDACTED] and [REDACTED]");
    }
}
