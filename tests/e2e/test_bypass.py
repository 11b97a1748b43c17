"""Attacks on the shim with the official servers: what a server acts on is what was judged.

Each test attacks the guard the way an adversary would (raw bytes on the shim's stdin, or a
model choosing ordinary tool arguments) and checks the side effect on the real server, not
only the answer.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

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


# --------------------------------------------------------------------------
# Paths: the guard's reading against the real filesystem server's
# --------------------------------------------------------------------------

POLICIES = harness.ROOT / "policies"
SHIPPED = sorted(p.name for p in POLICIES.glob("*.toml"))
USER = "mcpg-attack"

#: Files of the fixture home, each holding `MARK:<its path>` so a read shows which one the
#: server reached. Own files are mcp-guard's (created by the shim, or its policy location).
FILES = [
    ".ssh/authorized_keys",
    ".ssh/id_ed25519",
    ".aws/credentials",
    "src/app/main.rs",
    "src/app/.env",
    "src/app/.git/config",
    "Documents/notes.md",
    "Documents/caf\u00e9/secret.txt",
]
DIRS = [".ssh", ".aws", "src/app", "Documents/caf\u00e9"]
OWN = [".config/mcp-guard/policy.toml", ".local/state/mcp-guard/audit.key", ".local/state/mcp-guard/audit.jsonl"]


def _require_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            raise AssertionError("the path attack tests need root (a user of their own) and CI runs as root")
        pytest.skip("needs root: runs the server as a user of its own")


def _user_home() -> Path:
    try:
        return Path(pwd.getpwnam(USER).pw_dir)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
        return Path(pwd.getpwnam(USER).pw_dir)


def _build_tree(home: Path) -> None:
    """The fixture, rebuilt whole (the shim's own state under .local/state is kept)."""
    for top in [".ssh", ".aws", "src", "Documents", ".config", "tmp-moved"]:
        p = home / top
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
    for f in FILES:
        p = home / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"MARK:{f}\n")
    (home / ".config/mcp-guard").mkdir(parents=True, exist_ok=True)
    (home / ".config/mcp-guard/policy.toml").write_text('default = "allow"\n')
    (home / "src/app/link").symlink_to(home / ".ssh")
    subprocess.run(["chown", "-hR", f"{USER}:{USER}", str(home)], check=True)


def _spellings(home: Path, rel: str) -> list[str]:
    """Ways a model may name `home/rel` to a server allowed `home` and started in src/app."""
    a = f"{home}/{rel}"
    out = [a, rel, f"~/{rel}", f"file://{a}", f"{home}//./{rel}", f"{home}/src/app/../../{rel}", f"../../{rel}", f"{a}/"]
    if rel == ".ssh" or rel.startswith(".ssh/"):
        tail = rel[len(".ssh"):]
        out += [f"{home}/src/app/link{tail}", f"link{tail}"]
    if "caf\u00e9" in rel:
        out += [s.replace("caf\u00e9", "cafe\u0301") for s in (a, rel)]
    return out


def _tools(home: Path, s: str, is_dir: bool) -> list[tuple[str, dict]]:
    if is_dir:
        return [
            ("list_directory", {"path": s}),
            ("list_directory_with_sizes", {"path": s}),
            ("directory_tree", {"path": s}),
            ("search_files", {"path": s, "pattern": "*"}),
            ("create_directory", {"path": f"{s}/new"}),
        ]
    return [
        ("read_text_file", {"path": s}),
        ("read_text_file", {"path": s, "head": 1}),
        ("read_file", {"path": s}),
        ("read_media_file", {"path": s}),
        ("get_file_info", {"path": s}),
        ("read_multiple_files", {"paths": [f"{home}/src/app/main.rs", s]}),
        ("edit_file", {"path": s, "edits": [{"oldText": "MARK", "newText": "PWN"}], "dryRun": True}),
        ("write_file", {"path": s, "content": "PWN"}),
        ("move_file", {"source": s, "destination": f"{home}/tmp-moved"}),
        ("move_file", {"source": f"{home}/src/app/main.rs", "destination": s}),
    ]


