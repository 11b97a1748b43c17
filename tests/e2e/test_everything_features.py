"""server-everything protocol features, each run direct and wrapped (`[direct]` / `[wrapped]`):
progress, sampling, elicitation, roots, large payloads, concurrency, cancellation."""

from __future__ import annotations

import base64
import gzip
import os
import time

import anyio
import mcp_types as types

import harness
from harness import AuditKind, open_session, read_audit, run, select
from scenarios import ELICITED, ROOTS, SAMPLING_REPLY, ClientCallbacks, text_of


def _server() -> harness.Server:
    return harness.everything_server()


def test_everything_progress_notifications_reach_client(guard_for_mode):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    async def go():
        async with open_session(_server(), guard_for_mode) as peer:
            r = await peer.session.call_tool(
                "trigger-long-running-operation", {"duration": 2, "steps": 4}, progress_callback=on_progress
            )
            assert "Long running operation completed" in text_of(r)

    run(go)
    assert [(p, t) for p, t, _ in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_everything_sampling_request_roundtrips_through_client(guard_for_mode):
    cb = ClientCallbacks()

    async def go():
        async with open_session(_server(), guard_for_mode, **cb.kwargs()) as peer:
            r = await peer.session.call_tool("trigger-sampling-request", {"prompt": "tell me a joke", "maxTokens": 33})
            assert SAMPLING_REPLY in text_of(r)

    run(go)
    assert len(cb.sampling) == 1
    params = cb.sampling[0]
    assert params.max_tokens == 33
    assert "tell me a joke" in params.messages[0].content.text


def test_everything_elicitation_request_roundtrips_through_client(guard_for_mode):
    cb = ClientCallbacks()

    async def go():
        async with open_session(_server(), guard_for_mode, **cb.kwargs()) as peer:
            r = await peer.session.call_tool("trigger-elicitation-request", {})
            text = text_of(r)
            assert ELICITED["name"] in text and ELICITED["email"] in text

    run(go)
    assert len(cb.elicitation) == 1
    assert "name" in cb.elicitation[0].requested_schema["properties"]


def test_everything_roots_list_request_roundtrips_through_client(guard_for_mode):
    cb = ClientCallbacks()

    async def go():
        async with open_session(_server(), guard_for_mode, **cb.kwargs()) as peer:
            r = await peer.session.call_tool("get-roots-list", {})
            for uri, name in ROOTS:
                assert uri in text_of(r) and name in text_of(r)

    run(go)
    assert cb.roots >= 1


def test_everything_large_blob_passes_intact_both_ways(guard_for_mode):
    """A 3 MiB random payload goes up as a data: URI (~4 MiB request line) and comes
    back gzipped as an embedded base64 blob (~4 MiB response line)."""
    payload = os.urandom(3 * 1024 * 1024)
    data_uri = "data:application/octet-stream;base64," + base64.b64encode(payload).decode()

    async def go():
        async with open_session(_server(), guard_for_mode) as peer:
            r = await peer.session.call_tool(
                "gzip-file-as-resource", {"name": "big.bin.gz", "data": data_uri, "outputType": "resource"}
            )
            blobs = [c.resource for c in r.content if isinstance(c, types.EmbeddedResource)]
            assert len(blobs) == 1, r
            assert gzip.decompress(base64.b64decode(blobs[0].blob)) == payload
            # and the session is still fine afterwards
            r = await peer.session.call_tool("echo", {"message": "after the big one"})
            assert "after the big one" in text_of(r)

    run(go)


def test_everything_concurrent_requests_get_their_own_responses(guard_for_mode):
    n = 60
    results: dict[int, str] = {}
    progress: dict[int, list[float]] = {0: [], 1: []}

    async def go():
        async with open_session(_server(), guard_for_mode) as peer:
            s = peer.session

            async def echo(i: int) -> None:
                r = await s.call_tool("echo", {"message": f"message number {i} ✓"})
                results[i] = text_of(r)

            async def add(i: int) -> None:
                r = await s.call_tool("get-sum", {"a": i, "b": 1000})
                results[i] = text_of(r)

            async def slow(k: int) -> None:
                async def on_progress(p, total, message):
                    progress[k].append(p)

                await s.call_tool(
                    "trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow, 0)
                for i in range(n):
                    tg.start_soon(echo if i % 2 == 0 else add, i)
                tg.start_soon(slow, 1)

    run(go)
    assert len(results) == n
    for i in range(n):
        expected = f"message number {i} ✓" if i % 2 == 0 else str(i + 1000)
        assert expected in results[i], (i, results[i])
    assert progress == {0: [1, 2, 3], 1: [1, 2, 3]}


def test_everything_cancelled_request_leaves_session_usable(guard_for_mode):
    """Cancel a long-running call after its first progress notification: the SDK
    sends notifications/cancelled; the call is abandoned quickly and the session
    keeps working (also once the server would have finished the cancelled work)."""
    first_progress = anyio.Event()

    async def on_progress(p, total, message):
        first_progress.set()

    async def go():
        async with open_session(_server(), guard_for_mode) as peer:
            s = peer.session
            started = time.monotonic()
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:

                    async def long_call():
                        await s.call_tool(
                            "trigger-long-running-operation",
                            {"duration": 3, "steps": 6},
                            progress_callback=on_progress,
                        )
                        raise AssertionError("the cancelled call completed")

                    tg.start_soon(long_call)
                    with anyio.fail_after(10):
                        await first_progress.wait()
                    scope.cancel()
            assert scope.cancelled_caught
            assert time.monotonic() - started < 3, "cancellation took as long as the operation"
            r = await s.call_tool("echo", {"message": "still alive"})
            assert "still alive" in text_of(r)
            await anyio.sleep(3.5)  # past the cancelled operation's end
            r = await s.call_tool("echo", {"message": "still alive later"})
            assert "still alive later" in text_of(r)
            await s.send_ping()

    run(go)
    if guard_for_mode is not None:
        records = read_audit(guard_for_mode.audit, until_kind=AuditKind.SESSION_END)
        assert select(records, kind=AuditKind.REQUEST, tool="trigger-long-running-operation"), harness.describe(
            records
        )
