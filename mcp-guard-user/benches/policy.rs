//! Policy speed: one decision with 1,000 rules (argument constraints included) and loading
//! 1,000 rules, against the targets (median decision <= 1 us, load < 50 ms).
//!
//! `cargo bench -p mcp-guard --bench policy`

/// The percentile the other benchmarks report (`bench/src/stats.rs`).
#[path = "../../bench/src/stats.rs"]
#[allow(dead_code, unused_imports)] // `median` and its tests serve the other benchmarks.
mod stats;
use stats::percentile;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use mcp_guard::policy::{Ancestor, Limiter, Policy, Principal, Query};
use serde_json::{Value, json};

const RULES: usize = 1000;
const DECISIONS: usize = 200_000;

/// 1,000 rules over 50 servers and 400 tools, most with argument constraints, plus glob
/// rules that the index cannot place by name.
fn policy_text() -> String {
    let mut t = String::from("default = \"deny\"\n");
    for i in 0..RULES {
        let server = format!("srv{}", i % 50);
        let tool = format!("tool{}", i % 400);
        let _ = write!(t, "\n[[rule]]\nid = \"r{i}\"\n");
        match i % 10 {
            // Glob rules: in the residual lists, checked for every request of their method.
            0 => {
                let _ = write!(
                    t,
                    "server = \"srv{}*\"\ntool = \"admin_*\"\naction = \"deny\"\n",
                    i % 7
                );
            }
            1 | 2 => {
                let _ = write!(
                    t,
                    "server = \"{server}\"\ntool = \"{tool}\"\naction = \"deny\"\nmessage = \"no\"\n\
                     [[rule.args]]\npointer = \"/path\"\npath_under = [\"~/.ssh\", \"/etc\"]\n"
                );
            }
            3 => {
                let _ = write!(
                    t,
                    "server = \"{server}\"\ntool = \"{tool}\"\naction = \"deny\"\n\
                     [[rule.args]]\npointer = \"/url\"\nregex = '^https?://(localhost|127\\.|10\\.)'\n"
                );
            }
            4 => {
                let _ = write!(
                    t,
                    "server = \"{server}\"\ntool = \"{tool}\"\nancestor = [\"cron\", \"sshd\"]\naction = \"deny\"\n"
                );
            }
            _ => {
                let _ = write!(
                    t,
                    "server = \"{server}\"\ntool = \"{tool}\"\ngroup = \"dev\"\naction = \"allow\"\n\
                     [[rule.args]]\npointer = \"/path\"\npath_under = \"${{home}}/src\"\n\
                     [[rule.args]]\npointer = \"/count\"\nmin = 0\nmax = 1000\n\
                     [[rule.args]]\npointer = \"/path\"\nmax_len = 4096\n"
                );
            }
        }
    }
    t
}

