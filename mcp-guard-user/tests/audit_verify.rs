//! `mcp-guard audit verify` on logs written by the audit writer and then tampered with:
//! each kind of tampering is named, with its file, line and seq.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mcp_guard::audit::{Audit, Context, Durability, Options, Record};
use serde_json::value::RawValue;

fn ctx() -> Arc<Context> {
    let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
    Arc::new(Context {
        session: "s1".into(),
        transport: mcp_guard::audit::Transport::Shim,
        policy_sha256: "00".into(),
        mode: mcp_guard::policy::Mode::Enforce,
        principal: raw(r#"{"uid":1000}"#),
        agent_host: raw(r#"{"pid":1}"#),
        chain: raw("[]"),
        server: raw(r#"{"name":"t"}"#),
    })
}

/// A log of `commits` commits of `per` records each, in a fresh directory, each commit
/// signed on its own (`sign_commits`: no seal records, so lines are where the tests say).
fn log(commits: usize, per: usize, opts: &Options) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let opts = Options {
        sign_commits: true,
        ..opts.clone()
    };
    let (audit, thread) = Audit::open_with(&path, Durability::PageCache, &opts).unwrap();
    let c = ctx();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..commits {
        let recs = (0..per)
            .map(|j| {
                let mut r = Record::new(mcp_guard::audit::Kind::Request, &c);
                r.request_id = Some(format!("{i}.{j}"));
                r
            })
            .collect();
        rt.block_on(audit.commit(recs)).unwrap();
    }
    audit.close(thread);
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn rewrite(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Runs `mcp-guard audit verify [--key KEY] FILES`: exit code and stdout.
fn verify(key: Option<&Path>, files: &[&Path]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-guard"));
    cmd.args(["audit", "verify"]);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let out = cmd.args(files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

fn assert_bad(files: &[&Path], expect: &str) {
    let (code, out) = verify(None, files);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(expect), "expected `{expect}` in: {out}");
}

#[test]
fn an_untouched_log_verifies_with_its_record_and_signature_counts() {
    let (_d, path) = log(4, 3, &Options::default());
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!(
            "{}: OK, 12 records (seq 1-12), 4 signatures",
            path.display()
        )),
        "{out}"
    );
    assert!(out.contains("signed head at seq 12"), "{out}");
}

#[test]
fn an_edited_record_is_reported_as_edited() {
    let (_d, path) = log(3, 3, &Options::default());
    let mut l = lines(&path);
    l[4] = l[4].replace("\"request_id\":\"1.1\"", "\"request_id\":\"1.9\"");
    rewrite(&path, &l);
    assert_bad(&[&path], &format!("{}:5: seq 5: edited:", path.display()));
}

#[test]
fn an_edit_with_recomputed_hashes_fails_the_signature() {
    let (_d, path) = log(3, 3, &Options::default());
    let mut l = lines(&path);
    // Rewrite record 4 and re-chain the rest of its write, as someone without the key could.
    l[3] = l[3].replace("\"request_id\":\"1.0\"", "\"request_id\":\"1.7\"");
    // Record 3 ends a write: the next `prev` names its hash and signature together.
    let third = serde_json::from_str::<serde_json::Value>(&l[2]).unwrap();
    let mut prev = mcp_guard::audit::link(
        third["hash"].as_str().unwrap(),
        third["sig"].as_str().map(str::as_bytes),
    );
    for line in l.iter_mut().take(6).skip(3) {
        let at = line.find(",\"prev\":\"").unwrap();
        let end = line.find(",\"hash\":\"").unwrap();
        let sig = line[end..]
            .find(",\"sig\":\"")
            .map(|s| line[end + s..].to_string())
            .unwrap_or("}".into());
        let body = format!("{},\"prev\":\"{prev}\"}}", &line[..at]);
        let hash = mcp_guard::audit::chain_hash(&prev, body.as_bytes());
        *line = format!(
            "{},\"hash\":\"{hash}\"{}",
            &body[..body.len() - 1],
            if sig == "}" { "}".to_string() } else { sig }
        );
        prev = hash;
    }
    rewrite(&path, &l);
    assert_bad(
        &[&path],
        &format!("{}:6: seq 6: edited: the signature", path.display()),
    );
}

#[test]
fn a_deleted_record_is_reported_as_deleted() {
    let (_d, path) = log(3, 3, &Options::default());
    let mut l = lines(&path);
    l.remove(4);
    rewrite(&path, &l);
    assert_bad(
        &[&path],
        &format!(
            "{}:5: seq 6: deleted: follows seq 4: seq 5 is missing",
            path.display()
        ),
    );
}

#[test]
fn an_inserted_record_is_reported_as_inserted() {
    let (_d, path) = log(3, 3, &Options::default());
    let mut l = lines(&path);
    let copy = l[1].clone();
    l.insert(6, copy);
    rewrite(&path, &l);
    assert_bad(&[&path], &format!("{}:7: seq 2: inserted:", path.display()));
}

#[test]
fn reordered_records_are_reported_as_reordered() {
    let (_d, path) = log(3, 3, &Options::default());
    let mut l = lines(&path);
    l.swap(4, 5);
    rewrite(&path, &l);
    assert_bad(
        &[&path],
        &format!(
            "{}:5: seq 6: reordered: seq 6 comes before seq 5",
            path.display()
        ),
    );
}

#[test]
fn a_truncated_log_is_reported_as_truncated() {
    let (_d, path) = log(3, 3, &Options::default());
    let mut l = lines(&path);
    // Whole writes removed from the end: the chain is intact, the signed head is not.
    l.truncate(6);
    rewrite(&path, &l);
    assert_bad(
        &[&path],
        &format!(
            "{}:6: seq 6: truncated: the log ends at seq 6, but seq 9 was written",
            path.display()
        ),
    );
    // Part of a write removed, head file gone too: the last record is unsigned.
    l.truncate(5);
    rewrite(&path, &l);
    std::fs::remove_file(path.with_file_name("audit.jsonl.head")).unwrap();
    assert_bad(
        &[&path],
        &format!(
            "{}:5: seq 5: truncated: the last record is not signed",
            path.display()
        ),
    );
}

#[test]
fn another_key_is_reported_as_wrong_key() {
    let (_d, path) = log(2, 2, &Options::default());
    let (other, _) = log(1, 1, &Options::default());
    let (code, out) = verify(Some(&other.path().join("audit.pub")), &[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{}:2: seq 2: wrong key:", path.display())),
        "{out}"
    );
}

#[test]
fn rotated_files_verify_as_one_chain_and_a_missing_one_is_a_deletion() {
    let (dir, path) = log(
        60,
        2,
        &Options {
            max_bytes: 3000,
            ..Options::default()
        },
    );
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let range = p
                .file_name()?
                .to_str()?
                .strip_prefix("audit.jsonl.")?
                .to_string();
            Some((range.split_once('-')?.0.parse().ok()?, p))
        })
        .collect();
    rotated.sort();
    assert!(rotated.len() >= 3, "{rotated:?}");
    let mut files: Vec<&Path> = rotated.iter().map(|(_, p)| p.as_path()).collect();
    files.push(&path);
    let (code, out) = verify(None, &files);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{} rotations", files.len() - 1)),
        "{out}"
    );
    let mut gap = files.clone();
    gap.remove(1);
    assert_bad(
        &gap,
        &format!("{}:1: seq {}: deleted:", files[2].display(), rotated[2].0),
    );
    // Files given out of order.
    let mut swapped = files.clone();
    swapped.swap(0, 1);
    assert_bad(&swapped, "reordered");
}

#[test]
fn a_missing_public_key_is_an_error_not_a_pass() {
    let (dir, path) = log(1, 1, &Options::default());
    std::fs::remove_file(dir.path().join("audit.pub")).unwrap();
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("audit.pub"), "{out}");
}

