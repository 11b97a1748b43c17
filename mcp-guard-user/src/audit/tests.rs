use super::verify::{Problem, Verdict};
use super::*;
use serde_json::value::RawValue;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// A context for records in tests (server `t`).
pub(crate) fn ctx() -> Arc<Context> {
    let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
    Arc::new(Context {
        session: "s1".into(),
        transport: crate::audit::Transport::Shim,
        policy_sha256: "00".into(),
        mode: crate::policy::Mode::Enforce,
        principal: raw(r#"{"uid":1000}"#),
        agent_host: raw(r#"{"pid":1}"#),
        chain: raw("[]"),
        server: raw(r#"{"name":"t"}"#),
    })
}

fn records(n: usize, ctx: &Arc<Context>) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut r = Record::new(crate::audit::Kind::Request, ctx);
            r.request_id = Some(i.to_string());
            r
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Verifies `files` with the public key next to the first one.
fn verify(files: &[PathBuf]) -> Verdict {
    let key = files[0].parent().unwrap().join("audit.pub");
    verify::check(&chain::PublicKey::read(&key).unwrap(), &key, files).unwrap()
}

fn ok(files: &[PathBuf]) -> verify::Summary {
    match verify(files) {
        Verdict::Ok(s) => s,
        Verdict::Bad(f) => panic!(
            "verify failed: {f}\n{}",
            files
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect::<String>()
        ),
    }
}

/// How many `seal` records `files` hold (they come when the log goes quiet, so their
/// number depends on timing).
fn seals(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| l.contains(r#""kind":"seal""#))
                .count() as u64
        })
        .sum()
}

fn bad(files: &[PathBuf]) -> verify::Finding {
    match verify(files) {
        Verdict::Ok(s) => panic!("verify passed: {s}"),
        Verdict::Bad(f) => f,
    }
}

fn write_log(path: &Path, commits: usize, per: usize) {
    let (audit, thread) = Audit::open(path, Durability::PageCache).unwrap();
    let c = ctx();
    rt().block_on(async {
        for _ in 0..commits {
            audit.commit(records(per, &c)).await.unwrap();
        }
    });
    audit.close(thread);
}

/// Runs this test binary again as a child doing `role` (see [`child`]).
fn child_cmd(role: &str, path: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "audit::tests::child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("MCP_GUARD_TEST_CHILD", role)
    .env("MCP_GUARD_TEST_LOG", path);
    cmd
}

/// Not a test on its own: the body of the child processes of the tests below.
#[test]
fn child() {
    let (Ok(role), Some(path)) = (
        std::env::var("MCP_GUARD_TEST_CHILD"),
        std::env::var_os("MCP_GUARD_TEST_LOG"),
    ) else {
        return;
    };
    let path = PathBuf::from(path);
    let c = ctx();
    match role.as_str() {
        // Commits forever (until killed), in durable mode, with small rotations.
        "forever" => {
            let opts = Options {
                max_bytes: 100_000,
                ..Options::default()
            };
            let (audit, _thread) = Audit::open_with(&path, Durability::Durable, &opts).unwrap();
            let rt = rt();
            for i in 0.. {
                // Now and then a write of many pages, which a kill can cut short mid-line.
                let n = if i % 5 == 4 { 200 } else { 1 + i % 7 };
                let _ = rt.block_on(audit.commit(records(n, &c)));
                audit.append(records(i % 3, &c));
            }
        }
        "commit100" => {
            let (audit, thread) = Audit::open(&path, Durability::Durable).unwrap();
            let rt = rt();
            for _ in 0..100 {
                rt.block_on(audit.commit(records(2, &c))).unwrap();
            }
            audit.close(thread);
        }
        // Writes until the file size limit makes a write fail, lifts the limit, writes again;
        // `gap-handed` with commits and appends of many records, which the committer thread
        // writes.
        "gap" | "gap-handed" => {
            use nix::libc;
            let (failed_commit, failed_append) = match role.as_str() {
                "gap" => (2, 3),
                _ => (super::HAND_OVER_AT, super::HAND_OVER_AT + 1),
            };
            let set = |cur: libc::rlim_t, max: libc::rlim_t| {
                // SAFETY: a plain system call on a local struct.
                assert_eq!(
                    unsafe {
                        libc::setrlimit(
                            libc::RLIMIT_FSIZE,
                            &libc::rlimit {
                                rlim_cur: cur,
                                rlim_max: max,
                            },
                        )
                    },
                    0
                );
            };
            let (audit, thread) = Audit::open(&path, Durability::Durable).unwrap();
            let rt = rt();
            rt.block_on(audit.commit(records(1, &c))).unwrap();
            // SAFETY: no other thread of this process handles signals.
            unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: a plain system call on a local struct.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) }, 0);
            let len = std::fs::metadata(&path).unwrap().len();
            set(len + 100, lim.rlim_max);
            let err = rt
                .block_on(audit.commit(records(failed_commit, &c)))
                .unwrap_err();
            assert!(err.to_string().contains("too large"), "{err}");
            audit.append(records(failed_append, &c));
            audit.committer.drain();
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                len,
                "a failed write leaves nothing behind"
            );
            set(lim.rlim_cur, lim.rlim_max);
            rt.block_on(audit.commit(records(1, &c))).unwrap();
            audit.close(thread);
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn committed_records_form_one_verifiable_signed_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/audit.jsonl");
    let (audit, thread) = Audit::open(&path, Durability::Durable).unwrap();
    let c = ctx();
    rt().block_on(async {
        audit.commit(records(3, &c)).await.unwrap();
        audit.append(records(2, &c));
        audit.commit(records(1, &c)).await.unwrap();
    });
    audit.close(thread);
    let s = ok(std::slice::from_ref(&path));
    // Records are written unsigned; seals sign the chain head, the last when the log closes.
    let n = seals(std::slice::from_ref(&path));
    assert!(n >= 1, "{s}");
    assert_eq!(
        (s.records, s.signatures, s.head),
        (6 + n, n, Some(6 + n)),
        "{s}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path.parent().unwrap().join("audit.key")), 0o600);
    let public = std::fs::read_to_string(path.parent().unwrap().join("audit.pub")).unwrap();
    assert_eq!(public.trim().len(), 64, "{public}");
    // Only seals carry a signature, after the hash; the log ends with one.
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines() {
        let seal = line.contains(r#""kind":"seal""#);
        assert_eq!(line.contains("\",\"sig\":\""), seal, "{line}");
    }
    let last = text.lines().last().unwrap();
    assert!(
        last.contains(r#""kind":"seal""#) && last.ends_with("\"}"),
        "{last}"
    );
}

/// A signature follows every record within the bound the module documents, however the
/// log is used: quiet (sealed once idle), or written to without a pause (sealed at the
/// latest `SEAL_WITHIN` after the first record it covers), and also in durable mode.
#[test]
fn records_are_sealed_within_the_bound_while_the_log_stays_open() {
    for durability in [Durability::PageCache, Durability::Durable] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (audit, thread) = Audit::open(&path, durability).unwrap();
        let c = ctx();
        let last_is_seal = || {
            let text = std::fs::read_to_string(&path).unwrap();
            text.lines().last().unwrap().contains(r#""kind":"seal""#)
        };
        // Quiet: one commit, then nothing.
        rt().block_on(audit.commit(records(1, &c))).unwrap();
        let t0 = Instant::now();
        while !last_is_seal() {
            assert!(t0.elapsed() < Duration::from_secs(2), "never sealed");
            std::thread::sleep(Duration::from_micros(200));
        }
        // Busy: a commit every 100 µs for 200 ms. Every record is followed by a seal
        // written within the bound (record times are the writer's clock; slack for a loaded
        // machine), and page-cache commits, which never pause for 1 ms, share seals.
        let start = Instant::now();
        rt().block_on(async {
            while start.elapsed() < Duration::from_millis(200) {
                audit.commit(records(1, &c)).await.unwrap();
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        // Past the bound: the last records are sealed too.
        std::thread::sleep(SEAL_WITHIN * 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let time =
            |r: &serde_json::Value| humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
        let recs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut seals = 0;
        for (i, r) in recs.iter().enumerate() {
            if r["kind"] == "seal" {
                seals += 1;
                continue;
            }
            let seal = recs[i..]
                .iter()
                .find(|s| s["kind"] == "seal")
                .unwrap_or_else(|| panic!("no seal after {r}"));
            let waited = time(seal).duration_since(time(r)).unwrap_or_default();
            assert!(
                waited <= SEAL_WITHIN + Duration::from_millis(40),
                "{r} sealed after {waited:?}"
            );
        }
        if durability == Durability::PageCache {
            assert!(
                seals * 4 < recs.len(),
                "{seals} seals in {} lines",
                recs.len()
            );
        }
        audit.close(thread);
        ok(&[path]);
    }
}

#[test]
fn a_group_or_world_readable_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 1, 1);
    let key = dir.path().join("audit.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Audit::open(&path, Durability::PageCache).err().unwrap();
    assert!(
        matches!(err, Error::Key(chain::Error::KeyMode { .. })),
        "{err}"
    );
}

#[test]
fn a_public_key_that_does_not_match_the_signing_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 1, 1);
    std::fs::write(dir.path().join("audit.pub"), "ab".repeat(32)).unwrap();
    let err = Audit::open(&path, Durability::PageCache).err().unwrap();
    assert!(
        matches!(err, Error::Key(chain::Error::PublicMismatch { .. })),
        "{err}"
    );
}

#[test]
fn two_writers_on_one_file_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (a, ta) = Audit::open(&path, Durability::PageCache).unwrap();
    let (b, tb) = Audit::open(&path, Durability::Durable).unwrap();
    let c = ctx();
    rt().block_on(async {
        for _ in 0..20 {
            let (x, y) = tokio::join!(a.commit(records(3, &c)), b.commit(records(2, &c)));
            x.unwrap();
            y.unwrap();
        }
    });
    a.close(ta);
    b.close(tb);
    assert_eq!(
        ok(std::slice::from_ref(&path)).records,
        100 + seals(&[path])
    );
}

#[test]
fn concurrent_threads_share_writes_and_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (audit, thread) = Audit::open(&path, Durability::Durable).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let audit = audit.clone();
            s.spawn(move || {
                let c = ctx();
                let rt = rt();
                for _ in 0..50 {
                    rt.block_on(audit.commit(records(1, &c))).unwrap();
                }
            });
        }
    });
    audit.close(thread);
    let s = ok(std::slice::from_ref(&path));
    let n = seals(&[path]);
    assert_eq!(s.records, 400 + n);
    assert!(s.signatures == n && n > 0, "{s}");
}

