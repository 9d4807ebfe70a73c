"""The router's HTTP/1.1 client to the engines (``prfaas.engine.router.upstream``) against raw
socket servers that answer exactly as each test needs: keep-alive reuse, bodies whole and
streamed, and every way an engine's connection can fail."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from prfaas.engine.router.upstream import EngineConnectionError, UpstreamPool

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
"""What the fake engine does on one connection (the int: which connection, from 0)."""


class _Engine:
    def __init__(self) -> None:
        self.connections = 0
        self.closed = asyncio.Event()
        """Set when a client closed a connection that had not finished its request."""
        self.requests: list[bytes] = []


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def _answer(body: bytes, *extra: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + b"".join(h + b"\r\n" for h in extra)
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def _keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while True:
        req = await _read_request(reader)
        writer.write(_answer(b'{"echo": %d}' % len(req)))


@asynccontextmanager
async def _engine(script: Script) -> AsyncIterator[tuple[_Engine, str]]:
    engine = _Engine()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = engine.connections
        engine.connections += 1
        try:
            await script(reader, writer, n)
        except (asyncio.IncompleteReadError, ConnectionError):
            engine.closed.set()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield engine, f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def _post(pool: UpstreamPool, url: str, body: bytes = b"{}", **kw: float) -> bytes:
    resp = await pool.request(
        b"POST", url, b"/v1/completions", body, connect_s=5, total_s=kw.pop("total_s", 30), **kw
    )
    try:
        return await resp.read()
    finally:
        resp.release()


async def test_one_connection_serves_request_after_request() -> None:
    pool = UpstreamPool()
    async with _engine(_keep_alive) as (engine, url):
        answers = [await _post(pool, url, b'{"n": %d}' % i) for i in range(3)]
        await asyncio.gather(*(_post(pool, url) for _ in range(4)))
    await pool.close()
    assert answers[0].startswith(b'{"echo": ')
    assert engine.connections == 4  # 1 for the three in a row, 3 more for four at once


async def test_request_line_and_headers_name_the_engine_path_and_the_body() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        seen.append(await _read_request(reader))
        writer.write(_answer(b"{}"))

    pool = UpstreamPool()
    async with _engine(record) as (_, url):
        resp = await pool.request(
            b"POST",
            url + "/prefix",
            b"/v1/completions",
            b'{"a": 1}',
            headers=b"X-Request-Id: r-1\r\n",
            connect_s=5,
            total_s=30,
        )
        await resp.read()
        resp.release()
    await pool.close()
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /prefix/v1/completions HTTP/1.1"
    assert b"X-Request-Id: r-1" in lines and b"Content-Length: 8" in lines
    assert body == b'{"a": 1}'
    assert resp.status == 200 and resp.content_type == "application/json"


async def test_an_engine_that_says_close_gets_a_new_connection_next_time() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)
        writer.write(_answer(b"{}", b"Connection: close"))
        await writer.drain()

    pool = UpstreamPool()
    async with _engine(closing) as (engine, url):
        assert await _post(pool, url) == b"{}"
        assert await _post(pool, url) == b"{}"
    await pool.close()
    assert engine.connections == 2


async def test_a_chunked_stream_arrives_piece_by_piece_and_the_connection_is_reused() -> None:
    release = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await _read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + b"8\r\ndata: 1\n\r\n"
            )
            await writer.drain()
            await release.wait()
            writer.write(b"8\r\ndata: 2\n\r\n0\r\n\r\n")
            await writer.drain()

    pool = UpstreamPool()
    async with _engine(stream) as (engine, url):
        resp = await pool.request(b"POST", url, b"/v1/completions", connect_s=5, total_s=30)
        assert resp.content_type == "text/event-stream"
        pieces = []
        async for piece in resp.chunks():
            pieces.append(piece)
            release.set()
        resp.release()
        assert await _post(pool, url) == b"data: 1\ndata: 2\n"
    await pool.close()
    assert pieces == [b"data: 1\n", b"data: 2\n"]
    assert engine.connections == 1


async def test_a_large_body_read_whole() -> None:
    big = b"x" * (4 << 20)

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)
        writer.write(_answer(big))
        await writer.drain()

    pool = UpstreamPool()
    async with _engine(large) as (_, url):
        assert await _post(pool, url) == big
    await pool.close()


async def test_an_engine_that_does_not_answer_times_out_and_loses_the_connection() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)
        await reader.read()  # until the client goes
        raise ConnectionResetError

    pool = UpstreamPool()
    async with _engine(silent) as (engine, url):
        with pytest.raises(TimeoutError):
            await _post(pool, url, read_s=0.05)
        await asyncio.wait_for(engine.closed.wait(), 30)
    await pool.close()


async def test_a_cancelled_call_closes_its_connection_so_the_engine_stops() -> None:
    got = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)
        got.set()
        await reader.read()
        raise ConnectionResetError

    pool = UpstreamPool()
    async with _engine(slow) as (engine, url):
        call = asyncio.create_task(_post(pool, url))
        await asyncio.wait_for(got.wait(), 30)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(engine.closed.wait(), 30)
    await pool.close()


async def test_a_refused_connection_is_an_engine_connection_error_with_its_errno() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = UpstreamPool()
    with pytest.raises(EngineConnectionError) as info:
        await _post(pool, f"http://127.0.0.1:{port}")
    assert info.value.errno == errno.ECONNREFUSED
    await pool.close()


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial', "closed"),
        (b"SMTP ready\r\n\r\n", "not valid HTTP"),
        (b"", "closed"),
    ],
)
async def test_a_broken_answer_is_an_engine_connection_error(answer: bytes, what: str) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()

    pool = UpstreamPool()
    async with _engine(broken) as (_, url):
        with pytest.raises(EngineConnectionError, match=what):
            await _post(pool, url)
    await pool.close()


@pytest.mark.parametrize(("method", "retried"), [(b"GET", True), (b"POST", False)])
async def test_only_a_get_is_retried_when_a_reused_connection_was_closed(
    method: bytes, retried: bool
) -> None:
    async def close_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await _read_request(reader)
        writer.write(_answer(b"first"))
        await writer.drain()
        await _read_request(reader)  # a keep-alive race: closed without an answer

    pool = UpstreamPool()

    async def call() -> bytes:
        resp = await pool.request(method, url, b"/health", connect_s=5, total_s=30)
        try:
            return await resp.read()
        finally:
            resp.release()

    async with _engine(close_second) as (engine, url):
        assert await call() == b"first"
        if retried:
            assert await call() == b"first"
            assert engine.connections == 2
        else:
            with pytest.raises(EngineConnectionError):
                await call()
    await pool.close()


async def test_a_bad_engine_url_names_the_form() -> None:
    pool = UpstreamPool()
    with pytest.raises(ValueError, match="http://host"):
        await _post(pool, "unix:///tmp/engine.sock")