/// Runs `mcp-guard audit verify ARGS`: exit code and stdout + stderr.
fn verify_args(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-guard"))
        .args(["audit", "verify"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The attack: cut the log just after the signed record on line `keep`, and copy that
/// record's `seq`, `hash` and `sig` into `<log>.head`, as anyone who can write the log can.
fn cut_and_forge_head(path: &Path, keep: usize) {
    let mut l = lines(path);
    l.truncate(keep);
    let last: serde_json::Value = serde_json::from_str(&l[keep - 1]).unwrap();
    assert!(
        last["sig"].is_string(),
        "line {keep} must end a signed write"
    );
    rewrite(path, &l);
    std::fs::write(
        path.with_file_name("audit.jsonl.head"),
        format!(
            "{{\"seq\":{},\"hash\":{},\"sig\":{}}}\n",
            last["seq"], last["hash"], last["sig"]
        ),
    )
    .unwrap();
}

/// Sends the log to a UDP "SIEM" with the real forwarder (cursor kept at `cursor`); returns
/// the records the SIEM received.
fn forward_to_siem(path: &Path, cursor: &Path) -> Vec<serde_json::Value> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let to = format!("udp://{}", sock.local_addr().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-guard"))
        .args([
            "audit",
            "forward",
            "--to",
            &to,
            "--settle-ms",
            "0",
            "--cursor",
        ])
        .arg(cursor)
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < lines(path).len() {
        let n = sock.recv(&mut buf).unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        // `<PRI>1 TIME HOST APP PID KIND [SD] PAYLOAD`: the payload is the record.
        let at = msg.find("] {").unwrap();
        got.push(serde_json::from_str(&msg[at + 2..]).unwrap());
    }
    got
}

#[test]
fn a_cut_log_with_a_forged_head_fails_against_the_forwarders_cursor_and_the_siem() {
    let (dir, path) = log(4, 3, &Options::default());
    let away = tempfile::tempdir().unwrap();
    let cursor = away.path().join("forwarder.cursor");
    let siem = forward_to_siem(&path, &cursor);
    let last = siem.last().unwrap();
    assert_eq!(last["seq"], 12);
    cut_and_forge_head(&path, 6);

    // Without a witness the cut cannot be seen: the head file lives beside the log.
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 0, "{out}");

    let want = format!(
        "{}:6: seq 6: truncated: the log ends at seq 6, but the forwarder's cursor {} saw seq 12",
        path.display(),
        cursor.display()
    );
    let key = dir.path().join("audit.pub");
    for with_key in [false, true] {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--cursor".as_ref(), cursor.as_os_str()];
        if with_key {
            args.extend(["--key".as_ref(), key.as_os_str()]);
        }
        args.push(path.as_os_str());
        let (code, out) = verify_args(&args);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(&want), "expected `{want}` in: {out}");
    }

    // The SIEM itself: its last record's seq and hash.
    let seq = last["seq"].to_string();
    let hash = last["hash"].as_str().unwrap();
    let (code, out) = verify_args(&[
        "--expect-seq".as_ref(),
        seq.as_ref(),
        "--expect-hash".as_ref(),
        hash.as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("truncated: the log ends at seq 6, but --expect-seq saw seq 12"),
        "{out}"
    );

    // The cursor in its default place beside the log is read without being named.
    std::fs::copy(&cursor, path.with_file_name("audit.jsonl.cursor")).unwrap();
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("truncated: the log ends at seq 6"), "{out}");
}

#[test]
fn an_intact_log_agrees_with_its_witnesses_and_says_so() {
    let (_d, path) = log(4, 3, &Options::default());
    let away = tempfile::tempdir().unwrap();
    let cursor = away.path().join("forwarder.cursor");
    let siem = forward_to_siem(&path, &cursor);
    let hash = siem[4]["hash"].as_str().unwrap();
    let (code, out) = verify_args(&[
        "--cursor".as_ref(),
        cursor.as_os_str(),
        "--expect-seq".as_ref(),
        "5".as_ref(),
        "--expect-hash".as_ref(),
        hash.as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "; agrees with cursor {} (seq 12), --expect-seq (seq 5)",
            cursor.display()
        )),
        "{out}"
    );
    // A witness that holds another record at a seq the log has: rewritten.
    let other = siem[5]["hash"].as_str().unwrap();
    let (code, out) = verify_args(&[
        "--expect-seq".as_ref(),
        "5".as_ref(),
        "--expect-hash".as_ref(),
        other.as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}:5: seq 5: edited: the record differs from the one --expect-seq saw",
            path.display()
        )),
        "{out}"
    );
}

