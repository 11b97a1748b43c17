use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::digest::sha256_hex;

fn req<'a>(server: &'a str, tool: &'a str) -> Request<'a> {
    Request {
        server,
        method: "tools/call",
        tool: Some(tool),
    }
}

fn parse(text: &str) -> Policy {
    Policy::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn alice() -> Principal {
    Principal {
        uid: 1000,
        user: Some("alice".into()),
        home: Some("/home/alice".into()),
        gids: vec![1000, 27],
        groups: vec!["alice".into(), "sudo".into()],
    }
}

fn call<'a>(server: &'a str, tool: &'a str, p: &'a Principal, args: &'a Value) -> Query<'a> {
    Query::new(server, "tools/call")
        .tool(tool)
        .principal(p)
        .arguments(args)
        .ancestry(&[])
}

fn shipped(name: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    Policy::parse(&text, &format!("policies/{name}")).unwrap_or_else(|e| panic!("{e}"))
}

// ---- the basics ----

#[test]
fn builtin_policy_loads() {
    let p = Policy::builtin();
    assert_eq!(p.decide(req("any", "any")).action, Action::Allow);
    assert_eq!(p.origin(), "built-in");
    assert_eq!(p.sha256(), sha256_hex(BUILTIN.as_bytes()));
}

#[test]
fn every_shipped_policy_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 5, "{n}");
}

#[test]
fn deny_wins_over_allow_whatever_the_order() {
    for text in [
        "[[rule]]\nid='a'\ntool='*'\naction='allow'\n[[rule]]\nid='d'\ntool='write_*'\naction='deny'\n",
        "[[rule]]\nid='d'\ntool='write_*'\naction='deny'\n[[rule]]\nid='a'\ntool='*'\naction='allow'\n",
    ] {
        let p = parse(text);
        assert_eq!(p.decide(req("fs", "write_file")).rule, "d");
        assert_eq!(p.decide(req("fs", "read_file")).rule, "a");
    }
}

#[test]
fn default_applies_to_acting_methods_only() {
    let p = parse("default = 'deny'\n");
    assert_eq!(p.decide(req("fs", "x")).action, Action::Deny);
    let list = Request {
        server: "fs",
        method: "tools/list",
        tool: None,
    };
    let d = p.decide(list);
    assert_eq!(
        (d.action, d.rule.as_str(), d.message),
        (Action::Allow, "plumbing", None)
    );
    assert_eq!(d.policy_sha256.as_ref(), p.sha256());
}

#[test]
fn server_and_method_are_matched() {
    let p = parse("[[rule]]\nid='r'\nserver='file*'\nmethod='resources/read'\naction='deny'\n");
    let read = |server| Request {
        server,
        method: "resources/read",
        tool: None,
    };
    assert_eq!(p.decide(read("filesystem")).action, Action::Deny);
    assert_eq!(p.decide(read("memory")).rule, "default");
    assert_eq!(p.decide(req("filesystem", "read")).rule, "default");
}

#[test]
fn brace_lists_and_arrays_are_the_same() {
    let a = parse("[[rule]]\nid='r'\ntool='{a,b}'\naction='deny'\n");
    let b = parse("[[rule]]\nid='r'\ntool=['a','b']\naction='deny'\n");
    for t in ["a", "b", "c", "{a,b}"] {
        assert_eq!(
            a.decide(req("s", t)).rule,
            b.decide(req("s", t)).rule,
            "{t}"
        );
    }
}

// ---- errors ----