#[test]
fn concurrent_processes_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 1, 1);
    let children: Vec<_> = (0..3)
        .map(|_| {
            child_cmd("commit100", &path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(
        ok(std::slice::from_ref(&path)).records,
        1 + 3 * 200 + seals(&[path])
    );
}

#[test]
fn a_torn_last_line_is_sealed_with_a_recovery_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 1, 2);
    let torn = b"{\"v\":1,\"seq\":3,\"ti";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(torn)
        .unwrap();
    assert_eq!(bad(std::slice::from_ref(&path)).problem, Problem::Torn);
    let offset = std::fs::metadata(&path).unwrap().len() - torn.len() as u64;
    // Opening seals it, before any record is written.
    let (audit, thread) = Audit::open(&path, Durability::Durable).unwrap();
    rt().block_on(audit.commit(records(1, &ctx()))).unwrap();
    audit.close(thread);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Two records and the seal written when that log was closed, the torn bytes, the
    // recovery record, the new record and its seal.
    assert_eq!(lines.len(), 7, "{text}");
    assert_eq!(
        lines[3].as_bytes(),
        torn,
        "the torn bytes stay, on their own line"
    );
    let rec: serde_json::Value = serde_json::from_str(lines[4]).unwrap();
    assert_eq!(rec["kind"], "recovery");
    assert_eq!(rec["seq"], 4, "the torn record's seq is not consumed");
    assert_eq!(rec["detail"]["torn"]["offset"], offset);
    assert_eq!(rec["detail"]["torn"]["bytes"], torn.len());
    assert_eq!(
        rec["detail"]["torn"]["sha256"],
        crate::digest::sha256_hex(torn)
    );
    let s = ok(std::slice::from_ref(&path));
    assert_eq!((s.records, s.torn.len(), s.torn[0].1), (6, 1, 4), "{s}");
    assert!(s.to_string().contains("1 torn line sealed at"), "{s}");
    // The same torn bytes anywhere else are not accepted.
    let moved = [
        lines[0], lines[1], lines[3], lines[2], lines[4], lines[5], lines[6],
    ]
    .join("\n")
        + "\n";
    std::fs::write(&path, moved).unwrap();
    assert!(matches!(verify(&[path]), Verdict::Bad(_)));
}

