//! `path_under`: is a path a client sent inside a directory, however the server reads it?
//!
//! A constraint holds only if it holds under every reading a server may apply, so a path is
//! turned into every absolute place it may name ([`resolutions`]):
//! - its spelling: `~` is the principal's home, `file:` URIs (`file:///x`, `file:/x`,
//!   `file://localhost/x`, any case) are percent-decoded;
//! - a relative path is taken against the server's working directory *and* each directory
//!   it may resolve against instead (its allowed roots: directories on its command line,
//!   roots the host listed);
//! - `//`, `.` and `..` collapse lexically (`..` at the root stays at the root), and, where
//!   the guard can see the file system, the existing prefix is also resolved as the kernel
//!   walks it (symlinks followed, `..` after a link taken from its target) and as servers that
//!   normalize first and then call `realpath` reach it;
//! - names are compared exactly and as a server on a case-insensitive or Unicode-mapping file
//!   system would (NFKC, lower case) ([`under_any`]).
//!
//! When the readings disagree the answer is unknown, which rule evaluation treats fail-closed.
//! Anything that cannot be resolved (a relative path with nowhere to resolve it, `~other`, a
//! NUL byte, a URI with a query) is [`Unresolved`], also fail-closed. What the guard cannot
//! see is a link created after the decision (between the check and the server's use).

use std::borrow::Cow;
use std::fmt;

/// Why a path could not be made absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// A relative path, and the server's working directory is not known.
    NoCwd,
    /// `~`, and the principal's home is not known.
    NoHome,
    /// `~name`: another user's home is not looked up.
    OtherHome,
    /// A NUL byte (no system call would accept it; a server might cut it off).
    Nul,
    /// A `file:` URI with a query, fragment, host or bad escape.
    BadUri,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unresolved::NoCwd => "relative path and the server's working directory is unknown",
            Unresolved::NoHome => "`~` and the principal's home is unknown",
            Unresolved::OtherHome => "`~user` paths are not resolved",
            Unresolved::Nul => "path contains a NUL byte",
            Unresolved::BadUri => "file: URI with a host, query, fragment or bad escape",
        })
    }
}

/// Where a relative path may be resolved, and whether the file system is consulted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bases<'a> {
    /// The server's working directory.
    pub cwd: Option<&'a str>,
    /// Other directories the server may resolve a relative path against: its allowed roots.
    pub roots: &'a [String],
    /// Resolve the existing prefix of each reading through this file system's symlinks.
    pub follow_links: bool,
}

/// Makes `raw` absolute and lexically normal, against `cwd` alone.
pub fn resolve(raw: &str, cwd: Option<&str>, home: Option<&str>) -> Result<String, Unresolved> {
    let decoded;
    let raw = match strip_file_scheme(raw) {
        Some(rest) => {
            decoded = decode_file_uri(rest)?;
            decoded.as_str()
        }
        None => raw,
    };
    if raw.contains('\0') {
        return Err(Unresolved::Nul);
    }
    if let Some(rest) = raw.strip_prefix('~') {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Err(Unresolved::OtherHome);
        }
        let home = home.ok_or(Unresolved::NoHome)?;
        return Ok(normalize_joined(home, rest));
    }
    if raw.starts_with('/') {
        return Ok(normalize(raw));
    }
    let cwd = cwd.ok_or(Unresolved::NoCwd)?;
    Ok(normalize_joined(cwd, raw))
}

/// Every absolute, normal path a server may take `raw` to name (at least one).
pub fn resolutions(
    raw: &str,
    bases: Bases<'_>,
    home: Option<&str>,
) -> Result<Vec<String>, Unresolved> {
    let mut out = Vec::with_capacity(2);
    let relative =
        !(raw.starts_with('/') || raw.starts_with('~') || strip_file_scheme(raw).is_some());
    if !relative {
        let p = resolve(raw, None, home)?;
        if bases.follow_links {
            push_links(&mut out, &p, unresolved_spelling(raw, home));
        }
        push_unique(&mut out, p);
        return Ok(out);
    }
    if raw.contains('\0') {
        return Err(Unresolved::Nul);
    }
    let cwd = bases.cwd.into_iter();
    let mut any = false;
    for base in cwd.chain(bases.roots.iter().map(String::as_str)) {
        any = true;
        let joined = format!("/{base}/{raw}");
        let p = normalize(&joined);
        if bases.follow_links {
            push_links(&mut out, &p, Some(joined));
        }
        push_unique(&mut out, p);
    }
    if !any {
        return Err(Unresolved::NoCwd);
    }
    Ok(out)
}

