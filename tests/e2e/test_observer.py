"""The observer (`mcp-guard daemon`) against the real kernel: real MCP servers driven
by the official SDK client, with no shim in between, seen from eBPF.

The agent host in each test is `observer_host.py` run through a symlink to Python under a
name made up for the test; the daemon watches only that name, so it sees this test's
processes and nothing else on the machine.

Needs root, $MCP_GUARD_BIN and $MCP_GUARD_BPF_OBJECT. Skips without them, except when
$MCP_GUARD_REQUIRE_KERNEL=1 (set by `cargo xtask test` in CI), where that is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import harness

HERE = Path(__file__).parent
HOST_SCRIPT = HERE / "observer_host.py"
#: How long the daemon has to record what it saw.
DEADLINE = 15.0

ALLOW_ALL = 'default = "allow"\n'
DENY_WRITES = """default = "allow"

[[rule]]
id = "no-writes"
tool = "write_file"
action = "deny"
"""


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if not harness.guard_bin():
        return "$MCP_GUARD_BIN is not set"
    obj = os.environ.get("MCP_GUARD_BPF_OBJECT")
    if not obj or not Path(obj).is_file():
        return "$MCP_GUARD_BPF_OBJECT is not set to the eBPF object (cargo xtask build-ebpf)"
    return None


@pytest.fixture(autouse=True)
def _kernel_or_skip() -> None:
    why = _cannot_run()
    if why is None:
        return
    if os.environ.get("MCP_GUARD_REQUIRE_KERNEL") == "1":
        pytest.fail(f"MCP_GUARD_REQUIRE_KERNEL=1 but the observer tests cannot run: {why}")
    pytest.skip(why)


def audit_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a log that may still be being written (a last line without
    its newline is left out)."""
    if not path.exists():
        return []
    text = path.read_text()
    text = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Daemon:
    """One `mcp-guard daemon` with its own config, policy, audit log and host name."""

    def __init__(self, tmp: Path, policy: str, extra_config: str = "") -> None:
        self.dir = tmp
        self.host_name = "mcpg-" + secrets.token_hex(4)  # within comm's 15 characters
        self.host_exe = tmp / self.host_name
        self.host_exe.symlink_to(os.path.realpath(sys.executable))
        self.policy = tmp / "policy.toml"
        self.policy.write_text(policy)
        self.audit = tmp / "audit.jsonl"
        self.run_dir = tmp / "run"
        self.config = tmp / "config.toml"
        self.config.write_text(
            f'policy = "{self.policy}"\naudit = "{self.audit}"\naudit_key = "{tmp / "audit.key"}"\n'
            f'run_dir = "{self.run_dir}"\nbpf_object = "{os.environ["MCP_GUARD_BPF_OBJECT"]}"\n'
            f'hosts = ["{self.host_name}"]\nrescan_ms = 200\n'
            # Host configs of this test's own home only, never the machine's.
            f'homes = ["{tmp / "home"}"]\n'
            # Only this test's host, unless the test is about finding servers without one;
            # then the test filters what it reads to its own processes.
            + ('' if 'detect =' in extra_config else 'detect = "hosts"\n')
            + extra_config
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"
        #: Hosts started by the test, killed at teardown if still running.
        self.hosts: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        status = self.run_dir / "status.json"
        self.proc = subprocess.Popen(
            [str(harness.guard_bin()), "daemon", "--config", str(self.config)],
            stderr=self.log.open("wb"),
            env={**os.environ, "MCP_GUARD_LOG": "info"},
        )
        deadline = time.monotonic() + 30
        while not status.exists():
            assert self.proc.poll() is None, f"daemon exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"daemon not up: {self.log.read_text()}"
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave a daemon behind; the caller's assert reports it
            proc.wait()
            return -9

    def host(self, spec: dict[str, Any], exe: str | None = None, **kw: Any) -> subprocess.Popen[str]:
        """Starts the agent host: the SDK client under the watched name, or as `exe`."""
        env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
        spec_file = self.dir / f"spec-{secrets.token_hex(4)}.json"
        spec_file.write_text(json.dumps(spec))
        p = subprocess.Popen(
            [exe or str(self.host_exe), str(HOST_SCRIPT), f"@{spec_file}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            **kw,
        )
        self.hosts.append(p)
        return p

    def run_host(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        p = self.host(spec)
        out, _ = p.communicate(timeout=90)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def records(self) -> list[dict[str, Any]]:
        return audit_records(self.audit)

    def wait_for(self, what: str, pred: Callable[[list[dict[str, Any]]], Any]) -> Any:
        deadline = time.monotonic() + DEADLINE
        while True:
            recs = self.records()
            got = pred(recs)
            if got:
                return got
            if time.monotonic() > deadline:
                kinds = [(r["kind"], r.get("method"), r.get("tool"), (r.get("detail") or {}).get("alert")) for r in recs]
                pytest.fail(f"no {what} in the daemon's audit within {DEADLINE}s; records: {kinds}\n{self.log.read_text()}")
            time.sleep(0.1)

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(harness.guard_bin()), "status", "--config", str(self.config), "--json"],
            capture_output=True, text=True, check=True,
        )
        return json.loads(out.stdout)


@pytest.fixture
def daemon_factory(tmp_path: Path):
    made: list[Daemon] = []

    def make(policy: str = ALLOW_ALL, start: bool = True, extra_config: str = "") -> Daemon:
        d = Daemon(tmp_path, policy, extra_config)
        if start:
            d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        tear_down(d)
        subprocess.run([str(harness.guard_bin()), "audit", "verify", str(d.audit)], check=True)


def tear_down(d: Daemon) -> None:
    """Kills the hosts a test started (if it failed midway) and stops the daemon."""
    for h in d.hosts:
        if h.poll() is None:
            h.kill()
            h.wait()
    if d.proc is not None:
        assert d.stop() == 0, d.log.read_text()


def args_sha256(arguments: dict[str, Any]) -> str:
    """What the guard records for arguments: SHA-256 of their canonical JSON (keys sorted,
    no whitespace)."""
    canon = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def sessions_of(recs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        if r.get("transport") == "stdio-observed" or r["kind"] == "response":
            out.setdefault(r["session"], []).append(r)
    return out


def calls(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in recs if r["kind"] == "request" and r.get("method") == "tools/call"]


def test_unwrapped_filesystem_server_is_recorded_with_kernel_identity(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("hello")
    list_args = {"path": str(root)}
    read_args = {"path": str(root / "a.txt")}
    results = d.run_host({"server": "filesystem", "root": str(root),
                          "calls": [["list_directory", list_args], ["read_text_file", read_args]]})
    assert results == [{"ok": ["list_directory", "read_text_file"], "errors": []}]

    got = d.wait_for("two tools/call records", lambda recs: len(calls(recs)) >= 2 and calls(recs))
    by_tool = {r["tool"]: r for r in got}
    assert by_tool["list_directory"]["args_sha256"] == args_sha256(list_args)
    assert by_tool["read_text_file"]["args_sha256"] == args_sha256(read_args)
    for r in got:
        assert r["transport"] == "stdio-observed"
        assert r["mode"] == "monitor"
        assert r["principal"]["uid"] == os.getuid()
        assert r["principal"]["user"] == "root"
        assert r["agent_host"]["exe"] == os.path.realpath(sys.executable)
        assert r["agent_host"]["comm"] == d.host_name
        server_exe = os.path.realpath(subprocess.run(["sh", "-c", "command -v node"], capture_output=True, text=True).stdout.strip())
        assert r["server"]["exe"] == server_exe
        assert r["server"]["name"] == "mcp-server-filesystem"
        assert any(a.endswith("mcp-server-filesystem") for a in r["server"]["argv"])
        assert r["server"]["exec_id"]
    # Every request has its response, linked.
    recs = d.records()
    responses = {r["links"] for r in recs if r["kind"] == "response"}
    assert all(r["id"] in responses for r in got)
    alert = d.wait_for("the unwrapped alert", lambda recs: [r for r in recs if (r.get("detail") or {}).get("alert") == "unwrapped_server"])
    assert alert[0]["detail"]["server"] == "mcp-server-filesystem"
    assert alert[0]["detail"]["host"]["comm"] == d.host_name
    assert alert[0]["detail"]["user"] == "root"
    assert alert[0]["detail"]["action"] == "alert"


def test_a_hosts_child_seen_before_it_execs_stays_the_hosts_server(daemon_factory, tmp_path: Path) -> None:
    """Between fork and exec a host's child carries the host's name. The daemon's rescan
    (every 200 ms here) finds it then; it must stay the host's captured child, not become a
    host of its own, or the server it execs is watched as a host and its traffic is lost."""
    d = daemon_factory()
    root = tmp_path / "root"
    root.mkdir()
    args = {"path": str(root)}
    results = d.run_host({"server": "filesystem", "root": str(root), "exec_pause": 1.0,
                          "calls": [["list_directory", args]]})
    assert results == [{"ok": ["list_directory"], "errors": []}]
    got = d.wait_for("the tools/call record", calls)
    assert got[0]["args_sha256"] == args_sha256(args)
    assert got[0]["server"]["name"] == "mcp-server-filesystem"
    assert got[0]["agent_host"]["comm"] == d.host_name
    # Only the host itself is ever watched as a host: never its fork, nor the server it execs.
    hosts = [line for line in d.log.read_text().splitlines() if "watching agent host" in line]
    pids = {line.split("pid=")[1].split()[0] for line in hosts}
    assert hosts and len(pids) == 1, hosts


DETECT_ANY = 'detect = "any"\n'


def node_exe() -> str:
    return os.path.realpath(subprocess.run(["sh", "-c", "command -v node"], capture_output=True, text=True).stdout.strip())


def hosted_by(pid: int) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """The tools/call records of sessions whose agent host is `pid`: a daemon that detects
    servers by content records every session on the machine; a test reads its own."""
    return lambda recs: [r for r in calls(recs) if (r.get("agent_host") or {}).get("pid") == pid]


def unwrapped_alerts(recs: list[dict[str, Any]], host_pid: int) -> list[dict[str, Any]]:
    return [r for r in recs if (r.get("detail") or {}).get("alert") == "unwrapped_server"
            and ((r["detail"].get("host") or {}).get("pid") == host_pid)]


def test_an_unlisted_host_is_found_by_what_its_server_reads(daemon_factory, tmp_path: Path) -> None:
    """A plain Python process using the official SDK (no listed name: a custom agent, a
    script) drives the official `everything` server over stdio, unwrapped. The kernel finds
    the server by its first read of stdin, the daemon its host at the other end of the pipe."""
    d = daemon_factory(extra_config=DETECT_ANY)
    host = d.host({"server": "everything", "calls": [["echo", {"message": "shadow"}]]}, exe=sys.executable)
    out, _ = host.communicate(timeout=90)
    assert json.loads(out.splitlines()[-1]) == {"ok": ["echo"], "errors": []}
    got = d.wait_for("the echo record", hosted_by(host.pid))
    r = got[0]
    assert r["tool"] == "echo" and r["args_sha256"] == args_sha256({"message": "shadow"})
    assert r["transport"] == "stdio-observed"
    assert r["principal"]["user"] == "root" and r["principal"]["uid"] == os.getuid()
    assert r["agent_host"]["exe"] == os.path.realpath(sys.executable)
    assert r["agent_host"]["comm"] != d.host_name
    assert r["server"]["exe"] == node_exe()
    assert any(a.endswith("mcp-server-everything") for a in r["server"]["argv"])
    alert = d.wait_for("the unwrapped alert", lambda recs: unwrapped_alerts(recs, host.pid))
    assert alert[0]["detail"]["user"] == "root"
    assert alert[0]["detail"]["host_kind"] is None
    # The initialize exchange was seen too: the first read decided, and was kept.
    sessions = {r["session"] for r in got}
    assert any(x["kind"] == "request" and x.get("method") == "initialize" and x["session"] in sessions for x in d.records())


def test_the_host_list_with_detect_hosts_is_a_gate(daemon_factory, tmp_path: Path) -> None:
    """The other side of the test above: with `detect = "hosts"` the same unlisted host's
    session is not recorded, and a listed one's is (its alert names the host kind)."""
    d = daemon_factory()
    unlisted = d.host({"server": "everything", "calls": [["echo", {"message": "a"}]]}, exe=sys.executable)
    unlisted.communicate(timeout=90)
    listed = d.host({"server": "everything", "calls": [["echo", {"message": "b"}]]})
    listed.communicate(timeout=90)
    d.wait_for("the listed host's record", hosted_by(listed.pid))
    alert = d.wait_for("the listed host's alert", lambda recs: unwrapped_alerts(recs, listed.pid))
    assert alert[0]["detail"]["host_kind"] == d.host_name
    assert hosted_by(unlisted.pid)(d.records()) == []


def test_a_host_renamed_after_it_started_its_server_is_recorded(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(extra_config=DETECT_ANY)
    host = d.host({"server": "everything", "rename": "renamed-" + secrets.token_hex(2),
                   "calls": [["echo", {"message": "renamed"}]]}, exe=sys.executable)
    out, _ = host.communicate(timeout=90)
    assert json.loads(out.splitlines()[-1]) == {"ok": ["echo"], "errors": []}
    got = d.wait_for("the echo record", hosted_by(host.pid))
    assert got[0]["tool"] == "echo"


LAUNCHER = r"""
import os, socket, subprocess, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
_, fds, _, _ = socket.recv_fds(conn, 16, 2)
p = subprocess.Popen(sys.argv[2:], stdin=fds[0], stdout=fds[1])
os.close(fds[0]); os.close(fds[1])
conn.sendall(str(p.pid).encode())
conn.close()
p.wait()
"""


def test_a_server_that_is_not_its_hosts_descendant_is_recorded(daemon_factory, tmp_path: Path) -> None:
    """A launcher the host did not start (as `systemd-run --pipe` or a container runtime
    would be) gets the host's pipes over a unix socket and starts the server on them. The
    server's host is the process at the other end of its stdin: this test's own process."""
    import socket

    d = daemon_factory(extra_config=DETECT_ANY)
    sock = tmp_path / "launcher.sock"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(sock), str(harness.NODE_BIN / "mcp-server-everything")],
                                stdout=subprocess.PIPE, text=True)
    d.hosts.append(launcher)
    assert launcher.stdout is not None and launcher.stdout.readline().strip() == "ready"
    to_server_r, to_server_w = os.pipe()
    from_server_r, from_server_w = os.pipe()
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(sock))
        socket.send_fds(c, [b"x"], [to_server_r, from_server_w])
        server_pid = int(c.recv(32))
    os.close(to_server_r)
    os.close(from_server_w)
    with os.fdopen(to_server_w, "wb", buffering=0) as w, os.fdopen(from_server_r, "rb") as r:
        def ask(msg: dict[str, Any]) -> dict[str, Any] | None:
            w.write(json.dumps(msg).encode() + b"\n")
            if "id" not in msg:
                return None
            while True:
                line = r.readline()
                assert line, "the server closed its stdout"
                answer = json.loads(line)
                if answer.get("id") == msg["id"]:
                    return answer

        init = ask({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pipe-host", "version": "1"}}})
        assert init and "result" in init
        ask({"jsonrpc": "2.0", "method": "notifications/initialized"})
        echo = ask({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "handed"}}})
        assert echo and "result" in echo
        got = d.wait_for("the echo record", hosted_by(os.getpid()))
    assert got[0]["tool"] == "echo"
    assert got[0]["server"]["pid"] == server_pid
    launcher.wait(timeout=30)


def test_server_is_named_as_the_host_config_names_it(daemon_factory, tmp_path: Path) -> None:
    """A project `.mcp.json` in the host's working directory names the server `my-files`:
    records (and policy rules) use that name, not the program's."""
    d = daemon_factory(ALLOW_ALL + '\n[[rule]]\nid = "no-listing-my-files"\nserver = "my-files"\ntool = "list_directory"\naction = "deny"\n')
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / ".mcp.json").write_text(json.dumps(
        {"mcpServers": {"my-files": {"command": str(harness.NODE_BIN / "mcp-server-filesystem"), "args": [str(root)]}}}))
    host = d.host({"server": "filesystem", "root": str(root), "calls": [["list_directory", {"path": str(root)}]]}, cwd=tmp_path)
    host.communicate(timeout=60)
    got = d.wait_for("the list_directory record", lambda recs: [r for r in calls(recs) if r["tool"] == "list_directory"])
    assert got[0]["server"]["name"] == "my-files"
    assert got[0]["would_deny"] is True and got[0]["rule"] == "no-listing-my-files"


