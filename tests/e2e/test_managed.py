"""Managed shims: `mcp-guard wrap` asking the daemon, which identifies it from the kernel,
decides with the system policy and records in the system audit log. Real servers, the
official SDK client, real local users (created with useradd).

Needs root, $MCP_GUARD_BIN and $MCP_GUARD_BPF_OBJECT (the daemon loads its programs);
skips without them unless $MCP_GUARD_REQUIRE_KERNEL=1, where that is a failure.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import harness
from test_observer import ALLOW_ALL, DENY_WRITES, Daemon, _kernel_or_skip, audit_records, calls, tear_down  # noqa: F401 (autouse fixture)

HERE = Path(__file__).parent
HOST_SCRIPT = HERE / "observer_host.py"
USERS = ("mcpg-alice", "mcpg-bob")


@pytest.fixture
def world():
    """A directory every test user can traverse (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="mcpg-managed-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(world: Path):
    made: list[Daemon] = []

    def make(policy: str = DENY_WRITES) -> Daemon:
        d = Daemon(world, policy)
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        tear_down(d)


def socket_of(d: Daemon) -> str:
    return str(d.run_dir / "mcp-guard.sock")


def wrap_argv(d: Daemon | None, *extra: str, sock: str | None = None) -> list[str]:
    return [str(harness.guard_bin()), "wrap", "--name", "fs", "--daemon-socket", sock or socket_of(d), *extra]


def run_client(spec: dict[str, Any], user: str | None = None, timeout: float = 90) -> list[dict[str, Any]]:
    """The SDK client (not a watched host: plain Python), optionally as another user."""
    spec_file = Path(tempfile.mkstemp(suffix=".json", dir="/tmp")[1])
    spec_file.write_text(json.dumps(spec))
    spec_file.chmod(0o644)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": sysconfig.get_paths()["purelib"], "HOME": "/tmp"}
    # Another user may not be able to reach this interpreter (a home directory of root's):
    # the system's Python of the same version runs the same site-packages.
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    argv = [python if user and os.path.exists(python) else os.path.realpath(sys.executable), str(HOST_SCRIPT), f"@{spec_file}"]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
        env["HOME"] = pwd.getpwnam(user).pw_dir
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    finally:
        spec_file.unlink()
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")] or [{"stderr": out.stderr}]


def managed_records(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in d.records() if r.get("transport") == "stdio-managed"]


def test_managed_decisions_are_the_daemons(daemon, world: Path) -> None:
    d = daemon()
    root = world / "root"
    root.mkdir()
    shim_audit = world / "shim.jsonl"
    results = run_client({"server": "filesystem", "root": str(root), "wrap": wrap_argv(d, "--audit", str(shim_audit)),
                          "calls": [["list_directory", {"path": str(root)}],
                                    ["write_file", {"path": str(root / "x.txt"), "content": "x"}]]})
    assert results[0]["ok"] == ["list_directory"], results
    assert "no-writes" in results[0]["errors"][0]
    assert not (root / "x.txt").exists()
    recs = managed_records(d)
    by_tool = {r["tool"]: r for r in calls(recs)}
    assert by_tool["list_directory"]["decision"] == "allow"
    assert by_tool["write_file"]["decision"] == "deny" and by_tool["write_file"]["rule"] == "no-writes"
    assert by_tool["write_file"]["principal"]["user"] == "root"
    start = [r for r in recs if r["kind"] == "session_start"][0]
    assert start["detail"]["managed"] is True
    assert start["server"]["name"] == "fs" and start["server"]["exe"].endswith("node")
    assert [r for r in recs if r["kind"] == "session_end"]
    # The shim's own log has no decisions: the daemon's log is the record.
    assert not calls(audit_records(shim_audit))


ASK_WRITES = """default = "allow"

[[rule]]
id = "ask-writes"
tool = "write_file"
action = "ask"
timeout = "1s"
"""


@pytest.mark.parametrize("answer,delay,written,outcome", [
    ("accept", 0, True, "approved"),
    ("decline", 0, False, "declined"),
    ("accept", 4, False, "timeout"),
])
def test_managed_ask_is_the_daemons_and_the_shim_carries_it(daemon, world: Path, answer: str, delay: float,
                                                            written: bool, outcome: str) -> None:
    """The daemon decides `ask` and holds the call; the shim carries the elicitation to the
    host and its answer back; the daemon's clock (driven by the shim) refuses a late one."""
    d = daemon(ASK_WRITES)
    root = world / "root"
    root.mkdir()
    target = root / "x.txt"
    results = run_client({"server": "filesystem", "root": str(root), "wrap": wrap_argv(d),
                          "elicit": answer, "elicit_delay": delay,
                          "calls": [["write_file", {"path": str(target), "content": "x"}]]})
    assert target.exists() == written, results
    if not written:
        assert "ask-writes" in results[0]["errors"][0], results
    recs = managed_records(d)
    req = [r for r in calls(recs) if r["tool"] == "write_file"]
    assert req and req[0]["decision"] == "ask", harness.describe(recs)
    appr = [r for r in recs if r["kind"] == "approval"]
    assert [a["detail"]["outcome"] for a in appr] == [outcome], harness.describe(recs)
    assert appr[0]["links"] == req[0]["id"]


def test_a_call_held_by_a_daemon_that_goes_away_is_refused_not_left_hanging(daemon, world: Path) -> None:
    """The daemon holds the call and stops before anyone answers: the shim, which carried
    the question, refuses the held request to the host and closes the question."""
    d = daemon(ASK_WRITES.replace('timeout = "1s"', 'timeout = "5m"'))
    root = world / "root"
    root.mkdir()
    target = root / "x.txt"
    spec = {"server": "filesystem", "root": str(root), "wrap": wrap_argv(d),
            "elicit": "accept", "elicit_delay": 60,
            "calls": [["write_file", {"path": str(target), "content": "x"}]]}
    spec_file = world / "spec-held.json"
    spec_file.write_text(json.dumps(spec))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": sysconfig.get_paths()["purelib"], "HOME": "/tmp"}
    client = subprocess.Popen([os.path.realpath(sys.executable), str(HOST_SCRIPT), f"@{spec_file}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not [r for r in managed_records(d) if r.get("decision") == "ask"]:
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the call was never held"
            time.sleep(0.1)
        started = time.monotonic()
        d.stop()
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert results and "went away" in results[0]["errors"][0], (results, err[-2000:])
    assert time.monotonic() - started < 20, "answered by the shim, not by the person's delay"
    assert not target.exists()


def test_own_policy_only_adds_denials(daemon, world: Path) -> None:
    d = daemon()
    root = world / "root"
    root.mkdir()
    mine = world / "mine.toml"
    # Tries to allow what the system denies, and denies what the system allows.
    mine.write_text('default = "allow"\n\n[[rule]]\nid = "let-me-write"\ntool = "write_file"\naction = "allow"\n\n'
                    '[[rule]]\nid = "no-listing"\ntool = "list_directory"\naction = "deny"\n')
    results = run_client({"server": "filesystem", "root": str(root), "wrap": wrap_argv(d, "--policy", str(mine)),
                          "calls": [["list_directory", {"path": str(root)}],
                                    ["write_file", {"path": str(root / "x.txt"), "content": "x"}],
                                    ["list_allowed_directories", {}]]})
    assert results[0]["ok"] == ["list_allowed_directories"], results
    assert not (root / "x.txt").exists()
    by_tool = {r["tool"]: r for r in calls(managed_records(d))}
    assert by_tool["list_directory"]["rule"] == "user:no-listing"
    assert by_tool["write_file"]["rule"] == "no-writes"
    assert by_tool["list_allowed_directories"]["decision"] == "allow"


def test_unusable_own_policy_is_refused_with_a_clear_message(daemon, world: Path) -> None:
    d = daemon()
    bad = world / "bad.toml"
    bad.write_text('[[rule]]\nid = "x"\naction = "maybe"\n')
    p = subprocess.run([*wrap_argv(d, "--policy", str(bad)), "--", "cat"], input="", capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert f"{bad}:3:10" in p.stderr and "maybe" in p.stderr, p.stderr


def test_daemon_absent_fails_closed(world: Path) -> None:
    root = world / "root"
    root.mkdir()
    missing = str(world / "no-daemon.sock")
    results = run_client({"server": "filesystem", "root": str(root),
                          "wrap": wrap_argv(None, "--audit", str(world / "shim.jsonl"), sock=missing),
                          "calls": [["list_directory", {"path": str(root)}]]})
    assert results[0]["ok"] == [], results
    assert "daemon is unreachable" in results[0]["errors"][0], results


def test_session_survives_a_daemon_restart(daemon, world: Path) -> None:
    d = daemon(ALLOW_ALL)
    root = world / "root"
    root.mkdir()
    go1, go2 = world / "go1", world / "go2"
    # Two rounds of calls: the daemon is stopped before the first, restarted before the second.
    spec = {"server": "filesystem", "root": str(root), "wrap": wrap_argv(d, "--audit", str(world / "shim.jsonl")),
            "start_gate": str(go1), "calls": [["list_directory", {"path": str(root)}]],
            "then_gate": str(go2), "then_calls": [["list_allowed_directories", {}], ["list_directory", {"path": str(root)}]]}
    spec_file = world / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    host = subprocess.Popen([sys.executable, str(HOST_SCRIPT), f"@{spec_file}"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        d.wait_for("the managed session", lambda recs: [r for r in recs if r["kind"] == "session_start" and r.get("transport") == "stdio-managed"])
        assert d.stop() == 0
        go1.write_text("")  # a call while the daemon is down: refused
        time.sleep(2)
        d.start()
        go2.write_text("")  # calls after it is back: the shim reconnects
        out, _ = host.communicate(timeout=60)
    finally:
        if host.poll() is None:  # never leave the session behind
            host.kill()
            host.wait()
    result = json.loads(out.splitlines()[-1])
    assert result["ok"] == ["list_allowed_directories", "list_directory"], result
    assert len(result["errors"]) == 1 and "unreachable" in result["errors"][0], result
    resumed = [r for r in d.records() if r["kind"] == "session_start" and r.get("detail", {}).get("resumed")]
    assert resumed, "the shim said hello again as a resumed session"


def ensure_users() -> None:
    for u in USERS:
        try:
            pwd.getpwnam(u)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", u], check=True)


def test_two_users_each_recorded_as_themselves(daemon, world: Path) -> None:
    ensure_users()
    d = daemon()
    os.chmod(d.run_dir, 0o755)
    for u in USERS:
        root = world / f"root-{u}"
        root.mkdir()
        shutil.chown(root, u)
        results = run_client({"server": "filesystem", "root": str(root), "wrap": wrap_argv(d),
                              "calls": [["list_directory", {"path": str(root)}]]}, user=u)
        assert results[0].get("ok") == ["list_directory"], results
    recs = calls(managed_records(d))
    users = sorted(r["principal"]["user"] for r in recs)
    assert users == sorted(USERS), users
    for r in recs:
        assert r["principal"]["uid"] == pwd.getpwnam(r["principal"]["user"]).pw_uid
    # Neither user can read the system audit log (created 0600), or write the policy.
    assert d.audit.stat().st_mode & 0o777 == 0o600
    for u in USERS:
        assert subprocess.run(["runuser", "-u", u, "--", "cat", str(d.audit)], capture_output=True).returncode != 0
        assert subprocess.run(["runuser", "-u", u, "--", "sh", "-c", f"echo x >> {d.policy}"], capture_output=True).returncode != 0


def raw_hello(sock: str, hello: dict[str, Any]) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    body = bytes([0]) + json.dumps(hello).encode()
    s.sendall(struct.pack("<I", len(body)) + body)
    n = struct.unpack("<I", s.recv(4))[0]
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    s.close()
    assert data[0] == 1  # WELCOME
    return json.loads(data[1:])


def test_socket_refuses_what_it_should(daemon, world: Path) -> None:
    d = daemon()
    sock = socket_of(d)
    # A process that is not the caller's child cannot be passed off as its server.
    w = raw_hello(sock, {"v": 1, "name": "x", "server_pid": 1, "policy": None, "policy_origin": None, "resumed": False})
    assert w["ok"] is False and "not a child" in w["error"]
    # Garbage instead of a hello.
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(struct.pack("<I", 3) + b"\x07zz")
    n = struct.unpack("<I", s.recv(4))[0]
    reply = s.recv(n)
    assert reply[0] == 1 and json.loads(reply[1:])["ok"] is False
    s.close()
    # One user cannot hold more than 256 connections (a daemon that anyone can exhaust
    # guards no one).
    held = []
    for _ in range(256):
        c = socket.socket(socket.AF_UNIX)
        c.connect(sock)
        held.append(c)
    extra = socket.socket(socket.AF_UNIX)
    extra.connect(sock)
    extra.settimeout(5)
    n = struct.unpack("<I", extra.recv(4))[0]
    reply = extra.recv(n)
    assert json.loads(reply[1:])["ok"] is False and "connections open" in json.loads(reply[1:])["error"]
    for c in [*held, extra]:
        c.close()
    # Nothing was recorded for any of them.
    assert not managed_records(d)


def test_message_over_the_daemons_limit_is_refused_not_forwarded(daemon, world: Path) -> None:
    d = daemon(ALLOW_ALL)
    root = world / "root"
    root.mkdir()
    big = "x" * (5 << 20)  # the daemon judges messages up to 4 MiB by default
    results = run_client({"server": "filesystem", "root": str(root), "wrap": wrap_argv(d),
                          "calls": [["write_file", {"path": str(root / "big.txt"), "content": big}],
                                    ["write_file", {"path": str(root / "ok.txt"), "content": "y" * (1 << 20)}]]})
    assert results[0]["ok"] == ["write_file"] and len(results[0]["errors"]) == 1, results
    assert not (root / "big.txt").exists()
    assert (root / "ok.txt").stat().st_size == 1 << 20


def test_managed_shim_under_a_watched_host_is_seen_not_alerted(daemon, world: Path) -> None:
    """The observer sees the managed shim too: it must know the daemon records for it."""
    d = daemon(ALLOW_ALL)
    root = world / "root"
    root.mkdir()
    results = d.run_host({"server": "filesystem", "root": str(root), "wrap": wrap_argv(d, "--audit", str(world / "shim.jsonl")),
                          "calls": [["list_directory", {"path": str(root)}]], "hold": 1.0})
    assert results == [{"ok": ["list_directory"], "errors": []}], results
    time.sleep(3)  # past the shim-record grace period
    recs = d.records()
    alerts = [(r.get("detail") or {}).get("alert") for r in recs if r["kind"] == "alert"]
    assert not alerts, alerts
    assert [r for r in calls(managed_records(d)) if r["tool"] == "list_directory"]
    st = d.status()
    assert st["counters"]["sessions_seen"] == 0, "the wrapped server is not an observed session"