/// An absolute spelling of `raw` before `.`/`..` are collapsed, for the kernel's walk.
fn unresolved_spelling(raw: &str, home: Option<&str>) -> Option<String> {
    if raw.starts_with('/') {
        return Some(raw.to_string());
    }
    let rest = raw.strip_prefix('~')?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(format!("{}{rest}", home?))
    } else {
        None
    }
}

/// Adds what the existing prefix of `normal` (and of `joined`, walked as the kernel does)
/// resolves to through symlinks.
fn push_links(out: &mut Vec<String>, normal: &str, joined: Option<String>) {
    for p in [Some(normal.to_string()), joined].into_iter().flatten() {
        if let Some(real) = walk(&p) {
            push_unique(out, real);
        }
    }
}

fn push_unique(out: &mut Vec<String>, p: String) {
    if !out.contains(&p) {
        out.push(p);
    }
}

/// The longest prefix of absolute `path` that exists, resolved by the kernel (symlinks, and
/// `..` as the kernel takes it), with the rest appended and normalized.
fn walk(path: &str) -> Option<String> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // Deeper than any real tree: not worth a system call per level.
    if comps.len() > 256 {
        return None;
    }
    for k in (1..=comps.len()).rev() {
        let prefix = format!("/{}", comps[..k].join("/"));
        if let Ok(real) = std::fs::canonicalize(&prefix) {
            let real = real.to_str()?.to_string();
            if k == comps.len() {
                return Some(real);
            }
            return Some(normalize(&format!("{real}/{}", comps[k..].join("/"))));
        }
    }
    None
}

/// Whether every reading in `paths` is inside one of `roots` (`Some(true)`), none is
/// (`Some(false)`), or they disagree (`None`). Each is compared exactly and folded.
pub fn under_any<P: AsRef<str>, R: AsRef<str>>(paths: &[P], roots: &[R]) -> Option<bool> {
    let (mut yes, mut no) = (false, false);
    for p in paths {
        let p = p.as_ref();
        let exact = roots.iter().any(|r| is_under(p, r.as_ref()));
        let fp = fold(p);
        let folded = roots.iter().any(|r| is_under(&fp, &fold(r.as_ref())));
        for b in [exact, folded] {
            if b {
                yes = true;
            } else {
                no = true;
            }
        }
    }
    match (yes, no) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// A name as a case-insensitive, Unicode-mapping file system would store it.
fn fold(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            Cow::Borrowed(s)
        }
    } else {
        use unicode_normalization::UnicodeNormalization;
        Cow::Owned(s.nfkc().collect::<String>().to_lowercase())
    }
}

/// The part of a `file:` URI after the scheme and its `//` (any case), if `raw` is one.
fn strip_file_scheme(raw: &str) -> Option<&str> {
    let scheme = raw.get(..5)?;
    if !scheme.eq_ignore_ascii_case("file:") {
        return None;
    }
    let rest = &raw[5..];
    Some(rest.strip_prefix("//").unwrap_or(rest))
}

fn normalize_joined(base: &str, rest: &str) -> String {
    let mut joined = String::with_capacity(base.len() + rest.len() + 2);
    // A base that is not absolute is taken from the root: homes and cwds always are.
    joined.push('/');
    joined.push_str(base);
    joined.push('/');
    joined.push_str(rest);
    normalize(&joined)
}

