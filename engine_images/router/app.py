"""HTTP routes of the router (aiohttp): thin handlers over ``RouterCore``; errors mapped in one
place.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming or not),
``GET /v1/models``, ``GET /healthz`` (readiness; also ``/health``), ``GET /livez``
(liveness), ``GET /metrics``, ``GET /status``
(routing state as JSON). Answers carry ``X-Request-Id``, ``X-PrfaaS-Route`` and
``X-PrfaaS-Uncached-Tokens``.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from prfaas.engine.router.errors import RouterError, UpstreamRejectedError
from prfaas.engine.router.metrics import CONTENT_TYPE_LATEST
from prfaas.engine.router.proxy import RouterCore
from prfaas.engine.router.request import ApiKind, new_request_id

__all__ = ["ROUTER_KEY", "build_app", "error_middleware"]

log = logging.getLogger(__name__)

ROUTER_KEY = web.AppKey("router", RouterCore)
_RID_KEY = web.RequestKey("prfaas_request_id", str)
MAX_BODY_BYTES = 64 << 20
"""Largest accepted request body (long prompts as text or token ids)."""


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where ``RouterError`` becomes an HTTP answer (OpenAI error JSON)."""
    try:
        return await handler(request)
    except RouterError as exc:
        headers = {"X-Request-Id": request[_RID_KEY]} if _RID_KEY in request else {}
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        if isinstance(exc, UpstreamRejectedError) and exc.body:
            return web.Response(
                body=exc.body,
                status=exc.status,
                content_type="application/json",
                headers=headers,
            )
        return web.json_response(exc.to_json(), status=exc.status, headers=headers)


async def _proxy(request: web.Request, kind: ApiKind) -> web.StreamResponse:
    router = request.app[ROUTER_KEY]
    rid = request.headers.get("X-Request-Id") or new_request_id()
    request[_RID_KEY] = rid
    relay = await router.handle(kind, await request.read(), rid)
    return await relay.respond(request)


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "completions")


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "chat")


async def _models(request: web.Request) -> web.Response:
    cfg = request.app[ROUTER_KEY].config
    card = {
        "id": cfg.model,
        "object": "model",
        "owned_by": "prfaas",
        "root": cfg.model,
        "max_model_len": cfg.max_model_len,
    }
    return web.json_response({"object": "list", "data": [card]})


async def _healthz(request: web.Request) -> web.Response:
    """200 while at least one decode instance is healthy, else 503 with the reason."""
    router = request.app[ROUTER_KEY]
    healthy = router.healthy_decode()
    if healthy == 0:
        reason = f"no healthy decode instance in {router.config.local_datacenter!r}"
        return web.json_response({"status": "unavailable", "reason": reason}, status=503)
    return web.json_response({"status": "ok", "decode_healthy": healthy})


async def _livez(request: web.Request) -> web.Response:
    """200 while the process serves HTTP (a liveness probe: engines being down is not a reason
    to restart the router; ``/healthz`` is the readiness check)."""
    return web.json_response({"status": "alive"})


async def _status(request: web.Request) -> web.Response:
    """Routing state (links, ``t``, egress, instance loads and health) for people and tools."""
    return web.json_response(request.app[ROUTER_KEY].snapshot())


async def _metrics(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    router.update_gauges()
    router.update_instance_gauges()
    resp = web.Response(body=router.metrics.exposition())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def build_app(router: RouterCore) -> web.Application:
    """The aiohttp application serving ``router`` (its lifecycle is the caller's)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[ROUTER_KEY] = router
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/health", _healthz)
    app.router.add_get("/livez", _livez)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    return app
