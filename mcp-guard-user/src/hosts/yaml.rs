//! YAML hosts (Goose, Continue): saphyr-parser's events carry source spans, from which a
//! small tree is built; only the spans of the command scalar and the start of the `args`
//! sequence are edited, so comments, quoting, key order and block or flow style stay as
//! they are.
//!
//! - Goose, `~/.config/goose/config.yaml`: `extensions:` is a map of extensions;
//!   `type: stdio` ones have `cmd`, `args`, `envs`; `sse` / `streamable_http` ones a
//!   `uri`; `builtin`, `platform`, `frontend`, `inline_python` run inside Goose.
//! - Continue, `config.yaml` and block files in `.continue/mcpServers/`: `mcpServers:` is
//!   a list of `{name, command, args, env}` (`type: sse` / `streamable-http` with `url`);
//!   a block file copied from another host may have a `mcpServers:` map instead.

use std::ops::Range;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::{ArgsArr, Host, RawEntry, Shape, Spanned, Transport, line_start};

/// A node of the document, with byte ranges into the text.
#[derive(Debug)]
enum Node {
    Scalar {
        value: String,
        style: ScalarStyle,
        range: Range<usize>,
    },
    Seq {
        /// Flow (`[a, b]`) rather than block (`- a`).
        flow: bool,
        /// The `[`, or the first `-`.
        start: usize,
        /// Just after the `]` (flow).
        end: usize,
        items: Vec<Node>,
        /// Something in it mcp-guard does not follow (see [`Node::Other`]).
        suspect: Option<&'static str>,
    },
    Map {
        flow: bool,
        entries: Vec<(Node, Node)>,
        suspect: Option<&'static str>,
    },
    /// What mcp-guard does not follow, and so cannot say how a host reads: an alias, an
    /// anchor (editing it would change every alias of it), a tag other than `!!str`,
    /// `!!map`, `!!seq`, a merge key `<<`.
    Other(&'static str),
}

impl Node {
    /// Why this node, or one inside it, cannot be followed.
    fn suspect(&self) -> Option<&'static str> {
        match self {
            Node::Other(why) => Some(why),
            Node::Seq { suspect, .. } | Node::Map { suspect, .. } => *suspect,
            Node::Scalar { .. } => None,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The value under `key` in a map.
    fn get(&self, key: &str) -> Option<&(Node, Node)> {
        match self {
            Node::Map { entries, .. } => entries.iter().find(|(k, _)| k.str() == Some(key)),
            _ => None,
        }
    }

    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|(_, v)| v.str())
    }
}

/// Byte offsets of the parser's character positions.
struct Offsets(Vec<usize>);

impl Offsets {
    fn new(text: &str) -> Offsets {
        let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        v.push(text.len());
        Offsets(v)
    }

    fn at(&self, chars: usize) -> usize {
        self.0.get(chars).copied().unwrap_or(usize::MAX)
    }

    fn range(&self, span: &Span) -> Range<usize> {
        self.at(span.start.index())..self.at(span.end.index())
    }
}

/// A collection being read, and for a map the key waiting for its value.
struct Open {
    node: Node,
    key: Option<Node>,
    suspect: Option<&'static str>,
}

/// Whether a tag is one every YAML reader reads as the plain node: `!!str`, `!!map`, `!!seq`.
fn plain_tag(tag: Option<&saphyr_parser::Tag>) -> bool {
    tag.is_none_or(|t| {
        t.is_yaml_core_schema() && matches!(t.suffix.as_str(), "str" | "map" | "seq")
    })
}