/// Collapses `//`, `.` and `..` in an absolute path; the result starts with `/` and has no
/// trailing slash (except `/` itself).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether an absolute path is already what [`normalize`] would make of it.
pub fn is_normal(path: &str) -> bool {
    path == "/"
        || (path.starts_with('/')
            && !path.ends_with('/')
            && path[1..]
                .split('/')
                .all(|s| !(s.is_empty() || s == "." || s == "..")))
}

/// Whether normalized `path` is `root` or inside it (both from [`normalize`]).
pub fn is_under(path: &str, root: &str) -> bool {
    if root == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(root) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Words in an argument's name that make its strings paths: `path`, `repo_path`,
/// `oldPath`, `paths`, `source`, `destination`, `file_name`, `targetDir`, `uri`, ...
const PATH_WORDS: &[&str] = &[
    "path",
    "paths",
    "file",
    "files",
    "filename",
    "filepath",
    "filenames",
    "dir",
    "dirs",
    "directory",
    "directories",
    "folder",
    "folders",
    "root",
    "roots",
    "uri",
    "uris",
    "source",
    "sources",
    "src",
    "dest",
    "destination",
    "destinations",
    "dst",
    "target",
    "cwd",
    "location",
    "workdir",
];

/// Every string in `v`, at any depth, that names a file: under a key with a path word in
/// its name (split at `_`, `-`, `.` and camelCase humps), or spelled like a path (`/...`,
/// `~`, `./`, `../`, `file:`), so a rule cannot be skirted by an argument it did not name.
pub fn path_like_strings<'v>(v: &'v serde_json::Value, key: Option<&str>, out: &mut Vec<&'v str>) {
    use serde_json::Value;
    match v {
        Value::String(s) if key.is_some_and(is_path_key) || looks_like_path(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| path_like_strings(i, key, out)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, v)| path_like_strings(v, Some(k), out)),
        _ => {}
    }
}

fn is_path_key(key: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if !c.is_alphanumeric() {
            words.push(std::mem::take(&mut cur));
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        cur.extend(c.to_lowercase());
    }
    words.push(cur);
    words.iter().any(|w| PATH_WORDS.contains(&w.as_str()))
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with('~')
        || s.starts_with("./")
        || s.starts_with("../")
        || strip_file_scheme(s).is_some()
}

