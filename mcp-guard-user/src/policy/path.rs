//! `path_under`: is a path a client sent inside a directory?
//!
//! Purely lexical, like the kernel sees a path before it follows symlinks: `~` is the
//! principal's home, a relative path is taken against the server's working directory,
//! `file://` URIs are percent-decoded, then `//`, `.` and `..` are collapsed (`..` at the
//! root stays at the root). Anything that cannot be resolved this way (a relative path with
//! no known cwd, `~other`, a NUL byte, a URI with a query) is [`Unresolved`], which the
//! rule evaluation treats fail-closed.
//!
//! Symlinks are out of scope: the server resolves them in its own mount namespace, at its
//! own time, so a link inside an allowed tree that points out of it is not caught here.
//! Confine such servers with the file system (read-only mounts, a dedicated user).

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

/// Makes `raw` absolute and lexically normal.
pub fn resolve(raw: &str, cwd: Option<&str>, home: Option<&str>) -> Result<String, Unresolved> {
    let decoded;
    let raw = match raw.strip_prefix("file://") {
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

/// `file://` URIs: the empty host or `localhost`, no query or fragment, `%XX` decoded.
fn decode_file_uri(rest: &str) -> Result<String, Unresolved> {
    let path = if rest.starts_with('/') {
        rest
    } else if let Some(p) = rest.strip_prefix("localhost") {
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