def test_one_mebibyte_message_is_reassembled_intact(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    root = tmp_path / "root"
    root.mkdir()
    content = "".join(chr(0x41 + (i * 7) % 26) for i in range(1 << 20))
    args = {"path": str(root / "big.txt"), "content": content}
    results = d.run_host({"server": "filesystem", "root": str(root), "calls": [["write_file", args]]})
    assert results == [{"ok": ["write_file"], "errors": []}]
    assert (root / "big.txt").read_text() == content
    got = d.wait_for("the write_file record", lambda recs: [r for r in calls(recs) if r["tool"] == "write_file"])
    assert got[0]["args_sha256"] == args_sha256(args)
    assert got[0]["bytes"] > 1 << 20
    assert d.status()["counters"]["lost_kernel"] == 0


def test_message_split_over_many_writes(daemon_factory, tmp_path: Path) -> None:
    """A host that writes each message in 64-byte pieces, pausing between them, to a
    real server: the server reads them one piece at a time."""
    d = daemon_factory()
    script = tmp_path / "slow_host.py"
    script.write_text(
        "import json, os, subprocess, sys, time\n"
        f"p = subprocess.Popen([{str(harness.VENV_BIN / 'mcp-server-time')!r}, '--local-timezone', 'UTC'],"
        " stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)\n"
        "def send(m):\n"
        "    b = (json.dumps(m) + '\\n').encode()\n"
        "    for i in range(0, len(b), 64):\n"
        "        os.write(p.stdin.fileno(), b[i:i+64]); time.sleep(0.01)\n"
        "    return json.loads(p.stdout.readline())\n"
        "send({'jsonrpc': '2.0', 'id': 1, 'method': 'initialize', 'params': {'protocolVersion': '2025-06-18',"
        " 'capabilities': {}, 'clientInfo': {'name': 'slow', 'version': '1'}}})\n"
        "os.write(p.stdin.fileno(), b'{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\\n')\n"
        "r = send({'jsonrpc': '2.0', 'id': 2, 'method': 'tools/call', 'params': {'name': 'get_current_time',"
        " 'arguments': {'timezone': 'Europe/Paris'}}})\n"
        "print(json.dumps(r)); p.stdin.close(); p.wait()\n"
    )
    p = subprocess.run([str(d.host_exe), str(script)], capture_output=True, text=True, timeout=60)
    assert '"Europe/Paris"' in p.stdout, p.stderr
    got = d.wait_for("the split tools/call", lambda recs: calls(recs))
    assert got[0]["tool"] == "get_current_time"
    assert got[0]["args_sha256"] == args_sha256({"timezone": "Europe/Paris"})
    assert got[0]["request_id"] == "2"


def test_several_sessions_at_once(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    root = tmp_path / "root"
    root.mkdir()
    results = d.run_host({"server": "filesystem", "root": str(root), "sessions": 4,
                          "calls": [["list_directory", {"path": str(root)}], ["list_allowed_directories", {}]]})
    assert len(results) == 4 and all(r["errors"] == [] for r in results), results
    got = d.wait_for("eight tools/call records", lambda recs: len(calls(recs)) >= 8 and calls(recs))
    per_session: dict[str, list[str]] = {}
    for r in got:
        per_session.setdefault(r["session"], []).append(r["tool"])
    assert len(per_session) == 4
    assert all(v == ["list_directory", "list_allowed_directories"] for v in per_session.values()), per_session
    assert len({r["server"]["pid"] for r in got}) == 4


def test_kill_on_sight(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(ALLOW_ALL + '\n[observer]\nunwrapped = "kill"\n')
    results = d.run_host({"server": "time", "calls": [["get_current_time", {"timezone": "UTC"}]]})
    assert results and results[0]["ok"] == [], results
    alert = d.wait_for("the kill alert", lambda recs: [r for r in recs if (r.get("detail") or {}).get("alert") == "unwrapped_server"])
    assert alert[0]["detail"]["action"] == "kill"
    end = d.wait_for("the session end", lambda recs: [r for r in recs if r["kind"] == "session_end"])
    assert end[0]["detail"]["killed"] is True
    deadline = time.monotonic() + 5  # the status file is rewritten twice a second
    while d.status()["counters"]["killed"] != 1:
        assert time.monotonic() < deadline, d.status()
        time.sleep(0.1)


def test_denied_call_kills_the_server_before_it_runs(daemon_factory, tmp_path: Path) -> None:
    """With `denied = "kill"` the kernel stops the server as its read of the request
    returns; the daemon judges it and kills. None of the denied writes may happen."""
    d = daemon_factory(DENY_WRITES + '\n[observer]\ndenied = "kill"\n')
    root = tmp_path / "root"
    root.mkdir()
    n = 10
    for i in range(n):
        r = d.run_host({"server": "filesystem", "root": str(root),
                        "calls": [["list_directory", {"path": str(root)}],
                                  ["write_file", {"path": str(root / f"f{i}.txt"), "content": "x"}]]})
        assert r[0]["ok"] == ["list_directory"] and r[0]["errors"], r
    assert sorted(p.name for p in root.iterdir()) == [], "a denied call executed"
    alerts = d.wait_for(f"{n} denied-call alerts",
                        lambda recs: len(x := [r for r in recs if (r.get("detail") or {}).get("alert") == "denied_call_observed"]) >= n and x)
    assert all(a["detail"]["killed"] and a["detail"]["tool"] == "write_file" and a["detail"]["rule"] == "no-writes" for a in alerts)
    # Allowed calls went through the same gate and were let go.
    assert len([r for r in calls(d.records()) if r["tool"] == "list_directory"]) == n


def _metrics(port: int) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def test_metrics_endpoint_counts_decisions_and_alerts(daemon_factory, tmp_path: Path) -> None:
    """`metrics = ADDR`: the Prometheus text endpoint's decision counter for the denied tool
    moves when the call is made, and the alert counter with it."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = daemon_factory(DENY_WRITES, extra_config=f'metrics = "127.0.0.1:{port}"\n')
    before = _metrics(port)
    assert "mcp_guard_audit_commit_seconds" in before, before
    assert 'tool="write_file"' not in before, before
    root = tmp_path / "root"
    root.mkdir()
    d.run_host({"server": "filesystem", "root": str(root),
                "calls": [["write_file", {"path": str(root / "f.txt"), "content": "x"}]]})
    d.wait_for("the denied-call alert", lambda recs: alerts_named(recs, "denied_call_observed"))
    deadline = time.monotonic() + DEADLINE
    while True:
        after = _metrics(port)
        lines = [l for l in after.splitlines() if l.startswith("mcp_guard_decisions_total{") and 'tool="write_file"' in l]
        alerts = [l for l in after.splitlines() if l.startswith('mcp_guard_alerts_total{alert="denied_call_observed"}')]
        if lines and alerts:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.2)
    assert float(lines[0].rsplit(" ", 1)[1]) >= 1, lines
    assert float(alerts[0].rsplit(" ", 1)[1]) >= 1, alerts
    status = _metrics_status(port)
    assert status == 404


def _metrics_status(port: int) -> int:
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    except urllib.error.HTTPError as e:
        return e.code
    return 200


SINK = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(64)
open(sys.argv[1] + ".ready", "w").close()
while True:
    c, _ = s.accept(); c.recv(4096); c.close()
"""


def test_local_socket_bytes_beside_a_session_lose_no_call(daemon_factory, tmp_path: Path) -> None:
    """Chunks of any kind share their CPU's sequence: bytes a host writes to some unix
    socket just before each call (pinned to one CPU) must not look like lost chunks and
    make the daemon drop the call. Every call is judged, every denied write is stopped."""
    d = daemon_factory(DENY_WRITES + '\n[observer]\ndenied = "kill"\n')
    root = tmp_path / "root"
    root.mkdir()
    sock = tmp_path / "sink.sock"
    (tmp_path / "sink.py").write_text(SINK)
    sink = subprocess.Popen([sys.executable, str(tmp_path / "sink.py"), str(sock)])
    try:
        deadline = time.monotonic() + 10
        while not Path(str(sock) + ".ready").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        n = 10
        for i in range(n):
            r = d.run_host({"server": "filesystem", "root": str(root), "poke": str(sock), "cpu": 0,
                            "calls": [["list_directory", {"path": str(root)}],
                                      ["write_file", {"path": str(root / f"f{i}.txt"), "content": "x"}]]})
            assert r[0]["ok"] == ["list_directory"] and r[0]["errors"], r
        assert sorted(p.name for p in root.iterdir()) == [], "a denied call executed"
        alerts = d.wait_for(f"{n} denied-call alerts",
                            lambda recs: len(x := alerts_named(recs, "denied_call_observed")) >= n and x)
        assert len(alerts) == n
        assert len([r for r in calls(d.records()) if r["tool"] == "list_directory"]) == n
        gaps = [r for r in d.records() if r["kind"] == "gap"]
        assert not gaps, f"chunks reported lost with nothing lost: {gaps}"
        status = d.status()["counters"]
        assert status["lost_sequence"] == 0 and status["lost_kernel"] == 0, status
    finally:
        sink.kill()
        sink.wait()


def test_a_banner_or_a_wrapper_script_does_not_turn_capture_off(daemon_factory, tmp_path: Path) -> None:
    """`sh -c 'echo starting; exec server'`: the shell's banner on stdout, then the real
    filesystem server in the same process. The session is recorded and, under
    `denied = "kill"`, its denied write does not happen."""
    d = daemon_factory(DENY_WRITES + '\n[observer]\ndenied = "kill"\n')
    root = tmp_path / "root"
    root.mkdir()
    banner = ["sh", "-c", 'echo "starting the server, please wait"; shift; exec "$@"', "sh"]
    r = d.run_host({"server": "filesystem", "root": str(root), "wrap": banner,
                    "calls": [["list_directory", {"path": str(root)}],
                              ["write_file", {"path": str(root / "banner.txt"), "content": "x"}]]})
    assert "list_directory" in r[0]["ok"], r
    assert not (root / "banner.txt").exists(), "the denied write ran"
    alerts = d.wait_for("the denied-call alert", lambda recs: alerts_named(recs, "denied_call_observed"))
    assert alerts[0]["detail"]["tool"] == "write_file" and alerts[0]["detail"]["killed"]
    assert [r for r in calls(d.records()) if r["tool"] == "list_directory"]


RAW_HOST = r"""
import json, subprocess, sys, time
spec = json.loads(open(sys.argv[1]).read())
srv = subprocess.Popen(spec["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
for line in spec["lines"]:
    try:
        srv.stdin.write(line.encode() + b"\n"); srv.stdin.flush()
    except BrokenPipeError:  # killed: the test looks at what happened
        break
    time.sleep(0.3)
time.sleep(1)
srv.kill(); srv.wait()
"""


def test_what_cannot_be_judged_is_treated_as_denied_under_kill(daemon_factory, tmp_path: Path) -> None:
    """Lines the daemon cannot judge but the server acts on: a duplicate key (JSON.parse
    takes the last) and a call longer than max_message. Under `denied = "kill"` the server
    is killed before it acts, and the alert says why."""
    d = daemon_factory(ALLOW_ALL + '\n[observer]\ndenied = "kill"\n', extra_config='max_message = 1048576\n')
    (tmp_path / "raw_host.py").write_text(RAW_HOST)
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    for case in ["duplicate_key", "too_long"]:
        root = tmp_path / case
        root.mkdir()
        target = root / "x.txt"
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "write_file", "arguments": {"path": str(target), "content": "x"}}}
        if case == "too_long":
            call["params"]["arguments"]["content"] = "x" * (2 << 20)
            line = json.dumps(call)
        else:
            line = json.dumps(call)[:-1] + ', "id": 3}'
        spec = tmp_path / f"{case}.json"
        spec.write_text(json.dumps({"argv": harness.filesystem_server(root).argv,
                                    "lines": [init, '{"jsonrpc":"2.0","method":"notifications/initialized"}', line]}))
        subprocess.run([str(d.host_exe), str(tmp_path / "raw_host.py"), str(spec)], timeout=60, check=True)
        assert not target.exists(), f"{case}: the unjudgeable call ran"
        alert = d.wait_for(f"the {case} alert", lambda recs: [a for a in alerts_named(recs, "denied_call_observed")
                                                             if a["detail"]["rule"] == f"unjudgeable:{case}"])
        assert alert[0]["detail"]["killed"], alert


SPLICE_SERVER = r"""
import json, os, sys
first = os.read(0, 65536)  # initialize, read as servers do
req = json.loads(first)
os.write(1, json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": {
    "protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "splice", "version": "0"}}}).encode() + b"\n")
r, w = os.pipe()
n = os.splice(0, w, 65536)  # the next request, moved where the observer cannot copy it from
call = json.loads(os.read(r, n))
if call["params"]["name"] == "write_file":
    open(call["params"]["arguments"]["path"], "w").write("x")
"""


def test_a_request_read_with_splice_is_not_acted_on_under_kill(daemon_factory, tmp_path: Path) -> None:
    """A server that reads its stdin with splice(2) moves the bytes without passing them
    through memory the kernel program can read: nothing to judge. Under `denied = "kill"`
    the kernel kills it before the call returns, and the alert names the call."""
    d = daemon_factory(DENY_WRITES + '\n[observer]\ndenied = "kill"\n')
    (tmp_path / "raw_host.py").write_text(RAW_HOST)
    (tmp_path / "splice_server.py").write_text(SPLICE_SERVER)
    target = tmp_path / "written.txt"
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    call = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                       "params": {"name": "write_file", "arguments": {"path": str(target), "content": "x"}}})
    spec = tmp_path / "splice.json"
    spec.write_text(json.dumps({"argv": [sys.executable, str(tmp_path / "splice_server.py")], "lines": [init, call]}))
    subprocess.run([str(d.host_exe), str(tmp_path / "raw_host.py"), str(spec)], timeout=60, check=True)
    assert not target.exists(), "the spliced call ran"
    alert = d.wait_for("the unfollowed_io alert", lambda recs: alerts_named(recs, "unfollowed_io"))
    detail = alert[0]["detail"]
    assert (detail["call"], detail["direction"], detail["carries"], detail["killed"]) == ("splice", "read", "stdin", True)