#[test]
fn a_write_cut_short_after_complete_records_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 2, 3);
    // Drop the signed last record of the last write: its first two stay, unsigned.
    let text = std::fs::read_to_string(&path).unwrap();
    let keep: Vec<&str> = text.lines().take(5).collect();
    std::fs::write(&path, keep.join("\n") + "\n").unwrap();
    std::fs::remove_file(chain::Head::path(&path)).unwrap();
    assert_eq!(bad(std::slice::from_ref(&path)).problem, Problem::Truncated);
    let (audit, thread) = Audit::open(&path, Durability::PageCache).unwrap();
    audit.close(thread);
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["kind"].as_str(), Some("seal"), "{last}");
    assert_eq!(last["detail"]["after_seq"], 5, "{last}");
    assert_eq!(ok(&[path]).records, 6);
}

#[test]
fn records_lost_to_a_failed_write_are_accounted_for_by_a_gap_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let out = child_cmd("gap", &path).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    // Seals come when the log is quiet for a moment: wherever they fall, they are not the
    // records this test is about.
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] != "seal")
        .collect();
    assert_eq!(recs.len(), 3, "{text}");
    assert_eq!(recs[1]["kind"], "gap");
    assert_eq!(recs[1]["detail"]["records_lost"], 5);
    assert!(
        recs[1]["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{}",
        recs[1]
    );
    assert!(recs[1]["detail"]["since"].as_str() <= recs[1]["detail"]["until"].as_str());
    let s = ok(&[path]);
    assert_eq!((s.gaps, s.records_lost), (1, 5), "{s}");
}