fn err(text: &str) -> String {
    Policy::parse(text, "p.toml")
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn errors_name_file_line_and_column() {
    let e = err("[[rule]]\nid='x'\naction='allow'\nbogus=1\n");
    assert!(e.starts_with("p.toml:4:1: ") && e.contains("bogus"), "{e}");
    let e = err("[[rule]]\nid='x'\ntool='[a'\naction='deny'\n");
    assert!(
        e.starts_with("p.toml:3:6: ") && e.contains("invalid pattern `[a`"),
        "{e}"
    );
    let e = err("[[rule]]\nid='x'\naction='deny'\n[[rule]]\nid='x'\naction='deny'\n");
    assert!(
        e.starts_with("p.toml:5:4: ") && e.contains("already used at p.toml:1:1"),
        "{e}"
    );
    let e = err("default = 'maybe'\n");
    assert!(e.starts_with("p.toml:1:11: "), "{e}");
    let e = err("[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='/a'\nregex='('\n");
    assert!(e.starts_with("p.toml:6:7: ") && e.contains("regex"), "{e}");
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    assert!(err("defualt = 'deny'\n").contains("defualt"));
    assert!(err("[[rule]]\nid='x'\naction='deny'\nprincipal='a'\n").contains("principal"));
    assert!(
        err("[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='/a'\nequals=1\n")
            .contains("equals")
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let e = err(
        "[[rule]]\nid='a'\ntool='[x'\naction='deny'\n[[rule]]\nid='b'\nserver=[]\naction='allow'\n",
    );
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(e.lines().all(|l| l.starts_with("p.toml:")), "{e}");
}

#[test]
fn invalid_rules_say_what_is_wrong() {
    let cases = [
        (
            "[[rule]]\nid='x'\naction='allow'\nrate='ten a minute'\n",
            "CALLS/INTERVAL",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\nrate='1/minute'\n",
            "deny rule",
        ),
        (
            "[[rule]]\nid='x'\naction='allow'\nrate='0/minute'\n",
            "zero",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='path'\neq=1\n",
            "JSON pointer",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='/p'\n",
            "needs a test",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='/p'\npresent=false\neq=1\n",
            "present = false",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='/p'\nnegate=true\neq=1\nprefix='a'\n",
            "negate",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='/p'\nprefix='${nope}'\n",
            "unknown variable",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='/p'\npath_under='rel/dir'\n",
            "absolute",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\n[[rule.args]]\npointer='/p'\nmin=5\nmax=1\n",
            "greater",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\nuser='${user}'\n",
            "only expanded in `args`",
        ),
        ("[[rule]]\nid='default'\naction='deny'\n", "reserved"),
        (
            "[[rule]]\nid='x'\naction='deny'\nuid=-1\n",
            "not a valid id",
        ),
        (
            "[[rule]]\nid='x'\naction='deny'\ntool=3\n",
            "a string or an array of strings",
        ),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(
            e.contains(want) && e.starts_with("p.toml:"),
            "{text}\n=> {e}"
        );
    }
}

// ---- every rule field matters ----

/// For each field: a deny rule with only that field matches one request and not another
/// that differs only there.
#[test]
fn every_rule_field_matters() {
    let p = alice();
    let mut bob = alice();
    bob.uid = 1001;
    bob.user = Some("bob".into());
    bob.gids = vec![1001];
    bob.groups = vec!["bob".into()];
    bob.home = Some("/home/bob".into());
    let desk = [Ancestor {
        exe: Some("/usr/bin/gnome-shell".into()),
        comm: "gnome-shell".into(),
    }];
    let cron = [Ancestor {
        exe: Some("/usr/sbin/cron".into()),
        comm: "cron".into(),
    }];
    let a1 = json!({"path": "/home/alice/x", "n": 5});
    let a2 = json!({"path": "/etc/x", "n": 50});
    let (empty, gone) = (json!({}), json!({"gone": 1}));
    let base = |p| {
        Query::new("fs", "tools/call")
            .tool("t")
            .principal(p)
            .server_exe("/usr/bin/node")
            .host_exe("/usr/bin/claude")
            .ancestry(&desk)
            .arguments(&a1)
            .cwd("/home/alice")
    };
    let fields: Vec<(&str, Query<'_>)> = vec![
        (
            "server = 'fs'",
            Query {
                server: "other",
                ..base(&p)
            },
        ),
        (
            "server_exe = '/usr/bin/node'",
            base(&p).server_exe("/usr/bin/python3"),
        ),
        (
            "server_exe = 'node'",
            base(&p).server_exe("/usr/bin/python3"),
        ),
        (
            "method = 'tools/call'",
            Query {
                method: "prompts/get",
                ..base(&p)
            },
        ),
        ("tool = 't'", base(&p).tool("u")),
        ("user = 'alice'", base(&bob)),
        ("uid = 1000", base(&bob)),
        ("group = 'sudo'", base(&bob)),
        ("gid = [27]", base(&bob)),
        (
            "host_exe = '/usr/bin/claude'",
            base(&p).host_exe("/usr/bin/cursor"),
        ),
        ("ancestor = 'gnome-shell'", base(&p).ancestry(&cron)),
        ("not_ancestor = 'cron'", base(&p).ancestry(&cron)),
        (
            "args = [{pointer='/path', path_under='${home}'}]",
            base(&p).arguments(&a2),
        ),
        (
            "args = [{pointer='/path', eq='/home/alice/x'}]",
            base(&p).arguments(&a2),
        ),
        (
            "args = [{pointer='/path', one_of=['/home/alice/x']}]",
            base(&p).arguments(&a2),
        ),
        (
            "args = [{pointer='/path', glob='/home/*'}]",
            base(&p).arguments(&a2),
        ),
        (
            "args = [{pointer='/path', regex='^/home/'}]",
            base(&p).arguments(&a2),
        ),
        (
            "args = [{pointer='/path', prefix='${home}/'}]",
            base(&p).arguments(&a2),
        ),
        (
            "args = [{pointer='/path', min_len=10}]",
            base(&p).arguments(&a2),
        ),
        ("args = [{pointer='/n', max=10}]", base(&p).arguments(&a2)),
        (
            "args = [{pointer='/n', min=0, max=9}]",
            base(&p).arguments(&a2),
        ),
        (
            "args = [{pointer='/path', negate=true, path_under='/etc'}]",
            base(&p).arguments(&a2),
        ),
        (
            "args = [{pointer='/path', present=true}]",
            base(&p).arguments(&empty),
        ),
        (
            "args = [{pointer='/gone', present=false}]",
            base(&p).arguments(&gone),
        ),
    ];
    for (field, other) in fields {
        let any_method = if field.starts_with("method") {
            ""
        } else {
            "method='*'\n"
        };
        let pol = parse(&format!(
            "[[rule]]\nid='r'\n{any_method}action='deny'\n{field}\n"
        ));
        assert_eq!(
            pol.decide(base(&p)).rule,
            "r",
            "{field}: should match the base request"
        );
        assert_ne!(
            pol.decide(other).rule,
            "r",
            "{field}: should not match the other request"
        );
    }
}

// ---- argument semantics ----

#[test]
fn argument_constraints_need_arguments_unless_absent() {
    let deny =
        parse("[[rule]]\nid='d'\naction='deny'\n[[rule.args]]\npointer='/path'\nprefix='/etc'\n");
    assert_eq!(deny.decide(req("s", "t")).rule, "default");
    let absent = parse(
        "[[rule]]\nid='d'\naction='deny'\n[[rule.args]]\npointer='/confirm'\npresent=false\n",
    );
    assert_eq!(absent.decide(req("s", "t")).rule, "d");
    let args = json!({"confirm": true});
    assert_eq!(
        absent
            .decide(Query::new("s", "tools/call").tool("t").arguments(&args))
            .rule,
        "default"
    );
}

#[test]
fn what_cannot_be_evaluated_denies_but_never_allows() {
    let deny = parse(
        "[[rule]]\nid='d'\naction='deny'\n[[rule.args]]\npointer='/path'\npath_under='/etc'\n",
    );
    let allow = parse(
        "default='deny'\n[[rule]]\nid='a'\naction='allow'\n[[rule.args]]\npointer='/path'\npath_under='/srv'\n",
    );
    let p = alice();
    for args in [
        json!({"path": 7}),
        json!({"path": {"x": 1}}),
        json!({"path": "rel/x"}),
        json!({"path": "~bob/x"}),
    ] {
        // No cwd is given, so a relative path cannot be placed.
        let q = Query::new("s", "tools/call")
            .tool("t")
            .principal(&p)
            .arguments(&args);
        assert_eq!(deny.decide(q).rule, "d", "{args}");
        assert_eq!(allow.decide(q).rule, "default", "{args}");
    }
    // With variables and no principal.
    let home = parse(
        "[[rule]]\nid='d'\naction='deny'\n[[rule.args]]\npointer='/path'\npath_under='~/.ssh'\n",
    );
    let args = json!({"path": "/tmp/x"});
    assert_eq!(
        home.decide(Query::new("s", "tools/call").tool("t").arguments(&args))
            .rule,
        "d"
    );
    assert_eq!(home.decide(call("s", "t", &p, &args)).rule, "default");
    // Unknown principal: principal fields too.
    let uid = parse(
        "default='deny'\n[[rule]]\nid='a'\nuid=1000\naction='allow'\n[[rule]]\nid='d'\nuid=0\naction='deny'\n",
    );
    let q = Query::new("s", "tools/call").tool("t");
    assert_eq!(uid.decide(q).rule, "d");
}

#[test]
fn arrays_deny_on_any_element_and_allow_on_every_element() {
    let text = "default='deny'\n[[rule]]\nid='ok'\naction='allow'\n[[rule.args]]\npointer='/paths'\npath_under='~'\n";
    let allow = parse(text);
    let deny = parse(
        "[[rule]]\nid='no'\naction='deny'\n[[rule.args]]\npointer='/paths'\npath_under='/etc'\n",
    );
    let p = alice();
    let inside = json!({"paths": ["~/a", "/home/alice/b"]});
    let mixed = json!({"paths": ["~/a", "/home/alice/../../etc/passwd"]});
    assert_eq!(allow.decide(call("s", "t", &p, &inside)).rule, "ok");
    assert_eq!(allow.decide(call("s", "t", &p, &mixed)).rule, "default");
    assert_eq!(deny.decide(call("s", "t", &p, &inside)).rule, "default");
    assert_eq!(deny.decide(call("s", "t", &p, &mixed)).rule, "no");
}

#[test]
fn negate_inverts_one_test() {
    let p = parse(
        "[[rule]]\nid='outside'\ntool='write_file'\naction='deny'\n[[rule.args]]\npointer='/path'\nnegate=true\npath_under='${home}/src'\n",
    );
    let a = alice();
    let ok = json!({"path": "~/src/x.rs"});
    let bad = json!({"path": "/home/alice/src/../.bashrc"});
    assert_eq!(p.decide(call("s", "write_file", &a, &ok)).rule, "default");
    assert_eq!(p.decide(call("s", "write_file", &a, &bad)).rule, "outside");
}

#[test]
fn relative_paths_are_taken_against_the_server_cwd() {
    let p = parse(
        "[[rule]]\nid='d'\naction='deny'\n[[rule.args]]\npointer='/path'\npath_under='/etc'\n",
    );
    let args = json!({"path": "../../etc/passwd"});
    let a = alice();
    assert_eq!(
        p.decide(call("s", "t", &a, &args).cwd("/home/alice")).rule,
        "d"
    );
    assert_eq!(
        p.decide(call("s", "t", &a, &args).cwd("/a/b/c/d")).rule,
        "default"
    );
}

#[test]
fn variables_expand_per_principal_and_are_escaped() {
    let p = parse(
        "default='deny'\n[[rule]]\nid='own'\naction='allow'\n[[rule.args]]\npointer='/f'\nglob='${home}/*.txt'\n[[rule.args]]\npointer='/u'\nregex='^${user}$'\n[[rule.args]]\npointer='/id'\neq='${uid}'\n",
    );
    let a = alice();
    let ok = json!({"f": "/home/alice/x.txt", "u": "alice", "id": "1000"});
    assert_eq!(p.decide(call("s", "t", &a, &ok)).rule, "own");
    let mut weird = alice();
    weird.home = Some("/home/a*".into());
    weird.user = Some("a.c".into());
    let other = json!({"f": "/home/abc/x.txt", "u": "abc", "id": "1000"});
    assert_eq!(p.decide(call("s", "t", &weird, &other)).rule, "default");
}

#[test]
fn numbers_compare_by_value_and_lengths_count_chars() {
    let p = parse(
        "[[rule]]\nid='d'\naction='deny'\n[[rule.args]]\npointer='/n'\neq=1\n[[rule.args]]\npointer='/s'\nmax_len=3\n",
    );
    let a = alice();
    assert_eq!(
        p.decide(call("s", "t", &a, &json!({"n": 1.0, "s": "éé"})))
            .rule,
        "d"
    );
    assert_eq!(
        p.decide(call("s", "t", &a, &json!({"n": 1, "s": "abcd"})))
            .rule,
        "default"
    );
}

// ---- modes, audit, rates ----

#[test]
fn monitor_mode_forwards_and_says_would_deny() {
    let p = parse(
        "mode='monitor'\ndefault='deny'\n[[rule]]\nid='d'\ntool='x'\naction='deny'\nmessage='no'\n",
    );
    let d = p.decide(req("s", "x"));
    assert_eq!(
        (d.action, d.rule.as_str(), d.would_deny, d.mode),
        (Action::Allow, "d", true, Mode::Monitor)
    );
    assert_eq!(d.message.as_deref(), Some("no"));
    let d = p.decide(req("s", "y"));
    assert_eq!(
        (d.action, d.rule.as_str(), d.would_deny),
        (Action::Allow, "default", true)
    );
    let e = parse("[[rule]]\nid='d'\ntool='x'\naction='deny'\n").decide(req("s", "x"));
    assert_eq!(
        (e.action, e.would_deny, e.mode),
        (Action::Deny, false, Mode::Enforce)
    );
}

#[test]
fn audit_rules_mark_but_never_decide() {
    let p = parse("default='deny'\n[[rule]]\nid='au'\ntool='*'\naction='audit'\n");
    let d = p.decide(req("s", "x"));
    assert_eq!(
        (d.action, d.rule.as_str(), d.audit.as_deref()),
        (Action::Deny, "default", Some("au"))
    );
    let p = parse(
        "[[rule]]\nid='au'\ntool='*'\naction='audit'\n[[rule]]\nid='ok'\ntool='x'\naction='allow'\n",
    );
    let d = p.decide(req("s", "x"));
    assert_eq!(
        (d.action, d.rule.as_str(), d.audit.as_deref()),
        (Action::Allow, "ok", Some("au"))
    );
}

#[test]
fn rates_limit_per_principal_and_tool() {
    let p = parse("[[rule]]\nid='r'\ntool='*'\naction='allow'\nrate='2/minute'\n");
    let lim = Limiter::new();
    let (a, mut b) = (alice(), alice());
    b.uid = 1001;
    let t0 = Instant::now();
    let d = |pr: &Principal, tool: &str, at: Instant| {
        p.decide_limited(
            &Query::new("s", "tools/call").tool(tool).principal(pr),
            &lim,
            at,
        )
    };
    assert_eq!(d(&a, "x", t0).action, Action::Allow);
    assert_eq!(d(&a, "x", t0).action, Action::Allow);
    let third = d(&a, "x", t0);
    assert_eq!(
        (third.action, third.rule.as_str(), third.rate_limited),
        (Action::Deny, "r", true)
    );
    assert!(third.message.unwrap().contains("2/minute"));
    assert_eq!(
        d(&b, "x", t0).action,
        Action::Allow,
        "another principal has its own bucket"
    );
    assert_eq!(
        d(&a, "y", t0).action,
        Action::Allow,
        "another tool has its own bucket"
    );
    assert_eq!(
        d(&a, "x", t0 + Duration::from_secs(30)).action,
        Action::Allow,
        "refilled by one"
    );
    assert_eq!(
        d(&a, "x", t0 + Duration::from_secs(30)).action,
        Action::Deny
    );
    // Without a limiter rates are not counted.
    assert_eq!(p.decide(req("s", "x")).action, Action::Allow);
}

#[test]
fn a_denied_call_takes_no_rate_token() {
    let p = parse(
        "[[rule]]\nid='r'\ntool='*'\naction='allow'\nrate='1/hour'\n[[rule]]\nid='d'\ntool='bad'\naction='deny'\n",
    );
    let lim = Limiter::new();
    let t0 = Instant::now();
    let q = |t| Query::new("s", "tools/call").tool(t);
    assert_eq!(p.decide_limited(&q("bad"), &lim, t0).rule, "d");
    assert_eq!(p.decide_limited(&q("bad"), &lim, t0).rule, "d");
    assert!(!p.decide_limited(&q("good"), &lim, t0).rate_limited);
    assert!(p.decide_limited(&q("good"), &lim, t0).rate_limited);
}

// ---- loading ----

#[test]
fn dropins_merge_in_name_order_with_unique_ids() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "default='deny'\n[[rule]]\nid='main'\ntool='a'\naction='allow'\n",
    )
    .unwrap();
    let d = dir.path().join("policy.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(
        d.join("20-b.toml"),
        "[[rule]]\nid='b'\ntool='b'\naction='allow'\n",
    )
    .unwrap();
    std::fs::write(
        d.join("10-a.toml"),
        "[[rule]]\nid='a'\ntool='b'\naction='allow'\n",
    )
    .unwrap();
    std::fs::write(d.join(".hidden.toml"), "garbage").unwrap();
    std::fs::write(d.join("notes.txt"), "garbage").unwrap();
    let p = Policy::load_dir(dir.path()).unwrap();
    let ids: Vec<&str> = p.rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["main", "a", "b"]);
    assert_eq!(
        p.decide(req("s", "b")).rule,
        "a",
        "the first-merged matching rule names the decision"
    );
    assert!(
        p.origin().ends_with("policy.d/20-b.toml") && p.origin().contains("10-a.toml"),
        "{}",
        p.origin()
    );
    assert_ne!(p.sha256(), sha256_hex(b""));
    assert!(
        p.rules()[2].origin.contains("20-b.toml:1:1"),
        "{}",
        p.rules()[2].origin
    );

    std::fs::write(
        d.join("30-dup.toml"),
        "default='allow'\n[[rule]]\nid='main'\naction='deny'\n",
    )
    .unwrap();
    let e = Policy::load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("30-dup.toml:1:9: `default` may only be set in the main policy file"),
        "{e}"
    );
    assert!(
        e.contains("30-dup.toml:3:4: rule id `main` is already used at"),
        "{e}"
    );
}