/// `file://` URIs: the empty host or `localhost`, no query or fragment, `%XX` decoded.
fn decode_file_uri(rest: &str) -> Result<String, Unresolved> {
    let path = if rest.starts_with('/') {
        rest
    } else if let Some(p) = rest
        .get(..9)
        .filter(|h| h.eq_ignore_ascii_case("localhost"))
        .map(|_| &rest[9..])
    {
        if !p.starts_with('/') {
            return Err(Unresolved::BadUri);
        }
        p
    } else {
        return Err(Unresolved::BadUri);
    };
    if path.contains(['?', '#']) {
        return Err(Unresolved::BadUri);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(Unresolved::BadUri)?;
            let hex = std::str::from_utf8(hex).map_err(|_| Unresolved::BadUri)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| Unresolved::BadUri)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Unresolved::BadUri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn under(p: &str, root: &str) -> bool {
        resolve(p, Some("/srv/app"), Some("/home/a")).is_ok_and(|p| is_under(&p, &normalize(root)))
    }

    #[test]
    fn dot_dot_cannot_climb_out() {
        assert!(!under("/home/a/../../etc/passwd", "/home/a"));
        assert!(!under("/home/a/../b", "/home/a"));
        assert!(!under("~/../b/x", "/home/a"));
        assert!(!under("../../etc/passwd", "/srv/app"));
        assert!(!under("file:///home/a/%2e%2e/b", "/home/a"));
        assert!(!under("/home/ab", "/home/a"));
    }

    #[test]
    fn spellings_of_the_same_place_are_under() {
        for p in [
            "/home/a",
            "/home/a/",
            "//home//a/./x",
            "~/x",
            "~",
            "/home/a/b/../x",
            "file:///home/a/x%20y",
        ] {
            assert!(under(p, "/home/a"), "{p}");
        }
        assert!(under("data/x.csv", "/srv/app/data"));
        assert!(under("./x", "/srv/app"));
        assert!(under("/etc", "/"));
    }

    #[test]
    fn unresolvable_paths_say_why() {
        assert_eq!(resolve("x", None, None), Err(Unresolved::NoCwd));
        assert_eq!(resolve("~/x", None, None), Err(Unresolved::NoHome));
        assert_eq!(
            resolve("~root/x", None, Some("/h")),
            Err(Unresolved::OtherHome)
        );
        assert_eq!(resolve("/a\0b", None, None), Err(Unresolved::Nul));
        assert_eq!(resolve("file:///a%00b", None, None), Err(Unresolved::Nul));
        assert_eq!(
            resolve("file://evil/a", None, None),
            Err(Unresolved::BadUri)
        );
        assert_eq!(resolve("file:///a?b", None, None), Err(Unresolved::BadUri));
        assert_eq!(resolve("file:///a%zz", None, None), Err(Unresolved::BadUri));
        assert_eq!(
            resolve("file://localhost/a/../b", None, None),
            Ok("/b".into())
        );
    }

    #[test]
    fn is_normal_agrees_with_normalize() {
        for p in [
            "/", "/a", "/a/b", "/a/", "//a", "/a/./b", "/a/../b", "/..", "/.", "a", "",
        ] {
            assert_eq!(is_normal(p), p.starts_with('/') && normalize(p) == p, "{p}");
        }
    }

    fn readings(raw: &str, cwd: &str, roots: &[&str], links: bool) -> Vec<String> {
        let roots: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
        resolutions(
            raw,
            Bases {
                cwd: Some(cwd),
                roots: &roots,
                follow_links: links,
            },
            Some("/home/a"),
        )
        .unwrap()
    }

    #[test]
    fn a_relative_path_is_read_against_the_cwd_and_every_root() {
        let r = readings(
            ".ssh/authorized_keys",
            "/home/a/proj",
            &["/home/a", "/srv"],
            false,
        );
        assert_eq!(
            r,
            [
                "/home/a/proj/.ssh/authorized_keys",
                "/home/a/.ssh/authorized_keys",
                "/srv/.ssh/authorized_keys"
            ]
        );
        // Under ~/.ssh for one reading, not for the others: the server decides, so unknown.
        assert_eq!(under_any(&r, &["/home/a/.ssh"]), None);
        assert_eq!(under_any(&r, &["/home/a", "/srv"]), Some(true));
        assert_eq!(under_any(&r, &["/etc"]), Some(false));
        assert_eq!(
            resolutions("x", Bases::default(), None),
            Err(Unresolved::NoCwd)
        );
        let only_roots = ["/srv".to_string()];
        assert_eq!(
            resolutions(
                "x",
                Bases {
                    cwd: None,
                    roots: &only_roots,
                    follow_links: false
                },
                None
            ),
            Ok(vec!["/srv/x".into()])
        );
    }

    #[test]
    fn unicode_and_case_spellings_of_a_root_are_not_outside_it() {
        let nfc = "/home/a/caf\u{e9}";
        let nfd = "/home/a/cafe\u{301}/secret";
        assert!(!is_under(nfd, nfc), "bytes differ");
        assert_eq!(under_any(&[nfd.to_string()], &[nfc]), None);
        assert_eq!(
            under_any(&["/home/a/.SSH/id_rsa".to_string()], &["/home/a/.ssh"]),
            None
        );
        // Fullwidth solidus and friends fold too (NFKC).
        assert_eq!(
            under_any(
                &["/home/a/\u{ff0e}ssh/id_rsa".to_string()],
                &["/home/a/.ssh"]
            ),
            None
        );
        assert_eq!(
            under_any(&["/home/a/src/x".to_string()], &["/home/a/src"]),
            Some(true)
        );
    }

    #[test]
    fn file_uris_in_any_spelling_are_paths() {
        for raw in [
            "file:///home/a/.ssh/x",
            "FILE:///home/a/.ssh/x",
            "file:/home/a/.ssh/x",
            "file://localhost/home/a/.ssh/x",
            "File://LOCALHOST/home/a/%2essh/x",
        ] {
            let r = readings(raw, "/srv", &[], false);
            assert_eq!(
                under_any(&r, &["/home/a/.ssh"]),
                Some(true),
                "{raw} -> {r:?}"
            );
        }
    }

    #[test]
    fn symlinks_of_the_existing_prefix_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let base = base.to_str().unwrap();
        std::fs::create_dir_all(format!("{base}/secret/inner")).unwrap();
        std::fs::create_dir_all(format!("{base}/proj")).unwrap();
        std::os::unix::fs::symlink(format!("{base}/secret/inner"), format!("{base}/proj/link"))
            .unwrap();
        let secret = format!("{base}/secret");
        // Through the link to a file that does not exist yet.
        let r = readings(&format!("{base}/proj/link/new.txt"), "/", &[], true);
        assert!(r.contains(&format!("{base}/secret/inner/new.txt")), "{r:?}");
        assert_eq!(under_any(&r, &[&secret]), None);
        // `..` after a link: the kernel climbs from the target, a lexical reading does not.
        let r = readings(&format!("{base}/proj/link/../x"), "/", &[], true);
        assert!(
            r.contains(&format!("{base}/secret/x")) && r.contains(&format!("{base}/proj/x")),
            "{r:?}"
        );
        // Relative, against the cwd.
        let r = readings("link/k", &format!("{base}/proj"), &[], true);
        assert_eq!(under_any(&r, &[&secret]), None);
        // Without following links the text alone is judged.
        let r = readings(&format!("{base}/proj/link/new.txt"), "/", &[], false);
        assert_eq!(under_any(&r, &[&secret]), Some(false));
    }

    #[test]
    fn path_like_strings_are_found_at_any_depth() {
        let v = serde_json::json!({
            "source": "a", "destination": ".ssh/authorized_keys", "repo_path": "r", "oldPath": "o",
            "paths": ["p1", "p2"], "edits": [{"oldText": "/etc/passwd", "newText": "plain words"}],
            "content": "hello", "excludePatterns": ["node_modules"], "nested": {"targetDir": "t", "uri": "file:///x"},
            "mode": "~/y", "count": 3
        });
        let mut found = Vec::new();
        path_like_strings(&v, None, &mut found);
        found.sort();
        assert_eq!(
            found,
            [
                ".ssh/authorized_keys",
                "/etc/passwd",
                "a",
                "file:///x",
                "o",
                "p1",
                "p2",
                "r",
                "t",
                "~/y"
            ]
        );
    }

    proptest! {
        /// Whatever the segments, a path the check calls "under root" names, once the
        /// kernel's lexical walk is done, a place inside root.
        #[test]
        fn normalization_cannot_be_escaped(segs in proptest::collection::vec(
            prop_oneof!["\\.\\.", "\\.", "", "[a-c]{1,2}", "~", "%2e%2e"], 0..12), abs in any::<bool>()) {
            let raw = format!("{}{}", if abs { "/home/a/" } else { "" }, segs.join("/"));
            if let Ok(p) = resolve(&raw, Some("/home/a"), Some("/home/a")) {
                // Walk it like the kernel would (no symlinks): a stack of components.
                let mut stack: Vec<&str> = Vec::new();
                for s in p.split('/') {
                    match s { "" | "." => {}, ".." => { stack.pop(); }, s => stack.push(s) }
                }
                let inside = stack.len() >= 2 && stack[0] == "home" && stack[1] == "a";
                prop_assert_eq!(is_under(&p, "/home/a"), inside, "{} -> {}", raw, p);
                prop_assert!(!p.split('/').any(|s| s == ".." || s == "."), "{}", p);
            }
        }

        #[test]
        fn normalize_is_idempotent(s in "[/a.]{0,20}") {
            let once = normalize(&format!("/{s}"));
            prop_assert_eq!(normalize(&once), once.clone());
        }
    }
}
