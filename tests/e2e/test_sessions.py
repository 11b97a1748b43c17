"""A full session with each real server through the official Python SDK client,
direct and under `mcp-guard wrap`: the results must be the same.

Normalised before comparing (harness.VOLATILE_TEXT), and nothing else:
  * server-everything: wall-clock time in dynamic resources ("created at 3:54:55 PM"),
    also inside base64 text blobs;
  * mcp-server-time: the current instant returned by get_current_time;
  * server-filesystem: created/modified/accessed times in get_file_info.
State is rebuilt identically at the same path before each run (filesystem tree,
memory file, git repository with fixed author/committer dates), so paths and
commit hashes need no normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import harness
import scenarios
from harness import Guard, assert_audit_covers_session, assert_same_transcript, run


def _direct_and_wrapped(session: Callable[[Guard | None], object], guard: Guard, server_name: str) -> None:
    direct = run(lambda: session(None))
    wrapped = run(lambda: session(guard))
    assert_same_transcript(direct, wrapped)
    assert_audit_covers_session(guard.audit, server_name, wrapped.tool_calls())


# ---- server-everything ----------------------------------------------------


def test_everything_session_works_direct():
    t = run(lambda: scenarios.everything_session(harness.everything_server(), None))
    assert len(t.tool_calls()) >= 10


def test_everything_session_identical_direct_and_wrapped(make_guard):
    server = harness.everything_server()
    _direct_and_wrapped(lambda g: scenarios.everything_session(server, g), make_guard(), server.name)


# ---- server-filesystem ----------------------------------------------------


def _fs(tmp_path: Path) -> tuple[Path, Callable[[], harness.Server]]:
    root = tmp_path / "fsroot"

    def fresh() -> harness.Server:
        harness.fresh_dir(root)
        scenarios.populate_fs(root)
        return harness.filesystem_server(root)

    return root, fresh


def test_filesystem_session_works_direct(tmp_path):
    root, fresh = _fs(tmp_path)
    run(lambda: scenarios.filesystem_session(fresh(), None, root))


def test_filesystem_session_identical_direct_and_wrapped(tmp_path, make_guard):
    root, fresh = _fs(tmp_path)
    _direct_and_wrapped(lambda g: scenarios.filesystem_session(fresh(), g, root), make_guard(), "filesystem")


# ---- server-memory --------------------------------------------------------


def _memory(tmp_path: Path) -> Callable[[], harness.Server]:
    memory_file = tmp_path / "memory.jsonl"

    def fresh() -> harness.Server:
        memory_file.unlink(missing_ok=True)
        return harness.memory_server(memory_file)

    return fresh


def test_memory_session_works_direct(tmp_path):
    fresh = _memory(tmp_path)
    run(lambda: scenarios.memory_session(fresh(), None))
    assert (tmp_path / "memory.jsonl").exists(), "server-memory persisted to MEMORY_FILE_PATH"


def test_memory_session_identical_direct_and_wrapped(tmp_path, make_guard):
    fresh = _memory(tmp_path)
    _direct_and_wrapped(lambda g: scenarios.memory_session(fresh(), g), make_guard(), "memory")


# ---- mcp-server-time ------------------------------------------------------


def test_time_session_works_direct():
    run(lambda: scenarios.time_session(harness.time_server(), None))


def test_time_session_identical_direct_and_wrapped(make_guard):
    server = harness.time_server()
    _direct_and_wrapped(lambda g: scenarios.time_session(server, g), make_guard(), server.name)


# ---- mcp-server-git -------------------------------------------------------


def test_git_session_works_direct(git_repo_factory):
    async def go():
        repo = git_repo_factory()
        return await scenarios.git_session(harness.git_server(repo), None, repo)

    run(go)


def test_git_session_identical_direct_and_wrapped(git_repo_factory, make_guard):
    async def go(g):
        repo = git_repo_factory()
        return await scenarios.git_session(harness.git_server(repo), g, repo)

    _direct_and_wrapped(go, make_guard(), "git")