/// Builds the tree of the first document. A byte order mark is skipped, as hosts' readers
/// skip it (ranges stay those of `text`).
fn tree(text: &str) -> Result<Option<Node>, String> {
    let bom = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let body = &text[bom..];
    let offsets = Offsets::new(body);
    let mut parser = Parser::new_from_str(body);
    let mut stack: Vec<Open> = Vec::new();
    while let Some(ev) = parser.next_event() {
        let (ev, span) = ev.map_err(|e| format!("cannot parse as YAML: {e}"))?;
        let r = offsets.range(&span);
        let r = r.start + bom..r.end + bom;
        let node = match ev {
            Event::SequenceStart(_, tag) | Event::MappingStart(_, tag)
                if !plain_tag(tag.as_deref()) =>
            {
                skip(&mut parser)?;
                Node::Other("a tag")
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let flow = r.end > r.start;
                let node = if matches!(ev, Event::SequenceStart(..)) {
                    Node::Seq {
                        flow,
                        start: r.start,
                        end: r.end,
                        items: Vec::new(),
                        suspect: None,
                    }
                } else {
                    Node::Map {
                        flow,
                        entries: Vec::new(),
                        suspect: None,
                    }
                };
                let suspect = (anchor != 0).then_some("an anchor");
                stack.push(Open {
                    node,
                    key: None,
                    suspect,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let open = stack.pop().ok_or("unbalanced YAML events")?;
                let mut done = open.node;
                match &mut done {
                    Node::Seq { end, suspect, .. } => {
                        *end = r.end;
                        *suspect = open.suspect;
                    }
                    Node::Map { suspect, .. } => *suspect = open.suspect,
                    _ => {}
                }
                done
            }
            Event::Scalar(_, _, anchor, _) if anchor != 0 => Node::Other("an anchor"),
            Event::Scalar(_, _, _, tag) if !plain_tag(tag.as_deref()) => Node::Other("a tag"),
            Event::Scalar(value, ScalarStyle::Plain, _, _) if value == "<<" => {
                Node::Other("a merge key (<<)")
            }
            Event::Scalar(value, style, _, _) => Node::Scalar {
                value: value.into_owned(),
                style,
                range: r.start..scalar_end(text, &r, style),
            },
            Event::Alias(_) => Node::Other("an alias"),
            _ => continue,
        };
        let Some(open) = stack.last_mut() else {
            // The first document's root: what follows it is not read.
            return Ok(Some(node));
        };
        open.suspect = open.suspect.or(node.suspect());
        match &mut open.node {
            Node::Seq { items, .. } => items.push(node),
            Node::Map { entries, .. } => match open.key.take() {
                None => open.key = Some(node),
                Some(k) => entries.push((k, node)),
            },
            _ => {}
        }
    }
    Ok(None)
}

/// Where a scalar starting at `r.start` ends: the parser's span may run on over the
/// blanks and comment that follow it.
fn scalar_end(text: &str, r: &Range<usize>, style: ScalarStyle) -> usize {
    let b = text.as_bytes();
    let close = |quote: u8| {
        let mut i = r.start + 1;
        while i < b.len() {
            match b[i] {
                b'\\' if quote == b'"' => i += 2,
                q if q == quote && quote == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 2,
                q if q == quote => return i + 1,
                _ => i += 1,
            }
        }
        r.end
    };
    match style {
        ScalarStyle::DoubleQuoted => close(b'"'),
        ScalarStyle::SingleQuoted => close(b'\''),
        ScalarStyle::Plain => {
            let span = text.get(r.clone()).unwrap_or_default();
            // A comment starts at a `#` after a blank; a plain scalar cannot hold one.
            let cut = span
                .char_indices()
                .find(|&(i, c)| c == '#' && i > 0 && span[..i].ends_with([' ', '\t']))
                .map_or(span.len(), |(i, _)| i);
            r.start + span[..cut].trim_end().len()
        }
        _ => r.end,
    }
}

/// Consumes the events of a collection whose start was just read.
fn skip(parser: &mut Parser<'_, saphyr_parser::StrInput<'_>>) -> Result<(), String> {
    let mut depth = 1usize;
    while depth > 0 {
        let Some(ev) = parser.next_event() else {
            return Err("unbalanced YAML events".into());
        };
        match ev.map_err(|e| format!("cannot parse as YAML: {e}"))?.0 {
            Event::SequenceStart(..) | Event::MappingStart(..) => depth += 1,
            Event::SequenceEnd | Event::MappingEnd => depth -= 1,
            _ => {}
        }
    }
    Ok(())
}

/// The server entries of a Goose or Continue config.
pub(crate) fn entries(host: Host, text: &str) -> Result<Vec<RawEntry>, String> {
    let root = match tree(text)? {
        None => return Ok(Vec::new()), // empty file
        Some(n @ Node::Map { .. }) => n,
        Some(Node::Scalar { value, .. }) if value.is_empty() => return Ok(Vec::new()),
        Some(_) => return Err("cannot parse: top level is not a YAML mapping".into()),
    };
    unique_keys(text, &root)?;
    let key = match host {
        Host::Goose => "extensions",
        _ => "mcpServers",
    };
    // A key mcp-guard cannot read (an alias, a tag) could be the servers' key to the host.
    if let Node::Map { entries, .. } = &root
        && let Some(why) = entries.iter().find_map(|(k, _)| k.suspect())
    {
        return Err(unfollowed(why, "a top-level key"));
    }
    let mut out = Vec::new();
    let container = root.get(key).map(|(_, v)| v);
    if let Some(why) = container.and_then(Node::suspect) {
        return Err(unfollowed(why, key));
    }
    match container {
        Some(m @ Node::Map { entries, .. }) => {
            unique_keys(text, m)?;
            for (k, v) in entries {
                if let (Some(name), Node::Map { .. }) = (k.str(), v) {
                    unique_keys(text, v)?;
                    out.push(entry_of(host, text, name, v));
                }
            }
        }
        Some(Node::Seq { items, .. }) => {
            for (i, v) in items.iter().enumerate() {
                if let Node::Map { .. } = v {
                    unique_keys(text, v)?;
                    let name = v
                        .get_str("name")
                        .map_or_else(|| format!("#{}", i + 1), str::to_string);
                    out.push(entry_of(host, text, &name, v));
                }
            }
        }
        _ => {}
    }
    // A server the host runs from a command that cannot be edited safely makes the file
    // one to wrap by hand: reported, never silently left running unwrapped.
    for e in &out {
        if e.transport == Transport::Stdio && e.shape.is_none() {
            return Err(format!(
                "server {}: its command or args are written in a way mcp-guard does not edit (a block scalar, an explicit `?` key, args that are not a list); wrap it by hand",
                e.name
            ));
        }
    }
    Ok(out)
}

fn unfollowed(why: &str, place: &str) -> String {
    format!(
        "{place} uses {why}, which mcp-guard does not follow, so it cannot tell what the host runs; write it out plainly or wrap its servers by hand"
    )
}

/// A key named twice in a map the servers are read from is an error (see `json.rs`):
/// YAML readers disagree on which one counts.
fn unique_keys(text: &str, map: &Node) -> Result<(), String> {
    let Node::Map { entries, .. } = map else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    for (k, _) in entries {
        if let Node::Scalar { value, range, .. } = k
            && !seen.insert(value.as_str())
        {
            let line = text[..range.start.min(text.len())].matches('\n').count() + 1;
            return Err(format!(
                "key `{value}` appears twice in one mapping (line {line}): hosts read one of them; remove one"
            ));
        }
    }
    Ok(())
}

/// A scalar the edit can move and replace: plain or quoted, not a block scalar.
fn editable(n: &Node) -> Option<Spanned> {
    match n {
        Node::Scalar {
            value,
            style: ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted,
            range,
        } => Some(Spanned {
            range: range.clone(),
            value: Some(value.clone()),
        }),
        _ => None,
    }
}

/// The indentation of a line up to `at`, as spaces: the line's text before `at` must be
/// spaces, or spaces and the `- ` of a sequence item.
fn indent_before(text: &str, at: usize) -> Option<String> {
    let before = &text[line_start(text, at)..at];
    before
        .chars()
        .all(|c| c == ' ' || c == '-')
        .then(|| " ".repeat(before.chars().count()))
}

/// The line break of the line holding `at`: where it starts, and what it is.
fn line_end(text: &str, at: usize) -> (usize, &'static str) {
    match text[at..].find('\n') {
        Some(i) if i > 0 && text.as_bytes()[at + i - 1] == b'\r' => (at + i - 1, "\r\n"),
        Some(i) => (at + i, "\n"),
        None => (
            text.len(),
            if text.contains("\r\n") { "\r\n" } else { "\n" },
        ),
    }
}

fn args_of(text: &str, n: &Node) -> Option<ArgsArr> {
    let Node::Seq {
        flow, start, items, ..
    } = n
    else {
        return None;
    };
    let elems: Option<Vec<Spanned>> = items.iter().map(editable).collect();
    let elems = elems?;
    if *flow {
        return Some(ArgsArr {
            open: start + 1,
            elems,
            sep: ", ".into(),
        });
    }
    // A block sequence: the first item's line is `<spaces>- <item>` (where the sequence
    // starts, by the parser's account, differs between indented and indentless ones).
    let first = elems.first()?.range.start;
    let before = &text[line_start(text, first)..first];
    let dash = before.trim_end_matches(' ');
    let ind = dash.strip_suffix('-')?;
    if !ind.chars().all(|c| c == ' ') || dash.len() == before.len() {
        return None;
    }
    let (_, nl) = line_end(text, first);
    Some(ArgsArr {
        open: first,
        elems,
        sep: format!("{nl}{ind}- "),
    })
}

fn entry_of(host: Host, text: &str, name: &str, o: &Node) -> RawEntry {
    let ty = o.get_str("type").unwrap_or_default().to_ascii_lowercase();
    let url = ["url", "uri"]
        .iter()
        .find_map(|k| o.get_str(k))
        .map(str::to_string);
    let mut e = RawEntry {
        name: name.to_string(),
        scope: None,
        transport: Transport::Unknown,
        url: url.clone(),
        shape: None,
    };
    let remote = matches!(
        ty.as_str(),
        "sse"
            | "http"
            | "streamable_http"
            | "streamable-http"
            | "streamablehttp"
            | "websocket"
            | "remote"
    );
    let cmd_key = if host == Host::Goose {
        "cmd"
    } else {
        "command"
    };
    // The type decides (Goose picks the kind by it); without one, a command means a process
    // the host runs, whatever url stands beside it.
    if remote || (ty.is_empty() && url.is_some() && o.get(cmd_key).is_none()) {
        e.transport = Transport::Remote;
        return e;
    }
    // Goose's built-in kinds run inside Goose: nothing to wrap.
    if !ty.is_empty() && ty != "stdio" {
        return e;
    }
    let Some((key, cmd_node)) = o.get(cmd_key) else {
        return e;
    };
    e.transport = Transport::Stdio;
    let Some(cmd) = editable(cmd_node) else {
        return e;
    };
    let args_entry = o.get("args");
    let args = match args_entry {
        None => None,
        Some((_, n)) => match args_of(text, n) {
            Some(a) => Some(a),
            // `args` that is not a list of plain or quoted scalars: left alone.
            None => return e,
        },
    };
    let Node::Map { flow, .. } = o else {
        return e;
    };
    let Node::Scalar {
        range: key_range, ..
    } = key
    else {
        return e;
    };
    let (absent_insert, absent_removal) = if *flow {
        let removal = args_entry.and_then(|(k, v)| {
            let (Node::Scalar { range: kr, .. }, Node::Seq { end, .. }) = (k, v) else {
                return None;
            };
            (text.get(cmd.range.end..kr.start) == Some(", ")).then_some(cmd.range.end..*end)
        });
        ((cmd.range.end, ", args: ".to_string()), removal)
    } else {
        let Some(ind) = indent_before(text, key_range.start) else {
            return e;
        };
        let (at, nl) = line_end(text, cmd.range.end);
        let lead = format!("{nl}{ind}args: ");
        let removal = args_entry.and_then(|(k, v)| {
            let (Node::Scalar { range: kr, .. }, Node::Seq { start, end, .. }) = (k, v) else {
                return None;
            };
            let between = text.get(at..kr.start)? == &lead[..lead.len() - "args: ".len()];
            let colon = text.get(kr.end..*start)? == ": ";
            (between && colon).then_some(at..*end)
        });
        ((at, lead), removal)
    };
    e.shape = Some(Shape::Separate {
        cmd,
        args,
        absent_insert,
        absent_removal,
    });
    e
}

/// The command's source text as it can stand as an item of the `args` sequence: as
/// written when it can (so unwrap gives it back byte for byte), else re-encoded (a plain
/// scalar with characters that mean something in a flow sequence, or one that spans lines).
pub(crate) fn movable(raw: &str, value: &str, flow: bool) -> String {
    let quoted = raw.starts_with('"') || raw.starts_with('\'');
    let plain_ok = raw
        .chars()
        .all(|c| c.is_alphanumeric() || "-_./@+=~%".contains(c));
    if raw.contains('\n') || (flow && !quoted && !plain_ok) {
        super::enc(value)
    } else {
        raw.to_string()
    }
}

/// Whether a Continue block file is JSON (copied from another host) rather than YAML:
/// strict JSON only (no comments, no trailing commas), which YAML reads the same way, so
/// the two readings cannot differ. Anything else is read as the YAML the host reads.
pub(crate) fn is_json(text: &str) -> bool {
    let t = text.trim_start_matches('\u{feff}');
    t.trim_start().starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()
}
