"""One representative session per real server, recorded as a Transcript.

Each scenario runs against `server` either direct (guard=None) or under
`mcp-guard wrap` and returns the transcript; the tests compare the two.
Scenarios also assert a few facts themselves, so a direct run alone already
checks that the peers and the client behave as the suite expects.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp import MCPError

from harness import Guard, Peer, Server, Transcript, open_session, record_listings

# --------------------------------------------------------------------------
# Client-side callbacks (deterministic, so that direct == wrapped)
# --------------------------------------------------------------------------

SAMPLING_REPLY = "sampled reply from the e2e client"
ROOTS = [("file:///e2e/root-one", "root-one"), ("file:///e2e/root-two", "root-two")]
ELICITED = {"name": "Ada Lovelace", "check": True, "email": "ada@example.org"}


class ClientCallbacks:
    """sampling / elicitation / roots callbacks that also count their calls."""

    def __init__(self) -> None:
        self.sampling: list[types.CreateMessageRequestParams] = []
        self.elicitation: list[types.ElicitRequestParams] = []
        self.roots = 0

    async def sampling_callback(self, context: Any, params: types.CreateMessageRequestParams):
        self.sampling.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=SAMPLING_REPLY),
            model="e2e-model",
            stop_reason="endTurn",
        )

    async def elicitation_callback(self, context: Any, params: types.ElicitRequestParams):
        self.elicitation.append(params)
        return types.ElicitResult(action="accept", content=dict(ELICITED))

    async def list_roots_callback(self, context: Any):
        self.roots += 1
        return types.ListRootsResult(roots=[types.Root(uri=uri, name=name) for uri, name in ROOTS])

    def kwargs(self) -> dict[str, Any]:
        return {
            "sampling_callback": self.sampling_callback,
            "elicitation_callback": self.elicitation_callback,
            "list_roots_callback": self.list_roots_callback,
        }


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call_recording_errors(t: Transcript, peer: Peer, tool: str, args: dict[str, Any]) -> Any:
    """A call expected to fail: recorded whether it is a JSON-RPC error or an isError result."""
    try:
        return await t.call(peer.session, tool, args)
    except MCPError as e:
        return e


# --------------------------------------------------------------------------
# server-everything
# --------------------------------------------------------------------------


async def everything_session(server: Server, guard: Guard | None) -> Transcript:
    t = Transcript()
    cb = ClientCallbacks()
    async with open_session(server, guard, **cb.kwargs()) as peer:
        s = peer.session
        await record_listings(t, peer)
        tool_names = {x["name"] for x in dict(t.entries)["tools/list (all pages)"]}
        # Tools that exist only because this client advertises the capabilities.
        assert {"trigger-sampling-request", "trigger-elicitation-request", "get-roots-list"} <= tool_names

        t.add("ping", await s.send_ping())
        r = await t.call(s, "echo", {"message": "héllo wörld ✓ \"quoted\" \\ / \u2028"})
        assert "héllo wörld ✓" in text_of(r)
        r = await t.call(s, "get-sum", {"a": 40, "b": 2.5})
        assert "42.5" in text_of(r)
        r = await t.call(s, "get-tiny-image", {})
        assert any(isinstance(c, types.ImageContent) for c in r.content)
        await t.call(s, "get-annotated-message", {"messageType": "success", "includeImage": True})
        r = await t.call(s, "get-structured-content", {"location": "Chicago"})
        assert r.structured_content is not None
        await t.call(s, "get-resource-reference", {"resourceType": "Text", "resourceId": 2})
        await t.call(s, "get-resource-reference", {"resourceType": "Blob", "resourceId": 3})
        await t.call(s, "get-resource-links", {"count": 4})
        r = await t.call(s, "trigger-sampling-request", {"prompt": "say something", "maxTokens": 20})
        assert SAMPLING_REPLY in text_of(r)
        r = await t.call(s, "get-roots-list", {})
        assert ROOTS[0][0] in text_of(r)
        r = await t.call(s, "trigger-elicitation-request", {})
        assert ELICITED["name"] in text_of(r)

        resources = dict(t.entries)["resources/list (all pages)"]
        assert resources, "server-everything lists resources"
        for res in resources[:3]:
            t.add(f"resources/read {res['uri']}", await s.read_resource(res["uri"]))
        for uri in ("demo://resource/dynamic/text/1", "demo://resource/dynamic/blob/2"):
            t.add(f"resources/read {uri}", await s.read_resource(uri))

        t.add("prompts/get simple-prompt", await s.get_prompt("simple-prompt"))
        t.add("prompts/get args-prompt", await s.get_prompt("args-prompt", {"city": "Paris", "state": "TX"}))
        t.add(
            "prompts/get resource-prompt",
            await s.get_prompt("resource-prompt", {"resourceType": "Text", "resourceId": "2"}),
        )
        t.add(
            "completion/complete",
            await s.complete(
                types.PromptReference(type="ref/prompt", name="completable-prompt"),
                {"name": "department", "value": "E"},
            ),
        )
        assert len(cb.sampling) == 1 and len(cb.elicitation) == 1 and cb.roots >= 1
    return t


# --------------------------------------------------------------------------
# server-filesystem
# --------------------------------------------------------------------------

#: A deterministic ~384 KiB binary file for read_media_file.
MEDIA_BYTES = random.Random(20240102).randbytes(384 * 1024)


def populate_fs(root: Path) -> None:
    (root / "notes.txt").write_text("line one\nline two\nline three\n")
    (root / "data.json").write_text('{"k": [1, 2, 3], "unicode": "ünïcödé"}\n')
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "a.md").write_text("# A\n")
    (root / "sub" / "deeper" / "b.txt").write_text("bee\n")
    (root / "picture.png").write_bytes(MEDIA_BYTES)


async def filesystem_session(server: Server, guard: Guard | None, root: Path) -> Transcript:
    t = Transcript()
    async with open_session(server, guard) as peer:
        s = peer.session
        await record_listings(t, peer)
        await t.call(s, "list_allowed_directories", {})
        await t.call(s, "list_directory", {"path": str(root)})
        await t.call(s, "list_directory_with_sizes", {"path": str(root), "sortBy": "name"})
        await t.call(s, "directory_tree", {"path": str(root)})
        r = await t.call(s, "read_text_file", {"path": str(root / "notes.txt"), "head": 2})
        assert "line two" in text_of(r) and "line three" not in text_of(r)
        await t.call(s, "read_text_file", {"path": str(root / "notes.txt"), "tail": 1})
        await t.call(s, "read_multiple_files", {"paths": [str(root / "data.json"), str(root / "sub/a.md")]})
        r = await t.call(s, "read_media_file", {"path": str(root / "picture.png")})
        blobs = [c for c in r.content if getattr(c, "data", None)]
        assert blobs and base64.b64decode(blobs[0].data) == MEDIA_BYTES
        await t.call(s, "write_file", {"path": str(root / "new.txt"), "content": "written by e2e\n"})
        await t.call(
            s,
            "edit_file",
            {"path": str(root / "notes.txt"), "edits": [{"oldText": "line two", "newText": "LINE 2"}], "dryRun": True},
        )
        await t.call(
            s, "edit_file", {"path": str(root / "notes.txt"), "edits": [{"oldText": "line two", "newText": "LINE 2"}]}
        )
        await t.call(s, "create_directory", {"path": str(root / "made")})
        await t.call(s, "move_file", {"source": str(root / "new.txt"), "destination": str(root / "made/moved.txt")})
        await t.call(s, "search_files", {"path": str(root), "pattern": "*.txt"})
        await t.call(s, "get_file_info", {"path": str(root / "notes.txt")})
        r = await t.call(s, "read_text_file", {"path": str(root / "made/moved.txt")})
        assert text_of(r) == "written by e2e\n"
        # Errors must pass through unchanged too.
        await call_recording_errors(t, peer, "read_text_file", {"path": str(root / "does-not-exist.txt")})
        await call_recording_errors(t, peer, "read_text_file", {"path": "/etc/hostname"})
    assert (root / "made/moved.txt").read_text() == "written by e2e\n"
    assert "LINE 2" in (root / "notes.txt").read_text()
    return t


# --------------------------------------------------------------------------
# server-memory
# --------------------------------------------------------------------------


async def memory_session(server: Server, guard: Guard | None) -> Transcript:
    t = Transcript()
    async with open_session(server, guard) as peer:
        s = peer.session
        await record_listings(t, peer)
        await t.call(
            s,
            "create_entities",
            {
                "entities": [
                    {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]},
                    {"name": "Analytical Engine", "entityType": "machine", "observations": ["designed by Babbage"]},
                    {"name": "Babbage", "entityType": "person", "observations": []},
                ]
            },
        )
        await t.call(
            s,
            "create_relations",
            {
                "relations": [
                    {"from": "Ada", "to": "Analytical Engine", "relationType": "programmed"},
                    {"from": "Babbage", "to": "Analytical Engine", "relationType": "designed"},
                ]
            },
        )
        await t.call(s, "add_observations", {"observations": [{"entityName": "Ada", "contents": ["born 1815"]}]})
        r = await t.call(s, "read_graph", {})
        assert "born 1815" in text_of(r)
        await t.call(s, "search_nodes", {"query": "Engine"})
        await t.call(s, "open_nodes", {"names": ["Ada", "Babbage"]})
        await t.call(
            s, "delete_observations", {"deletions": [{"entityName": "Ada", "observations": ["born 1815"]}]}
        )
        await t.call(
            s, "delete_relations", {"relations": [{"from": "Babbage", "to": "Analytical Engine", "relationType": "designed"}]}
        )
        await t.call(s, "delete_entities", {"entityNames": ["Babbage"]})
        await t.call(s, "read_graph", {})
        resources = dict(t.entries).get("resources/list (all pages)", [])
        for res in resources:
            t.add(f"resources/read {res['uri']}", await s.read_resource(res["uri"]))
    return t


# --------------------------------------------------------------------------
# mcp-server-time
# --------------------------------------------------------------------------


async def time_session(server: Server, guard: Guard | None) -> Transcript:
    t = Transcript()
    async with open_session(server, guard) as peer:
        s = peer.session
        await record_listings(t, peer)
        await t.call(s, "get_current_time", {"timezone": "UTC"})
        await t.call(s, "get_current_time", {"timezone": "Asia/Kolkata"})
        r = await t.call(
            s, "convert_time", {"source_timezone": "America/New_York", "time": "16:30", "target_timezone": "Asia/Tokyo"}
        )
        assert "Asia/Tokyo" in text_of(r)
        await call_recording_errors(t, peer, "get_current_time", {"timezone": "Not/AZone"})
    return t


# --------------------------------------------------------------------------
# mcp-server-git
# --------------------------------------------------------------------------


async def git_session(server: Server, guard: Guard | None, repo: Path) -> Transcript:
    t = Transcript()
    rp = {"repo_path": str(repo)}
    async with open_session(server, guard) as peer:
        s = peer.session
        await record_listings(t, peer)
        await t.call(s, "git_status", rp)
        r = await t.call(s, "git_log", {**rp, "max_count": 5})
        assert "add delta" in text_of(r)
        (repo / "README.md").write_text("# e2e repo\n\nfirst line\nsecond line\n")
        (repo / "new.txt").write_text("brand new\n")
        await t.call(s, "git_diff_unstaged", rp)
        await t.call(s, "git_add", {**rp, "files": ["README.md", "new.txt"]})
        await t.call(s, "git_diff_staged", rp)
        await t.call(s, "git_commit", {**rp, "message": "commit made through MCP"})
        await t.call(s, "git_log", {**rp, "max_count": 5})
        await t.call(s, "git_create_branch", {**rp, "branch_name": "feature"})
        await t.call(s, "git_branch", {**rp, "branch_type": "local"})
        await t.call(s, "git_checkout", {**rp, "branch_name": "feature"})
        await t.call(s, "git_show", {**rp, "revision": "HEAD"})
        await t.call(s, "git_diff", {**rp, "target": "HEAD~2"})
        await t.call(s, "git_status", rp)
        await call_recording_errors(t, peer, "git_show", {**rp, "revision": "no-such-revision"})
    return t