# Waits for the server's answer to initialize before the call, and for the server to end
# after it (killed, or 10 s), so that a slow machine (the emulated VM) does not end the
# session before the server has read anything.
PATIENT_HOST = r"""
import json, subprocess, sys
init, call = json.loads(open(sys.argv[1]).read())["lines"]
srv = subprocess.Popen(json.loads(open(sys.argv[1]).read())["argv"], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
srv.stdin.write(init.encode() + b"\n"); srv.stdin.flush()
srv.stdout.readline()
try:
    srv.stdin.write(call.encode() + b"\n"); srv.stdin.flush()
except BrokenPipeError:
    pass
try:
    srv.wait(timeout=10)
except subprocess.TimeoutExpired:
    srv.kill(); srv.wait()
"""

REOPEN_SERVER = r"""
import json, os, socket, sys
how = sys.argv[1]

def serve(fd):
    # Reads requests from `fd`, never from fd 0, which points at /dev/null by now.
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            if req.get("method") == "initialize":
                os.write(1, json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": {
                    "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "reopen", "version": "0"}}}).encode() + b"\n")
            elif req.get("method") == "tools/call" and req["params"]["name"] == "write_file":
                open(req["params"]["arguments"]["path"], "w").write("x")

if how == "scm":
    # Stdin handed to a helper over a unix socket; the helper serves.
    a, b = socket.socketpair()
    if os.fork() == 0:
        _, fds, _, _ = socket.recv_fds(b, 10, 1)
        serve(fds[0])
        os._exit(0)
    socket.send_fds(a, [b"x"], [0])
    os.wait()
else:
    serve(os.open({"proc": "/proc/self/fd/0", "dev": "/dev/stdin"}[how], os.O_RDONLY))
"""


