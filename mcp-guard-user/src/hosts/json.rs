//! JSON / JSONC hosts: jsonc-parser's AST gives byte ranges for every node.

use jsonc_parser::ast::{Array, Object, ObjectProp, Value};
use jsonc_parser::common::Ranged;
use jsonc_parser::{CollectOptions, CommentCollectionStrategy, ParseOptions};

use super::{ArgsArr, Host, RawEntry, Shape, Spanned, Transport};

pub(crate) fn entries(host: Host, text: &str) -> Result<Vec<RawEntry>, String> {
    let parsed = jsonc_parser::parse_to_ast(
        text,
        &CollectOptions {
            comments: CommentCollectionStrategy::Off,
            tokens: false,
        },
        &ParseOptions::default(),
    )
    .map_err(|e| format!("cannot parse as JSON: {e}"))?;
    let root = match parsed.value {
        None => return Ok(Vec::new()), // empty file
        Some(Value::Object(o)) => o,
        Some(_) => return Err("cannot parse: top level is not a JSON object".into()),
    };
    unique_keys(text, &root)?;
    let mut containers = containers(host, text, &root)?;
    if host == Host::ClaudeCode
        && let Some(projects) = root.get_object("projects")
    {
        unique_keys(text, projects)?;
        for p in &projects.properties {
            if let Value::Object(po) = &p.value
                && let Some(m) = po.get_object("mcpServers")
            {
                unique_keys(text, po)?;
                containers.push(Container {
                    scope: Some(p.name.as_str().to_string()),
                    obj: m,
                    skip: None,
                });
            }
        }
    }
    let mut out = Vec::new();
    for Container { scope, obj, skip } in containers.drain(..) {
        unique_keys(text, obj)?;
        for prop in obj
            .properties
            .iter()
            .filter(|p| Some(p.name.as_str()) != skip)
        {
            if let Value::Object(entry) = &prop.value {
                unique_keys(text, entry)?;
                if let Some(Value::Object(inner)) = entry.get("command").map(|p| &p.value) {
                    unique_keys(text, inner)?;
                }
                out.push(entry_of(host, text, prop, entry, scope.clone()));
            }
        }
    }
    Ok(out)
}

/// One object whose members are server entries.
struct Container<'a> {
    /// Claude Code's project path for `.projects[path].mcpServers`.
    scope: Option<String>,
    obj: &'a Object<'a>,
    /// A member that is not a server (OpenCode's `servers` beside legacy entries).
    skip: Option<&'static str>,
}

/// Where the servers live in the file, per host and layout.
fn containers<'a>(
    host: Host,
    text: &str,
    root: &'a Object<'a>,
) -> Result<Vec<Container<'a>>, String> {
    let at = |obj| Container {
        scope: None,
        obj,
        skip: None,
    };
    let mut out = Vec::new();
    match host {
        // `mcp.json` keeps them under `servers`; before `mcp.json` they lived in
        // `settings.json` under `mcp.servers`, where files not yet moved still hold them.
        // https://code.visualstudio.com/docs/copilot/reference/mcp-configuration
        Host::VsCode => {
            if let Some(o) = root.get_object("servers") {
                out.push(at(o));
            }
            if let Some(mcp) = root.get_object("mcp") {
                unique_keys(text, mcp)?;
                if let Some(o) = mcp.get_object("servers") {
                    out.push(at(o));
                }
            }
        }
        // OpenCode V2 keeps them under `mcp.servers`; V1 (OpenCode 1.x) put each server
        // straight under `mcp`, where a V1 server could itself be named `servers`: that one
        // has a `type` string (V1 requires it), a V2 container does not.
        // https://opencode.ai/docs/mcp-servers/ and https://opencode.ai/v1/docs/mcp-servers/
        Host::OpenCode => {
            if let Some(mcp) = root.get_object("mcp") {
                unique_keys(text, mcp)?;
                let v2 = mcp.get_object("servers").filter(|o| {
                    !matches!(o.get("type").map(|p| &p.value), Some(Value::StringLit(_)))
                });
                match v2 {
                    Some(servers) => {
                        out.push(at(servers));
                        out.push(Container {
                            scope: None,
                            obj: mcp,
                            skip: Some("servers"),
                        });
                    }
                    None => out.push(at(mcp)),
                }
            }
        }
        _ => {
            if let Some(o) = root.get_object(host.servers_key()) {
                out.push(at(o));
            }
        }
    }
    Ok(out)
}

