"""Attacks on the shim with the official servers: what a server acts on is what was judged.

Each test attacks the guard the way an adversary would (raw bytes on the shim's stdin, or a
model choosing ordinary tool arguments) and checks the side effect on the real server, not
only the answer.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harness import RawPeer, initialize_line
import harness

DENY_BRANCHES = """
default = "allow"
[[rule]]
id = "no-branches"
server = "git"
tool = "git_create_branch"
action = "deny"
"""


def _open(peer: RawPeer) -> None:
    peer.send(initialize_line(1))
    peer.recv_response(1)
    peer.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')


def _branches(repo: Path) -> list[str]:
    out = subprocess.run(["git", "branch", "--format=%(refname:short)"], cwd=repo, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_a_request_nested_behind_bare_carriage_returns_never_runs(git_repo_factory, make_guard):
    """One line to a JSON parser, three lines to the Python SDK's universal-newline reader:
    the nested `git_create_branch` must not run, and the sender is told why."""
    repo = git_repo_factory()
    server = harness.git_server(repo)
    inner = {
        "jsonrpc": "2.0",
        "id": 99,
        "method": "tools/call",
        "params": {"name": "git_create_branch", "arguments": {"repo_path": str(repo), "branch_name": "pwned"}},
    }
    attack = b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":\r' + json.dumps(inner).encode() + b"\r}}"
    # The same request sent plainly is denied: the policy is in force.
    plain = json.dumps(inner | {"id": 6}).encode()
    peer = RawPeer(make_guard(DENY_BRANCHES).argv(server), env=harness.process_env(server))
    try:
        _open(peer)
        peer.send(attack)
        # A ping after it: once answered, the server has read everything sent before.
        peer.send(b'{"jsonrpc":"2.0","id":7,"method":"ping"}')
        _, before = peer.recv_response(7)
        assert "pwned" not in _branches(repo), "the nested request ran"
        answers = [json.loads(b) for b in before]
        assert [a["error"]["code"] for a in answers if a.get("id") == 5] == [-32700], answers
        assert "carriage return" in answers[0]["error"]["message"], answers
        assert not any(a.get("id") == 99 for a in answers), answers
        # The same request sent plainly is denied: the policy is in force.
        peer.send(plain)
        line, _ = peer.recv_response(6)
        assert json.loads(line)["error"]["code"] == harness.DENY_CODE
        peer.close()
    finally:
        peer.kill()
    assert "pwned" not in _branches(repo)