@pytest.mark.parametrize("how", ["proc", "dev", "scm"])
def test_stdin_reached_through_another_descriptor_is_judged_under_kill(daemon_factory, tmp_path: Path, how: str) -> None:
    """A server that reads its requests through another descriptor of its stdin pipe
    (reopened as /proc/self/fd/0 or /dev/stdin, or handed to a helper over a unix socket)
    is read from the same pipe: captured, judged, and under `denied = "kill"` killed before
    the denied call runs."""
    d = daemon_factory(DENY_WRITES + '\n[observer]\ndenied = "kill"\n')
    (tmp_path / "patient_host.py").write_text(PATIENT_HOST)
    (tmp_path / "reopen_server.py").write_text(REOPEN_SERVER)
    target = tmp_path / "written.txt"
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    call = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                       "params": {"name": "write_file", "arguments": {"path": str(target), "content": "x"}}})
    spec = tmp_path / "reopen.json"
    spec.write_text(json.dumps({"argv": [sys.executable, str(tmp_path / "reopen_server.py"), how], "lines": [init, call]}))
    subprocess.run([str(d.host_exe), str(tmp_path / "patient_host.py"), str(spec)], timeout=120, check=True)
    assert not target.exists(), f"the call read through another descriptor ({how}) ran"
    if how == "scm":
        alert = d.wait_for("the unfollowed_io alert", lambda recs: alerts_named(recs, "unfollowed_io"))
        detail = alert[0]["detail"]
        assert (detail["call"], detail["direction"], detail["carries"], detail["killed"]) == ("sendmsg", "pass", "stdin", True)
    else:
        alert = d.wait_for("the denied-call alert", lambda recs: alerts_named(recs, "denied_call_observed"))
        detail = alert[0]["detail"]
        assert (detail["tool"], detail["killed"]) == ("write_file", True), detail