#[test]
fn the_digest_covers_every_file_and_its_name() {
    let s = |n: &str, t: &str| Source {
        name: n.into(),
        text: t.into(),
    };
    let one = Policy::compile(&[s("a", "")]).unwrap();
    assert_eq!(
        one.sha256(),
        sha256_hex(b""),
        "one file: its own hash, comparable with sha256sum"
    );
    let two = Policy::compile(&[s("a", ""), s("b", "")]).unwrap();
    let renamed = Policy::compile(&[s("a", ""), s("c", "")]).unwrap();
    let moved = Policy::compile(&[s("a", "\n"), s("b", "")]).unwrap();
    assert_ne!(two.sha256(), renamed.sha256());
    assert_ne!(two.sha256(), moved.sha256());
}

#[test]
fn root_refuses_files_others_can_write() {
    let p = Path::new("/etc/mcp-guard/policy.toml");
    assert!(load::check_owner(p, 0, 0o100644, 0).is_ok());
    assert!(
        load::check_owner(p, 1000, 0o100644, 1000).is_ok(),
        "not root: not checked"
    );
    assert!(load::check_owner(p, 1000, 0o100600, 1000).is_ok());
    let e = load::check_owner(p, 1000, 0o100644, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("owned by uid 1000"), "{e}");
    assert!(
        load::check_owner(p, 0, 0o100664, 0).is_err(),
        "group-writable"
    );
    assert!(
        load::check_owner(p, 0, 0o100646, 0).is_err(),
        "world-writable"
    );
}

#[test]
fn standalone_search_order() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag.toml");
    let envp = dir.path().join("env.toml");
    let cfg = dir.path().join("cfg");
    let sys = dir.path().join("etc");
    std::fs::create_dir_all(cfg.join("mcp-guard")).unwrap();
    std::fs::create_dir_all(&sys).unwrap();
    for (path, id) in [
        (flag.clone(), "flag"),
        (envp.clone(), "env"),
        (cfg.join("mcp-guard/policy.toml"), "cfg"),
        (sys.join("policy.toml"), "sys"),
    ] {
        std::fs::write(path, format!("[[rule]]\nid='{id}'\naction='allow'\n")).unwrap();
    }
    let mut env = load::Env {
        policy: Some(envp.clone().into()),
        xdg_config_home: Some(cfg.clone().into()),
        home: None,
        system_dir: sys.clone(),
    };
    let first = |env: &load::Env, flag: Option<&Path>| {
        load::standalone_in(flag, env).unwrap().rules()[0]
            .id
            .clone()
    };
    assert_eq!(first(&env, Some(&flag)), "flag");
    assert_eq!(first(&env, None), "env");
    env.policy = None;
    assert_eq!(first(&env, None), "cfg");
    env.xdg_config_home = None;
    assert_eq!(first(&env, None), "sys");
    env.system_dir = dir.path().join("nowhere");
    assert_eq!(
        load::standalone_in(None, &env).unwrap().origin(),
        "built-in"
    );
    env.policy = Some(dir.path().join("missing.toml").into());
    assert!(
        load::standalone_in(None, &env).is_err(),
        "a configured policy that cannot be read is an error"
    );
}