fn rotated_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_str()?.to_string();
            let range = name.strip_prefix("audit.jsonl.")?;
            Some((range.split_once('-')?.0.parse().ok()?, p))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Retention: past `keep_files`, the oldest rotated files go; the newest and the live file
/// stay and still verify as one chain from where they start.
#[test]
fn retention_removes_the_oldest_rotated_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let opts = Options {
        max_bytes: 4000,
        retention: Retention {
            keep_files: 2,
            keep_age: None,
        },
        ..Options::default()
    };
    let (a, ta) = Audit::open_with(&path, Durability::PageCache, &opts).unwrap();
    let c = ctx();
    rt().block_on(async {
        for _ in 0..60 {
            a.commit(records(2, &c)).await.unwrap();
        }
    });
    a.close(ta);
    let mut files = rotated_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    files.push(path.clone());
    let s = ok(&files);
    assert!(s.rotations >= 2, "{s}");
    // An age limit removes every rotated file older than it.
    let old = Retention {
        keep_files: 0,
        keep_age: Some(std::time::Duration::ZERO),
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    writer::prune(&path, &old);
    assert!(rotated_files(dir.path()).is_empty());
    assert!(path.exists(), "the live file stays");
}

#[test]
fn rotation_keeps_one_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let opts = Options {
        max_bytes: 4000,
        ..Options::default()
    };
    let (a, ta) = Audit::open_with(&path, Durability::Durable, &opts).unwrap();
    let (b, tb) = Audit::open_with(&path, Durability::PageCache, &opts).unwrap();
    let c = ctx();
    rt().block_on(async {
        for _ in 0..30 {
            a.commit(records(2, &c)).await.unwrap();
            b.commit(records(1, &c)).await.unwrap();
        }
    });
    a.close(ta);
    b.close(tb);
    let mut files = rotated_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() < 4000 + 2000,
            "{}",
            f.display()
        );
    }
    files.push(path.clone());
    let s = ok(&files);
    assert_eq!(s.records, 90 + s.rotations + seals(&files), "{s}");
    assert_eq!(s.rotations as usize, files.len() - 1);
    // The live file alone verifies (it continues from the rotated one), as does a rotated file.
    ok(std::slice::from_ref(&path));
    ok(&files[1..2]);
    // A file left out in the middle is a deletion.
    let mut missing = files.clone();
    missing.remove(1);
    let f = bad(&missing);
    assert_eq!(f.problem, Problem::Deleted, "{f}");
    assert_eq!((f.file.clone(), f.line), (files[2].clone(), 1), "{f}");
    assert!(f.detail.contains("rotated file left out"), "{f}");
}