SELF_TRACER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_TRACEME, PTRACE_CONT = 0, 7
pid = os.fork()
if pid == 0:
    libc.ptrace(PTRACE_TRACEME, 0, None, None)
    os.execv(sys.argv[1], sys.argv[1:])
while True:
    _, status = os.waitpid(pid, 0)
    if not os.WIFSTOPPED(status):
        sys.exit(0)
    sig = os.WSTOPSIG(status)
    # Swallows the stop a gate sends, and the trap at exec; passes anything else on.
    libc.ptrace(PTRACE_CONT, pid, None, 0 if sig in (signal.SIGSTOP, signal.SIGTRAP) else sig)
"""


def test_a_traced_server_cannot_slip_its_gate(daemon_factory, tmp_path: Path) -> None:
    """A server traced by its own helper: the tracer is told of the gate's SIGSTOP and lets
    it go, so the server would run on before its read is judged. Under `denied = "kill"` a
    traced reader is killed at its first gated read; the denied write never runs."""
    d = daemon_factory(DENY_WRITES + '\n[observer]\ndenied = "kill"\n')
    (tmp_path / "raw_host.py").write_text(RAW_HOST)
    (tmp_path / "tracer.py").write_text(SELF_TRACER)
    root = tmp_path / "root"
    root.mkdir()
    target = root / "x.txt"
    server = harness.filesystem_server(root).argv
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    call = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                       "params": {"name": "write_file", "arguments": {"path": str(target), "content": "x"}}})
    argv = [sys.executable, str(tmp_path / "tracer.py"), *server]
    spec = tmp_path / "traced.json"
    spec.write_text(json.dumps({"argv": argv, "lines": [init, '{"jsonrpc":"2.0","method":"notifications/initialized"}', call]}))
    subprocess.run([str(d.host_exe), str(tmp_path / "raw_host.py"), str(spec)], timeout=60, check=True)
    assert not target.exists(), "the traced server ran the denied write"
    alert = d.wait_for("the traced_server alert", lambda recs: alerts_named(recs, "traced_server"))
    assert alert[0]["detail"]["killed"] is True


def test_wrapped_session_is_not_alerted_and_injection_is(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    root = tmp_path / "root"
    root.mkdir()
    shim_audit = tmp_path / "shim-audit.jsonl"
    policy = tmp_path / "shim-policy.toml"
    policy.write_text(ALLOW_ALL)
    gate = tmp_path / "go"
    wrap = [str(harness.guard_bin()), "wrap", "--name", "fs", "--audit", str(shim_audit), "--policy", str(policy)]
    host = d.host({"server": "filesystem", "root": str(root), "wrap": wrap, "start_gate": str(gate),
                   "calls": [["list_directory", {"path": str(root)}]], "hold": 1.0})
    # The shim and its server, once the session is up.
    deadline = time.monotonic() + 30
    server = None
    while server is None and time.monotonic() < deadline:
        st = d.status()
        wrapped = [s for s in st["sessions"] if s["wrapped"]]
        server = wrapped[0]["pid"] if wrapped else None
        time.sleep(0.1)
    assert server, f"no wrapped session in status: {d.status()}"
    # Someone else writes a request straight into the wrapped server's stdin.
    injected = {"jsonrpc": "2.0", "id": "inj-1", "method": "tools/call",
                "params": {"name": "list_directory", "arguments": {"path": str(root)}}}
    with open(f"/proc/{server}/fd/0", "wb", buffering=0) as pipe:
        pipe.write((json.dumps(injected) + "\n").encode())
    gate.write_text("")
    out, _ = host.communicate(timeout=60)
    assert json.loads(out.splitlines()[-1]) == {"ok": ["list_directory"], "errors": []}
    alert = d.wait_for("the injection alert", lambda recs: [r for r in recs if (r.get("detail") or {}).get("alert") == "injected_message"])
    assert alert[0]["detail"]["request_id"] == "inj-1"
    assert alert[0]["detail"]["method"] == "tools/call"
    recs = d.records()
    # The host's own calls reached the server through the shim: no alert for them, and
    # no unwrapped alert: the shim records this session.
    assert len([r for r in recs if (r.get("detail") or {}).get("alert") == "injected_message"]) == 1
    assert not [r for r in recs if (r.get("detail") or {}).get("alert") == "unwrapped_server"]
    assert not calls(recs), "the observer must not record a wrapped session itself"
    assert [r for r in audit_records(shim_audit) if r.get("tool") == "list_directory"]
    # The real shim recorded every request it read from the host: no mismatch.
    time.sleep(3)
    assert not [r for r in d.records() if (r.get("detail") or {}).get("alert") == "unrecorded_request"]


FAKE_SHIM = r"""
import os, subprocess, sys, threading
# Looks like `mcp-guard wrap --audit FILE -- SERVER...` and relays without recording.
cmd = sys.argv[sys.argv.index("--") + 1:]
p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def pump(src, dst):
    while b := os.read(src, 65536):
        os.write(dst, b)
    os.close(dst)
