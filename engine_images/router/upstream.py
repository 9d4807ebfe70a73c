"""The router's HTTP/1.1 client to the engines: keep-alive connections per engine, responses
parsed by ``httptools`` (llhttp, in C), bodies handed over without copies.

Why not aiohttp's client: on the router's hot path (two engine calls per request) it cost
more than everything else the router does; this client does only what the router needs —
``POST`` a JSON body, ``GET`` a probe, read a whole answer or stream it — in a few
allocations per call (profile and numbers: ``bench/router.py``).

* ``UpstreamPool.request`` sends one request on an idle connection to that engine (or a new
  one) and returns an ``UpstreamResponse`` once the status line and headers are in.
* ``UpstreamResponse.read`` / ``chunks`` consume the body; ``release`` returns the connection
  for reuse (only when the body was read whole and the engine keeps the connection alive),
  ``close`` drops it — the engine sees the disconnect and aborts the request.
* Timeouts: ``connect_s`` for a new connection, ``total_s`` for the whole exchange (body
  included), ``read_s`` for each wait for bytes (the first byte included). An expired one
  raises ``TimeoutError`` and drops the connection.
* Failures of the engine's connection (refused, reset, closed early, not HTTP) raise
  ``EngineConnectionError`` (an ``OSError`` that keeps the cause, so the router can tell its
  own descriptor exhaustion from an engine's fault). A cancelled call drops its connection.
* A ``GET`` on a reused connection that the engine had closed meanwhile is retried once on a
  new connection (RFC 9112 §9.3.1: idempotent only); a ``POST`` is never retried.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

__all__ = ["EngineConnectionError", "UpstreamPool", "UpstreamResponse"]

_READ_HIGH_WATER = 1 << 20
"""Bytes of a streamed body buffered (a slow client) before reading from the engine pauses."""


class EngineConnectionError(OSError):
    """The engine's connection failed: refused, reset, closed before the answer ended, or the
    answer is not HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the response currently arriving on it."""

    __slots__ = (
        "_buffered",
        "_deadline",
        "_loop",
        "_parser",
        "_paused",
        "_read_s",
        "_timer",
        "_waiter",
        "body",
        "closed",
        "complete",
        "error",
        "header_list",
        "headers_done",
        "idle_since",
        "keep_alive",
        "key",
        "pool",
        "received",
        "status",
        "streaming",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._deadline = self._read_s = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        """Ready for the next answer on this connection (llhttp parses them in sequence)."""
        self.status = 0
        self.header_list: list[tuple[bytes, bytes]] = []
        self.headers_done = self.complete = self.keep_alive = self.streaming = False
        self.received = False
        self.body: deque[bytes] = deque()
        self._buffered = 0
        self.error: BaseException | None = None

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # head and body: no wait

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(EngineConnectionError(f"the engine's answer is not valid HTTP/1.1: {exc}"))
            self.abort()
            return
        if self.streaming and not self._paused and self._buffered > _READ_HIGH_WATER:
            self._paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if not self.complete and self.error is None:
            reason = f": {exc!r}" if exc is not None else ""
            err = EngineConnectionError(f"the engine closed the connection{reason}")
            err.__cause__ = exc
            self.error = err
        self._wake()

    # ---------------------------------------------------------------- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once complete
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # ---------------------------------------------------------------- waiting
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _expire(self) -> None:
        self._timer = None
        self._fail(TimeoutError("the engine did not answer in time"))
        self.abort()

    async def wait(self) -> None:
        """Until more of the answer arrived (or it failed: ``error`` is set)."""
        if self.error is not None or self.closed:
            return
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        now = loop.time()
        at = now + self._read_s
        if self._deadline < at:
            at = self._deadline
        self._timer = loop.call_at(at, self._expire)
        try:
            await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def take_body(self) -> bytes:
        """What arrived of the body since the last call (one piece, joined if several)."""
        body = self.body
        out = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused and not self.closed:
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return out

    def abort(self) -> None:
        """Drop the connection now (the engine sees it go)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self.closed = True
        self.pool._forget(self)