#[test]
fn a_writer_killed_at_any_moment_leaves_a_log_that_verifies_after_reopen() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    for round in 0..6u64 {
        let mut children: Vec<_> = (0..2)
            .map(|_| {
                child_cmd("forever", &path)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Pseudo-random moments, different each round.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        std::thread::sleep(std::time::Duration::from_millis(
            60 + (nanos ^ (round * 7919)) % 150,
        ));
        for c in &mut children {
            kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL).unwrap();
            c.wait().unwrap();
        }
        let (audit, thread) = Audit::open(&path, Durability::Durable).unwrap();
        audit.close(thread);
        let mut files = rotated_files(dir.path());
        files.push(path.clone());
        let s = ok(&files);
        eprintln!("round {round}: {s}");
        assert!(s.records > 0);
    }
}

#[test]
fn canonical_hash_ignores_key_order_and_whitespace() {
    let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[1,2]}"#).unwrap();
    let b: serde_json::Value = serde_json::from_str(r#"{ "a" : [1, 2], "b" : 1 }"#).unwrap();
    assert_eq!(canonical_sha256(&a), canonical_sha256(&b));
}

mod flipped {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any byte of any record, flipped, makes verification fail.
        #[test]
        fn any_flipped_byte_fails_verification(at in any::<prop::sample::Index>(), bits in 1u8..=255) {
            thread_local! {
                static LOG: (tempfile::TempDir, Vec<u8>) = {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("audit.jsonl");
                    write_log(&path, 3, 2);
                    let text = std::fs::read(&path).unwrap();
                    (dir, text)
                };
            }
            LOG.with(|(dir, text)| {
                let mut edited = text.clone();
                let i = at.index(edited.len());
                edited[i] ^= bits;
                let path = dir.path().join("edited.jsonl");
                std::fs::write(&path, &edited).unwrap();
                std::fs::copy(chain::Head::path(&dir.path().join("audit.jsonl")), chain::Head::path(&path)).unwrap();
                prop_assert!(matches!(verify(&[path]), Verdict::Bad(_)), "byte {} ^ {:#x} passed", i, bits);
                Ok(())
            })?;
        }
    }
}

/// Lines of `kind` in `path`.
fn count_kind(path: &Path, kind: &str) -> usize {
    let needle = format!("\"kind\":\"{kind}\"");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

#[test]
fn a_log_removed_under_a_writer_is_started_again_at_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (a, t) = Audit::open(&path, Durability::PageCache).unwrap();
    let c = ctx();
    rt().block_on(async {
        a.commit(records(1, &c)).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        // At once, not after the path is next looked at: a removed file has no links.
        a.commit(records(2, &c)).await.unwrap();
    });
    assert_eq!(count_kind(&path, "request"), 2);
    a.close(t);
    ok(std::slice::from_ref(&path));
}

#[test]
fn a_log_renamed_away_under_a_writer_is_followed_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let moved = dir.path().join("audit.jsonl.1");
    let (a, t) = Audit::open(&path, Durability::PageCache).unwrap();
    let c = ctx();
    rt().block_on(async {
        a.commit(records(1, &c)).await.unwrap();
        std::fs::rename(&path, &moved).unwrap();
        // Written where the writer's file now is, or at the path: either way, somewhere.
        a.commit(records(1, &c)).await.unwrap();
        std::thread::sleep(writer::PATH_CHECK_EVERY + std::time::Duration::from_millis(20));
        a.commit(records(3, &c)).await.unwrap();
    });
    a.close(t);
    // Past the check interval the writer is back at the path.
    assert!(count_kind(&path, "request") >= 3, "records at the path");
    assert_eq!(
        count_kind(&path, "request") + count_kind(&moved, "request"),
        5,
        "every record is in one of the two files"
    );
    // Each file verifies on its own; the new one starts a chain of its own, so the two
    // together do not (the README says to rotate with the writer's setting instead).
    ok(std::slice::from_ref(&moved));
    ok(std::slice::from_ref(&path));
    bad(&[moved.clone(), path.clone()]);
}

