"""Shared machinery for the mcp-guard end-to-end suite.

Everything that knows a path, a server command line, the `mcp-guard wrap`
command line, the audit record layout or how results are normalised lives
here, so that a change in any of them is a one-line edit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers"
NODE_BIN = PEERS / "node" / "node_modules" / ".bin"
VENV_BIN = PEERS / "venv" / "bin"

#: Environment variable naming the `mcp-guard` binary under test.
GUARD_ENV = "MCP_GUARD_BIN"

#: Default deadline for one whole MCP session (seconds).
SESSION_TIMEOUT = 60.0

#: JSON-RPC error code of a request denied by policy.
DENY_CODE = -32080


def guard_bin() -> Path | None:
    """The `mcp-guard` binary from $MCP_GUARD_BIN, or None when unset."""
    value = os.environ.get(GUARD_ENV)
    return Path(value) if value else None


# --------------------------------------------------------------------------
# Real servers
# --------------------------------------------------------------------------


@dataclass
class Server:
    """One real MCP server: what `--name` it gets and how to start it."""

    name: str
    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: str | None = None

    @property
    def argv(self) -> list[str]:
        return [self.command, *self.args]


def everything_server() -> Server:
    return Server("everything", str(NODE_BIN / "mcp-server-everything"))


def filesystem_server(root: Path) -> Server:
    return Server("filesystem", str(NODE_BIN / "mcp-server-filesystem"), [str(root)])


def memory_server(memory_file: Path) -> Server:
    return Server(
        "memory",
        str(NODE_BIN / "mcp-server-memory"),
        env={"MEMORY_FILE_PATH": str(memory_file)},
    )


def time_server() -> Server:
    return Server("time", str(VENV_BIN / "mcp-server-time"), ["--local-timezone", "UTC"])


#: Fixed dates so that commits made by the git server, and their hashes, are
#: the same in the direct and the wrapped run.
GIT_FIXED_ENV = {
    "GIT_AUTHOR_NAME": "E2E Author",
    "GIT_AUTHOR_EMAIL": "author@e2e.invalid",
    "GIT_COMMITTER_NAME": "E2E Committer",
    "GIT_COMMITTER_EMAIL": "committer@e2e.invalid",
    "GIT_AUTHOR_DATE": "2024-01-02T03:04:05+00:00",
    "GIT_COMMITTER_DATE": "2024-01-02T03:04:05+00:00",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git_server(repo: Path) -> Server:
    return Server(
        "git",
        str(VENV_BIN / "mcp-server-git"),
        ["--repository", str(repo)],
        env=dict(GIT_FIXED_ENV),
    )


# --------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------


@dataclass
class Guard:
    """How to put a server under `mcp-guard wrap`."""

    bin: Path
    audit: Path
    policy: Path | None = None
    name: str | None = None  # overrides Server.name for --name

    def argv(self, server: Server) -> list[str]:
        """`mcp-guard wrap [--name N] [--policy F] [--audit F] -- COMMAND [ARGS...]`."""
        argv = [str(self.bin), "wrap", "--name", self.name or server.name]
        if self.policy is not None:
            argv += ["--policy", str(self.policy)]
        argv += ["--audit", str(self.audit), "--", *server.argv]
        return argv


def command_line(server: Server, guard: Guard | None) -> list[str]:
    return guard.argv(server) if guard is not None else server.argv


def stdio_params(server: Server, guard: Guard | None = None) -> StdioServerParameters:
    argv = command_line(server, guard)
    return StdioServerParameters(command=argv[0], args=argv[1:], env=server.env, cwd=server.cwd)


def process_env(server: Server) -> dict[str, str]:
    """Environment for raw subprocess runs: the SDK's default set plus the server's."""
    from mcp.client.stdio import get_default_environment

    return get_default_environment() | (server.env or {})


# --------------------------------------------------------------------------
# Running a session with the official SDK client
# --------------------------------------------------------------------------


@dataclass
class Peer:
    """A live, initialised client session plus what it observed."""

    session: ClientSession
    init: types.InitializeResult
    transport_errors: list[Exception]
    notifications: list[Any]


@asynccontextmanager
async def open_session(
    server: Server,
    guard: Guard | None = None,
    *,
    errlog: Any = None,
    **session_kwargs: Any,
) -> AsyncIterator[Peer]:
    """stdio_client + ClientSession + initialize, against `server` direct or wrapped.

    Transport-level exceptions (e.g. a non-JSON line on the server's stdout) are
    collected and make the session fail on exit: stdout must carry only MCP.
    """
    errors: list[Exception] = []
    notes: list[Any] = []
    user_handler = session_kwargs.pop("message_handler", None)

    async def handler(message: Any) -> None:
        if isinstance(message, Exception):
            errors.append(message)
        else:
            notes.append(message)
        if user_handler is not None:
            await user_handler(message)

    kwargs: dict[str, Any] = {}
    if errlog is not None:
        kwargs["errlog"] = errlog
    async with stdio_client(stdio_params(server, guard), **kwargs) as (read, write):
        async with ClientSession(read, write, message_handler=handler, **session_kwargs) as session:
            init = await session.initialize()
            yield Peer(session, init, errors, notes)
    assert not errors, f"transport errors on the client side: {errors!r}"


def run(fn: Callable[[], Awaitable[Any]], timeout: float = SESSION_TIMEOUT) -> Any:
    """Run an async test body under anyio with a hard deadline."""

    async def body() -> Any:
        with anyio.fail_after(timeout):
            return await fn()

    return anyio.run(body)


# --------------------------------------------------------------------------
# Transcripts: what a session saw, as plain JSON, for comparison
# --------------------------------------------------------------------------


def dump(model: Any) -> Any:
    """A pydantic result as wire-shaped JSON (aliases, no Nones)."""
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return model


class Transcript:
    """Ordered (operation, result) pairs recorded during a scenario."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Any]] = []

    def add(self, label: str, value: Any) -> Any:
        self.entries.append((label, dump(value)))
        return value

    async def call(self, session: ClientSession, tool: str, arguments: dict[str, Any] | None = None, **kw: Any):
        try:
            result = await session.call_tool(tool, arguments or {}, **kw)
        except MCPError as e:
            self.entries.append((f"tools/call {tool}", {"jsonrpc_error": dump(e.error)}))
            raise
        return self.add(f"tools/call {tool}", result)

    def tool_calls(self) -> list[str]:
        return [label.split(" ", 1)[1] for label, _ in self.entries if label.startswith("tools/call ")]


async def paginate(fetch: Callable[[str | None], Awaitable[Any]], attr: str, max_pages: int = 50) -> list[Any]:
    """Follow next_cursor until exhausted; returns the concatenated items."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(max_pages):
        page = await fetch(cursor)
        items.extend(getattr(page, attr))
        cursor = page.next_cursor
        if not cursor:
            return items
    raise AssertionError(f"more than {max_pages} pages of {attr}")


def _page(cursor: str | None) -> types.PaginatedRequestParams | None:
    return types.PaginatedRequestParams(cursor=cursor) if cursor else None


async def all_tools(s: ClientSession) -> list[types.Tool]:
    return await paginate(lambda c: s.list_tools(params=_page(c)), "tools")


async def all_resources(s: ClientSession) -> list[types.Resource]:
    return await paginate(lambda c: s.list_resources(params=_page(c)), "resources")


async def all_resource_templates(s: ClientSession) -> list[types.ResourceTemplate]:
    return await paginate(lambda c: s.list_resource_templates(params=_page(c)), "resource_templates")


async def all_prompts(s: ClientSession) -> list[types.Prompt]:
    return await paginate(lambda c: s.list_prompts(params=_page(c)), "prompts")


async def record_listings(t: Transcript, peer: Peer) -> None:
    """initialize result, tools, and resources/prompts where the server has them."""
    t.add("initialize", peer.init)
    s = peer.session
    t.add("tools/list (all pages)", [dump(x) for x in await all_tools(s)])
    caps = peer.init.capabilities
    if caps.resources is not None:
        t.add("resources/list (all pages)", [dump(x) for x in await all_resources(s)])
        t.add("resources/templates/list (all pages)", [dump(x) for x in await all_resource_templates(s)])
    if caps.prompts is not None:
        t.add("prompts/list (all pages)", [dump(x) for x in await all_prompts(s)])


# --------------------------------------------------------------------------
# Normalisation of things that legitimately differ between two runs
# --------------------------------------------------------------------------

#: (pattern, replacement) applied to every string in a transcript.
#: Each entry says what it is for.
VOLATILE_TEXT: list[tuple[re.Pattern[str], str]] = [
    # server-everything stamps dynamic resources with the wall clock ("created at 3:54:55 PM").
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}\s?[AP]M\b"), "<clock>"),
    # mcp-server-time get_current_time returns the current instant (ISO 8601).
    (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)?"), "<datetime>"),
    # server-filesystem get_file_info: created/modified/accessed as Date.toString().
    (
        re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} \d{2} \d{4} \d{2}:\d{2}:\d{2} GMT[+-]\d{4}(?: \([^)]*\))?"),
        "<date>",
    ),
]


def normalize_text(text: str) -> str:
    for pattern, repl in VOLATILE_TEXT:
        text = pattern.sub(repl, text)
    return text


def normalize(value: Any) -> Any:
    """Apply VOLATILE_TEXT everywhere; base64 blobs are decoded first (text
    blobs get the same treatment, binary ones are reduced to size+sha256 so
    that a mismatch message stays readable)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("blob", "data") and isinstance(item, str) and len(item) > 0:
                out[key] = _normalize_b64(item)
            else:
                out[key] = normalize(item)
        return out
    if isinstance(value, list):
        return [normalize(x) for x in value]
    if isinstance(value, tuple):
        return tuple(normalize(x) for x in value)
    if isinstance(value, str):
        if value.startswith("{") or value.startswith("["):
            # JSON inside text content (e.g. mcp-server-time): normalise inside.
            try:
                return {"<json-text>": normalize(json.loads(value))}
            except ValueError:
                pass
        return normalize_text(value)
    return value


def _normalize_b64(item: str) -> Any:
    try:
        raw = base64.b64decode(item, validate=True)
    except ValueError:
        return normalize_text(item)
    try:
        return {"<base64-text>": normalize_text(raw.decode("utf-8"))}
    except UnicodeDecodeError:
        return {"<base64-binary>": {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}}


def assert_same_transcript(direct: Transcript, wrapped: Transcript) -> None:
    """Equal after normalisation, reporting the first differing operation."""
    d = [(label, normalize(v)) for label, v in direct.entries]
    w = [(label, normalize(v)) for label, v in wrapped.entries]
    assert [label for label, _ in d] == [label for label, _ in w], "different sequence of operations"
    for (label, dv), (_, wv) in zip(d, w):
        if dv != wv:
            raise AssertionError(
                f"{label}: wrapped result differs from direct\n"
                f"direct : {json.dumps(dv, sort_keys=True)[:3000]}\n"
                f"wrapped: {json.dumps(wv, sort_keys=True)[:3000]}"
            )


# --------------------------------------------------------------------------
# Audit log (JSON lines). Field names are in ONE place: adjust here.
# --------------------------------------------------------------------------


class AuditField:
    KIND = "kind"
    DECISION = "decision"
    RULE = "rule"
    METHOD = "method"
    TOOL = "tool"
    REQUEST_ID = "request_id"
    PRINCIPAL = "principal"
    PRINCIPAL_UID = "principal.uid"
    PRINCIPAL_USER = "principal.user"
    SERVER_NAME = "server.name"
    SERVER_PID = "server.pid"
    SERVER_EXE = "server.exe"
    SERVER_ARGV = "server.argv"
    AGENT_PID = "agent_host.pid"
    AGENT_EXE = "agent_host.exe"


class AuditKind:
    SESSION_START = "session_start"
    REQUEST = "request"
    RESPONSE = "response"
    SESSION_END = "session_end"
    SEAL = "seal"


ALLOW = "allow"
DENY = "deny"


def field_of(record: dict[str, Any], path: str) -> Any:
    """Dotted lookup: field_of(r, "server.name"). Missing -> None."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def read_audit(path: Path, *, until_kind: str | None = None, wait: float = 5.0) -> list[dict[str, Any]]:
    """Parse the audit file; optionally wait (bounded) until a record of `until_kind` appears,
    since the guard may write its last records just after the client lets go."""
    deadline = time.monotonic() + wait
    while True:
        records: list[dict[str, Any]] = []
        if path.exists():
            text = path.read_text()
            # A last line without its newline is a record still being written.
            text = text[: text.rfind("\n") + 1]
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except ValueError as e:
                        raise AssertionError(f"{path}:{n}: audit line is not JSON: {line[:200]!r}") from e
        if until_kind is None or any(r.get(AuditField.KIND) == until_kind for r in records):
            return records
        if time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def select(records: Iterable[dict[str, Any]], **criteria: Any) -> list[dict[str, Any]]:
    """Records matching every criterion; keyword names are AuditField attribute
    names in lower case (kind=, decision=, tool=, method=, rule=, server_name=...)."""
    paths = {k: getattr(AuditField, k.upper()) for k in criteria}
    return [r for r in records if all(field_of(r, paths[k]) == v for k, v in criteria.items())]


def describe(records: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(r, sort_keys=True)[:400] for r in records) or "<no audit records>"


def assert_audit_covers_session(audit: Path, server_name: str, tool_calls: list[str]) -> list[dict[str, Any]]:
    """session_start for the server, and an allowed tools/call request per tool called."""
    records = read_audit(audit, until_kind=AuditKind.SESSION_END)
    starts = select(records, kind=AuditKind.SESSION_START)
    assert starts, f"no session_start record in {audit}:\n{describe(records)}"
    assert field_of(starts[0], AuditField.SERVER_NAME) == server_name, describe(starts)
    for tool in set(tool_calls):
        hits = select(records, kind=AuditKind.REQUEST, method="tools/call", tool=tool)
        assert hits, f"no request record for tools/call {tool}:\n{describe(records)}"
        assert all(field_of(h, AuditField.DECISION) == ALLOW for h in hits), describe(hits)
    assert not select(records, decision=DENY), f"unexpected deny:\n{describe(select(records, decision=DENY))}"
    return records


# --------------------------------------------------------------------------
# Raw (no SDK) newline-delimited JSON-RPC, for byte-level checks
# --------------------------------------------------------------------------


class RawPeer:
    """A subprocess spoken to line by line, bytes in, bytes out."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
        import tempfile

        # stderr goes to a file, not a pipe nobody drains, so a chatty server cannot block.
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._buf = b""

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line if line.endswith(b"\n") else line + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 15.0) -> bytes:
        """One line from stdout (with its newline), or AssertionError on timeout/EOF.
        Reads the pipe unbuffered (os.read + own buffer) so select() never misses data."""
        import selectors

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line on stdout within {timeout}s (partial: {self._buf[:200]!r})")
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                if not sel.select(remaining):
                    continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise AssertionError(f"stdout closed (partial: {self._buf[:200]!r})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def recv_response(self, request_id: Any, timeout: float = 15.0) -> tuple[bytes, list[bytes]]:
        """Read lines until the response with `request_id`; returns it and the lines before it."""
        before: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.recv(max(0.1, deadline - time.monotonic()))
            msg = json.loads(line)
            if "method" not in msg and msg.get("id") == request_id:
                return line, before
            before.append(line)

    def close(self, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
        """Close stdin and wait for exit; returns (code, rest of stdout, stderr)."""
        try:
            # communicate() flushes and closes stdin, then reads both pipes to EOF.
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process did not exit within {timeout}s of stdin closing")
        out, self._buf = self._buf + out, b""
        self._stderr.seek(0)
        err = self._stderr.read()
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


def initialize_line(request_id: int = 1) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "mcp-guard-e2e-raw", "version": "0"},
            },
        }
    ).encode()


# --------------------------------------------------------------------------
# Fixtures' helpers
# --------------------------------------------------------------------------


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