// ---- explain ----

#[test]
fn explain_says_why_each_rule_did_not_match() {
    let p = shipped("readonly-filesystem.toml");
    let a = alice();
    let args = json!({"path": "/home/alice/Documents/../../../etc/passwd"});
    let ex = p.explain(&call("filesystem", "read_file", &a, &args));
    assert_eq!(
        (ex.decision.action, ex.decision.rule.as_str()),
        (Action::Deny, "default")
    );
    let why = |id: &str| {
        ex.rules
            .iter()
            .find(|r| r.id == id)
            .unwrap()
            .miss
            .clone()
            .unwrap_or_default()
    };
    assert!(why("fs-read").contains("path_under"), "{}", why("fs-read"));
    assert!(
        why("fs-no-writes").contains("tool `read_file` does not match"),
        "{}",
        why("fs-no-writes")
    );
    assert!(
        why("fs-roots").contains("method `tools/call`"),
        "{}",
        why("fs-roots")
    );
    let ex = p.explain(&call("filesystem", "write_file", &a, &args));
    assert_eq!(ex.decision.rule, "fs-no-writes");
    assert!(
        ex.rules
            .iter()
            .find(|r| r.id == "fs-no-writes")
            .unwrap()
            .miss
            .is_none()
    );
}

#[test]
fn unicode_equivalent_spellings_of_a_denied_directory_are_denied() {
    let p = Policy::parse(
        "default = \"allow\"\n[[rule]]\nid = \"no-cafe\"\ntool = \"*\"\naction = \"deny\"\n[[rule.args]]\npointer = \"**\"\npath_under = \"/srv/caf\u{e9}\"\n",
        "t",
    )
    .unwrap();
    let a = alice();
    for path in [
        "/srv/caf\u{e9}/x",
        "/srv/cafe\u{301}/x",
        "/srv/CAF\u{c9}/x",
        "file:///srv/cafe%CC%81/x",
    ] {
        let args = json!({ "path": path });
        assert_eq!(
            p.decide(call("fs", "write_file", &a, &args)).rule,
            "no-cafe",
            "{path}"
        );
    }
    let args = json!({ "path": "/srv/cafe/x" });
    assert_eq!(
        p.decide(call("fs", "write_file", &a, &args)).action,
        Action::Allow
    );
}

// ---- shipped policies, each exercised ----

#[test]
fn shipped_default_keeps_credentials_out_and_allows_the_rest() {
    let p = shipped("default.toml");
    let a = alice();
    let q = |tool: &str, args: &Value| p.decide(call("filesystem", tool, &a, args));
    for bad in [
        json!({"path": "~/.ssh/id_ed25519"}),
        json!({"path": "/home/alice/src/../.aws/credentials"}),
        json!({"path": "/etc//shadow"}),
        json!({"paths": ["/tmp/a", "/home/alice/.gnupg/x"]}),
        json!({"source": "~/.kube/config", "destination": "/tmp/k"}),
    ] {
        assert_eq!(q("read_file", &bad).action, Action::Deny, "{bad}");
    }
    for ok in [
        json!({"path": "~/src/main.rs"}),
        json!({"path": "/etc/hosts"}),
        json!({"paths": ["/tmp/a"]}),
    ] {
        assert_eq!(q("read_file", &ok).action, Action::Allow, "{ok}");
    }
    let uri = json!({"uri": "file:///home/alice/.ssh/id_rsa"});
    let rr = Query::new("filesystem", "resources/read")
        .tool("file:///home/alice/.ssh/id_rsa")
        .principal(&a)
        .arguments(&uri);
    assert_eq!(p.decide(rr).rule, "secrets");
    // Every other argument, at any depth, and every reading of a relative path.
    for bad in [
        json!({"source": "/tmp/k", "destination": "~/.ssh/authorized_keys"}),
        json!({"edits": [{"target_file": "/home/alice/.aws/credentials"}]}),
        json!({"path": "file:/home/alice/.ssh/id_rsa"}),
        json!({"path": "/home/alice/.SSH/id_rsa"}),
    ] {
        assert_eq!(q("move_file", &bad).rule, "secrets", "{bad}");
    }
    // A server that resolves relative paths against its allowed directory (the home) and
    // runs in a project: `.ssh/authorized_keys` is the real one for it.
    let roots = ["/home/alice".to_string()];
    let rel = json!({"path": ".ssh/authorized_keys", "content": "ssh-ed25519 AAAA"});
    let q = Query {
        roots: &roots,
        ..call("filesystem", "write_file", &a, &rel).cwd("/home/alice/src/app")
    };
    assert_eq!(p.decide(q).rule, "secrets");
    let q = call("filesystem", "write_file", &a, &rel).cwd("/home/alice/src/app");
    assert_eq!(
        p.decide(q).action,
        Action::Allow,
        "no root: the cwd alone is the reading"
    );
    let s = p.decide(Query::new("x", "sampling/createMessage").principal(&a));
    assert_eq!(
        (s.action, s.audit.as_deref()),
        (Action::Allow, Some("server-asks-host"))
    );
}

#[test]
fn shipped_demo_blocks_filesystem_writes() {
    let p = shipped("demo.toml");
    let d = p.decide(req("filesystem", "write_file"));
    assert_eq!((d.action, d.rule.as_str()), (Action::Deny, "fs-no-writes"));
    assert_eq!(
        p.decide(req("filesystem", "read_file")).action,
        Action::Allow
    );
    assert_eq!(p.decide(req("memory", "write_file")).action, Action::Allow);
}

#[test]
fn shipped_readonly_filesystem() {
    let p = shipped("readonly-filesystem.toml");
    let a = alice();
    let decide = |tool: &str, args: Value| p.decide(call("filesystem", tool, &a, &args)).rule;
    assert_eq!(
        decide("read_text_file", json!({"path": "~/Documents/notes.md"})),
        "fs-read"
    );
    assert_eq!(
        decide(
            "search_files",
            json!({"path": "/home/alice/src", "pattern": "x"})
        ),
        "fs-read"
    );
    assert_eq!(
        decide(
            "read_file",
            json!({"path": "/home/alice/Documents/../../bob/x"})
        ),
        "default"
    );
    assert_eq!(
        decide(
            "read_file",
            json!({"path": "/home/alice/Documents/../.ssh/id_rsa"})
        ),
        "fs-no-dotfiles"
    );
    assert_eq!(
        decide("read_file", json!({"path": "~/src/app/.env"})),
        "fs-no-dotfiles"
    );
    for paths in [
        json!(["~/src/app/.env"]),
        json!(["~/src/a", "~/src/app/.git/config"]),
    ] {
        assert_eq!(
            decide("read_multiple_files", json!({ "paths": paths })),
            "fs-no-dotfiles",
            "{paths}"
        );
    }
    // The same place in another Unicode form is still inside.
    assert_eq!(
        decide(
            "read_file",
            json!({"path": "/home/alice/Documents/cafe\u{301}/x"})
        ),
        "fs-read"
    );
    assert_eq!(
        decide(
            "read_multiple_files",
            json!({"paths": ["~/src/a", "~/Documents/b"]})
        ),
        "fs-read-many"
    );
    assert_eq!(
        decide(
            "read_multiple_files",
            json!({"paths": ["~/src/a", "/etc/passwd"]})
        ),
        "default"
    );
    assert_eq!(
        decide("write_file", json!({"path": "~/src/a", "content": ""})),
        "fs-no-writes"
    );
    assert_eq!(
        decide("list_allowed_directories", json!({})),
        "fs-list-roots"
    );
    assert_eq!(p.decide(req("other", "anything")).action, Action::Deny);
    assert_eq!(
        p.decide(Query::new("filesystem", "roots/list")).action,
        Action::Allow
    );
}

