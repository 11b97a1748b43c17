//! `mcp-guard service install | uninstall` into a staging `--root`: every path with its owner
//! and mode, the unit checked by `systemd-analyze verify`, upgrades and uninstalls that keep
//! what the admin owns, and other users unable to write the policy, the key or the audit log.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::bin;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn run(args: &[&str]) -> Output {
    // No eBPF object is found unless a test gives one: the host's must not leak in.
    let out = Command::new(bin())
        .arg("service")
        .args(args)
        .env("MCP_GUARD_BPF_OBJECT", "/nonexistent/mcp-guard-ebpf.o")
        .output()
        .unwrap();
    eprintln!("mcp-guard service {}:\n{}", args.join(" "), text(&out));
    out
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// A staging root that other users can traverse, as `/` is.
fn staging_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A small stand-in for a binary or an eBPF object, so copies stay cheap.
fn stand_in(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    path
}

fn install(root: &Path, extra: &[&str]) -> String {
    let mut args = vec!["install", "--root", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "install failed: {}", text(&out));
    text(&out)
}

/// Installs under `root` with stand-ins for the binary and the eBPF object.
fn install_stand_ins(root: &Path) -> String {
    let work = tempfile::tempdir().unwrap();
    let b = stand_in(work.path(), "bin", "#!/bin/sh\n");
    let o = stand_in(work.path(), "o", "object");
    install(
        root,
        &[
            "--bin",
            b.to_str().unwrap(),
            "--bpf-object",
            o.to_str().unwrap(),
        ],
    )
}

fn uninstall(root: &Path, extra: &[&str]) -> String {
    let mut args = vec!["uninstall", "--root", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "uninstall failed: {}", text(&out));
    text(&out)
}

/// What files made by the installer are owned by: root:root when it runs as root.
fn owner() -> (u32, u32) {
    if nix::unistd::geteuid().is_root() {
        (0, 0)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }
}

fn assert_entry(root: &Path, rel: &str, dir: bool, mode: u32) {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(meta.is_dir(), dir, "{rel}: directory?");
    assert_eq!(meta.is_file(), !dir, "{rel}: regular file?");
    assert_eq!(
        meta.mode() & 0o7777,
        mode,
        "{rel}: mode {:04o}",
        meta.mode() & 0o7777
    );
    assert_eq!((meta.uid(), meta.gid()), owner(), "{rel}: owner");
}

/// Skips a test that needs something this machine lacks; under CI a skip is a failure.
fn skip(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run: {why}");
    }
    println!("skipping: {why}");
}

