use super::*;
use super::verify::verify_chain;
use serde_json::value::RawValue;
use std::io::Write;

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

fn records(n: usize, ctx: &Arc<Context>) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut r = Record::new("request", ctx);
            r.request_id = Some(i.to_string());
            r
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

#[test]
fn committed_records_form_one_verifiable_chain() {
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
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(verify_chain(&text), Ok(6));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn two_writers_on_one_file_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (a, ta) = Audit::open(&path, Durability::PageCache).unwrap();
    let (b, tb) = Audit::open(&path, Durability::PageCache).unwrap();
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
    assert_eq!(verify_chain(&std::fs::read_to_string(&path).unwrap()), Ok(100));
}

#[test]
fn edited_record_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (audit, thread) = Audit::open(&path, Durability::PageCache).unwrap();
    rt().block_on(audit.commit(records(3, &ctx()))).unwrap();
    audit.close(thread);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"request_id\":\"1\"", "\"request_id\":\"9\"", 1);
    let err = verify_chain(&edited).unwrap_err();
    assert!(err.starts_with("line 2:") && err.contains("does not match"), "{err}");
}

#[test]
fn a_torn_last_line_is_sealed_off_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let c = ctx();
    let (audit, thread) = Audit::open(&path, Durability::Durable).unwrap();
    rt().block_on(audit.commit(records(2, &c))).unwrap();
    audit.close(thread);
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"v\":1,\"seq\":3,\"ti").unwrap();
    let (audit, thread) = Audit::open(&path, Durability::Durable).unwrap();
    rt().block_on(audit.commit(records(1, &c))).unwrap();
    audit.close(thread);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2], "{\"v\":1,\"seq\":3,\"ti");
    let last: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(last["seq"], 3, "the torn record's seq is not consumed");
    let without_torn = [lines[0], lines[1], lines[3]].join("\n");
    assert_eq!(verify_chain(&without_torn), Ok(3));
}

#[test]
fn a_full_disk_fails_the_commit() {
    // /dev/full answers every write with ENOSPC.
    if !Path::new("/dev/full").exists() {
        eprintln!("skipping: no /dev/full");
        return;
    }
    let (audit, thread) = Audit::open(Path::new("/dev/full"), Durability::Durable).unwrap();
    let err = rt().block_on(audit.commit(records(1, &ctx()))).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    audit.close(thread);
}

#[test]
fn canonical_hash_ignores_key_order_and_whitespace() {
    let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[1,2]}"#).unwrap();
    let b: serde_json::Value = serde_json::from_str(r#"{ "a" : [1, 2], "b" : 1 }"#).unwrap();
    assert_eq!(canonical_sha256(&a), canonical_sha256(&b));
}
