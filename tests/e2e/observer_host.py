"""An agent host for the observer tests: the official SDK client, run under a unique
program name (a symlink to Python) so the daemon under test watches it and nothing else.

    observer_host.py '{"server": "filesystem", "root": "/tmp/x", "calls": [["list_directory", {"path": "/tmp/x"}]]}'
    observer_host.py @spec.json     (a spec too large for a command line)

Keys: server (filesystem | memory | time | everything), or url (a Streamable HTTP
endpoint to connect to instead), root (filesystem), memory_file,
cwd (the server's, or its wrapper's, working directory), calls ([tool, arguments] pairs, made in order; an error result or a failed call is
reported, not raised), wrap (argv of `mcp-guard wrap ...` to put before the server),
sessions (how many to run at once, default 1), hold (seconds to stay connected after the
calls), start_gate (a file to wait for before the first call), then_gate and then_calls (a
second round of calls, after another file appears), poke (a unix socket: before each call
the host connects to it and writes a few bytes, local socket traffic beside the session),
cpu (run the host and its servers on this CPU only), exec_pause (seconds each server's
process stays forked, still under the host's name, before it runs the server, as a busy
host's children do), elicit (the person's answer to an elicitation: accept, decline or
cancel; without it the host declares no elicitation capability), elicit_delay (seconds
before answering), rename (a new name the host gives
itself with prctl(PR_SET_NAME) once its servers run, as hosts that name their threads do). Prints one JSON line per session:
{"ok": [...], "errors": [...]}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402


def server_of(spec: dict) -> harness.Server:
    kind = spec["server"]
    if kind == "filesystem":
        return harness.filesystem_server(Path(spec["root"]))
    if kind == "memory":
        return harness.memory_server(Path(spec["memory_file"]))
    if kind == "time":
        return harness.time_server()
    if kind == "everything":
        return harness.everything_server()
    raise SystemExit(f"unknown server {kind}")


class Wrap:
    def __init__(self, argv: list[str]) -> None:
        self.prefix = argv

    def argv(self, server: harness.Server) -> list[str]:
        return [*self.prefix, "--", *server.argv]


async def over_http(spec: dict, out: list) -> None:
    """The session over local Streamable HTTP: `url` instead of a server to start."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    result: dict = {"ok": [], "errors": []}
    try:
        async with streamable_http_client(spec["url"]) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                for tool, arguments in spec.get("calls", []):
                    r = await session.call_tool(tool, arguments)
                    (result["errors"] if getattr(r, "is_error", getattr(r, "isError", False)) else result["ok"]).append(tool)
    except BaseException as e:  # noqa: BLE001 - reported to the test, which decides
        result["errors"].append(f"session: {type(e).__name__}: {e}")
    out.append(result)


def rename(name: str) -> None:
    import ctypes

    PR_SET_NAME = 15
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def poke(path: str) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b"hello\n")


def person(spec: dict) -> dict:
    """The session's elicitation callback, as the spec's `elicit` answers."""
    if not spec.get("elicit"):
        return {}
    from mcp import types

    async def answer(context, params):
        await anyio.sleep(spec.get("elicit_delay", 0))
        action = spec["elicit"]
        return types.ElicitResult(action=action, content={} if action == "accept" else None)

    return {"elicitation_callback": answer}


async def one(spec: dict, out: list) -> None:
    if spec.get("url"):
        return await over_http(spec, out)
    server = server_of(spec)
    if spec.get("cwd"):
        server.cwd = spec["cwd"]
    guard = Wrap(spec["wrap"]) if spec.get("wrap") else None
    result: dict = {"ok": [], "errors": []}
    try:
        async with harness.open_session(server, guard, **person(spec)) as peer:
            if spec.get("rename"):
                rename(spec["rename"])
            for gate_key, calls_key in (("start_gate", "calls"), ("then_gate", "then_calls")):
                gate = spec.get(gate_key)
                while gate and not os.path.exists(gate):
                    await anyio.sleep(0.05)
                for tool, arguments in spec.get(calls_key, []):
                    if spec.get("poke"):
                        poke(spec["poke"])
                    try:
                        r = await peer.session.call_tool(tool, arguments)
                        failed = getattr(r, "is_error", getattr(r, "isError", False))
                        (result["errors"] if failed else result["ok"]).append(tool)
                    except Exception as e:  # an error answer; a killed server ends the session
                        result["errors"].append(f"{tool}: {type(e).__name__}: {e}")
                        if "closed" in str(e).lower():
                            break
            await anyio.sleep(spec.get("hold", 0))
    except BaseException as e:  # noqa: BLE001 - reported to the test, which decides
        result["errors"].append(f"session: {type(e).__name__}: {e}")
    out.append(result)


def pause_before_exec(seconds: float) -> None:
    """Every process the SDK starts waits `seconds` between fork and exec."""
    import asyncio
    import time

    loop = asyncio.get_running_loop()
    spawn = loop.subprocess_exec

    async def paused(*args, **kwargs):
        return await spawn(*args, preexec_fn=lambda: time.sleep(seconds), **kwargs)

    loop.subprocess_exec = paused


async def main(spec: dict) -> None:
    if "cpu" in spec:
        os.sched_setaffinity(0, {spec["cpu"]})
    if spec.get("exec_pause"):
        pause_before_exec(spec["exec_pause"])
    out: list = []
    async with anyio.create_task_group() as tg:
        for _ in range(spec.get("sessions", 1)):
            tg.start_soon(one, spec, out)
    for r in out:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    arg = sys.argv[1]
    anyio.run(main, json.loads(Path(arg[1:]).read_text() if arg.startswith("@") else arg))
