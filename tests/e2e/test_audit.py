"""What the audit log of a wrapped session says about who talked to whom."""

from __future__ import annotations

import os
import pwd
import shutil
import sys

import harness
from harness import ALLOW, AuditField, AuditKind, RawPeer, describe, field_of, initialize_line, read_audit, select
from test_transport import _children


def _same_id(recorded, sent) -> bool:
    return recorded == sent or str(recorded) == str(sent)


def test_audit_identifies_principal_server_and_agent_host(tmp_path, make_guard):
    root = harness.fresh_dir(tmp_path / "fsroot")
    (root / "f.txt").write_text("content\n")
    server = harness.filesystem_server(root)
    guard = make_guard()
    peer = RawPeer(guard.argv(server), env=harness.process_env(server))
    try:
        peer.send(initialize_line(1))
        peer.recv_response(1)
        server_pids = _children(peer.proc.pid)
        peer.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        peer.send(b'{"jsonrpc":"2.0","id":"list-2","method":"tools/list"}')
        peer.recv_response("list-2")
        peer.send(
            b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read_text_file","arguments":{"path":"'
            + str(root / "f.txt").encode()
            + b'"}}}'
        )
        peer.recv_response(3)
        code, _, err = peer.close()
    finally:
        peer.kill()

    records = read_audit(guard.audit, until_kind=AuditKind.SESSION_END)
    assert records, f"empty audit file; stderr: {err[-2000:]!r}"
    kinds = [field_of(r, AuditField.KIND) for r in records]
    # the policy in force, then the session
    assert kinds[:2] == ["policy_loaded", AuditKind.SESSION_START], kinds
    assert kinds[-1] == AuditKind.SESSION_END, kinds
    assert records[0]["policy_sha256"] == records[1]["policy_sha256"], records[:2]

    start = records[1]
    # principal: the user running the session
    assert field_of(start, AuditField.PRINCIPAL_UID) == os.getuid(), start
    assert field_of(start, AuditField.PRINCIPAL_USER) == pwd.getpwuid(os.getuid()).pw_name, start
    # server: the wrapped process, as named on the command line
    assert field_of(start, AuditField.SERVER_NAME) == "filesystem", start
    assert field_of(start, AuditField.SERVER_PID) in server_pids, (server_pids, start)
    node = os.path.realpath(shutil.which("node"))
    # The npm bin is a `#!/usr/bin/env node` script: the server's program image is node,
    # /usr/bin/env is only the launcher it exec'd through.
    assert field_of(start, AuditField.SERVER_EXE) == node, (
        f"server.exe should be the server's image after exec ({node}), "
        f"got {field_of(start, AuditField.SERVER_EXE)!r}: {start.get('server')}"
    )
    argv = field_of(start, AuditField.SERVER_ARGV)
    assert isinstance(argv, list) and argv[-1] == str(root), start
    # agent host: this test process spawned the wrapper, so it is the agent
    assert field_of(start, AuditField.AGENT_PID) == os.getpid(), start
    assert field_of(start, AuditField.AGENT_EXE) == os.path.realpath(sys.executable), start

    # every record belongs to the session; every decision record carries the identity,
    # every response record links to the request record that has it, and seals (which only
    # sign the chain) are signed
    by_id = {r["id"]: r for r in records}
    for r in records:
        assert r["session"] == start["session"], r
        if r["kind"] == AuditKind.SEAL:
            assert r.get("sig") and "server" not in r, r
        elif r["kind"] == AuditKind.RESPONSE:
            linked = by_id[r["links"]]
            assert field_of(linked, AuditField.SERVER_NAME) == "filesystem", (r, linked)
        else:
            assert field_of(r, AuditField.SERVER_NAME) == "filesystem", r

    # one request and one response record per request id, methods and tool named
    expected = {1: ("initialize", None), "list-2": ("tools/list", None), 3: ("tools/call", "read_text_file")}
    requests = select(records, kind=AuditKind.REQUEST)
    responses = select(records, kind=AuditKind.RESPONSE)
    for rid, (method, tool) in expected.items():
        req = [r for r in requests if _same_id(field_of(r, AuditField.REQUEST_ID), rid)]
        assert len(req) == 1, f"request {rid!r}:\n{describe(requests)}"
        assert field_of(req[0], AuditField.METHOD) == method, req[0]
        assert field_of(req[0], AuditField.DECISION) == ALLOW, req[0]
        if tool is not None:
            assert field_of(req[0], AuditField.TOOL) == tool, req[0]
        resp = [r for r in responses if _same_id(field_of(r, AuditField.REQUEST_ID), rid)]
        assert len(resp) == 1, f"response {rid!r}:\n{describe(responses)}"