/// A log written with a checkpoint file in another directory.
fn log_with_checkpoint(
    commits: usize,
    per: usize,
) -> (tempfile::TempDir, PathBuf, tempfile::TempDir, PathBuf) {
    let away = tempfile::tempdir().unwrap();
    let checkpoint = away.path().join("checkpoints.jsonl");
    let (dir, path) = log(
        commits,
        per,
        &Options {
            checkpoint: Some(checkpoint.clone()),
            ..Options::default()
        },
    );
    (dir, path, away, checkpoint)
}

#[test]
fn a_cut_log_with_a_forged_head_fails_against_the_checkpoint() {
    let (_d, path, _away, checkpoint) = log_with_checkpoint(4, 3);
    let cp = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(cp.starts_with("{\"key\":\""), "{cp}");
    assert!(
        cp.lines().last().unwrap().starts_with("{\"seq\":12,"),
        "{cp}"
    );
    let (code, out) = verify_args(&[
        "--checkpoint".as_ref(),
        checkpoint.as_os_str(),
        path.as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "; agrees with checkpoint {} (seq 12)",
            checkpoint.display()
        )),
        "{out}"
    );

    cut_and_forge_head(&path, 6);
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 0, "without a witness the cut is not seen: {out}");
    let (code, out) = verify_args(&[
        "--checkpoint".as_ref(),
        checkpoint.as_os_str(),
        path.as_os_str(),
    ]);
    assert_eq!(code, 1, "{out}");
    let n = cp.lines().count();
    assert!(
        out.contains(&format!(
            "{}:6: seq 6: truncated: the log ends at seq 6, but checkpoint {}:{n} saw seq 12",
            path.display(),
            checkpoint.display()
        )),
        "{out}"
    );
}