#[test]
fn shipped_developer_workstation() {
    let p = shipped("developer-workstation.toml");
    let a = alice();
    let desk = [Ancestor {
        exe: Some("/usr/bin/gnome-shell".into()),
        comm: "gnome-shell".into(),
    }];
    let ssh = [
        Ancestor {
            exe: Some("/usr/bin/bash".into()),
            comm: "bash".into(),
        },
        Ancestor {
            exe: Some("/usr/sbin/sshd".into()),
            comm: "sshd".into(),
        },
    ];
    let d = |server, tool, args: Value, anc: &[Ancestor]| {
        p.decide(call(server, tool, &a, &args).ancestry(anc)).rule
    };
    assert_eq!(
        d(
            "filesystem",
            "write_file",
            json!({"path": "~/src/x"}),
            &desk
        ),
        "default"
    );
    assert_eq!(
        d(
            "filesystem",
            "write_file",
            json!({"path": "~/Desktop/x"}),
            &desk
        ),
        "writes-in-projects"
    );
    assert_eq!(
        d(
            "filesystem",
            "move_file",
            json!({"source": "~/src/a", "destination": "/etc/cron.d/x"}),
            &desk
        ),
        "writes-in-projects"
    );
    assert_eq!(
        d(
            "filesystem",
            "move_file",
            json!({"source": "~/.bashrc", "destination": "~/src/x"}),
            &desk
        ),
        "writes-in-projects",
        "moving a file out of a place is writing there"
    );
    assert_eq!(
        d(
            "filesystem",
            "read_file",
            json!({"path": "~/.ssh/id_rsa"}),
            &desk
        ),
        "no-credentials"
    );
    assert_eq!(
        d(
            "git",
            "git_status",
            json!({"repo_path": "/home/alice/src/app"}),
            &desk
        ),
        "default"
    );
    assert_eq!(
        d("git", "git_status", json!({"repo_path": "/"}), &desk),
        "git-in-projects"
    );
    assert_eq!(
        d("shell", "run_command", json!({"command": "ls"}), &desk),
        "default"
    );
    assert_eq!(
        d("shell", "run_command", json!({"command": "ls"}), &ssh),
        "shell-needs-desktop"
    );
    assert_eq!(
        d("github", "push_files", json!({"branch": "main"}), &desk),
        "no-force-push"
    );
    assert_eq!(
        d("github", "push_files", json!({"branch": "feature"}), &desk),
        "default"
    );
    assert_eq!(
        d(
            "fetch",
            "fetch",
            json!({"url": "http://169.254.169.254/latest"}),
            &desk
        ),
        "fetch-not-internal"
    );
    assert_eq!(
        d(
            "fetch",
            "fetch",
            json!({"url": "HTTP://LOCALHOST:8080/"}),
            &desk
        ),
        "fetch-not-internal"
    );
    assert_eq!(
        d("fetch", "fetch", json!({"url": "https://docs.rs/"}), &desk),
        "fetch-rate"
    );
    let root = Principal {
        uid: 0,
        user: Some("root".into()),
        home: Some("/root".into()),
        ..Principal::default()
    };
    assert_eq!(
        p.decide(Query::new("x", "initialize").principal(&root))
            .rule,
        "no-root"
    );
    // The rate: 30 fetches a minute.
    let lim = Limiter::new();
    let t0 = Instant::now();
    let args = json!({"url": "https://example.com/"});
    let q = call("fetch", "fetch", &a, &args).ancestry(&desk);
    let allowed = (0..40)
        .filter(|_| p.decide_limited(&q, &lim, t0).action == Action::Allow)
        .count();
    assert_eq!(allowed, 30);
}

#[test]
fn shipped_production_locked() {
    let p = shipped("production-locked.toml");
    let svc = Principal {
        uid: 990,
        user: Some("agent".into()),
        home: Some("/var/lib/agent".into()),
        gids: vec![990, 991],
        groups: vec!["agent".into(), "mcp-agents".into()],
    };
    let runner = [
        Ancestor {
            exe: Some("/usr/local/bin/agent-runner".into()),
            comm: "agent-runner".into(),
        },
        Ancestor {
            exe: Some("/usr/lib/systemd/systemd".into()),
            comm: "systemd".into(),
        },
    ];
    let by_hand = [
        Ancestor {
            exe: Some("/usr/local/bin/agent-runner".into()),
            comm: "agent-runner".into(),
        },
        Ancestor {
            exe: Some("/usr/bin/bash".into()),
            comm: "bash".into(),
        },
        Ancestor {
            exe: Some("/usr/sbin/sshd".into()),
            comm: "sshd".into(),
        },
    ];
    let q =
        |server: &str, tool: &str, args: &Value, anc: &[Ancestor], who: &Principal, exe: &str| {
            let q = Query::new(server, "tools/call")
                .tool(tool)
                .principal(who)
                .arguments(args)
                .ancestry(anc)
                .host_exe("/usr/local/bin/agent-runner")
                .server_exe(exe);
            p.decide(q)
        };
    let m = |tool: &str, args: Value, anc: &[Ancestor]| {
        q(
            "metrics",
            tool,
            &args,
            anc,
            &svc,
            "/opt/mcp/bin/metrics-server",
        )
    };
    let d = m("query", json!({"expr": "up", "range_hours": 24}), &runner);
    assert_eq!(
        (d.action, d.rule.as_str(), d.audit.as_deref()),
        (Action::Allow, "metrics-query", Some("audit-all-calls"))
    );
    assert_eq!(
        m("query", json!({"expr": "up", "range_hours": 1000}), &runner).rule,
        "default"
    );
    assert_eq!(
        m("query", json!({"expr": "up"}), &by_hand).rule,
        "no-interactive"
    );
    assert_eq!(m("query", json!({"expr": "up"}), &[]).rule, "runner-only");
    assert_eq!(m("drop_series", json!({}), &runner).rule, "default");
    let fs = |args: Value, who: &Principal| {
        q(
            "filesystem",
            "read_text_file",
            &args,
            &runner,
            who,
            "/usr/bin/node",
        )
        .rule
    };
    assert_eq!(
        fs(json!({"path": "/srv/app/logs/app.log"}), &svc),
        "logs-read"
    );
    assert_eq!(
        fs(
            json!({"path": "/srv/app/logs/../config/secrets.yaml"}),
            &svc
        ),
        "default"
    );
    assert_eq!(
        fs(json!({"path": "/srv/app/logs/a", "tail": 100000}), &svc),
        "logs-tail-bounded"
    );
    let mut outsider = svc.clone();
    outsider.groups = vec!["agent".into()];
    assert_eq!(
        fs(json!({"path": "/srv/app/logs/app.log"}), &outsider),
        "default"
    );
    assert_eq!(
        p.decide(Query::new("metrics", "sampling/createMessage").ancestry(&runner))
            .rule,
        "no-host-requests"
    );
    // Ancestry unknown: the deny rules match, fail closed, even for plumbing.
    assert_eq!(
        p.decide(Query::new("metrics", "initialize")).action,
        Action::Deny
    );
    assert_eq!(
        p.decide(Query::new("metrics", "initialize").ancestry(&runner))
            .rule,
        "plumbing"
    );
}

// ---- snapshots of compiled policies ----

#[test]
fn compiled_policies_snapshot() {
    for name in [
        "default.toml",
        "demo.toml",
        "readonly-filesystem.toml",
        "developer-workstation.toml",
        "production-locked.toml",
    ] {
        insta::assert_snapshot!(name, shipped(name).render());
    }
}

// ---- properties ----

/// Random small policies over a few names, so that rules overlap often.
fn arb_rule() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("a"),
        Just("b"),
        Just("c"),
        Just("*"),
        Just("{a,b}"),
        Just("?")
    ];
    let action = prop_oneof![Just("allow"), Just("deny"), Just("audit")];
    let method = prop_oneof![
        Just(None),
        Just(Some("tools/call")),
        Just(Some("*")),
        Just(Some("prompts/get"))
    ];
    let arg = prop_oneof![
        Just(None),
        Just(Some("pointer='/p'\npath_under='/a'")),
        Just(Some("pointer='/p'\nprefix='/a'")),
        Just(Some("pointer='/p'\nnegate=true\nglob='/b*'")),
        Just(Some("pointer='/q'\npresent=false")),
        Just(Some("pointer='/n'\nmin=1\nmax=3")),
    ];
    (
        proptest::option::of(name.clone()),
        proptest::option::of(name),
        action,
        method,
        arg,
        any::<bool>(),
    )
        .prop_map(|(server, tool, action, method, arg, user)| {
            let mut s = String::new();
            if let Some(v) = server {
                s += &format!("server='{v}'\n");
            }
            if let Some(v) = tool {
                s += &format!("tool='{v}'\n");
            }
            if let Some(m) = method {
                s += &format!("method='{m}'\n");
            }
            if user {
                s += "user='alice'\n";
            }
            s += &format!("action='{action}'\n");
            if let Some(a) = arg {
                s += &format!("[[rule.args]]\n{a}\n");
            }
            s
        })
}