WRITES = {"write_file", "move_file", "create_directory"}


class _Session:
    """One raw MCP session with the filesystem server (allowed: the home; cwd: src/app), as
    the test user, directly or under `mcp-guard wrap --policy P`."""

    def __init__(self, home: Path, policy: Path | None = None):
        server = [str(harness.NODE_BIN / "mcp-server-filesystem"), str(home)]
        argv = server
        if policy is not None:
            argv = [str(harness.guard_bin()), "wrap", "--name", "filesystem", "--policy", str(policy), "--", *server]
        env = {"PATH": os.environ["PATH"], "HOME": str(home)}
        self.peer = RawPeer(["runuser", "-u", USER, "--", *argv], env=env, cwd=str(home / "src/app"))
        self.next = 10
        _open(self.peer)

    def call(self, tool: str, args: dict) -> dict:
        self.next += 1
        rid = self.next
        self.peer.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                                   "params": {"name": tool, "arguments": args}}).encode())
        line, _ = self.peer.recv_response(rid, timeout=30)
        return json.loads(line)

    def close(self) -> None:
        self.peer.close()
        self.peer.kill()


def _denied(answer: dict) -> bool:
    return answer.get("error", {}).get("code") == harness.DENY_CODE


def _reached(answer: dict) -> str | None:
    """Which fixture file or directory a direct answer shows the server reached."""
    text = json.dumps(answer.get("result", {}), ensure_ascii=False)
    if "MARK:" in text:
        return text.split("MARK:", 1)[1].split("\\n", 1)[0]
    if "authorized_keys" in text and "id_ed25519" in text:
        return ".ssh"
    if "secret.txt" in text:
        return "Documents/caf\u00e9"
    return None


def test_every_spelling_the_server_follows_is_judged_like_the_place_it_reaches():
    """For each shipped policy, each tool of the real filesystem server and each spelling of
    each place: if the policy denies the place named plainly, it denies every spelling the
    server itself resolves to that place; and mcp-guard's own files are refused always."""
    _require_root()
    home = _user_home()
    _build_tree(home)
    # What the server itself makes of each spelling (ground truth, unguarded).
    direct = _Session(home)
    reach: dict[str, str] = {}
    try:
        for rel in FILES:
            for s in _spellings(home, rel):
                got = _reached(direct.call("read_text_file", {"path": s}))
                if got is not None:
                    reach[s] = got
        for rel in DIRS:
            for s in _spellings(home, rel):
                got = _reached(direct.call("list_directory", {"path": s}))
                if got is not None:
                    reach[s] = got
    finally:
        direct.close()
    assert len(reach) >= 40, f"the server resolved few spellings: {reach}"
    assert reach.get(".ssh/authorized_keys") == ".ssh/authorized_keys", "the server resolves relative paths against its root"
    assert reach.get(f"{home}/src/app/link/id_ed25519") == ".ssh/id_ed25519"
    assert reach.get(f"{home}/Documents/cafe\u0301/secret.txt") == "Documents/caf\u00e9/secret.txt"

    misses: list[str] = []
    compared = denied_plain = 0
    for name in SHIPPED:
        # A fresh key and log for each policy: a run that lost its key to an attack does
        # not hide what the next policy lets through.
        shutil.rmtree(home / ".local/state/mcp-guard", ignore_errors=True)
        session = _Session(home, POLICIES / name)
        try:
            plain: dict[tuple[str, str, str], bool] = {}
            for rel in FILES + DIRS:
                is_dir = rel in DIRS
                for tool, args in _tools(home, f"{home}/{rel}", is_dir):
                    key = (tool, json.dumps(sorted(args)), rel)
                    plain[key] = _denied(session.call(tool, args))
                    if tool in WRITES:
                        _build_tree(home)
            for s, rel in reach.items():
                is_dir = rel in DIRS
                for (tool, args), (_, plain_args) in zip(_tools(home, s, is_dir), _tools(home, f"{home}/{rel}", is_dir)):
                    if not plain[(tool, json.dumps(sorted(plain_args)), rel)]:
                        continue
                    denied_plain += 1
                    compared += 1
                    answer = session.call(tool, args)
                    if not _denied(answer):
                        misses.append(f"{name}: {tool} {json.dumps(args, ensure_ascii=False)} reaches {rel} and was not denied")
                    if tool in WRITES:
                        _build_tree(home)
            for rel in OWN:
                for s in _spellings(home, rel):
                    for tool, args in _tools(home, s, False):
                        compared += 1
                        if not _denied(session.call(tool, args)):
                            misses.append(f"{name}: {tool} {json.dumps(args, ensure_ascii=False)} names mcp-guard's own {rel} and was not denied")
                        _build_tree(home)
        finally:
            session.close()
    assert denied_plain > 100, f"too few denied places to compare ({denied_plain})"
    assert not misses, f"{len(misses)} of {compared} attacks got through:\n" + "\n".join(misses[:60])