threading.Thread(target=pump, args=(p.stdout.fileno(), 1), daemon=True).start()
pump(0, p.stdin.fileno())
p.wait()
"""


def test_shim_that_does_not_record_is_alerted(daemon_factory, tmp_path: Path) -> None:
    """Something that presents itself as `mcp-guard wrap --audit FILE` but writes nothing
    there: each request it read from the host is reported as unrecorded."""
    d = daemon_factory()
    root = tmp_path / "root"
    root.mkdir()
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "wrap").write_text(FAKE_SHIM)  # python runs ./wrap: argv is `mcp-guard wrap ...`
    (fake / "mcp-guard").symlink_to(os.path.realpath(sys.executable))
    shim_audit = tmp_path / "shim-audit.jsonl"
    shim_audit.write_text("")
    wrap = [str(fake / "mcp-guard"), "wrap", "--name", "fs", "--audit", str(shim_audit)]
    results = d.run_host({"server": "filesystem", "root": str(root), "wrap": wrap, "cwd": str(fake),
                          "calls": [["list_directory", {"path": str(root)}]]})
    assert results == [{"ok": ["list_directory"], "errors": []}], results
    alerts = d.wait_for("unrecorded-request alerts",
                        lambda recs: [r for r in recs if (r.get("detail") or {}).get("alert") == "unrecorded_request"])
    methods = {a["detail"]["method"] for a in alerts}
    assert {"initialize", "tools/call"} <= methods, methods
    assert alerts[0]["detail"]["audit"] == str(shim_audit)


def test_daemon_started_after_the_session_still_finds_it(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(start=False)
    root = tmp_path / "root"
    root.mkdir()
    gate = tmp_path / "go"
    host = d.host({"server": "filesystem", "root": str(root), "start_gate": str(gate),
                   "calls": [["list_directory", {"path": str(root)}], ["list_allowed_directories", {}]]})
    time.sleep(3)  # the session is initialised and idle
    assert host.poll() is None
    d.start()
    gate.write_text("")
    out, _ = host.communicate(timeout=60)
    assert json.loads(out.splitlines()[-1])["errors"] == []
    got = d.wait_for("the late session's calls", lambda recs: len(calls(recs)) >= 2 and calls(recs))
    assert [r["tool"] for r in got] == ["list_directory", "list_allowed_directories"]
    start = [r for r in d.records() if r["kind"] == "session_start"]
    assert start[0]["detail"]["joined_late"] is True


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_streamable_http_is_observed(daemon_factory, tmp_path: Path) -> None:
    """The official everything server in Streamable HTTP mode on a loopback port, not
    under any host; the watched host connects to it with the SDK's HTTP client."""
    d = daemon_factory()
    port = free_port()
    log = (tmp_path / "everything.log").open("wb")
    server = subprocess.Popen([str(harness.NODE_BIN / "mcp-server-everything"), "streamableHttp"],
                              env={**os.environ, "PORT": str(port)}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while f"port {port}" not in (tmp_path / "everything.log").read_text():
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "everything.log").read_text()
            time.sleep(0.1)
        args = {"message": "over http"}
        results = d.run_host({"url": f"http://127.0.0.1:{port}/mcp", "calls": [["echo", args]]})
        assert results == [{"ok": ["echo"], "errors": []}], results
        got = d.wait_for("the echo call over HTTP", lambda recs: [r for r in calls(recs) if r["tool"] == "echo"])
        r = got[0]
        assert r["transport"] == "http-observed"
        assert r["args_sha256"] == args_sha256(args)
        assert r["agent_host"]["comm"] == d.host_name
        assert r["principal"]["user"] == "root"
        assert r["server"]["address"] == f"http://localhost:{port}"
        assert r["server"]["pid"] == server.pid
        # The answer came back as an SSE event or a JSON body: recorded and linked.
        recs = d.records()
        assert [x for x in recs if x["kind"] == "response" and x.get("links") == r["id"]]
    finally:
        server.terminate()
        server.wait(timeout=10)


