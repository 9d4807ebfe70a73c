"""What the router service and the fake engines share: binding an aiohttp app to a port, and
``async with`` around their ``start``/``stop``."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["AsyncService", "serve_app"]


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    header_timeout_s: float = 75.0,
    cancel_on_disconnect: bool = False,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (``0``: a free port); the runner and the bound port.

    ``header_timeout_s``: a connection without a whole request head by then (and an idle
    keep-alive one) is closed — aiohttp's keep-alive timer starts when the connection opens.
    ``cancel_on_disconnect``: a client that goes away cancels its handler (and so the upstream
    calls it awaits)."""
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=header_timeout_s,
        handler_cancellation=cancel_on_disconnect,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
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