# --------------------------------------------------------------------------
# Redaction: what an honest server reads out of files
# --------------------------------------------------------------------------

def _secrets() -> list[dict]:
    return json.loads((harness.ROOT / "mcp-guard-user/tests/fixtures/secrets.json").read_text())


def test_secrets_read_by_the_real_filesystem_server_never_reach_the_host(tmp_path, make_guard):
    """The server reads files holding real-format secrets: as text, as base64
    (`read_media_file`), the head of a key file, and an `edit_file` dry-run diff. The host
    sees none of the secrets; without the guard it sees all of them."""
    root = harness.fresh_dir(tmp_path / "files")
    corpus = _secrets()
    for i, e in enumerate(corpus):
        (root / f"s{i}.txt").write_text(e["line"] + "\n")
    server = harness.filesystem_server(root)

    def session(guard) -> list[tuple[str, bytes]]:
        argv = guard.argv(server) if guard else server.argv
        peer = RawPeer(argv, env=harness.process_env(server))
        out = []
        try:
            _open(peer)
            rid = 100
            for i, e in enumerate(corpus):
                path = str(root / f"s{i}.txt")
                calls = [("read_text_file", {"path": path}), ("read_media_file", {"path": path}),
                         ("edit_file", {"path": path, "edits": [{"oldText": e["line"].splitlines()[0], "newText": "x"}], "dryRun": True})]
                if e["block"]:
                    calls.append(("read_text_file", {"path": path, "head": 4}))
                for tool, args in calls:
                    rid += 1
                    peer.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                                          "params": {"name": tool, "arguments": args}}).encode())
                    line, _ = peer.recv_response(rid, timeout=30)
                    out.append((f"{e['kind']} via {tool}{' head' if 'head' in args else ''}", line))
            peer.close()
        finally:
            peer.kill()
        return out

    def strings(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, dict):
            for x in v.values():
                yield from strings(x)

    def leaked(e: dict, line: bytes) -> bool:
        """In any string of the answer, or in what one decodes to (read_media_file's blob)."""
        for s in strings(json.loads(line)):
            if e["secret"] in s:
                return True
            try:
                if e["secret"] in base64.b64decode(s, validate=True).decode("utf-8", "replace"):
                    return True
            except ValueError:
                pass
        return False

    by_kind = {e["kind"]: e for e in corpus}
    direct = session(None)
    shown = [what for what, line in direct if leaked(by_kind[what.split(" via ")[0]], line)]
    assert len(shown) >= len(corpus) * 3, f"the server did not show the secrets ({len(shown)})"
    guarded = session(make_guard())
    leaks = [what for what, line in guarded if leaked(by_kind[what.split(" via ")[0]], line)]
    assert not leaks, f"{len(leaks)} of {len(guarded)} answers leak:\n" + "\n".join(leaks)