NDJSON_SERVER = r"""
import json, os, socket, sys
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(1)
open(path + ".ready", "w").close()
conn, _ = srv.accept()
f = conn.makefile("rwb")
for line in f:
    m = json.loads(line)
    if "id" not in m:
        continue
    result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "ndjson", "version": "1"}} \
        if m["method"] == "initialize" else {"content": [{"type": "text", "text": "done"}]}
    f.write((json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": result}) + "\n").encode()); f.flush()
"""

NDJSON_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rwb")
def call(m):
    f.write((json.dumps(m) + "\n").encode()); f.flush()
    return json.loads(f.readline()) if "id" in m else None
call({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}})
call({"jsonrpc": "2.0", "method": "notifications/initialized"})
print(json.dumps(call({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "do_it", "arguments": {"n": 7}}})))
"""


def test_newline_json_rpc_over_a_unix_socket_is_observed(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    sock = tmp_path / "mcp.sock"
    (tmp_path / "srv.py").write_text(NDJSON_SERVER)
    (tmp_path / "cli.py").write_text(NDJSON_CLIENT)
    server = subprocess.Popen([sys.executable, str(tmp_path / "srv.py"), str(sock)])
    try:
        deadline = time.monotonic() + 10
        while not Path(str(sock) + ".ready").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        out = subprocess.run([str(d.host_exe), str(tmp_path / "cli.py"), str(sock)], capture_output=True, text=True, timeout=30)
        assert '"done"' in out.stdout, out.stderr
        got = d.wait_for("the do_it call over the socket", lambda recs: calls(recs))
        assert got[0]["tool"] == "do_it"
        assert got[0]["transport"] == "socket-observed"
        assert got[0]["args_sha256"] == args_sha256({"n": 7})
        assert got[0]["agent_host"]["comm"] == d.host_name
    finally:
        server.kill()
        server.wait()


CURSOR_CONFIG = """{
  // written by the host
  "mcpServers": {
    "fs": { "command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"] },
    "remote": { "url": "https://example.invalid/mcp" }
  }
}
"""


def alerts_named(recs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in recs if (r.get("detail") or {}).get("alert") == name]


def test_host_config_written_back_is_alerted_once(daemon_factory, tmp_path: Path) -> None:
    cfg = tmp_path / "home/.cursor/mcp.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(CURSOR_CONFIG)
    d = daemon_factory(extra_config='host_configs = "alert"\n')
    got = d.wait_for("the unwrapped-config alert", lambda recs: alerts_named(recs, "host_config_unwrapped"))
    assert got[0]["detail"]["server"] == "fs" and got[0]["detail"]["host"] == "cursor"
    assert got[0]["detail"]["file"] == str(cfg)
    time.sleep(1)  # several rescans later: still one alert, and the file untouched
    assert len(alerts_named(d.records(), "host_config_unwrapped")) == 1
    assert cfg.read_text() == CURSOR_CONFIG


def test_host_config_written_back_is_rewrapped(daemon_factory, tmp_path: Path) -> None:
    cfg = tmp_path / "home/.cursor/mcp.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(CURSOR_CONFIG)
    d = daemon_factory(extra_config='host_configs = "rewrap"\n')
    d.wait_for("the rewrap alert", lambda recs: alerts_named(recs, "host_config_rewrapped"))
    text = cfg.read_text()
    assert '"wrap"' in text and "// written by the host" in text and "example.invalid" in text, text
    cfg.write_text(CURSOR_CONFIG)  # the host writes its own version back
    d.wait_for("a second rewrap", lambda recs: len(alerts_named(recs, "host_config_rewrapped")) >= 2)
    assert '"wrap"' in cfg.read_text()
    unwrapped = subprocess.run([str(harness.guard_bin()), "hosts", "unwrap"], env={**os.environ, "HOME": str(tmp_path / "home")},
                               cwd=tmp_path, capture_output=True, text=True)
    assert unwrapped.returncode == 0, unwrapped.stderr


def test_server_left_stopped_by_a_dead_daemon_is_killed_at_start(daemon_factory, tmp_path: Path) -> None:
    """A daemon that dies while a gated server waits leaves it stopped; the next one,
    with `denied = "kill"`, cannot judge that read and kills it (fail closed)."""
    d = daemon_factory(DENY_WRITES + '\n[observer]\ndenied = "kill"\n', start=False)
    root = tmp_path / "root"
    root.mkdir()
    gate = tmp_path / "go"
    host = d.host({"server": "filesystem", "root": str(root), "start_gate": str(gate),
                   "calls": [["list_directory", {"path": str(root)}]]})
    deadline = time.monotonic() + 30
    server = None
    while server is None and time.monotonic() < deadline:
        kids = subprocess.run(["pgrep", "-P", str(host.pid)], capture_output=True, text=True).stdout.split()
        server = int(kids[0]) if kids else None
        time.sleep(0.1)
    assert server, "the host started no server"
    time.sleep(2)  # initialised
    os.kill(server, signal.SIGSTOP)  # as a gate whose daemon died would leave it
    d.start()
    alert = d.wait_for("the stopped-server alert", lambda recs: alerts_named(recs, "stopped_server_found"))
    assert alert[0]["detail"]["pid"] == server and alert[0]["detail"]["killed"] is True
    gate.write_text("")
    out, _ = host.communicate(timeout=60)
    assert json.loads(out.splitlines()[-1])["ok"] == []


def test_sighup_reloads_the_policy(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(ALLOW_ALL)
    root = tmp_path / "root"
    root.mkdir()
    d.policy.write_text(DENY_WRITES)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    reloaded = d.wait_for("the reload record", lambda recs: [r for r in recs if r["kind"] == "policy_loaded" and (r.get("detail") or {}).get("reload")])
    new_sha = reloaded[0]["detail"]["policy_sha256"]
    assert new_sha == hashlib.sha256(DENY_WRITES.encode()).hexdigest()
    d.run_host({"server": "filesystem", "root": str(root), "calls": [["write_file", {"path": str(root / "w.txt"), "content": "x"}]]})
    got = d.wait_for("the write_file record", lambda recs: [r for r in calls(recs) if r["tool"] == "write_file"])
    # Monitor mode: recorded as what the new policy would deny.
    assert got[0]["would_deny"] is True and got[0]["rule"] == "no-writes"
    assert got[0]["policy_sha256"] == new_sha
    # A policy that does not load is reported and the one in force stays.
    d.policy.write_text("this is not toml [")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("the failed-reload alert", lambda recs: alerts_named(recs, "policy_reload_failed"))


def test_daemon_stops_promptly_while_processes_keep_starting(daemon_factory, tmp_path: Path) -> None:
    """Exec events of the whole machine keep coming; SIGTERM must still end the daemon."""
    d = daemon_factory()
    busy = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    try:
        time.sleep(0.5)
        t = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - t < 5
    finally:
        busy.kill()
        busy.wait()


def test_status_reports_and_exits_3_without_daemon(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    st = d.status()
    assert set(st["programs"]) == {"sched_process_fork", "sched_process_exec", "sched_process_exit", "sys_exit"}
    assert st["counters"]["lost_kernel"] == 0
    assert d.stop() == 0
    p = subprocess.run([str(harness.guard_bin()), "status", "--config", str(d.config)], capture_output=True, text=True)
    assert p.returncode == 3
    assert "not running" in p.stderr


OTLP_RECEIVER = HERE.parent / "peers" / "otlp_receiver.py"


class OtlpReceiver:
    """tests/peers/otlp_receiver.py on a port of its own, writing to `out`."""

    def __init__(self, tmp: Path) -> None:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.out = tmp / "otlp.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        import socket
        self.proc = subprocess.Popen([sys.executable, str(OTLP_RECEIVER), "--port", str(self.port), "--out", str(self.out)],
                                     stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "the OTLP receiver did not listen"
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def got(self, signal_name: str) -> list[dict[str, Any]]:
        """What it received, of one signal: whole lines only (one may be being written, or
        cut by a kill before the receiver answered, so that batch was sent again)."""
        if not self.out.exists():
            return []
        text = self.out.read_text()
        out = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            try:
                x = json.loads(line)
            except ValueError:
                continue
            if x["signal"] == signal_name:
                out.append(x)
        return out


def test_otlp_export_sends_the_daemons_audit_log_across_a_receiver_kill(daemon_factory, tmp_path: Path) -> None:
    """`[otlp]`: the daemon exports its own audit log to an OTLP/HTTP receiver (on the
    official opentelemetry-proto package): every record as a log record, a span per
    observed tools/call; killed and restarted, the receiver still gets every record."""
    pytest.importorskip("opentelemetry.proto", reason="the peers venv lacks opentelemetry-proto (cargo xtask setup)")
    rx = OtlpReceiver(tmp_path)
    cursor = tmp_path / "state" / "otlp.cursor"
    d = daemon_factory(extra_config=f'[otlp]\nendpoint = "http://127.0.0.1:{rx.port}"\ncursor = "{cursor}"\n')
    try:
        root = tmp_path / "root"
        root.mkdir()
        d.run_host({"server": "filesystem", "root": str(root), "calls": [["list_directory", {"path": str(root)}]]})
        d.wait_for("the first call's response", lambda recs: [r for r in recs if r["kind"] == "response" and r.get("method") == "tools/call"])
        rx.kill()
        d.run_host({"server": "filesystem", "root": str(root), "calls": [["list_directory", {"path": str(root)}]]})
        d.wait_for("two calls' responses", lambda recs: len([r for r in recs if r["kind"] == "response" and r.get("method") == "tools/call"]) >= 2)
        time.sleep(1)
        rx.start()
        want = {r["seq"] for r in d.records()}
        deadline = time.monotonic() + 30
        while not want <= {x["seq"] for x in rx.got("log")}:
            assert time.monotonic() < deadline, f"missing at the receiver: {sorted(want - {x['seq'] for x in rx.got('log')})}\n{d.log.read_text()}"
            time.sleep(0.2)
        lines = {json.loads(l)["seq"]: l for l in d.audit.read_text().splitlines()}
        for x in rx.got("log"):
            assert x["body"] == lines[x["seq"]], x["seq"]
            assert x["resource"]["service.name"] == "mcp-guard"
        requests = [r for r in d.records() if r["kind"] == "request" and r.get("method") == "tools/call"]
        spans = {s["attributes"]["mcp_guard.request.record_id"]: s for s in rx.got("span")}
        for r in requests:
            s = spans[r["id"]]
            assert s["name"] == "tools/call list_directory"
            assert s["attributes"]["mcp_guard.transport"] == "stdio-observed"
            assert s["attributes"]["mcp_guard.request.seen"] is True
            assert s["end_time_unix_nano"] >= s["start_time_unix_nano"]
        assert len(requests) == 2
    finally:
        if rx.proc is not None:
            rx.kill()
    assert d.stop() == 0, d.log.read_text()
    assert cursor.exists()
