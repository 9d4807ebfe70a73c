"""The completions fast lane: plain ``POST /v1/completions`` and ``/v1/chat/completions``
requests served straight off the socket; anything else handed, connection and all, to aiohttp.

Why: aiohttp's server machinery (request objects, routing, middleware, response objects) cost
about a fifth of the router's CPU per request; here a request costs a head split and a dict
(``bench/router.py`` prints the effect). Only the two hot routes come here, and only in their
plain form, so every unusual case keeps aiohttp's handling exactly.

A connection starts here. A request head that is HTTP/1.1 ``POST`` to one of the two paths,
with one ``Content-Length`` within the body limit and no ``Transfer-Encoding``,
``Content-Encoding``, ``Expect``, ``Upgrade``, ``Connection`` other than ``keep-alive`` or
control characters, is served by ``RouterCore.handle`` and ``Relay.send`` — the same errors
(``router_app.error_headers``), headers and bookkeeping as aiohttp's route. Any other head
hands the connection, with every byte not yet served, to aiohttp's protocol, which serves it
from then on (routes, 404/405, 413, gzip bodies, malformed HTTP). Requests on a connection are
served one at a time, in order.

Limits, as on aiohttp's side: no complete head within ``admission.headerTimeoutS`` (from the
connection's start, and while idle between requests) closes the connection; past
``maxInFlight`` → 429 + ``Retry-After`` before the body is read; a body not complete within
``bodyTimeoutS`` → 408. After those two answers the connection is closed (the rest of the body
is never read). A client that leaves cancels its request (and so its engine calls).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus

from prfaas.engine.router.app import error_headers, unexpected_error
from prfaas.engine.router.errors import (
    BadRequestError,
    OverloadedError,
    RouterError,
    UpstreamRejectedError,
)
from prfaas.engine.router.proxy import RouterCore
from prfaas.engine.router.request import API_PATHS, ApiKind, body_limit, new_request_id

__all__ = ["FastLane", "FastLaneFactory"]

_HOT: dict[bytes, ApiKind] = {path.encode(): kind for kind, path in API_PATHS.items()}
_MAX_HEAD_BYTES = 8190
"""Longer heads go to aiohttp, which judges them (its own line and field limits)."""
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""Bytes no header may hold (CR and LF only as line ends; TAB is allowed)."""
_HANDED_TO_AIOHTTP = frozenset(
    {b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"te", b"trailer"}
)
_PAUSE_READING_BYTES = 1 << 20
"""Bytes of the next request(s) buffered while one is served before reading pauses."""
_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus}
_date: list[float | bytes] = [0.0, b""]


def _http_date() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    return _date[1]  # type: ignore[return-value]


