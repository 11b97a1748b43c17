"""Policy enforcement by `mcp-guard wrap` against the real server-filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import MCPError

import harness
from harness import ALLOW, DENY, DENY_CODE, AuditField, AuditKind, field_of, open_session, read_audit, run, select
from scenarios import text_of

NO_WRITES = """\
default = "allow"

[[rule]]
id = "no-fs-writes"
server = "filesystem"
tool = "write_file"
method = "tools/call"
action = "deny"
message = "writes are not allowed"
"""


def _fs_root(tmp_path: Path) -> Path:
    root = harness.fresh_dir(tmp_path / "fsroot")
    (root / "existing.txt").write_text("readable content\n")
    return root


def _same_id(recorded, sent) -> bool:
    """request_id in the audit may be the JSON value, or its text."""
    return recorded == sent or str(recorded) == str(sent) or recorded == f'"{sent}"'


def test_denied_write_file_gets_jsonrpc_error_and_never_reaches_server(tmp_path, make_guard):
    root = _fs_root(tmp_path)
    target = root / "forbidden.txt"
    guard = make_guard(NO_WRITES)
    server = harness.filesystem_server(root)

    async def go():
        async with open_session(server, guard) as peer:
            s = peer.session
            with pytest.raises(MCPError) as excinfo:
                await s.call_tool("write_file", {"path": str(target), "content": "must not be written"})
            err = excinfo.value
            assert err.code == DENY_CODE, err.error
            assert "no-fs-writes" in err.message, err.error
            # The session goes on: an allowed call right after works.
            r = await s.call_tool("read_text_file", {"path": str(root / "existing.txt")})
            assert not r.is_error and text_of(r) == "readable content\n"
            # ... and so does a listing, and a second denied attempt is denied again.
            r = await s.call_tool("list_directory", {"path": str(root)})
            assert "forbidden.txt" not in text_of(r)
            with pytest.raises(MCPError) as again:
                await s.call_tool("write_file", {"path": str(target), "content": "second try"})
            assert again.value.code == DENY_CODE

    run(go)
    assert not target.exists(), "the denied write reached the server"


def test_denied_write_file_is_audited_as_deny_and_read_as_allow(tmp_path, make_guard):
    root = _fs_root(tmp_path)
    guard = make_guard(NO_WRITES)
    server = harness.filesystem_server(root)

    async def go():
        async with open_session(server, guard) as peer:
            with pytest.raises(MCPError):
                await peer.session.call_tool("write_file", {"path": str(root / "x.txt"), "content": "x"})
            await peer.session.call_tool("read_text_file", {"path": str(root / "existing.txt")})

    run(go)
    records = read_audit(guard.audit, until_kind=AuditKind.SESSION_END)
    denies = select(records, kind=AuditKind.REQUEST, decision=DENY)
    assert len(denies) == 1, harness.describe(records)
    deny = denies[0]
    assert field_of(deny, AuditField.TOOL) == "write_file", deny
    assert field_of(deny, AuditField.METHOD) == "tools/call", deny
    assert field_of(deny, AuditField.RULE) == "no-fs-writes", deny
    assert field_of(deny, AuditField.SERVER_NAME) == "filesystem", deny
    allows = select(records, kind=AuditKind.REQUEST, decision=ALLOW, tool="read_text_file")
    assert len(allows) == 1, harness.describe(records)
    assert field_of(allows[0], AuditField.RULE) != "no-fs-writes", allows[0]
    # a denied request has no server response; the allowed one does
    for r in select(records, kind=AuditKind.RESPONSE):
        assert not _same_id(field_of(r, AuditField.REQUEST_ID), field_of(deny, AuditField.REQUEST_ID)) or (
            field_of(r, AuditField.DECISION) == DENY
        ), f"a response record claims the server answered the denied request: {r}"


GLOB_POLICY = """\
default = "allow"

[[rule]]
id = "no-mkdir-on-files"
server = "file*"
tool = "{create_*,move_file}"
action = "deny"
message = "no structural changes"
"""


@pytest.mark.parametrize(
    "name, denied",
    [("filesystem", True), ("files-2", True), ("other", False)],
    ids=["server-glob-matches", "server-glob-matches-prefix", "server-glob-does-not-match"],
)
def test_policy_globs_select_server_name_and_tool_name(tmp_path, make_guard, name, denied):
    root = _fs_root(tmp_path)
    guard = make_guard(GLOB_POLICY, name=name)
    server = harness.filesystem_server(root)

    async def go():
        async with open_session(server, guard) as peer:
            s = peer.session
            if denied:
                with pytest.raises(MCPError) as excinfo:
                    await s.call_tool("create_directory", {"path": str(root / "newdir")})
                assert excinfo.value.code == DENY_CODE and "no-mkdir-on-files" in excinfo.value.message
            else:
                r = await s.call_tool("create_directory", {"path": str(root / "newdir")})
                assert not r.is_error
            # a tool outside the glob is never denied
            r = await s.call_tool("list_directory", {"path": str(root)})
            assert not r.is_error

    run(go)
    assert (root / "newdir").exists() is (not denied)


READ_ONLY = """\
default = "deny"

