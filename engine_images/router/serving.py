"""What the router service and the fake engines share: binding an aiohttp app to a port, and
``async with`` around their ``start``/``stop``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self

from aiohttp import web

__all__ = ["AsyncService", "ConnectionFactory", "serve_app"]


class ConnectionFactory(Protocol):
    """Makes the protocol of each accepted connection; ``close`` ends those still open."""

    def __call__(self) -> asyncio.Protocol: ...

    def close(self) -> None: ...


class _WrappedSite(web.TCPSite):
    """A TCP site whose connections start in ``wrap(aiohttp's protocol factory)`` (which may
    hand a connection to aiohttp's protocol); stopping it also closes those connections."""

    __slots__ = ("_factory", "_wrap")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        backlog: int,
        wrap: Callable[[Callable[[], asyncio.Protocol]], ConnectionFactory],
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self._wrap = wrap
        self._factory: ConnectionFactory | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._factory = self._wrap(server)
        self._server = await asyncio.get_running_loop().create_server(
            self._factory, self._host, self._port, backlog=self._backlog
        )

    async def stop(self) -> None:
        await super().stop()
        if self._factory is not None:
            self._factory.close()


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    header_timeout_s: float = 75.0,
    cancel_on_disconnect: bool = False,
    wrap: Callable[[Callable[[], asyncio.Protocol]], ConnectionFactory] | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (``0``: a free port); the runner and the bound port.

    ``header_timeout_s``: a connection without a whole request head by then (and an idle
    keep-alive one) is closed — aiohttp's keep-alive timer starts when the connection opens.
    ``cancel_on_disconnect``: a client that goes away cancels its handler (and so the upstream
    calls it awaits). ``wrap``: each connection starts in the protocol this makes from aiohttp's
    protocol factory (the router's completions fast lane)."""
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=header_timeout_s,
        handler_cancellation=cancel_on_disconnect,
    )
    await runner.setup()
    site = (
        web.TCPSite(runner, host, port, backlog=1024)
        if wrap is None
        else _WrappedSite(runner, host, port, backlog=1024, wrap=wrap)
    )
    await site.start()
    return runner, int(runner.addresses[0][1])


class AsyncService:
    """A server with ``start``/``stop``, usable as ``async with service:``."""

    async def start(self) -> str:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
