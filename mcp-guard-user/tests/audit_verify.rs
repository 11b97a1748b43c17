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
        transport: "stdio-shim",
        policy_sha256: "00".into(),
        mode: "enforce",
        principal: raw(r#"{"uid":1000}"#),
        agent_host: raw(r#"{"pid":1}"#),
        chain: raw("[]"),
        server: raw(r#"{"name":"t"}"#),
    })
}

/// A log of `commits` commits of `per` records each, in a fresh directory.
fn log(commits: usize, per: usize, opts: &Options) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (audit, thread) = Audit::open_with(&path, Durability::PageCache, opts).unwrap();
    let c = ctx();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..commits {
        let recs = (0..per)
            .map(|j| {
                let mut r = Record::new("request", &c);
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
            key: None,
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