[[rule]]
id = "fs-read"
server = "filesystem"
tool = ["read_text_file", "list_directory", "list_allowed_directories"]
action = "allow"

[[rule]]
id = "fs-write-scratch"
server = "filesystem"
tool = "write_file"
action = "allow"
[[rule.args]]
pointer = "/path"
prefix = "/nonexistent/scratch/"

[[rule]]
id = "no-moves"
server = "filesystem"
tool = "move_file"
action = "deny"
"""


def test_tools_the_principal_can_never_call_are_hidden_from_tools_list(tmp_path, make_guard):
    root = _fs_root(tmp_path)
    server = harness.filesystem_server(root)
    guard = make_guard(READ_ONLY)

    async def names(g):
        async with open_session(server, g) as peer:
            listed = await peer.session.list_tools()
            names = {t.name for t in listed.tools}
            if g is not None:
                # A hidden tool is still refused if the model names it anyway.
                with pytest.raises(MCPError) as excinfo:
                    await peer.session.call_tool("edit_file", {"path": str(root / "existing.txt"), "edits": []})
                assert excinfo.value.code == DENY_CODE
            return names

    direct = harness.run(lambda: names(None))
    wrapped = harness.run(lambda: names(guard))
    # Allowed outright, or allowed for some arguments: listed.
    assert {"read_text_file", "list_directory", "list_allowed_directories", "write_file"} <= wrapped
    # Denied by the default with no allow rule, or denied unconditionally: hidden.
    hidden = direct - wrapped
    assert {"edit_file", "create_directory", "move_file", "search_files"} <= hidden, (direct, wrapped)
    assert wrapped <= direct
    records = read_audit(guard.audit, until_kind=AuditKind.SESSION_END)
    listing = [r for r in records if r["kind"] == AuditKind.RESPONSE and r.get("method") == "tools/list"]
    assert listing and set(listing[0]["detail"]["hidden_tools"]) == hidden, listing


AWS_KEY = "AKIAPLANTEDKEY123456"
GITHUB_TOKEN = "ghp_plantedPlantedPlanted0123456789ab"


def test_secrets_in_tool_results_are_redacted_before_the_host_sees_them(make_guard):
    server = harness.everything_server()
    guard = make_guard(None, name="everything")
    message = f"creds {AWS_KEY} and {GITHUB_TOKEN} end"

    async def echo(g):
        async with open_session(server, g) as peer:
            r = await peer.session.call_tool("echo", {"message": message})
            return text_of(r)

    direct = harness.run(lambda: echo(None))
    wrapped = harness.run(lambda: echo(guard))
    assert AWS_KEY in direct and GITHUB_TOKEN in direct, direct
    assert AWS_KEY not in wrapped and GITHUB_TOKEN not in wrapped, wrapped
    assert wrapped == direct.replace(AWS_KEY, "[REDACTED]").replace(GITHUB_TOKEN, "[REDACTED]")
    records = read_audit(guard.audit, until_kind=AuditKind.SESSION_END)
    answered = [r for r in records if r["kind"] == AuditKind.RESPONSE and r.get("tool") == "echo"]
    assert answered and answered[0]["outcome"]["redactions"] == 2, answered
    text = guard.audit.read_text()
    assert AWS_KEY not in text and GITHUB_TOKEN not in text


SMALL_RESPONSES = """\
default = "allow"