#[test]
fn a_log_cut_and_rewritten_with_its_own_key_disagrees_with_the_checkpoint() {
    let (_d, path, _away, checkpoint) = log_with_checkpoint(4, 3);
    cut_and_forge_head(&path, 6);
    // The log's writer still holds audit.key: it writes new records 7-12 and signs them.
    let opts = Options {
        sign_commits: true,
        ..Options::default()
    };
    let (audit, thread) = Audit::open_with(&path, Durability::PageCache, &opts).unwrap();
    let c = ctx();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..2 {
        let recs = (0..3)
            .map(|j| {
                let mut r = Record::new(mcp_guard::audit::Kind::Request, &c);
                r.request_id = Some(format!("forged {i}.{j}"));
                r
            })
            .collect();
        rt.block_on(audit.commit(recs)).unwrap();
    }
    audit.close(thread);
    assert_eq!(lines(&path).len(), 12);
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 0, "re-signed with the log's own key: {out}");
    let (code, out) = verify_args(&[
        "--checkpoint".as_ref(),
        checkpoint.as_os_str(),
        path.as_os_str(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}:12: seq 12: edited: the record differs from the one checkpoint {}:",
            path.display(),
            checkpoint.display()
        )),
        "{out}"
    );
}

/// Re-chains and re-signs every record of the log with a fresh key, written over
/// `audit.key` and `audit.pub`, and forges the head to match: what the log's writer can do.
fn re_sign_with_a_fresh_key(dir: &Path, path: &Path) {
    std::fs::remove_file(dir.join("audit.key")).unwrap();
    std::fs::remove_file(dir.join("audit.pub")).unwrap();
    let signer = mcp_guard::audit::chain::Signer::load_or_create(&dir.join("audit.key")).unwrap();
    let mut prev = String::new();
    let mut out = Vec::new();
    let mut head = String::new();
    for line in lines(path) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let at = line.find(",\"prev\":\"").unwrap();
        let body = format!("{},\"prev\":\"{prev}\"}}", &line[..at]);
        let hash = mcp_guard::audit::chain_hash(&prev, body.as_bytes());
        let sig = v["sig"].is_string().then(|| signer.sign(hash.as_bytes()));
        let mut new = format!("{},\"hash\":\"{hash}\"", &body[..body.len() - 1]);
        if let Some(s) = &sig {
            new.push_str(&format!(",\"sig\":\"{s}\""));
            head = format!(
                "{{\"seq\":{},\"hash\":\"{hash}\",\"sig\":\"{s}\"}}\n",
                v["seq"]
            );
        }
        new.push('}');
        prev = mcp_guard::audit::link(&hash, sig.as_ref().map(|s| s.as_bytes()));
        out.push(new);
    }
    rewrite(path, &out);
    std::fs::write(path.with_file_name("audit.jsonl.head"), head).unwrap();
}

#[test]
fn a_log_re_signed_with_a_fresh_key_over_audit_pub_is_not_called_authentic() {
    let (dir, path, _away, checkpoint) = log_with_checkpoint(3, 3);
    let genuine = tempfile::tempdir().unwrap();
    let genuine_key = genuine.path().join("audit.pub");
    std::fs::copy(dir.path().join("audit.pub"), &genuine_key).unwrap();
    re_sign_with_a_fresh_key(dir.path(), &path);

    // The chain is whole under the key beside it, and verify says that is all it shows.
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("; self-consistent only: signed by the key beside the log")
            && out.contains("which whoever can write the log can replace"),
        "{out}"
    );
    let (code, out) = verify_args(&["--require-trusted-key".as_ref(), path.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(": untrusted key: the chain is whole"), "{out}");

    // With the genuine key: wrong key.
    let (code, out) = verify(Some(&genuine_key), &[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{}:3: seq 3: wrong key:", path.display())),
        "{out}"
    );

    // The checkpoint pinned the genuine key at first use.
    let (code, out) = verify_args(&[
        "--checkpoint".as_ref(),
        checkpoint.as_os_str(),
        path.as_os_str(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}:1: wrong key: the checkpoint pinned the key",
            checkpoint.display()
        )),
        "{out}"
    );
}

