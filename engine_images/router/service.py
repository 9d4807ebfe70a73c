"""The PrfaaS router: an OpenAI-compatible gateway in front of one decode cluster.

It sends long uncached prompts to a remote prefill cluster and short ones to the local PD
cluster, with the vLLM ``kv_transfer_params`` two-step call (``router_proxy``, bodies in
``router_request``), a bandwidth-aware threshold (``router_policy``), metrics
(``router_metrics``) and one error tree (``router_errors``). Configured by the router file
(``router_config``), re-read when its modification time changes.

Run it::

    prfaas router --config router.yaml --port 8000          # command line, blocks

    async with RouterService("router.yaml", port=0) as svc:  # in-process (tests, prfaas up)
        print(svc.url)                                       # http://127.0.0.1:<port>

HTTP: ``POST /v1/completions`` and ``/v1/chat/completions`` (streaming or not), ``GET
/v1/models``, ``/healthz`` (readiness: 503 while no decode instance is healthy), ``/livez``,
``/metrics``, ``/status`` (links, ``t``, egress, instance loads as JSON). Answers carry
``X-Request-Id`` (the client's, or a new one; sent on both engine legs), ``X-PrfaaS-Route``
(``local`` / ``remote`` / ``fallback``) and ``X-PrfaaS-Uncached-Tokens``.

What happens on failure: a malformed request gets a 4xx with the reason and reaches no engine;
a remote prefill that fails, times out or whose link is down (``down: true``, capacity 0, or
an open circuit) falls back to local prefill, then to the decode instance prefilling itself;
a decode instance that fails before answering is replaced by another; a decode stream that
breaks off ends with an in-band ``data: {"error": …}`` event; no healthy decode instance → 503.

Overload and abuse: past ``admission.maxInFlight`` requests → 429 with ``Retry-After`` before
the body is read; a body larger than ``maxModelLen`` can need → 413 (checked while reading,
after decompression); text that cannot fit → 400 before tokenising; a request head not sent
within ``admission.headerTimeoutS`` → connection closed, a body not within ``bodyTimeoutS`` →
408; a client that leaves cancels its engine calls; the router's own descriptor or memory
exhaustion → 503 without blaming an engine; a half-open circuit lets one trial through.

Metrics (``prfaas_router_``): ``requests_total{path, outcome}``, ``ttft_seconds``,
``tpot_seconds``, ``uncached_tokens``, ``kv_bytes_in_flight{link}``,
``threshold_tokens{link}``, ``link_egress_bits_per_second{link}``, ``link_up{link}``,
``instance_up{datacenter, role, url}``, ``backend_failures_total{datacenter, role}``,
``config_reloads_total{outcome}``.

On Kubernetes the router file's ``discovery`` names the pools whose pods the router follows
(``prfaas.engine.router.discovery``: a watch on their Services' EndpointSlices); their URLs in
the file are the fallback until the first list answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from prfaas.engine.router.app import build_app
from prfaas.engine.router.config import RouterConfig, RouterConfigError, load_router_config
from prfaas.engine.router.discovery import EndpointWatcher, PoolKey, apply_discovery
from prfaas.engine.router.errors import ConfigError
from prfaas.engine.router.fastlane import FastLaneFactory
from prfaas.engine.router.proxy import RouterCore
from prfaas.engine.router.serving import AsyncService, serve_app
from prfaas.engine.router.tokenizer import PromptTokenizer

__all__ = ["RouterCore", "RouterService", "raise_open_files_limit", "run_router"]

log = logging.getLogger(__name__)


class RouterService(AsyncService):
    """A router serving HTTP, plus its background loops: the file watcher (reload on a
    modification-time change, every ``reload_interval_s``), the threshold ticker (every half
    controller interval, so ``t`` decays back while no request arrives) and the engines'
    health prober (``health`` in the router file).

    ``source`` is the router file's path, or a ``RouterConfig`` (no reloading). ``port=0``
    picks a free port; ``url`` tells which after ``start``. ``tokenizer`` and ``clock``
    (monotonic seconds) replace the configured tokenizer and the real clock in tests.
    """

    def __init__(
        self,
        source: str | Path | RouterConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        reload_interval_s: float = 1.0,
        tokenizer: PromptTokenizer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = None if isinstance(source, RouterConfig) else Path(source)
        self.host, self.port = host, port
        self.reload_interval_s = reload_interval_s
        self._mtime: float | None = None
        config = source if isinstance(source, RouterConfig) else self._load()
        self.file_config = config
        """The router file as read; the router runs it with the discovered instances."""
        self.router = RouterCore(config, tokenizer=tokenizer, clock=clock)
        self.watcher: EndpointWatcher | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_task: asyncio.Task[None] | None = None

    def _load(self) -> RouterConfig:
        assert self.path is not None
        try:
            self._mtime = self.path.stat().st_mtime
            return load_router_config(self.path)
        except (OSError, RouterConfigError) as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        """Load the tokenizer, bind the port, start the loops; returns the base URL."""
        await self.router.start()
        admission = self.router.config.admission
        self._runner, bound = await serve_app(
            build_app(self.router),
            self.host,
            self.port,
            header_timeout_s=admission.header_timeout_s,
            cancel_on_disconnect=True,
            wrap=lambda aiohttp_protocol: FastLaneFactory(self.router, aiohttp_protocol),
        )
        if self.port == 0:
            self.port = bound
        self._tasks = [asyncio.create_task(self._tick_loop())]
        if self.router.config.health.enabled:
            self._tasks.append(asyncio.create_task(self._probe_loop()))
        if self.path is not None:
            self._tasks.append(asyncio.create_task(self._watch_loop()))
        self._follow(self.file_config)
        log.info("router serving %s on %s", self.router.config.model, self.url)
        return self.url

    def _follow(self, config: RouterConfig) -> None:
        """(Re)start the EndpointSlice watch when the file's ``discovery`` asks for it."""
        settings = config.discovery
        if self.watcher is not None and self.watcher.settings == settings:
            return
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        self.watcher = None
        if settings is not None and settings.pools:
            self.watcher = EndpointWatcher(settings, self._discovered)
            self._watch_task = asyncio.create_task(self.watcher.run())

    async def _discovered(self, found: dict[PoolKey, list[str]]) -> None:
        state = self.router.policy.role_state()
        await self.router.reconfigure(apply_discovery(self.file_config, found, *state))
        log.info(
            "discovery: %s",
            ", ".join(f"{dc}/{role}={len(urls)}" for (dc, role), urls in sorted(found.items())),
        )

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._tasks.append(self._watch_task)
            self._watch_task, self.watcher = None, None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.router.close()

    async def reload_if_changed(self) -> bool:
        """Re-read the router file if its mtime moved; a bad file keeps the old config."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        try:
            config = self._load()
        except ConfigError as exc:
            self._mtime = mtime
            self.router.metrics.config_reloads.labels("error").inc()
            log.error("router file changed but is invalid; keeping the old config: %s", exc)
            return False
        found = self.watcher.found if self.watcher is not None else {}
        try:
            state = self.router.policy.role_state()
            await self.router.reconfigure(apply_discovery(config, found, *state))
        except ConfigError as exc:
            self.router.metrics.config_reloads.labels("error").inc()
            log.error("router file changed but cannot be applied; keeping the old config: %s", exc)
            return False
        self.file_config = config
        self._follow(config)
        self.router.metrics.config_reloads.labels("ok").inc()
        log.info("router file %s reloaded", self.path)
        return True

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                await self.reload_if_changed()
            except Exception:  # never let the watcher die silently
                log.exception("router file reload failed")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.router.config.health.interval_s)
            if not self.router.config.health.enabled:
                continue
            try:
                await self.router.probe()
            except Exception:  # never let the prober die silently
                log.exception("health probe round failed")

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.router.config.controller.interval_s / 2)
            self.router.tick()


def raise_open_files_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (each client and each engine leg is a
    descriptor; 1024 runs out under load). Returns the new soft limit, ``None`` where the
    platform has no such limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft
    if target != soft:
        log.info("open-files limit raised from %d to %d", soft, target)
    return target


async def _serve_forever(service: RouterService) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with service:
        # Everything loaded so far (tokenizer, aiohttp, pydantic) lives for the whole process:
        # keep it out of the cyclic collector's full passes, which otherwise add ms-long stalls.
        gc.collect()
        gc.freeze()
        print(f"prfaas router: {service.url} (model {service.router.config.model})", flush=True)
        await stop.wait()


def run_router(
    config_path: str | Path,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    reload_interval_s: float = 1.0,
) -> None:
    """Serve until SIGINT/SIGTERM (``prfaas router``). Uses uvloop when it is installed."""
    logging.basicConfig(
        level=os.environ.get("PRFAAS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise_open_files_limit()
    service = RouterService(config_path, host=host, port=port, reload_interval_s=reload_interval_s)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_forever(service))
    else:
        uvloop.run(_serve_forever(service))
