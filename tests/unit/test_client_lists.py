"""Lists are read a page at a time (``limit``/``continue``) and no answer is read past a
bound, so a cluster with a huge Node list cannot blow the operator's memory (issue #11, 7)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from prfaas.operator.controller.clients import KINDS, ApiError, ClusterClient

NODES = [{"metadata": {"name": f"n{i}", "labels": {"gpu": str(i % 2)}}} for i in range(7)]


@pytest_asyncio.fixture()
async def server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def nodes(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        limit = int(request.query.get("limit", "1000"))
        start = int(request.query.get("continue", "0"))
        page = NODES[start : start + limit]
        more = start + limit < len(NODES)
        meta = {"continue": str(start + limit)} if more else {}
        return web.json_response({"kind": "NodeList", "metadata": meta, "items": page})

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b" " * 65536)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_get("/api/v1/namespaces/big/configmaps", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_lists_follow_continue_tokens_page_by_page(
    server: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = server
    client = ClusterClient(name="c", server=url, ssl_context=False, page_size=3)
    try:
        names = [n["metadata"]["name"] for n in await client.list_objects(KINDS["Node"])]
        assert names == [f"n{i}" for i in range(7)]
        assert [q.get("continue") for q in seen] == [None, "3", "6"]
        assert all(q["limit"] == "3" for q in seen)
        gpu = await client.list_objects(KINDS["Node"], labels={"gpu": "1"})
        assert [n["metadata"]["name"] for n in gpu] == ["n1", "n3", "n5"]
    finally:
        await client.close()


async def test_an_answer_over_the_bound_is_an_error_not_memory(
    server: tuple[str, list[dict[str, str]]],
) -> None:
    url, _ = server
    client = ClusterClient(name="c", server=url, ssl_context=False, max_answer_bytes=1 << 20)
    try:
        with pytest.raises(ApiError, match="over the operator's limit of 1048576 bytes"):
            await client.list_objects(KINDS["ConfigMap"], "big")
    finally:
        await client.close()