class UpstreamResponse:
    """An engine's answer whose status line and headers arrived; the body follows."""

    __slots__ = ("_conn", "_done", "_header_list", "content_type_header", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._done = False
        self.status = conn.status
        self._header_list = conn.header_list
        self.content_type_header = ""
        """The ``Content-Type`` header as sent, ``""`` when absent."""
        for name, value in self._header_list:
            if len(name) == 12 and name.lower() == b"content-type":
                self.content_type_header = value.decode("latin-1")

    @property
    def headers(self) -> dict[str, str]:
        """Header names lower-cased (the last value of a repeated header)."""
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._header_list}

    @property
    def content_type(self) -> str:
        """The media type without parameters (``text/event-stream``), ``""`` when absent."""
        return self.content_type_header.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body (raises like ``UpstreamPool.request``)."""
        conn = self._conn
        while not conn.complete:
            if conn.error is not None:
                raise _raised(conn.error)
            await conn.wait()
        return conn.take_body()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each item is everything received since the last one
        (reading from the engine pauses while more than 1 MiB waits for the client)."""
        conn = self._conn
        conn.streaming = True
        while True:
            if conn.body:
                yield conn.take_body()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise _raised(conn.error)
            await conn.wait()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if the body was read
        whole and the engine keeps it alive, else it is dropped."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.body and not conn.closed:
            conn.pool._give_back(conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Drop the connection (aborts the engine's request if it is still running)."""
        if not self._done:
            self._done = True
            self._conn.abort()


def _raised(error: BaseException) -> BaseException:
    """A fresh exception to raise for the connection's stored ``error`` (the stored one keeps
    no traceback of this call)."""
    if isinstance(error, TimeoutError):
        return TimeoutError(*error.args)
    out = EngineConnectionError(*error.args)
    out.__cause__ = error.__cause__
    return out


class UpstreamPool:
    """Keep-alive connections to the engines, per (scheme, host, port); idle ones are reused
    newest first and closed after ``keepalive_s``."""

    def __init__(self, *, keepalive_s: float = 60.0) -> None:
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._targets: dict[str, tuple[tuple[str, str, int], bytes, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
        """(pool key, ``Host`` header value, path prefix) of an engine base URL, parsed once."""
        hit = self._targets.get(url)
        if hit is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"engine URL {url!r} must be http://host[:port][/path]")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            host_header = parts.netloc.rpartition("@")[2].encode()
            hit = ((parts.scheme, parts.hostname, port), host_header, parts.path.encode())
            if len(self._targets) < 4096:
                self._targets[url] = hit
        return hit

    async def request(
        self,
        method: bytes,
        base_url: str,
        path: bytes,
        body: bytes = b"",
        *,
        headers: bytes = b"",
        connect_s: float,
        total_s: float,
        read_s: float | None = None,
    ) -> UpstreamResponse:
        """Send ``method base_url+path`` with ``body`` (JSON; ``headers``: extra header lines,
        each ending in CRLF) and wait for the answer's head. ``read_s`` bounds each wait for
        bytes (default: ``total_s``)."""
        key, host, prefix = self._target(base_url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_s
        head = b"".join(
            (
                method,
                b" ",
                prefix,
                path,
                b" HTTP/1.1\r\nHost: ",
                host,
                b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n",
                headers,
                b"\r\n",
            )
        )
        retry = method == b"GET"
        while True:
            conn, reused = self._take_idle(key, loop.time())
            if conn is None:
                conn = await self._connect(key, min(connect_s, max(0.0, deadline - loop.time())))
            conn._deadline = deadline
            conn._read_s = total_s if read_s is None else read_s
            self._busy.add(conn)
            try:
                transport = conn.transport
                assert transport is not None
                if body:
                    transport.writelines((head, body))
                else:
                    transport.write(head)
                while not conn.headers_done:
                    if conn.error is not None:
                        raise _raised(conn.error)
                    await conn.wait()
            except EngineConnectionError:
                conn.abort()
                if retry and reused and not conn.received:
                    retry = False
                    continue
                raise
            except BaseException:
                conn.abort()
                raise
            return UpstreamResponse(conn)

    def _take_idle(self, key: tuple[str, str, int], now: float) -> tuple[_Connection | None, bool]:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.keepalive_s:
                conn.abort()
                continue
            conn._reset()
            return conn, True
        return None, False

    async def _connect(self, key: tuple[str, str, int], timeout_s: float) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, key), host, port, ssl=context
                )
        except TimeoutError:
            raise TimeoutError(f"no connection to {host}:{port} within {timeout_s:g} s") from None
        except OSError as exc:
            err = EngineConnectionError(exc.errno, f"cannot connect to {host}:{port}: {exc}")
            raise err from exc
        return conn

    def _give_back(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.idle_since = conn._loop.time()
        conn._deadline = conn._read_s = 0.0
        self._idle.setdefault(conn.key, []).append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)

    async def close(self) -> None:
        """Drop every connection, idle or in use."""
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()