fn arb_query_parts()
-> impl Strategy<Value = (&'static str, &'static str, &'static str, Value, bool)> {
    let name = prop_oneof![Just("a"), Just("b"), Just("c"), Just("dd")];
    let method = prop_oneof![Just("tools/call"), Just("prompts/get"), Just("initialize")];
    let args = prop_oneof![
        Just(json!({})),
        Just(json!({"p": "/a/x"})),
        Just(json!({"p": "/a/../b"})),
        Just(json!({"p": ["/a/x", "/b"]})),
        Just(json!({"p": 3, "n": 2})),
        Just(json!({"q": 1, "n": "x"})),
    ];
    (name.clone(), name, method, args, any::<bool>())
}

fn policy_of(default: bool, rules: &[String]) -> String {
    let mut text = format!("default = '{}'\n", if default { "deny" } else { "allow" });
    for (i, r) in rules.iter().enumerate() {
        text += &format!("[[rule]]\nid = 'r{i}'\n{r}");
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Deny beats allow whatever the order: shuffling the rules never changes the action,
    /// and if any deny rule matches the request is denied.
    #[test]
    fn deny_beats_allow_in_any_order(
        rules in proptest::collection::vec(arb_rule(), 1..8),
        seed in any::<u64>(),
        default in any::<bool>(),
        (server, tool, method, args, has_user) in arb_query_parts(),
    ) {
        let p = parse(&policy_of(default, &rules));
        let mut shuffled: Vec<(usize, String)> = rules.iter().cloned().enumerate().collect();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut text = format!("default = '{}'\n", if default { "deny" } else { "allow" });
        for (i, r) in &shuffled {
            text += &format!("[[rule]]\nid = 'r{i}'\n{r}");
        }
        let q2 = parse(&text);
        let a = alice();
        let mut q = Query::new(server, method).tool(tool).arguments(&args).ancestry(&[]);
        if has_user { q = q.principal(&a); }
        let (d1, d2) = (p.decide(q), q2.decide(q));
        prop_assert_eq!(d1.action, d2.action);
        let ex = p.explain(&q);
        let deny_matched = ex.rules.iter().any(|r| r.miss.is_none() && r.action == RuleAction::Deny);
        if deny_matched {
            prop_assert_eq!(d1.action, Action::Deny);
            let rule = ex.rules.iter().find(|r| r.id == d1.rule).map(|r| r.action);
            prop_assert_eq!(rule, Some(RuleAction::Deny));
        }
    }

    /// The indexed path and the full scan of `explain` always agree.
    #[test]
    fn index_and_scan_agree(
        rules in proptest::collection::vec(arb_rule(), 0..12),
        default in any::<bool>(),
        (server, tool, method, args, has_user) in arb_query_parts(),
    ) {
        let p = parse(&policy_of(default, &rules));
        let a = alice();
        let mut q = Query::new(server, method).tool(tool).arguments(&args).ancestry(&[]);
        if has_user { q = q.principal(&a); }
        prop_assert_eq!(p.decide(q), p.explain(&q).decision);
    }

    /// Loader fuzzing (cargo-fuzz needs a nightly toolchain and libfuzzer-sys, not
    /// available offline here): arbitrary text never panics, and every error has a
    /// `file:line:column:` prefix within the text.
    #[test]
    fn loader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        check_loader(&text)?;
    }

    #[test]
    fn loader_never_panics_on_tomlish_text(
        lines in proptest::collection::vec(prop_oneof![
            Just("[[rule]]".to_string()), Just("[[rule.args]]".to_string()), Just("id = 'x'".to_string()),
            Just("id = 'y'".to_string()), Just("action = 'deny'".to_string()), Just("action = 'allow'".to_string()),
            Just("default = 'deny'".to_string()), Just("mode = 'monitor'".to_string()), Just("pointer = '/p'".to_string()),
            Just("negate = true".to_string()), Just("rate = '3/minute'".to_string()), Just("uid = [1, 2]".to_string()),
            "[a-z_]{1,10} = ('[^'\\n]{0,12}'|[0-9]{1,4}|true|\\[\\])",
            "(tool|server|glob|regex|prefix|path_under|ancestor) = '[^'\\n]{0,12}'",
            "(min|max|min_len|max_len) = -?[0-9]{1,3}",
        ], 0..24)
    ) {
        check_loader(&lines.join("\n"))?;
    }
}

fn check_loader(text: &str) -> Result<(), TestCaseError> {
    match Policy::parse(text, "f.toml") {
        Ok(p) => {
            // Whatever loaded can decide without panicking.
            let args = json!({"p": "/x", "paths": ["a"], "n": 1});
            let a = alice();
            let _ = p.decide(
                Query::new("s", "tools/call")
                    .tool("t")
                    .arguments(&args)
                    .principal(&a),
            );
            let _ = p.explain(&Query::new("s", "tools/call").tool("t"));
            let _ = p.render();
        }
        Err(Error::Invalid(d)) => {
            prop_assert!(!d.0.is_empty());
            let lines = text.split('\n').count();
            for diag in &d.0 {
                prop_assert!(diag.to_string().starts_with("f.toml:"), "{}", diag);
                prop_assert!(
                    diag.line >= 1 && diag.line <= lines && diag.column >= 1,
                    "{:?} in {} lines",
                    diag,
                    lines
                );
            }
        }
        Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
    }
    Ok(())
}

// ---- commands ----

#[test]
fn check_and_explain_exit_codes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    assert_eq!(
        cmd::check(
            &[dir.join("demo.toml"), dir.join("production-locked.toml")],
            false
        )
        .unwrap(),
        0
    );
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "[[rule]]\nid='x'\n").unwrap();
    assert_eq!(
        cmd::check(&[dir.join("demo.toml"), bad.path().to_path_buf()], false).unwrap(),
        1
    );
    let args = |tool: &str| cmd::ExplainArgs {
        policy: dir.join("demo.toml"),
        user: None,
        server: "filesystem".into(),
        method: "tools/call".into(),
        tool: Some(tool.into()),
        args: Some(r#"{"path": "/tmp/x"}"#.into()),
        message: None,
        server_exe: None,
        cwd: None,
        roots: Vec::new(),
        host_exe: None,
        ancestors: vec![],
    };
    assert_eq!(cmd::explain(&args("write_file")).unwrap(), 1);
    assert_eq!(cmd::explain(&args("read_file")).unwrap(), 0);
    assert!(
        cmd::explain(&cmd::ExplainArgs {
            args: Some("{".into()),
            ..args("x")
        })
        .is_err()
    );
    // One JSON-RPC line, read as the guard reads it.
    let message = |line: &str| cmd::ExplainArgs {
        tool: None,
        args: None,
        message: Some(line.into()),
        ..args("x")
    };
    let write = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file","arguments":{"path":"/tmp/x"}}}"#;
    assert_eq!(cmd::explain(&message(write)).unwrap(), 1);
    let read = write.replace("write_file", "read_file");
    assert_eq!(cmd::explain(&message(&read)).unwrap(), 0);
    for bad in [
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        "[]",
        "{",
        "not json",
    ] {
        assert!(cmd::explain(&message(bad)).is_err(), "{bad}");
    }
}

// ---- replaying audit records (`policy test`) ----