def _head(status: int, headers: dict[str, str], framing: bytes) -> bytes:
    """Status line and headers of an answer; ``framing`` is its length header line."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    lines.append(b"Date: " + _http_date() + b"\r\n" + framing + b"\r\n")
    return b"".join(lines)


class FastLane(asyncio.Protocol):
    """One client connection, while its requests are plain completions (see the module)."""

    def __init__(self, router: RouterCore, fallback: Callable[[], asyncio.Protocol]) -> None:
        self.router = router
        self._fallback = fallback
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending: tuple[ApiKind, str, int, int] | None = None
        """A parsed head waiting for its body: (kind, request id, body length, body start)."""
        self._admitted = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._write_paused = False
        self._read_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._streaming_started = False
        self.handed_off = False

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.router.config.admission.header_timeout_s, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is None:
            self._next()
        elif len(self._buf) > _PAUSE_READING_BYTES and not self._read_paused:
            assert self.transport is not None
            self._read_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._disarm()
        if self._task is not None:
            self._task.cancel()  # the client left: its engine calls stop
        elif self._admitted:
            self._admitted = False
            self.router.release()
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # ---------------------------------------------------------------- timers
    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timeout(self) -> None:
        self._timer = None
        if self.transport is not None and self._task is None:
            self.transport.close()

    def _body_timeout(self) -> None:
        self._timer = None
        if self._pending is None or self._closed:
            return
        kind, rid = self._pending[0], self._pending[1]
        t = self.router.config.admission.body_timeout_s
        err = BadRequestError(f"the request body did not arrive within {t:g} s", status=408)
        self._answer_error(err, rid, kind, close=True)

    # ---------------------------------------------------------------- requests
    def _next(self) -> None:
        """Start serving the next complete request in the buffer, or wait for the rest of it."""
        if self._closed or self.handed_off:
            return
        buf = self._buf
        if self._pending is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD_BYTES:
                    self._hand_off()
                return
            parsed = self._parse(bytes(buf[:end]))
            if parsed is None:
                self._hand_off()
                return
            kind, rid, length = parsed
            self._pending = (kind, rid, length, end + 4)
            try:
                self.router.admit()  # 429 before the body is read, as on aiohttp's route
            except OverloadedError as exc:
                self._answer_error(exc, rid, kind, close=True)
                return
            self._admitted = True
            if len(buf) < end + 4 + length:  # the body is still coming
                self._arm(self.router.config.admission.body_timeout_s, self._body_timeout)
                return
        kind, rid, length, start = self._pending
        if len(buf) < start + length:
            return
        body = bytes(buf[start : start + length])
        del buf[: start + length]
        self._pending = None
        self._disarm()
        self._task = self._loop.create_task(self._serve(kind, rid, body))

    def _parse(self, head: bytes) -> tuple[ApiKind, str, int] | None:
        """(kind, request id, body length) of a plain completions head; ``None``: aiohttp's."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return None
        kind = _HOT.get(parts[1])
        if kind is None or _CONTROL.search(head.replace(b"\r\n", b"\t")):
            return None
        length: int | None = None
        rid = ""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1] in (32, 9) or line[0] in (32, 9):
                return None  # no colon, space before it, or a folded line: aiohttp's to judge
            lname = name.lower()
            if lname == b"content-length":
                number = value.strip(b" \t")
                if length is not None or not number.isdigit() or len(number) > 18:
                    return None
                length = int(number)
            elif lname in _HANDED_TO_AIOHTTP:
                return None
            elif lname == b"connection":
                if value.strip(b" \t").lower() != b"keep-alive":
                    return None
            elif lname == b"x-request-id" and not rid:
                rid = value.strip(b" \t").decode("utf-8", "surrogateescape")
        if length is None or length > body_limit(self.router.config.max_model_len):
            return None  # no length (aiohttp: 411/empty body) or too large (its route: 413)
        return kind, rid or new_request_id(), length

    def _hand_off(self) -> None:
        """aiohttp serves this connection from now on, starting with the unserved bytes."""
        self._disarm()
        self.handed_off = True
        transport = self.transport
        assert transport is not None
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buf = bytes(self._buf), bytearray()
        if data:
            protocol.data_received(data)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    async def _serve(self, kind: ApiKind, rid: str, raw: bytes) -> None:
        router = self.router
        try:
            try:
                relay = await router.handle(kind, raw, rid)
                await relay.send(self)
            except (RouterError, asyncio.CancelledError):
                raise
            except ConnectionError:
                return  # the client went away: no one to answer
            except Exception as unexpected:
                raise unexpected_error("POST", API_PATHS[kind], unexpected) from unexpected
        except RouterError as exc:
            if self._streaming_started:
                self._close()  # headers are out: nothing else can be said
            else:
                self._answer_error(exc, rid, kind, close=False)
        except asyncio.CancelledError:
            if not self._closed:
                raise  # not the client's doing (shutdown): let it propagate
        finally:
            self._streaming_started = False
            self._admitted = False
            router.release()
            self._task = None
            if not self._closed:
                self._arm(router.config.admission.header_timeout_s, self._head_timeout)
                if self._read_paused:
                    assert self.transport is not None
                    self._read_paused = False
                    self.transport.resume_reading()
                if self._buf:
                    self._next()

    def _answer_error(self, exc: RouterError, rid: str, kind: ApiKind, *, close: bool) -> None:
        headers = error_headers(exc, rid, "POST", API_PATHS[kind])
        if isinstance(exc, UpstreamRejectedError) and exc.body:
            body, ctype = exc.body, "application/json"
        else:
            body, ctype = json.dumps(exc.to_json()).encode(), "application/json; charset=utf-8"
        headers["Content-Type"] = ctype
        if close:
            headers["Connection"] = "close"
            if self._admitted:
                self._admitted = False
                self.router.release()
            self._pending = None
        self.whole(exc.status, headers, body)
        if close:
            self._close()

    def _close(self) -> None:
        self._disarm()
        if self.transport is not None and not self._closed:
            self.transport.close()

    # ---------------------------------------------------------------- ClientSink
    def whole(self, status: int, headers: dict[str, str], body: bytes) -> None:
        if self.transport is None or self._closed:
            return
        framing = b"Content-Length: %d\r\n" % len(body)
        self.transport.writelines((_head(status, headers, framing), body))

    async def open(self, status: int, headers: dict[str, str]) -> None:
        if self.transport is None or self._closed:
            raise ConnectionResetError("the client closed the connection")
        self._streaming_started = True
        self.transport.write(_head(status, headers, b"Transfer-Encoding: chunked\r\n"))

    async def write(self, chunk: bytes) -> None:
        if self.transport is None or self._closed:
            raise ConnectionResetError("the client closed the connection")
        if not chunk:
            return  # an empty chunk would end the stream
        self.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        if self._write_paused:
            self._drained = self._loop.create_future()
            await self._drained

    async def end(self) -> None:
        if self.transport is None or self._closed:
            raise ConnectionResetError("the client closed the connection")
        self.transport.write(b"0\r\n\r\n")
        self._streaming_started = False


class FastLaneFactory:
    """Makes a ``FastLane`` per accepted connection (``fallback``: aiohttp's protocol factory)
    and remembers them, so that ``close`` can end them at shutdown."""

    def __init__(self, router: RouterCore, fallback: Callable[[], asyncio.Protocol]) -> None:
        self.router = router
        self.fallback = fallback
        self._lanes: set[FastLane] = set()

    def __call__(self) -> asyncio.Protocol:
        lane = _TrackedLane(self, self.router, self.fallback)
        self._lanes.add(lane)
        return lane

    def close(self) -> None:
        """Close every connection still in the fast lane (their requests are cancelled)."""
        for lane in list(self._lanes):
            if lane.transport is not None and not lane.handed_off:
                lane.transport.abort()
        self._lanes.clear()


class _TrackedLane(FastLane):
    def __init__(
        self, owner: FastLaneFactory, router: RouterCore, fallback: Callable[[], asyncio.Protocol]
    ) -> None:
        super().__init__(router, fallback)
        self._owner = owner

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._owner._lanes.discard(self)

    def _hand_off(self) -> None:
        super()._hand_off()
        self._owner._lanes.discard(self)