#[test]
fn verify_names_the_key_and_where_it_came_from() {
    let (dir, path) = log(2, 2, &Options::default());
    let key = dir.path().join("audit.pub");
    let (code, out) = verify(Some(&key), &[&path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.trim_end()
            .ends_with(&format!("; key {} (given with --key)", key.display())),
        "{out}"
    );
    assert!(!out.contains("self-consistent"), "{out}");

    // A trusted key directory (root's, written by no one else).
    let trusted = tempfile::tempdir().unwrap();
    let pinned = trusted.path().join("alice.pub");
    std::fs::copy(&key, &pinned).unwrap();
    let run = |strict: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-guard"));
        cmd.args(["audit", "verify"])
            .env("MCP_GUARD_TRUSTED_KEYS", trusted.path());
        if strict {
            cmd.arg("--require-trusted-key");
        }
        let o = cmd.arg(&path).output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let root = nix::unistd::geteuid().is_root();
    let (code, out) = run(true);
    if root {
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(&format!("; key {} (trusted)", pinned.display())),
            "{out}"
        );
        // Found by the log's first signature when no key lies beside the log.
        std::fs::remove_file(&key).unwrap();
        let (code, out) = run(true);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(&format!("; key {} (trusted)", pinned.display())),
            "{out}"
        );
    } else {
        // Not root's: not trusted.
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("not trusting this key"), "{out}");
    }
}

#[test]
fn a_key_pinned_in_an_append_only_checkpoint_is_trusted() {
    let (dir, path, _away, checkpoint) = log_with_checkpoint(2, 2);
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(&checkpoint)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+a") {
        eprintln!(
            "skipping: cannot make {} append-only (needs root and a filesystem with attributes)",
            checkpoint.display()
        );
        return;
    }
    // Appending still works; rewriting does not.
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&checkpoint)
            .is_err()
    );
    std::fs::remove_file(dir.path().join("audit.pub")).unwrap();
    let (code, out) = verify_args(&[
        "--require-trusted-key".as_ref(),
        "--checkpoint".as_ref(),
        checkpoint.as_os_str(),
        path.as_os_str(),
    ]);
    assert!(chattr("-a"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "; key pinned at first use in the append-only checkpoint {}",
            checkpoint.display()
        )),
        "{out}"
    );
}

#[test]
fn a_checkpoint_pinned_to_another_key_refuses_the_log() {
    let (_d, _path, _away, checkpoint) = log_with_checkpoint(1, 1);
    let other = tempfile::tempdir().unwrap();
    let res = Audit::open_with(
        &other.path().join("audit.jsonl"),
        Durability::PageCache,
        &Options {
            checkpoint: Some(checkpoint.clone()),
            ..Options::default()
        },
    );
    let err = res.err().expect("another key must be refused").to_string();
    assert!(err.contains("pinned another public key"), "{err}");
}

/// The default layout: records unsigned, `seal` records signing the chain head. The log
/// verifies; without its last seal it is a log cut short.
#[test]
fn a_sealed_log_verifies_and_without_its_last_seal_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (audit, thread) =
        Audit::open_with(&path, Durability::Durable, &Options::default()).unwrap();
    let c = ctx();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..5 {
        let mut r = Record::new(mcp_guard::audit::Kind::Request, &c);
        r.request_id = Some(i.to_string());
        rt.block_on(audit.commit(vec![r])).unwrap();
    }
    audit.close(thread);
    let l = lines(&path);
    let seals = l.iter().filter(|l| l.contains(r#""kind":"seal""#)).count();
    assert!(seals >= 1 && l.last().unwrap().contains(r#""kind":"seal""#));
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{} records", 5 + seals))
            && out.contains(&format!("{seals} signatures")),
        "{out}"
    );
    rewrite(&path, &l[..l.len() - 1]);
    let (code, out) = verify(None, &[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("truncated"), "{out}");
}