#[test]
fn install_creates_every_path_with_its_owner_and_mode() {
    let root = staging_root();
    let work = tempfile::tempdir().unwrap();
    let object = stand_in(work.path(), "obj.o", "not really ELF");
    let out = install(root.path(), &["--bpf-object", object.to_str().unwrap()]);
    let r = root.path();

    let dirs = [
        ("etc/mcp-guard", 0o755),
        ("etc/mcp-guard/policy.d", 0o755),
        ("var/log/mcp-guard", 0o750),
        ("var/lib/mcp-guard", 0o700),
        ("usr/lib/mcp-guard", 0o755),
    ];
    for (rel, mode) in dirs {
        assert_entry(r, rel, true, mode);
    }
    let files = [
        ("usr/bin/mcp-guard", 0o755),
        ("usr/lib/mcp-guard/mcp-guard-ebpf.o", 0o644),
        ("usr/lib/systemd/system/mcp-guard.service", 0o644),
        ("etc/mcp-guard/config.toml", 0o644),
        ("etc/mcp-guard/policy.toml", 0o644),
    ];
    for (rel, mode) in files {
        assert_entry(r, rel, false, mode);
    }
    // No signing key in a staged tree: every host installed from it would share it. The
    // daemon makes its own at first start.
    for key in ["var/lib/mcp-guard/audit.key", "var/lib/mcp-guard/audit.pub"] {
        assert!(!r.join(key).exists(), "{key} made at install");
    }

    // The shipped contents, byte for byte.
    let same = |rel: &str, want: &Path| {
        assert!(
            fs::read(r.join(rel)).unwrap() == fs::read(want).unwrap(),
            "{rel} differs from {}",
            want.display()
        )
    };
    same("etc/mcp-guard/config.toml", &repo("config/config.toml"));
    same("etc/mcp-guard/policy.toml", &repo("policies/default.toml"));
    same(
        "usr/lib/systemd/system/mcp-guard.service",
        &repo("config/mcp-guard.service"),
    );
    same("usr/lib/mcp-guard/mcp-guard-ebpf.o", &object);
    same("usr/bin/mcp-guard", Path::new(bin()));
    assert!(
        fs::read_dir(r.join("etc/mcp-guard/policy.d"))
            .unwrap()
            .next()
            .is_none()
    );
    // Nothing left behind from the atomic writes.
    for dir in [
        "usr/bin",
        "usr/lib/mcp-guard",
        "etc/mcp-guard",
        "var/lib/mcp-guard",
    ] {
        for e in fs::read_dir(r.join(dir)).unwrap() {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().contains(".tmp-"),
                "{dir}/{name:?} left behind"
            );
        }
    }

    // The installed binary and policy work together.
    let check = Command::new(r.join("usr/bin/mcp-guard"))
        .args(["policy", "check"])
        .arg(r.join("etc/mcp-guard/policy.toml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    // Not `/`: systemd is left alone, and the admin is told what to run.
    assert!(
        out.contains("systemctl daemon-reload && systemctl enable --now mcp-guard.service"),
        "{out}"
    );
}

#[test]
fn install_without_an_ebpf_object_is_refused_and_installs_nothing() {
    let root = staging_root();
    let out = run(&["install", "--root", root.path().to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--bpf-object FILE"), "{}", text(&out));
    assert!(
        fs::read_dir(root.path()).unwrap().next().is_none(),
        "something was installed"
    );
}

#[test]
fn installed_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("systemd-analyze is missing (Debian package systemd)");
    }
    let root = staging_root();
    let work = tempfile::tempdir().unwrap();
    let bin_stub = stand_in(work.path(), "mcp-guard", "#!/bin/sh\n");
    let o = stand_in(work.path(), "o", "object");
    install(
        root.path(),
        &[
            "--bin",
            bin_stub.to_str().unwrap(),
            "--bpf-object",
            o.to_str().unwrap(),
        ],
    );
    let r = root.path();

    // `--root` makes systemd-analyze load units and check Exec*= binaries inside the staging
    // root, so the shipped unit is verified as installed, directive by directive. What it
    // needs from a host around the unit: the targets default dependencies pull in (stubs)
    // and ExecReload's /bin/kill.
    let units = r.join("etc/systemd/system");
    fs::create_dir_all(&units).unwrap();
    for target in ["sysinit", "basic", "shutdown", "multi-user"] {
        fs::write(
            units.join(format!("{target}.target")),
            format!("[Unit]\nDescription={target} stub\n"),
        )
        .unwrap();
    }
    fs::create_dir_all(r.join("bin")).unwrap();
    let kill = ["/bin/kill", "/usr/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("kill(1)");
    fs::copy(kill, r.join("bin/kill")).unwrap();

    let verify = |unit: &str| {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", r.display()))
            .arg(unit)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("systemd-analyze verify {unit}: {}\n{stderr}", out.status);
        (out.status.success(), stderr)
    };
    let (ok, stderr) = verify("mcp-guard.service");
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("mcp-guard")).collect();
    assert!(
        ok && complaints.is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // The check is real: an unknown directive in a copy of the unit is reported, and so is
    // an ExecStart= binary missing from the root.
    let shipped = fs::read_to_string(r.join("usr/lib/systemd/system/mcp-guard.service")).unwrap();
    let bad = shipped.replace("PrivateTmp=yes", "PrivateTmp=yes\nProtectEverything=yes");
    fs::write(units.join("mcp-guard-bad.service"), bad).unwrap();
    let (_, stderr) = verify("mcp-guard-bad.service");
    assert!(
        stderr.contains("ProtectEverything"),
        "not reported: {stderr}"
    );
    fs::remove_file(r.join("usr/bin/mcp-guard")).unwrap();
    let (ok, stderr) = verify("mcp-guard.service");
    assert!(
        !ok && stderr.contains("/usr/bin/mcp-guard"),
        "missing binary not reported: {stderr}"
    );
}

#[test]
fn reinstall_keeps_what_the_admin_owns_and_replaces_the_rest() {
    let root = staging_root();
    let r = root.path();
    let work = tempfile::tempdir().unwrap();
    let old_bin = stand_in(work.path(), "old", "#!/bin/sh\necho old\n");
    let new_bin = stand_in(work.path(), "new", "#!/bin/sh\necho new\n");
    let old_obj = stand_in(work.path(), "old.o", "old object");
    let new_obj = stand_in(work.path(), "new.o", "new object");
    install(
        r,
        &[
            "--bin",
            old_bin.to_str().unwrap(),
            "--bpf-object",
            old_obj.to_str().unwrap(),
        ],
    );

    // What an admin and a running daemon leave behind.
    let policy = r.join("etc/mcp-guard/policy.toml");
    let mut mine = fs::read_to_string(&policy).unwrap();
    mine.push_str("\n# tightened here\n");
    fs::write(&policy, &mine).unwrap();
    fs::write(
        r.join("etc/mcp-guard/policy.d/local.toml"),
        "# local rules\n",
    )
    .unwrap();
    fs::write(r.join("var/log/mcp-guard/audit.jsonl"), "{\"seq\":1}\n").unwrap();
    fs::write(r.join("var/lib/mcp-guard/pins.json"), "{}").unwrap();
    // What the daemon made at its first start.
    fs::write(r.join("var/lib/mcp-guard/audit.key"), "key").unwrap();
    fs::write(r.join("var/lib/mcp-guard/audit.pub"), "pub").unwrap();
    // A unit edited in place is put back (changes belong in drop-ins).
    let unit = r.join("usr/lib/systemd/system/mcp-guard.service");
    fs::write(&unit, "[Service]\nExecStart=/bin/false\n").unwrap();
    let keep = [
        "etc/mcp-guard/policy.toml",
        "etc/mcp-guard/config.toml",
        "etc/mcp-guard/policy.d/local.toml",
        "var/log/mcp-guard/audit.jsonl",
        "var/lib/mcp-guard/audit.key",
        "var/lib/mcp-guard/audit.pub",
        "var/lib/mcp-guard/pins.json",
    ];
    let before: Vec<(Vec<u8>, fs::Metadata)> = keep
        .iter()
        .map(|f| {
            (
                fs::read(r.join(f)).unwrap(),
                fs::metadata(r.join(f)).unwrap(),
            )
        })
        .collect();

    let out = install(
        r,
        &[
            "--bin",
            new_bin.to_str().unwrap(),
            "--bpf-object",
            new_obj.to_str().unwrap(),
        ],
    );
    for (f, (bytes, meta)) in keep.iter().zip(&before) {
        let now = fs::metadata(r.join(f)).unwrap();
        assert!(fs::read(r.join(f)).unwrap() == *bytes, "{f} changed");
        assert_eq!(
            (now.ino(), now.mode(), now.uid(), now.gid()),
            (meta.ino(), meta.mode(), meta.uid(), meta.gid()),
            "{f}"
        );
        assert_eq!(
            (now.mtime(), now.mtime_nsec()),
            (meta.mtime(), meta.mtime_nsec()),
            "{f} rewritten"
        );
    }
    // The shipped policy is offered beside the changed one; the unchanged config gets no .new.
    assert_eq!(
        fs::read_to_string(r.join("etc/mcp-guard/policy.toml.new")).unwrap(),
        fs::read_to_string(repo("policies/default.toml")).unwrap()
    );
    assert_entry(r, "etc/mcp-guard/policy.toml.new", false, 0o644);
    assert!(out.contains("policy.toml.new"), "{out}");
    assert!(!r.join("etc/mcp-guard/config.toml.new").exists());
    // Replaced: binary, object, unit.
    assert_eq!(
        fs::read_to_string(r.join("usr/bin/mcp-guard")).unwrap(),
        "#!/bin/sh\necho new\n"
    );
    assert_eq!(
        fs::read_to_string(r.join("usr/lib/mcp-guard/mcp-guard-ebpf.o")).unwrap(),
        "new object"
    );
    assert_eq!(
        fs::read_to_string(&unit).unwrap(),
        fs::read_to_string(repo("config/mcp-guard.service")).unwrap()
    );
    assert_entry(r, "usr/bin/mcp-guard", false, 0o755);
    assert_entry(r, "usr/lib/mcp-guard/mcp-guard-ebpf.o", false, 0o644);
    assert_entry(r, "usr/lib/systemd/system/mcp-guard.service", false, 0o644);
    // An upgrade restarts a running daemon onto the new binary.
    assert!(
        out.contains("systemctl try-restart mcp-guard.service"),
        "{out}"
    );
}

#[test]
fn uninstall_keeps_config_log_and_key_and_purge_removes_them() {
    let root = staging_root();
    let r = root.path();
    install_stand_ins(r);
    fs::write(r.join("var/log/mcp-guard/audit.jsonl"), "{\"seq\":1}\n").unwrap();
    fs::write(r.join("var/lib/mcp-guard/audit.key"), "key").unwrap();
    fs::write(r.join("var/lib/mcp-guard/audit.pub"), "pub").unwrap();
    let kept = [
        "etc/mcp-guard/config.toml",
        "etc/mcp-guard/policy.toml",
        "var/log/mcp-guard/audit.jsonl",
        "var/lib/mcp-guard/audit.key",
        "var/lib/mcp-guard/audit.pub",
    ];
    let before: Vec<Vec<u8>> = kept.iter().map(|f| fs::read(r.join(f)).unwrap()).collect();

    let out = uninstall(r, &[]);
    for gone in [
        "usr/lib/systemd/system/mcp-guard.service",
        "usr/bin/mcp-guard",
        "usr/lib/mcp-guard",
    ] {
        assert!(!r.join(gone).exists(), "{gone} still there");
    }
    for (f, bytes) in kept.iter().zip(&before) {
        assert!(fs::read(r.join(f)).unwrap() == *bytes, "{f} changed");
    }
    for dir in ["etc/mcp-guard", "var/log/mcp-guard", "var/lib/mcp-guard"] {
        assert!(
            out.contains(&format!("kept {}", r.join(dir).display())),
            "{out}"
        );
    }
    assert!(out.contains("--purge"), "{out}");

    // Uninstalling twice is fine; --purge then removes what was kept.
    uninstall(r, &[]);
    let out = uninstall(r, &["--purge"]);
    for dir in ["etc/mcp-guard", "var/log/mcp-guard", "var/lib/mcp-guard"] {
        assert!(!r.join(dir).exists(), "{dir} still there");
        assert!(
            out.contains(&format!("removed {}", r.join(dir).display())),
            "{out}"
        );
    }
}

#[test]
fn other_users_cannot_write_the_policy_the_key_or_the_audit_log() {
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root (to install root-owned files and to run as nobody)");
    }
    if Command::new("runuser").arg("--help").output().is_err() {
        return skip("runuser is missing (Debian package util-linux)");
    }
    let root = staging_root();
    let r = root.path();
    install_stand_ins(r);
    // The key as the daemon makes it at first start.
    let key = r.join("var/lib/mcp-guard/audit.key");
    fs::write(&key, "key").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let key_bytes = fs::read(&key).unwrap();
    let as_nobody = |script: &str| {
        Command::new("runuser")
            .args(["-u", "nobody", "--", "sh", "-c", script])
            .output()
            .unwrap()
    };
    // The harness works: nobody can write where everyone may.
    let open = r.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let ok = as_nobody(&format!("echo x > '{}/f'", open.display()));
    assert!(
        ok.status.success(),
        "runuser as nobody does not work here: {}",
        text(&ok)
    );

    let p = |rel: &str| r.join(rel).display().to_string();
    let attempts = [
        format!("echo x >> '{}'", p("etc/mcp-guard/policy.toml")),
        format!("echo x >> '{}'", p("etc/mcp-guard/config.toml")),
        format!("echo x > '{}'", p("etc/mcp-guard/policy.d/evil.toml")),
        format!("echo x >> '{}'", p("var/lib/mcp-guard/audit.key")),
        format!("cat '{}'", p("var/lib/mcp-guard/audit.key")),
        format!("echo x > '{}'", p("var/lib/mcp-guard/audit.key.new")),
        format!("echo x > '{}'", p("var/log/mcp-guard/audit.jsonl")),
        format!("ls '{}'", p("var/log/mcp-guard")),
        format!("echo x >> '{}'", p("usr/bin/mcp-guard")),
        format!(
            "echo x >> '{}'",
            p("usr/lib/systemd/system/mcp-guard.service")
        ),
    ];
    for script in &attempts {
        let out = as_nobody(script);
        assert!(!out.status.success(), "nobody could: {script}");
    }
    assert!(fs::read(&key).unwrap() == key_bytes, "the key was changed");
    assert!(!r.join("var/log/mcp-guard/audit.jsonl").exists());
    assert!(!r.join("etc/mcp-guard/policy.d/evil.toml").exists());
    assert_eq!(
        fs::read(r.join("etc/mcp-guard/policy.toml")).unwrap(),
        fs::read(repo("policies/default.toml")).unwrap()
    );
}
