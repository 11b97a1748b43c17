"""`action = "ask"` end to end: the official SDK client (with and without an elicitation
callback) and the real filesystem server behind `mcp-guard wrap`. The person at the host
is the client's callback: it answers the guard's `elicitation/create` request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError, types

import harness
from harness import DENY_CODE, open_session, read_audit, run

ASK_WRITES = """\
default = "allow"

[[rule]]
id = "ask-writes"
server = "filesystem"
tool = "write_file"
action = "ask"
message = "writing files needs a person"
timeout = "{timeout}"
"""


def policy(timeout: str = "30s") -> str:
    return ASK_WRITES.format(timeout=timeout)


class Person:
    """The client's elicitation callback: answers `action`, after `delay` seconds."""

    def __init__(self, action: str, delay: float = 0.0) -> None:
        self.action = action
        self.delay = delay
        self.asked: list[Any] = []

    async def __call__(self, context: Any, params: Any) -> types.ElicitResult:
        self.asked.append(params)
        await anyio.sleep(self.delay)
        return types.ElicitResult(action=self.action, content={} if self.action == "accept" else None)


def write(root: Path, person: Person | None, guard: harness.Guard, name: str = "new.txt") -> MCPError | None:
    """One write_file call through the guard; the error it got, if any."""
    server = harness.filesystem_server(root)
    kwargs = {"elicitation_callback": person} if person is not None else {}

    async def go() -> MCPError | None:
        async with open_session(server, guard, **kwargs) as peer:
            try:
                r = await peer.session.call_tool("write_file", {"path": str(root / name), "content": "approved"})
                assert not r.is_error, r
            except MCPError as e:
                return e
            # The session goes on after the outcome.
            r = await peer.session.call_tool("list_directory", {"path": str(root)})
            assert not r.is_error
            return None

    return run(go)


def records(guard: harness.Guard) -> list[dict[str, Any]]:
    return read_audit(guard.audit, until_kind="session_end")


def outcome(recs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The write's request record and its approval record, checked to be linked."""
    req = [r for r in recs if r["kind"] == "request" and r.get("tool") == "write_file"]
    assert len(req) == 1, harness.describe(recs)
    assert req[0]["decision"] == "ask" and req[0]["rule"] == "ask-writes"
    appr = [r for r in recs if r["kind"] == "approval"]
    assert len(appr) == 1, harness.describe(recs)
    assert appr[0]["links"] == req[0]["id"]
    assert appr[0]["args_sha256"] == req[0]["args_sha256"]
    assert appr[0]["seq"] > req[0]["seq"]
    # Who answered: the host at the other end of this session, as on every record.
    assert appr[0]["agent_host"] == req[0]["agent_host"] and appr[0]["principal"] == req[0]["principal"]
    return req[0], appr[0]


def test_accepted_call_writes_the_file(tmp_path: Path, make_guard) -> None:
    root = harness.fresh_dir(tmp_path / "root")
    guard = make_guard(policy())
    person = Person("accept")
    assert write(root, person, guard) is None
    assert (root / "new.txt").read_text() == "approved"
    assert len(person.asked) == 1
    text = person.asked[0].message
    assert "write_file" in text and "filesystem" in text and "ask-writes" in text, text
    assert str(root / "new.txt") in text and "writing files needs a person" in text, text
    _, appr = outcome(records(guard))
    assert appr["decision"] == "allow" and appr["detail"]["outcome"] == "approved"
    assert appr["detail"]["waited_ms"] >= 0


def test_declined_call_is_refused_and_no_file_is_written(tmp_path: Path, make_guard) -> None:
    root = harness.fresh_dir(tmp_path / "root")
    guard = make_guard(policy())
    err = write(root, Person("decline"), guard)
    assert err is not None and err.code == DENY_CODE, err
    assert "ask-writes" in err.message and "declined" in err.message, err.message
    assert not (root / "new.txt").exists()
    _, appr = outcome(records(guard))
    assert appr["decision"] == "deny" and appr["detail"]["outcome"] == "declined"


def test_cancelled_approval_is_refused(tmp_path: Path, make_guard) -> None:
    root = harness.fresh_dir(tmp_path / "root")
    guard = make_guard(policy())
    err = write(root, Person("cancel"), guard)
    assert err is not None and err.code == DENY_CODE
    assert not (root / "new.txt").exists()
    assert outcome(records(guard))[1]["detail"]["outcome"] == "cancelled"


def test_client_without_elicitation_is_refused_saying_so(tmp_path: Path, make_guard) -> None:
    root = harness.fresh_dir(tmp_path / "root")
    guard = make_guard(policy())
    err = write(root, None, guard)
    assert err is not None and err.code == DENY_CODE, err
    assert "elicitation" in err.message, err.message
    assert not (root / "new.txt").exists()
    assert outcome(records(guard))[1]["detail"]["outcome"] == "unsupported"


def test_no_answer_in_time_is_refused(tmp_path: Path, make_guard) -> None:
    root = harness.fresh_dir(tmp_path / "root")
    guard = make_guard(policy("1s"))
    err = write(root, Person("accept", delay=4.0), guard)
    assert err is not None and err.code == DENY_CODE, err
    assert "in time" in err.message, err.message
    assert not (root / "new.txt").exists(), "a late accept must not run the call"
    _, appr = outcome(records(guard))
    assert appr["detail"]["outcome"] == "timeout"
    # Refused by the clock, not early (an upper bound would only measure the machine).
    assert appr["detail"]["waited_ms"] >= 900, appr


@pytest.mark.parametrize("action", ["accept", "decline"])
def test_remember_session_asks_once_per_call_shape(tmp_path: Path, make_guard, action: str) -> None:
    root = harness.fresh_dir(tmp_path / "root")
    guard = make_guard(policy() + 'remember = "session"\n')
    person = Person(action)
    server = harness.filesystem_server(root)
    args = {"path": str(root / "same.txt"), "content": "x"}

    async def go() -> list[bool]:
        ok = []
        async with open_session(server, guard, elicitation_callback=person) as peer:
            for a in (args, args, {**args, "content": "other"}):
                try:
                    r = await peer.session.call_tool("write_file", a)
                    ok.append(not r.is_error)
                except MCPError as e:
                    assert e.code == DENY_CODE
                    ok.append(False)
        return ok

    ok = run(go)
    if action == "accept":
        # The same call passes again unasked; other arguments are asked about.
        assert ok == [True, True, True] and len(person.asked) == 2
    else:
        # Only an approval is remembered: a declined call is asked about again.
        assert ok == [False, False, False] and len(person.asked) == 3
