"""The router's completions fast lane (``prfaas.engine.router.fastlane``) over raw sockets: plain
completions are served there, in order, with the answers aiohttp's route gives; any other
request hands the connection to aiohttp, which then serves everything on it."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.service import RouterService
from prfaas.engine.router.tokenizer import ByteTokenizer


@asynccontextmanager
async def _rig(**overrides: Any) -> AsyncIterator[tuple[RouterService, FakeEngine]]:
    async with FakeEngine("decode", "decode", token_delay_s=0.0) as dec:
        data: dict[str, Any] = {
            "model": "tiny",
            "local_datacenter": "dc-b",
            "datacenters": {"dc-b": {"prefill": [], "decode": [dec.url]}},
            "health": {"enabled": False},
        }
        data.update(overrides)
        svc = RouterService(RouterConfig.model_validate(data), port=0, tokenizer=ByteTokenizer())
        async with svc:
            yield svc, dec


def _post(body: dict[str, Any], *headers: bytes, path: bytes = b"/v1/completions") -> bytes:
    raw = json.dumps(body).encode()
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"Content-Length: %d\r\n\r\n" % len(raw)
        + raw
    )


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-case names), body (chunks joined)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode()
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split(" ")[1]), headers, body


async def test_pipelined_completions_are_answered_in_order_on_one_connection() -> None:
    async with _rig() as (svc, dec):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(
            _post({"prompt": "one", "max_tokens": 1}, b"X-Request-Id: first")
            + _post({"prompt": "two", "max_tokens": 2}, b"X-Request-Id: second")
        )
        first = await _answer(reader)
        second = await _answer(reader)
        writer.close()
    assert (first[0], second[0]) == (200, 200)
    assert first[1]["x-request-id"] == "first" and second[1]["x-request-id"] == "second"
    assert json.loads(first[2])["choices"][0]["text"] == "t0 "
    assert json.loads(second[2])["choices"][0]["text"] == "t0 t1 "
    assert first[1]["x-prfaas-route"] == "local" and first[1]["x-prfaas-uncached-tokens"] == "3"
    assert [r.headers["X-Request-Id"] for r in dec.received] == ["first", "second"]


async def test_a_streamed_answer_is_relayed_chunked() -> None:
    async with _rig() as (svc, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(_post({"prompt": "hi", "max_tokens": 3, "stream": True}))
        status, headers, body = await _answer(reader)
        writer.write(_post({"prompt": "hi", "max_tokens": 1}))  # the connection is still good
        again = await _answer(reader)
        writer.close()
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert body.count(b"data: ") == 4 and body.endswith(b"data: [DONE]\n\n")
    assert again[0] == 200


async def test_errors_are_openai_json_and_keep_the_connection() -> None:
    async with _rig() as (svc, dec):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(_post({"prompt": ""}) + _post({"prompt": "x", "model": "other"}))
        empty = await _answer(reader)
        model = await _answer(reader)
        writer.close()
    assert empty[0] == 400 and json.loads(empty[2])["error"]["type"] == "BadRequestError"
    assert model[0] == 404 and "`other` does not exist" in json.loads(model[2])["error"]["message"]
    assert "x-request-id" in empty[1]
    assert dec.received == []


_CHUNKED = b'{"prompt": "hi", "max_tokens": 1}'


@pytest.mark.parametrize(
    "first",
    [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",  # another route
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (10, _CHUNKED[:10])
        + b"%x\r\n%s\r\n" % (len(_CHUNKED) - 10, _CHUNKED[10:])
        + b"0\r\n\r\n",  # a chunked body
    ],
    ids=["another-route", "chunked-body"],
)
async def test_other_requests_hand_the_connection_to_aiohttp_which_serves_the_rest(
    first: bytes,
) -> None:
    async with _rig() as (svc, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(first + _post({"prompt": "after", "max_tokens": 1}))
        one = await _answer(reader)
        two = await _answer(reader)
        writer.close()
    assert (one[0], two[0]) == (200, 200)
    assert one[1]["server"].startswith("Python/") and two[1]["server"].startswith("Python/")
    assert json.loads(two[2])["choices"][0]["text"] == "t0 "


async def test_a_gzip_body_is_aiohttps_to_decompress() -> None:
    raw = gzip.compress(json.dumps({"prompt": "zipped", "max_tokens": 1}).encode())
    async with _rig() as (svc, dec):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n" % len(raw) + raw
        )
        status, _, _ = await _answer(reader)
        writer.close()
    assert status == 200 and dec.received[0].body["prompt"] == "zipped"


async def test_a_malformed_head_gets_aiohttps_400() -> None:
    async with _rig() as (svc, dec):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nBad Header\r\nContent-Length: 2\r\n\r\n{}")
        status, _, body = await _answer(reader)
        writer.close()
    assert status == 400 and b"Invalid header token" in body  # as before the fast lane
    assert dec.received == []


async def test_a_client_that_leaves_mid_stream_stops_the_decode() -> None:
    async with FakeEngine("decode", "decode", token_delay_s=0.05) as dec:
        cfg = RouterConfig.model_validate(
            {
                "model": "tiny",
                "local_datacenter": "dc-b",
                "datacenters": {"dc-b": {"prefill": [], "decode": [dec.url]}},
                "health": {"enabled": False},
            }
        )
        async with RouterService(cfg, port=0, tokenizer=ByteTokenizer()) as svc:
            reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
            writer.write(_post({"prompt": "hi", "max_tokens": 10_000, "stream": True}))
            await asyncio.wait_for(reader.readuntil(b"data: "), 30)
            writer.close()
            for _ in range(600):
                if svc.router.in_flight == 0:
                    break
                await asyncio.sleep(0.05)
            assert svc.router.in_flight == 0
            value = svc.router.metrics.registry.get_sample_value(
                "prfaas_router_requests_total", {"path": "local", "outcome": "cancelled"}
            )
            assert value == 1.0


def test_the_hand_off_works_on_uvloop_the_routers_loop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[int, int, int]:
        async with _rig() as (svc, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
            writer.write(_post({"prompt": "lane", "max_tokens": 1}))
            lane = await _answer(reader)
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            live = await _answer(reader)
            writer.write(_post({"prompt": "aiohttp", "max_tokens": 1}))
            after = await _answer(reader)
            writer.close()
            return lane[0], live[0], after[0]

    assert uvloop.run(scenario()) == (200, 200, 200)