#[test]
fn a_failed_write_of_the_committer_thread_fails_its_commit_and_leaves_a_gap_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let out = child_cmd("gap-handed", &path).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = ok(&[path]);
    let lost = 2 * super::HAND_OVER_AT as u64 + 1;
    assert_eq!((s.gaps, s.records_lost), (1, lost), "{s}");
}

/// `request_id`s of the request records in `path`, in the log's order.
fn request_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "request")
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect()
}

fn named(n: usize, name: &str, ctx: &Arc<Context>) -> Vec<Record> {
    let mut recs = records(n, ctx);
    for (i, r) in recs.iter_mut().enumerate() {
        r.request_id = Some(format!("{name}-{i}"));
    }
    recs
}

#[test]
fn records_handed_to_the_committer_keep_their_place_among_those_written_here() {
    for durability in [Durability::PageCache, Durability::Durable] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (a, t) = Audit::open(&path, durability).unwrap();
        let c = ctx();
        let mut want = Vec::new();
        rt().block_on(async {
            let mut tickets = Vec::new();
            for round in 0..20 {
                // Many records (handed over), then a few (written here unless the committer
                // is still busy), then an append.
                let big = named(super::HAND_OVER_AT + round % 3, &format!("big{round}"), &c);
                let small = named(1 + round % 2, &format!("small{round}"), &c);
                let after = named(1, &format!("append{round}"), &c);
                for r in big.iter().chain(&small).chain(&after) {
                    want.push(r.request_id.clone().unwrap());
                }
                tickets.push(a.submit(big));
                tickets.push(a.submit(small));
                a.append(after);
            }
            for t in tickets {
                t.wait().await.unwrap();
            }
        });
        a.close(t);
        assert_eq!(request_ids(&path), want, "{durability:?}");
        ok(std::slice::from_ref(&path));
    }
}

#[test]
fn closing_writes_what_was_handed_over_before_the_last_seal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (a, t) = Audit::open(&path, Durability::Durable).unwrap();
    let c = ctx();
    a.append(named(50, "appended", &c));
    a.close(t);
    assert_eq!(request_ids(&path).len(), 50);
    let text = std::fs::read_to_string(&path).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "seal", "{last}");
    ok(&[path]);
}

#[test]
fn a_handle_left_after_the_log_is_closed_writes_on_its_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (a, t) = Audit::open(&path, Durability::Durable).unwrap();
    let b = a.clone();
    a.close(t);
    let c = ctx();
    b.append(named(super::HAND_OVER_AT, "appended", &c));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let commit = b.commit(named(super::HAND_OVER_AT, "committed", &c));
        tokio::time::timeout(std::time::Duration::from_secs(10), commit)
            .await
            .expect("not left waiting for a stopped thread")
            .unwrap();
    });
    assert_eq!(request_ids(&path).len(), 2 * super::HAND_OVER_AT);
}

#[test]
fn a_panic_on_the_committer_thread_fails_that_commit_and_the_next_ones_go_on() {
    struct PanicsOnce(std::sync::atomic::AtomicBool);
    impl super::Tap for PanicsOnce {
        fn written(&self, _: &[Record]) {}
        fn committed(&self, _: std::time::Duration) {
            if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("a tap that fails");
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (a, t) = Audit::open(&path, Durability::PageCache).unwrap();
    a.set_tap(Arc::new(PanicsOnce(Default::default())));
    let c = ctx();
    rt().block_on(async {
        let err = a
            .commit(named(super::HAND_OVER_AT, "first", &c))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("committer"), "{err}");
        a.commit(named(super::HAND_OVER_AT, "second", &c))
            .await
            .unwrap();
    });
    // Not left waiting for a thread that is gone.
    a.commit_blocking(named(1, "third", &c)).unwrap();
    a.close(t);
    assert_eq!(request_ids(&path).len(), 2 * super::HAND_OVER_AT + 1);
}

#[test]
fn dropping_the_last_handle_writes_what_was_handed_over_before_the_last_seal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (a, mut t) = Audit::open(&path, Durability::PageCache).unwrap();
    a.append(named(50, "appended", &ctx()));
    drop(a);
    for h in [t.committer.take(), t.sealer.take()].into_iter().flatten() {
        h.join().unwrap();
    }
    assert_eq!(request_ids(&path).len(), 50);
    let text = std::fs::read_to_string(&path).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "seal", "{last}");
    ok(&[path]);
}
