"""Fixtures for the mcp-guard end-to-end suite (see harness.py for the machinery).

Run:  .peers/venv/bin/python -m pytest tests/e2e
with  MCP_GUARD_BIN=/path/to/mcp-guard  for the wrapped half (skipped when unset).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import harness
from harness import Guard


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "wrapped: needs the mcp-guard binary ($MCP_GUARD_BIN)")


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [
        p
        for p in (
            harness.NODE_BIN / "mcp-server-everything",
            harness.NODE_BIN / "mcp-server-filesystem",
            harness.NODE_BIN / "mcp-server-memory",
            harness.VENV_BIN / "mcp-server-time",
            harness.VENV_BIN / "mcp-server-git",
        )
        if not p.exists()
    ]
    if missing:
        raise pytest.UsageError(
            f"test peers are not installed ({', '.join(map(str, missing))}); "
            "run `cargo xtask` peers installation (xtask/src/peers.rs: ensure_peers) first"
        )
    guard = harness.guard_bin()
    if guard is None and os.environ.get("CI", "") not in ("", "false", "0"):
        # In CI a silently skipped wrapped half would hide a broken build.
        raise pytest.UsageError(f"CI is set but ${harness.GUARD_ENV} is not: nothing to test the wrapped half with")
    if guard is not None and not guard.is_file():
        raise pytest.UsageError(f"${harness.GUARD_ENV}={guard} does not exist")


def pytest_report_header(config: pytest.Config) -> list[str]:
    guard = harness.guard_bin()
    return [f"mcp-guard under test: {guard if guard else f'<unset: ${harness.GUARD_ENV}; wrapped tests skip>'}"]


@pytest.fixture
def guard_bin() -> Path:
    """The mcp-guard binary; skips the test when $MCP_GUARD_BIN is unset."""
    guard = harness.guard_bin()
    if guard is None:
        pytest.skip(f"${harness.GUARD_ENV} is not set: no mcp-guard binary to wrap servers with")
    return guard


@pytest.fixture
def make_guard(guard_bin: Path, tmp_path: Path) -> Callable[..., Guard]:
    """make_guard(policy_text=None, name=None, tag="") -> Guard with its own audit file in tmp_path."""
    counter = iter(range(1000))

    def make(policy_text: str | None = None, *, name: str | None = None, tag: str = "") -> Guard:
        n = next(counter)
        audit = tmp_path / f"audit{tag}{n}.jsonl"
        policy = None
        if policy_text is not None:
            policy = harness.write_policy(tmp_path / f"policy{tag}{n}.toml", policy_text)
        return Guard(guard_bin, audit, policy, name)

    return make


@pytest.fixture(params=["direct", "wrapped"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def guard_for_mode(mode: str, request: pytest.FixtureRequest) -> Guard | None:
    """None in direct mode, a Guard (audit in tmp_path) in wrapped mode."""
    if mode == "direct":
        return None
    return request.getfixturevalue("make_guard")()


@pytest.fixture
def git_repo_factory(tmp_path: Path) -> Callable[[], Path]:
    """Builds the same small git repository (same commit hashes) at the same path each call."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    path = tmp_path / "repo"

    def make() -> Path:
        harness.fresh_dir(path)
        env = harness.process_env(harness.git_server(path))

        def g(*args: str) -> None:
            subprocess.run([git, *args], cwd=path, env=env, check=True, capture_output=True)

        g("init", "-q", "-b", "main")
        g("config", "user.name", "E2E User")
        g("config", "user.email", "user@e2e.invalid")
        g("config", "commit.gpgsign", "false")
        (path / "README.md").write_text("# e2e repo\n\nfirst line\n")
        (path / "src.txt").write_text("alpha\nbeta\ngamma\n")
        g("add", "README.md", "src.txt")
        g("commit", "-q", "-m", "initial commit")
        (path / "src.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
        g("commit", "-q", "-am", "add delta")
        return path

    return make
