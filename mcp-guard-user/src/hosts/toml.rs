//! TOML hosts (Codex `[mcp_servers.NAME]`): toml_edit's immutable `Document`
//! keeps the byte span of every key and value.

use std::ops::Range;

use toml_edit::{Document, Item, TableLike, Value};

use super::{ArgsArr, Host, RawEntry, Shape, Spanned, Transport};

pub(crate) fn entries(host: Host, text: &str) -> Result<Vec<RawEntry>, String> {
    let doc = Document::parse(text.to_string())
        .map_err(|e| format!("cannot parse as TOML: {}", e.to_string().trim_end()))?;
    let Some(servers) = doc.get(host.servers_key()).and_then(Item::as_table_like) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (name, item) in servers.iter() {
        if let Some(t) = item.as_table_like() {
            out.push(entry_of(text, name, t, item.is_inline_table()));
        }
    }
    Ok(out)
}

fn span_of_value(v: &Value) -> Option<Range<usize>> {
    v.span()
}

fn line_end(text: &str, pos: usize) -> usize {
    let le = text[pos..]
        .find('\n')
        .map(|i| pos + i)
        .unwrap_or(text.len());
    if le > pos && text.as_bytes()[le - 1] == b'\r' {
        le - 1
    } else {
        le
    }
}

fn line_indent(text: &str, pos: usize) -> &str {
    let start = super::line_start(text, pos);
    let line = &text[start..pos];
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

fn entry_of(text: &str, name: &str, t: &dyn TableLike, inline: bool) -> RawEntry {
    let url = t.get("url").and_then(Item::as_str).map(str::to_string);
    let mut e = RawEntry {
        name: name.to_string(),
        scope: None,
        transport: Transport::Unknown,
        url: url.clone(),
        shape: None,
    };
    if url.is_some() {
        e.transport = Transport::Remote;
        return e;
    }
    let Some(cmd_item) = t.get("command") else {
        return e;
    };
    let (Some(cmd_str), Some(cmd_span)) = (
        cmd_item.as_str(),
        cmd_item.as_value().and_then(span_of_value),
    ) else {
        return e;
    };
    let cmd = Spanned {
        range: cmd_span,
        value: Some(cmd_str.to_string()),
    };
    let args_kv = t.get_key_value("args");
    let args = match args_kv {
        None => None,
        Some((_, item)) => {
            let (Some(a), Some(sp)) = (item.as_array(), item.as_value().and_then(span_of_value))
            else {
                return e; // `args` that is not an array (or has no span): leave alone
            };
            let mut elems = Vec::new();
            for v in a.iter() {
                let Some(r) = span_of_value(v) else { return e };
                elems.push(Spanned {
                    range: r,
                    value: v.as_str().map(str::to_string),
                });
            }
            Some((
                ArgsArr {
                    open: sp.start + 1,
                    elems,
                    sep: ", ".into(),
                },
                sp,
            ))
        }
    };
    let (absent_insert, absent_removal) = if inline {
        let removal = match (args_kv, &args) {
            (Some((k, _)), Some((_, asp))) => k.span().and_then(|ks| {
                (ks.start >= cmd.range.end && &text[cmd.range.end..ks.start] == ", ")
                    .then_some(cmd.range.end..asp.end)
            }),
            _ => None,
        };
        ((cmd.range.end, ", args = ".to_string()), removal)
    } else {
        let le = line_end(text, cmd.range.end);
        let indent = line_indent(text, cmd.range.start).to_string();
        let nl = if text[le..].starts_with("\r\n") {
            "\r\n"
        } else {
            "\n"
        };
        let removal = match (args_kv, &args) {
            (Some((k, _)), Some((_, asp))) => k.span().and_then(|ks| {
                let gap = text.get(le..ks.start)?;
                let ok = gap.strip_prefix(nl).is_some_and(|g| g == indent);
                ok.then_some(le..asp.end)
            }),
            _ => None,
        };
        ((le, format!("{nl}{indent}args = ")), removal)
    };
    e.transport = Transport::Stdio;
    e.shape = Some(Shape::Separate {
        cmd,
        args: args.map(|(a, _)| a),
        absent_insert,
        absent_removal,
    });
    e
}