/// A request record as the guard writes it: alice, through a shim, calling `tool` of the
/// filesystem server; `extra` fields are added or replace those.
fn record(tool: &str, extra: Value) -> Value {
    let mut r = json!({
        "v": 1, "seq": 7, "time": "2026-01-02T03:04:05.000000Z", "id": "s-7",
        "kind": "request", "session": "s", "transport": "stdio-shim",
        "policy_sha256": "00", "mode": "enforce",
        "principal": {"uid": 1000, "euid": 1000, "user": "alice", "gid": 1000, "groups": [1000, 27]},
        "agent_host": {"pid": 10, "comm": "claude", "exe": "/usr/bin/node"},
        "chain": [{"pid": 10, "comm": "claude", "exe": "/usr/bin/node"}, {"pid": 9, "comm": "bash", "exe": "/usr/bin/bash"}],
        "server": {"name": "filesystem", "pid": 11, "exe": "/usr/bin/node", "argv": ["mcp-server-filesystem", "/srv"]},
        "direction": "client_to_server", "decision": "allow", "rule": "default",
        "method": "tools/call", "tool": tool, "request_id": "7",
        "args_sha256": "ab".repeat(32),
    });
    if let (Some(o), Value::Object(e)) = (r.as_object_mut(), extra) {
        o.extend(e);
    }
    r
}

/// The replayed decision as `decision (rule)`, or `? why`.
fn replayed(p: &Policy, rec: &Value) -> String {
    match replay::judge(p, rec).decision {
        Ok(d) => format!("{} ({})", d.action, d.rule),
        Err(why) => format!("? {why}"),
    }
}

#[test]
fn replay_decides_what_the_record_keeps() {
    let p = parse(
        "[[rule]]\nid = \"no-writes\"\nserver = \"filesystem\"\ntool = \"write_file\"\n\
         user = \"alice\"\nhost_exe = \"/usr/bin/node\"\nserver_exe = \"node\"\naction = \"deny\"\n",
    );
    assert_eq!(
        replayed(&p, &record("write_file", json!({}))),
        "deny (no-writes)"
    );
    assert_eq!(
        replayed(&p, &record("read_file", json!({}))),
        "allow (default)"
    );
    let bob = json!({"principal": {"uid": 1001, "user": "bob"}});
    assert_eq!(replayed(&p, &record("write_file", bob)), "allow (default)");
    let other = json!({"server": {"name": "git", "exe": "/usr/bin/node"}});
    assert_eq!(
        replayed(&p, &record("write_file", other)),
        "allow (default)"
    );
    // What the engine did not know live it does not know now: fail-closed, as then.
    let unknown = json!({"principal": null, "agent_host": null});
    assert_eq!(
        replayed(&p, &record("write_file", unknown)),
        "deny (no-writes)"
    );
}

#[test]
fn replay_cannot_tell_an_argument_constraint_without_the_arguments() {
    let p = parse(
        "[[rule]]\nid = \"no-etc\"\ntool = \"write_file\"\naction = \"deny\"\n\
         [[rule.args]]\npointer = \"/path\"\nprefix = \"/etc\"\n",
    );
    let why = replayed(&p, &record("write_file", json!({})));
    assert!(
        why.starts_with("? rule `no-etc` may or may not match: the call's arguments"),
        "{why}"
    );
    // A tool the rule does not name is decided all the same.
    assert_eq!(
        replayed(&p, &record("read_file", json!({}))),
        "allow (default)"
    );
    // A call recorded without `args_sha256` had no arguments: the constraint cannot hold.
    let mut none = record("write_file", json!({}));
    none.as_object_mut().unwrap().remove("args_sha256");
    assert_eq!(replayed(&p, &none), "allow (default)");
}

#[test]
fn replay_uses_recorded_arguments_only_when_their_digest_proves_them() {
    let p = parse(
        "[[rule]]\nid = \"no-etc\"\ntool = \"write_file\"\naction = \"deny\"\n\
         [[rule.args]]\npointer = \"/path\"\nprefix = \"/etc\"\n",
    );
    let args = json!({"path": "/etc/passwd", "content": "x"});
    let digest = crate::audit::canonical_sha256(&args);
    let exact = json!({"args": args, "args_sha256": digest});
    assert_eq!(replayed(&p, &record("write_file", exact)), "deny (no-etc)");
    let fine = json!({"path": "/srv/a", "content": "x"});
    let exact = json!({"args": fine, "args_sha256": crate::audit::canonical_sha256(&fine)});
    assert_eq!(
        replayed(&p, &record("write_file", exact)),
        "allow (default)"
    );
    // Recorded, but not what was sent (the digest differs): unknown.
    let wrong = json!({"args": {"path": "/srv/a"}, "args_sha256": digest});
    assert!(replayed(&p, &record("write_file", wrong)).starts_with("? "));
    // Recorded with a credential redacted: the digest cannot match, and neither is guessed.
    let red = json!({"path": "[REDACTED]"});
    let redacted = json!({"args": red, "args_sha256": crate::audit::canonical_sha256(&red)});
    assert!(replayed(&p, &record("write_file", redacted)).starts_with("? "));
}

#[test]
fn replay_is_undecidable_only_when_the_unknown_rule_could_change_the_decision() {
    let unknown_first = parse(
        "[[rule]]\nid = \"etc\"\ntool = \"write_file\"\naction = \"deny\"\n\
         [[rule.args]]\npointer = \"/path\"\nprefix = \"/etc\"\n\
         [[rule]]\nid = \"no-writes\"\ntool = \"write_file\"\naction = \"deny\"\n",
    );
    // Denied either way, but by which rule is not known.
    assert!(replayed(&unknown_first, &record("write_file", json!({}))).starts_with("? rule `etc`"));
    let known_first = parse(
        "[[rule]]\nid = \"no-writes\"\ntool = \"write_file\"\naction = \"deny\"\n\
         [[rule]]\nid = \"etc\"\ntool = \"write_file\"\naction = \"deny\"\n\
         [[rule.args]]\npointer = \"/path\"\nprefix = \"/etc\"\n",
    );
    assert_eq!(
        replayed(&known_first, &record("write_file", json!({}))),
        "deny (no-writes)"
    );
    // An allow rule that may match does not matter when a deny rule matches.
    let deny_wins = parse(
        "[[rule]]\nid = \"ok\"\ntool = \"write_file\"\naction = \"allow\"\n\
         [[rule.args]]\npointer = \"/path\"\nprefix = \"/srv\"\n\
         [[rule]]\nid = \"no-writes\"\ntool = \"write_file\"\naction = \"deny\"\n",
    );
    assert_eq!(
        replayed(&deny_wins, &record("write_file", json!({}))),
        "deny (no-writes)"
    );
    // Audit rules decide nothing.
    let audit = parse(
        "[[rule]]\nid = \"mark\"\ntool = \"write_file\"\naction = \"audit\"\n\
         [[rule.args]]\npointer = \"/path\"\nprefix = \"/etc\"\n",
    );
    assert_eq!(
        replayed(&audit, &record("write_file", json!({}))),
        "allow (default)"
    );
}

#[test]
fn replay_does_not_guess_groups_home_paths_or_the_shims_process() {
    let groups = parse("[[rule]]\nid = \"g\"\ngroup = \"sudo\"\naction = \"deny\"\n");
    assert!(replayed(&groups, &record("x", json!({}))).contains("groups"));
    let gids = parse("[[rule]]\nid = \"g\"\ngid = 27\naction = \"deny\"\n");
    assert!(replayed(&gids, &record("x", json!({}))).contains("groups"));
    let uid = parse("[[rule]]\nid = \"u\"\nuid = 1000\naction = \"deny\"\n");
    assert_eq!(replayed(&uid, &record("x", json!({}))), "deny (u)");

    let paths = parse(
        "[[rule]]\nid = \"etc\"\naction = \"deny\"\n\
         [[rule.args]]\npointer = \"**\"\npath_under = \"/etc\"\n",
    );
    let args = json!({"path": "/etc/passwd"});
    let digest = crate::audit::canonical_sha256(&args);
    let with_path = json!({"args": args, "args_sha256": digest});
    assert!(replayed(&paths, &record("x", with_path)).contains("cwd and roots"));
    // No path-like argument at all: decided by the arguments alone.
    let args = json!({"n": 3});
    let digest = crate::audit::canonical_sha256(&args);
    let no_path = json!({"args": args, "args_sha256": digest});
    assert_eq!(replayed(&paths, &record("x", no_path)), "allow (default)");

    let cron = parse(
        "default = \"deny\"\n[[rule]]\nid = \"c\"\nnot_ancestor = \"cron\"\naction = \"allow\"\n",
    );
    // Through a shim the nearest ancestor, the shim itself, is not in the record.
    assert!(replayed(&cron, &record("x", json!({}))).contains("shim's own process"));
    // Observed, the record's chain is the whole ancestry.
    let observed = json!({"transport": "stdio-observed"});
    assert_eq!(replayed(&cron, &record("x", observed)), "allow (c)");
    // A chain that has cron decides `not_ancestor` whatever the shim was.
    let under_cron = json!({"chain": [{"pid": 3, "comm": "cron", "exe": "/usr/sbin/cron"}]});
    assert_eq!(replayed(&cron, &record("x", under_cron)), "deny (default)");
}