fn main() {
    let text = policy_text();

    // Loading: parse + validate + index, many times; the median.
    let mut loads: Vec<Duration> = (0..30)
        .map(|_| {
            let t0 = Instant::now();
            let p = Policy::parse(&text, "bench.toml").expect("bench policy is valid");
            let d = t0.elapsed();
            black_box(p.len());
            d
        })
        .collect();
    loads.sort();
    let policy = Policy::parse(&text, "bench.toml").expect("bench policy is valid");
    assert_eq!(policy.len(), RULES);

    let who = Principal {
        uid: 1000,
        user: Some("alice".into()),
        home: Some("/home/alice".into()),
        gids: vec![1000, 1001],
        groups: vec!["alice".into(), "dev".into()],
    };
    let ancestry = vec![
        Ancestor {
            exe: Some("/usr/bin/claude".into()),
            comm: "claude".into(),
        },
        Ancestor {
            exe: Some("/usr/bin/bash".into()),
            comm: "bash".into(),
        },
        Ancestor {
            exe: Some("/usr/lib/systemd/systemd".into()),
            comm: "systemd".into(),
        },
    ];
    // Requests: mostly rule-covered tools with realistic arguments, some misses.
    // Three in four name a rule's server and tool; the rest a tool no rule names.
    let names: Vec<(String, String)> = (0..1024)
        .map(|i| {
            let k = (i * 37) % RULES;
            let tool = if i % 4 == 3 {
                format!("other{i}")
            } else {
                format!("tool{}", k % 400)
            };
            (format!("srv{}", k % 50), tool)
        })
        .collect();
    let args: Vec<Value> = (0..1024)
        .map(|i| match i % 4 {
            0 => json!({"path": format!("/home/alice/src/p{i}/main.rs"), "count": 10}),
            1 => json!({"path": format!("/home/alice/src/../.ssh/id_{i}"), "count": 1}),
            2 => json!({"url": "https://example.com/x", "path": "/tmp/x"}),
            _ => json!({"path": "relative/x", "count": 5000}),
        })
        .collect();
    let queries: Vec<Query<'_>> = (0..1024)
        .map(|i| {
            Query::new(&names[i].0, "tools/call")
                .tool(&names[i].1)
                .principal(&who)
                .ancestry(&ancestry)
                .arguments(&args[i])
                .cwd("/home/alice/src")
                .server_exe("/usr/bin/node")
                .host_exe("/usr/bin/claude")
        })
        .collect();

    // Warm up.
    for q in queries.iter().cycle().take(50_000) {
        black_box(policy.decide(*q));
    }
    // Each decision timed on its own (includes ~20 ns of clock reads).
    let mut each: Vec<Duration> = Vec::with_capacity(DECISIONS);
    let mut denied = 0usize;
    for q in queries.iter().cycle().take(DECISIONS) {
        let t0 = Instant::now();
        let d = policy.decide(*q);
        let el = t0.elapsed();
        denied += usize::from(d.action == mcp_guard::policy::Action::Deny);
        each.push(el);
    }
    each.sort();
    // Throughput: a batch, no clock in the loop.
    let t0 = Instant::now();
    for q in queries.iter().cycle().take(DECISIONS) {
        black_box(policy.decide(*q));
    }
    let mean = t0.elapsed() / DECISIONS as u32;
    // With the rate limiter in the path (no rule here has a rate: the cost of asking).
    let lim = Limiter::new();
    let now = Instant::now();
    let t0 = Instant::now();
    for q in queries.iter().cycle().take(DECISIONS) {
        black_box(policy.decide_limited(q, &lim, now));
    }
    let mean_limited = t0.elapsed() / DECISIONS as u32;

    let median = percentile(&each, 0.5);
    let p99 = percentile(&each, 0.99);
    let load = percentile(&loads, 0.5);
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "policy bench: {RULES} rules ({} with argument constraints), {DECISIONS} decisions ({denied} denied)",
        RULES * 7 / 10
    );
    println!(
        "  decision median   {:>9.3} us   target <= 1 us   {}",
        median.as_secs_f64() * 1e6,
        verdict(median <= Duration::from_micros(1))
    );
    println!("  decision p99      {:>9.3} us", p99.as_secs_f64() * 1e6);
    println!(
        "  decision max      {:>9.3} us",
        each[each.len() - 1].as_secs_f64() * 1e6
    );
    println!(
        "  decision mean     {:>9.3} us   (batch, no clock in the loop)",
        mean.as_secs_f64() * 1e6
    );
    println!(
        "  with limiter      {:>9.3} us   (batch mean, decide_limited)",
        mean_limited.as_secs_f64() * 1e6
    );
    println!(
        "  load {RULES} rules   {:>9.3} ms   target < 50 ms   {}   ({} bytes of TOML; min {:.3} ms, max {:.3} ms)",
        load.as_secs_f64() * 1e3,
        verdict(load < Duration::from_millis(50)),
        text.len(),
        loads[0].as_secs_f64() * 1e3,
        loads[loads.len() - 1].as_secs_f64() * 1e3
    );
}