/// An object the hosts' config is read from must not name a key twice: JSON readers
/// disagree on which one counts (hosts built on JavaScript or Python take the last, this
/// parser's lookup the first), so a second `command`, server or `mcpServers` could make the
/// file read as wrapped here while the host runs something else. Such a file is an error,
/// left for its owner to fix.
fn unique_keys(text: &str, o: &Object) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for p in &o.properties {
        let name = p.name.as_str();
        if !seen.insert(name) {
            let line = text[..p.range.start].matches('\n').count() + 1;
            return Err(format!(
                "key `{name}` appears twice in one object (line {line}): hosts read the last one; remove one"
            ));
        }
    }
    Ok(())
}

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::StringLit(s) => Some(s.value.to_string()),
        _ => None,
    }
}

fn spanned(v: &Value) -> Spanned {
    let r = v.range();
    Spanned {
        range: r.start..r.end,
        value: str_of(v),
    }
}

fn arr(a: &Array) -> ArgsArr {
    ArgsArr {
        open: a.range.start + 1,
        elems: a.elements.iter().map(spanned).collect(),
        sep: ", ".into(),
    }
}

fn entry_of(
    host: Host,
    text: &str,
    prop: &ObjectProp,
    o: &Object,
    scope: Option<String>,
) -> RawEntry {
    let name = prop.name.as_str().to_string();
    let ty = o
        .get("type")
        .and_then(|p| str_of(&p.value))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let url = ["url", "serverUrl", "httpUrl"]
        .iter()
        .find_map(|k| o.get(k).and_then(|p| str_of(&p.value)));
    let remote_type = matches!(
        ty.as_str(),
        "http" | "sse" | "streamable-http" | "streamablehttp" | "remote" | "ws"
    );
    let mut e = RawEntry {
        name,
        scope,
        transport: Transport::Unknown,
        url: url.clone(),
        shape: None,
    };
    if url.is_some() || remote_type {
        e.transport = Transport::Remote;
        return e;
    }
    let Some(cmd_prop) = o.get("command") else {
        return e;
    };
    // The object holding command/args (Zed's legacy shape nests them under `command`).
    let (cmd_val, holder): (&Value, &Object) = match &cmd_prop.value {
        Value::Array(a) if host == Host::OpenCode || !a.elements.is_empty() => {
            e.transport = Transport::Stdio;
            e.shape = Some(Shape::Combined { arr: arr(a) });
            return e;
        }
        Value::Object(inner) => match inner.get("path") {
            Some(p) => (&p.value, inner),
            None => return e,
        },
        v @ Value::StringLit(_) => (v, o),
        _ => return e,
    };
    let cmd = spanned(cmd_val);
    let args_prop = holder.get("args");
    let args = args_prop.and_then(|p| match &p.value {
        Value::Array(a) => Some(arr(a)),
        _ => None,
    });
    if args_prop.is_some() && args.is_none() {
        return e; // `args` that is not an array: leave the entry alone
    }
    let absent_removal = args_prop.and_then(|p| {
        let pr = p.range();
        (pr.start >= cmd.range.end && &text[cmd.range.end..pr.start] == ", ")
            .then_some(cmd.range.end..pr.end)
    });
    e.transport = Transport::Stdio;
    e.shape = Some(Shape::Separate {
        absent_insert: (cmd.range.end, ", \"args\": ".to_string()),
        cmd,
        args,
        absent_removal,
    });
    e
}