#[test]
fn replay_reads_monitor_records_and_refuses_rates() {
    let p = parse(
        "mode = \"monitor\"\n[[rule]]\nid = \"w\"\ntool = \"write_file\"\naction = \"deny\"\n",
    );
    let d = replay::judge(&p, &record("write_file", json!({})))
        .decision
        .unwrap();
    assert!(d.would_deny && d.action == Action::Allow && d.rule == "w");
    let rated = json!({"rate_limited": true, "decision": "deny", "rule": "w"});
    assert!(replayed(&p, &record("write_file", rated)).contains("rate"));
}

// ---- [[test]] tables and shadowed rules (`policy check`) ----

const TESTED: &str = "default = \"allow\"\n\
[[rule]]\nid = \"no-writes\"\nserver = \"filesystem\"\ntool = \"write_file\"\nuser = \"alice\"\naction = \"deny\"\n\
[[test]]\nname = \"alice cannot write\"\nserver = \"filesystem\"\ntool = \"write_file\"\n\
args = { path = \"/etc/passwd\" }\nuser = \"alice\"\nexpect = \"deny\"\nrule = \"no-writes\"\n\
[[test]]\nname = \"bob can\"\nserver = \"filesystem\"\nuser = \"bob\"\n\
message = '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"write_file\"}}'\n\
expect = \"allow\"\nrule = \"default\"\n";

#[test]
fn test_tables_are_run_and_failures_name_file_line_and_both_decisions() {
    let p = parse(TESTED);
    assert_eq!(p.tests().len(), 2);
    assert_eq!(p.run_tests(), Vec::<String>::new());
    // Expectations the policy does not meet, on the lines of their tables.
    let wrong = TESTED
        .replace(
            "expect = \"deny\"\nrule = \"no-writes\"",
            "expect = \"allow\"",
        )
        .replace("rule = \"default\"", "rule = \"other\"");
    let p = parse(&wrong);
    assert_eq!(
        p.run_tests(),
        vec![
            "t.toml:8: test \"alice cannot write\": expected allow, got deny (no-writes)"
                .to_string(),
            "t.toml:15: test \"bob can\": expected allow (rule other), got allow (default)"
                .to_string(),
        ]
    );
    // No user named: the principal is unknown, and a deny rule on it matches (fail-closed).
    let anyone = TESTED.replace("user = \"bob\"\n", "");
    assert_eq!(
        parse(&anyone).run_tests(),
        vec!["t.toml:16: test \"bob can\": expected allow (rule default), got deny (no-writes)"]
    );
    // In monitor mode what the policy would deny is expected as `deny`.
    let monitor = format!("mode = \"monitor\"\n{TESTED}");
    assert_eq!(parse(&monitor).run_tests(), Vec::<String>::new());
}

#[test]
fn test_tables_do_not_change_what_the_policy_decides() {
    let rules_only = &TESTED[..TESTED.find("[[test]]").unwrap()];
    let (with, without) = (parse(TESTED), parse(rules_only));
    let p = alice();
    let args = json!({"path": "/etc/passwd"});
    for tool in ["write_file", "read_file"] {
        let q = call("filesystem", tool, &p, &args);
        let (a, b) = (with.decide(q), without.decide(q));
        assert_eq!((a.action, a.rule), (b.action, b.rule), "{tool}");
    }
    assert_eq!(with.len(), without.len());
}

#[test]
fn bad_test_tables_are_errors_with_their_place() {
    let base = "[[rule]]\nid = \"r\"\naction = \"deny\"\n[[test]]\nname = \"t\"\nserver = \"s\"\nexpect = \"deny\"\n";
    for (extra, want) in [
        (
            "message = 'nope'\n",
            "t.toml:8:11: `message`: not a JSON-RPC message",
        ),
        (
            "message = '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}'\n",
            "t.toml:8:11: `message`: a response, not a request",
        ),
        (
            "tool = \"x\"\nmessage = '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}'\n",
            "t.toml:9:11: a test gives `message` or `method`, `tool` and `args`, not both",
        ),
        ("args = [1]\n", "t.toml:8:8: `args` must be a table"),
        ("expect = \"maybe\"\n", "t.toml:8:"),
        ("color = \"red\"\n", "unknown field `color`"),
    ] {
        let text = format!("{base}{extra}");
        let err = Policy::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains(want), "{extra}: {err}");
    }
}

/// The warnings of a policy, as `rule id <- covering rule id` pairs.
fn shadows(text: &str) -> Vec<String> {
    parse(text)
        .shadowed()
        .iter()
        .map(|w| {
            let ids: Vec<&str> = w.split('`').skip(1).step_by(2).collect();
            format!("{} <- {}", ids[0], ids[1])
        })
        .collect()
}

#[test]
fn rules_that_can_never_decide_are_warned_about() {
    let rule = |id: &str, body: &str| format!("[[rule]]\nid = \"{id}\"\n{body}\n");
    let deny_writes = rule(
        "d",
        "server = \"fs\"\ntool = [\"write_file\", \"edit\"]\naction = \"deny\"",
    );
    // An allow rule inside a deny rule: deny wins, wherever it is written.
    let allow = rule(
        "a",
        "server = \"fs\"\ntool = \"write_file\"\nuser = \"alice\"\naction = \"allow\"",
    );
    assert_eq!(shadows(&format!("{allow}{deny_writes}")), ["a <- d"]);
    // A deny rule after one that covers it never names a decision; before it, it does.
    let deny2 = rule(
        "d2",
        "server = \"fs\"\ntool = \"write_file\"\naction = \"deny\"",
    );
    assert_eq!(shadows(&format!("{deny_writes}{deny2}")), ["d2 <- d"]);
    assert_eq!(
        shadows(&format!("{deny2}{deny_writes}")),
        Vec::<String>::new()
    );
    // `*` covers any name, but a tool pattern never covers a request without a tool.
    let any_tool = rule("all", "tool = \"*\"\naction = \"deny\"");
    let no_tool = rule("n", "server = \"fs\"\naction = \"deny\"");
    assert_eq!(
        shadows(&format!("{any_tool}{deny2}{no_tool}")),
        ["d2 <- all"]
    );
    // Not provable, so not reported: a covering rule with another condition, a glob
    // against a name, an allow rule with a rate (it still counts calls), an audit rule.
    for (first, second) in [
        (
            rule(
                "c",
                "server = \"fs\"\ntool = \"write_file\"\nuser = \"bob\"\naction = \"deny\"",
            ),
            allow.clone(),
        ),
        (
            rule("c", "tool = \"write_file\"\naction = \"deny\""),
            rule("g", "tool = \"write_*\"\naction = \"allow\""),
        ),
        (
            rule("c", "tool = \"write_file\"\naction = \"allow\""),
            rule(
                "r",
                "tool = \"write_file\"\nrate = \"5/minute\"\naction = \"allow\"",
            ),
        ),
        (
            deny_writes.clone(),
            rule("m", "tool = \"write_file\"\naction = \"audit\""),
        ),
        (
            rule(
                "c",
                "tool = \"write_file\"\nmethod = \"prompts/get\"\naction = \"deny\"",
            ),
            rule("x", "tool = \"write_file\"\naction = \"allow\""),
        ),
        (
            rule(
                "c",
                "tool = \"write_file\"\naction = \"deny\"\n[[rule.args]]\npointer = \"/p\"\npresent = true",
            ),
            rule("x", "tool = \"write_file\"\naction = \"allow\""),
        ),
    ] {
        assert_eq!(
            shadows(&format!("{first}{second}")),
            Vec::<String>::new(),
            "{first}{second}"
        );
    }
    // The shipped policies have none.
    for name in [
        "default.toml",
        "demo.toml",
        "readonly-filesystem.toml",
        "developer-workstation.toml",
        "production-locked.toml",
    ] {
        assert_eq!(shipped(name).shadowed(), Vec::<String>::new(), "{name}");
    }
}