[responses]
max_bytes = 200
"""


def test_a_response_over_the_policy_limit_becomes_an_error(make_guard):
    server = harness.everything_server()
    guard = make_guard(SMALL_RESPONSES, name="everything")

    async def go():
        async with open_session(server, guard) as peer:
            with pytest.raises(MCPError) as excinfo:
                await peer.session.call_tool("echo", {"message": "x" * 500})
            assert excinfo.value.code == -32086, excinfo.value.error
            # Small answers still pass.
            r = await peer.session.call_tool("echo", {"message": "ok"})
            assert "ok" in text_of(r)

    harness.run(go)


POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_shipped_readonly_filesystem_policy_reads_documents_and_refuses_the_rest(tmp_path, make_guard):
    """policies/readonly-filesystem.toml against the real filesystem server: reads under
    ~/Documents pass, writes and everything outside are refused, write tools are not offered."""
    docs = Path.home() / "Documents" / f"mcp-guard-e2e-{tmp_path.name}"
    docs.mkdir(parents=True, exist_ok=True)
    try:
        (docs / "notes.txt").write_text("meeting at noon\n")
        guard = make_guard((POLICIES / "readonly-filesystem.toml").read_text())
        server = harness.filesystem_server(docs)

        async def go():
            async with open_session(server, guard) as peer:
                s = peer.session
                names = {t.name for t in (await s.list_tools()).tools}
                assert "read_text_file" in names and "write_file" not in names, names
                r = await s.call_tool("read_text_file", {"path": str(docs / "notes.txt")})
                assert text_of(r) == "meeting at noon\n"
                for tool, args in [
                    ("write_file", {"path": str(docs / "new.txt"), "content": "x"}),
                    ("read_text_file", {"path": str(docs / ".." / ".." / ".ssh" / "id_rsa")}),
                ]:
                    with pytest.raises(MCPError) as excinfo:
                        await s.call_tool(tool, args)
                    assert excinfo.value.code == DENY_CODE, (tool, excinfo.value.error)

        run(go)
        assert not (docs / "new.txt").exists()
    finally:
        for f in docs.iterdir():
            f.unlink()
        docs.rmdir()


@pytest.mark.parametrize(
    "policy, rule",
    [("production-locked.toml", "runner-only"), ("developer-workstation.toml", "no-root")],
)
def test_shipped_host_policies_refuse_sessions_from_the_wrong_principal(tmp_path, make_guard, policy, rule):
    """The production policy serves only its agent runner; the workstation policy refuses
    root. This test's process is neither the runner nor (in CI) a normal user."""
    import os

    if policy == "developer-workstation.toml" and os.geteuid() != 0:
        pytest.skip("the workstation policy's refusal is for root; this runs as a normal user")
    root = _fs_root(tmp_path)
    guard = make_guard((POLICIES / policy).read_text())
    server = harness.filesystem_server(root)

    def mcp_errors(e: BaseException):
        if isinstance(e, MCPError):
            yield e
        for inner in getattr(e, "exceptions", ()):
            yield from mcp_errors(inner)

    async def go():
        try:
            async with open_session(server, guard) as peer:
                await peer.session.list_tools()
        except BaseException as e:  # the SDK raises from inside a task group
            errors = list(mcp_errors(e))
            assert errors, repr(e)
            assert errors[0].code == DENY_CODE and rule in errors[0].message, errors[0].error
        else:
            pytest.fail("the session started")

    run(go)
    records = read_audit(guard.audit, until_kind=AuditKind.SESSION_END)
    denied = select(records, kind=AuditKind.REQUEST, decision=DENY)
    assert denied and denied[0]["rule"] == rule and denied[0]["method"] == "initialize", denied


ALLOW_WRITES = """\
default = "allow"

[[rule]]
id = "fs-writes"
server = "filesystem"
tool = "write_file"
action = "allow"
"""

DENY_WRITES = """\
default = "allow"

[[rule]]
id = "fs-writes"
server = "filesystem"
tool = "write_file"
action = "allow"

[[rule]]
id = "no-writes"
server = "filesystem"
tool = "write_file"
action = "deny"
message = "writes are not allowed"
"""


def test_policy_test_replays_a_recorded_session_and_names_the_changed_decision(tmp_path, make_guard, guard_bin):
    """A session recorded under a policy allowing writes, replayed by `mcp-guard policy test`:
    a policy denying `write_file` changes exactly that decision (exit 1, naming the record
    and the new rule); the policy the session ran under changes nothing (exit 0)."""
    import json
    import subprocess

    root = _fs_root(tmp_path)
    guard = make_guard(ALLOW_WRITES)
    server = harness.filesystem_server(root)

    async def go():
        async with open_session(server, guard) as peer:
            s = peer.session
            await s.call_tool("write_file", {"path": str(root / "new.txt"), "content": "written"})
            await s.call_tool("read_text_file", {"path": str(root / "existing.txt")})

    run(go)
    assert (root / "new.txt").read_text() == "written"
    records = read_audit(guard.audit, until_kind=AuditKind.SESSION_END)
    writes = select(records, kind=AuditKind.REQUEST, tool="write_file")
    assert len(writes) == 1 and writes[0]["decision"] == ALLOW and writes[0]["rule"] == "fs-writes", writes
    write_id = writes[0]["id"]

    deny = harness.write_policy(tmp_path / "deny-writes.toml", DENY_WRITES)
    out = subprocess.run(
        [str(guard_bin), "policy", "test", "--policy", str(deny), str(guard.audit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1, (out.stdout, out.stderr)
    changed = [line for line in out.stdout.splitlines() if write_id in line]
    assert len(changed) == 1, out.stdout
    assert "allow (fs-writes) -> deny (no-writes)" in changed[0] and "write_file" in changed[0], out.stdout
    assert "1 changed" in out.stdout, out.stdout

    as_json = subprocess.run(
        [str(guard_bin), "policy", "test", "--json", "--policy", str(deny), str(guard.audit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    assert [c["id"] for c in report["changed"]] == [write_id], report
    assert report["changed"][0]["new"] == {"decision": DENY, "rule": "no-writes"}, report
    assert report["undecidable"] == [], report

    same = subprocess.run(
        [str(guard_bin), "policy", "test", "--policy", str(guard.policy), str(guard.audit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert same.returncode == 0, (same.stdout, same.stderr)
    assert "0 changed" in same.stdout and "0 undecidable" in same.stdout, same.stdout
