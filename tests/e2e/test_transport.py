"""Byte-level behaviour of `mcp-guard wrap` as a stdio proxy (no SDK: raw lines)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

import harness
from harness import DENY_CODE, RawPeer, initialize_line


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except FileNotFoundError:
        pass
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# Valid JSON-RPC lines in unusual but legal spellings: a re-serialising proxy changes them.
# Under `cat` every client request comes back as a server request with the same id, so the
# client's response to it (id 7) is a response to a server request in flight, and cat's echo
# of that is in turn the answer to the client's own request 7: every line is legitimate traffic.
ODD_LINES = [
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
    b'{ "jsonrpc" : "2.0" , "id" : 7 , "method" : "ping" }',
    b'{"jsonrpc":"2.0","id":7,"result":{"nested":{"deep":[[[[{"x":null}]]]]},"empty":{},"arr":[], "sp" :  1}}',
    b'{"params":{"level":"info","data":"\\u00e9 \\/ \xc3\xa9 \xf0\x9f\x98\x80 \\u2028"},"method":"notifications/message","jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","id":"str-id-\\"quoted\\"","method":"tools/call","params":{"name":"echo","arguments":{"n":1.0,"e":1E3,"big":123456789012345678901234567890,"neg":-0.0}}}',
    b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"message":"' + b"x" * 200_000 + b'"}}}',
]


def test_wrapper_forwards_lines_byte_for_byte_through_cat(tmp_path, make_guard):
    """`wrap -- cat`: every line the client writes comes back unchanged (up and down)."""
    cat = shutil.which("cat")
    guard = make_guard()
    peer = RawPeer(guard.argv(harness.Server("cat", cat)))
    try:
        for line in ODD_LINES:
            peer.send(line)
            got = peer.recv()
            assert got == line + b"\n", f"sent {line[:120]!r}\n got {got[:120]!r}"
        code, rest, err = peer.close()
        # Requests still unanswered when cat exits may be answered with an error by the
        # guard; nothing else may appear.
        for extra in rest.splitlines():
            msg = json.loads(extra)
            assert "error" in msg and msg.get("id") in ("str-id-\"quoted\"", 9), extra[:300]
    finally:
        peer.kill()


def _raw_everything_session(guard: harness.Guard | None) -> list[bytes]:
    server = harness.everything_server()
    peer = RawPeer(harness.command_line(server, guard), env=harness.process_env(server))
    out: list[bytes] = []
    try:
        peer.send(initialize_line(1).replace(b'":', b'" :  '))
        line, before = peer.recv_response(1)
        out += before + [line]
        peer.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        requests = [
            (2, b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'),
            (3, '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"\\u00e9t\u00e9 \U0001F600"}}}'.encode()),
            ("four", b'{"jsonrpc":"2.0","id":"four","method":"resources/read","params":{"uri":"demo://resource/static/document/architecture.md"}}'),
            (5, b'{"jsonrpc":"2.0","id":5,"method":"prompts/get","params":{"name":"args-prompt","arguments":{"city":"Oslo"}}}'),
            (6, b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"no-such-tool","arguments":{}}}'),
            (7, b'{"jsonrpc":"2.0","id":7,"method":"no/such/method"}'),
        ]
        for rid, req in requests:
            peer.send(req)
            line, before = peer.recv_response(rid)
            out += before + [line]
        peer.close()
    finally:
        peer.kill()
    return out


def test_wrapped_stdout_is_byte_identical_to_direct(make_guard):
    direct = _raw_everything_session(None)
    wrapped = _raw_everything_session(make_guard())
    assert len(direct) == len(wrapped)
    for d, w in zip(direct, wrapped):
        if json.loads(d).get("id") == 6:
            # A tool the server never listed: refused by the guard (there is no pinned
            # definition to check it against); an error to the client either way.
            assert json.loads(d)["result"]["isError"] is True, d
            assert json.loads(w)["error"]["data"]["mcp_guard"]["rule"] == "unlisted-tool", w
            continue
        assert d == w, f"direct : {d[:300]!r}\nwrapped: {w[:300]!r}"


def test_server_stderr_passes_through_and_stdout_carries_only_mcp(tmp_path, make_guard):
    root = harness.fresh_dir(tmp_path / "fsroot")
    server = harness.filesystem_server(root)
    peer = RawPeer(make_guard().argv(server), env=harness.process_env(server))
    try:
        peer.send(initialize_line(1))
        peer.recv_response(1)
        peer.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        peer.send(b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
        peer.recv_response(2)
        code, rest, err = peer.close()
    finally:
        peer.kill()
    assert b"Secure MCP Filesystem Server running on stdio" in err, err[-2000:]
    for line in rest.splitlines():
        msg = json.loads(line)  # every stdout line is JSON-RPC
        assert msg.get("jsonrpc") == "2.0", line


def test_wrapper_and_server_exit_when_client_closes_stdin(make_guard):
    server = harness.everything_server()
    peer = RawPeer(make_guard().argv(server), env=harness.process_env(server))
    try:
        peer.send(initialize_line(1))
        peer.recv_response(1)
        kids = _children(peer.proc.pid)
        assert kids, "the wrapper has no child process"
        started = time.monotonic()
        code, _, err = peer.close(timeout=10)
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 5
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(k) for k in kids), f"server process(es) {kids} outlived the wrapper"
        assert code == 0, (code, err[-2000:])
    finally:
        peer.kill()


DENY_ECHO = """\
default = "allow"

[[rule]]
id = "no-echo"
tool = "echo"
action = "deny"
message = "echo is off"
"""


@pytest.mark.parametrize("rid", [42, "abc-1", 0, -5, "x\\u00e9"], ids=["int", "string", "zero", "negative", "escaped-string"])
def test_denied_request_error_carries_the_request_id_exactly(make_guard, rid):
    server = harness.everything_server()
    peer = RawPeer(make_guard(DENY_ECHO).argv(server), env=harness.process_env(server))
    try:
        peer.send(initialize_line(1))
        peer.recv_response(1)
        peer.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        id_text = json.dumps(rid) if isinstance(rid, int) else f'"{rid}"'
        peer.send(
            f'{{"jsonrpc":"2.0","id":{id_text},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hi"}}}}}}'.encode()
        )
        expected_id = json.loads(id_text)
        line, _ = peer.recv_response(expected_id)
        msg = json.loads(line)
        assert msg["jsonrpc"] == "2.0"
        assert type(msg["id"]) is type(expected_id) and msg["id"] == expected_id, msg
        assert "result" not in msg, msg
        assert msg["error"]["code"] == DENY_CODE, msg
        assert "no-echo" in msg["error"]["message"], msg
        # the next allowed request is answered by the server
        peer.send(b'{"jsonrpc":"2.0","id":99,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":1,"b":2}}}')
        line, _ = peer.recv_response(99)
        assert "result" in json.loads(line)
        peer.close()
    finally:
        peer.kill()
