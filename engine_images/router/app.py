"""HTTP routes of the router (aiohttp): thin handlers over ``RouterCore``; errors mapped in one
place.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming or not),
``GET /v1/models``, ``GET /healthz`` (readiness; also ``/health``), ``GET /livez``
(liveness), ``GET /metrics``, ``GET /status``
(routing state as JSON). Answers carry ``X-Request-Id``, ``X-PrfaaS-Route`` and
``X-PrfaaS-Uncached-Tokens``. Every error, an unknown path or a wrong method included, is
OpenAI error JSON (``{"error": {"message", "type", "param", "code"}}``). Plain completions
requests are served before they reach aiohttp, by ``router_fastlane``, with the same answers
(``error_headers``, ``unexpected_error``); these routes serve the rest.
"""

from __future__ import annotations

import asyncio
import logging
import math

from aiohttp import web
from aiohttp.typedefs import Handler
from prfaas.engine.router.errors import (
    BadRequestError,
    PayloadTooLargeError,
    RouterError,
    UpstreamRejectedError,
)
from prfaas.engine.router.metrics import CONTENT_TYPE_LATEST
from prfaas.engine.router.proxy import RouterCore
from prfaas.engine.router.request import MAX_BODY_BYTES, ApiKind, body_limit, new_request_id

__all__ = [
    "ROUTER_KEY",
    "build_app",
    "error_headers",
    "error_middleware",
    "read_body",
    "unexpected_error",
]

log = logging.getLogger(__name__)

ROUTER_KEY = web.AppKey("router", RouterCore)
_RID_KEY = web.RequestKey("prfaas_request_id", str)


_HTTP_KINDS = {
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
}
"""OpenAI-style ``type`` of the errors aiohttp raises itself (no route, wrong method, ...)."""


def _routes(app: web.Application) -> str:
    """What the router serves, e.g. ``POST /v1/completions, GET /v1/models, ...``."""
    seen = [
        f"{r.method} {r.resource.canonical}"
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    ]
    return ", ".join(dict.fromkeys(seen))


def _http_error(request: web.Request, exc: web.HTTPException) -> RouterError:
    """aiohttp's own 4xx/5xx (unknown path, wrong method, body too large) as a ``RouterError``,
    so that every answer, not only the proxy's, is OpenAI error JSON."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(m for m in exc.allowed_methods if m != "HEAD"))
        message = f"{request.method} {request.path} is not allowed; use {allowed}"
    elif isinstance(exc, web.HTTPNotFound):
        served = _routes(request.app)
        message = f"no route {request.method} {request.path}; the router serves {served}"
    else:
        message = exc.text or exc.reason
    err = RouterError(message, status=exc.status)
    err.kind = _HTTP_KINDS.get(exc.status, "BadRequestError" if exc.status < 500 else err.kind)
    return err


def error_headers(exc: RouterError, rid: str | None, method: str, path: str) -> dict[str, str]:
    """Headers of the answer to ``exc`` (``X-Request-Id``, ``Retry-After``); a 5xx is logged
    as one WARNING line. Shared by this middleware and the completions fast lane."""
    headers = {"X-Request-Id": rid} if rid is not None else {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if exc.status >= 500:
        log.warning("%s %s -> %d: %s", method, path, exc.status, exc.message)
    return headers


def unexpected_error(method: str, path: str, exc: Exception) -> RouterError:
    """A bug as a 500 ``RouterError``: one WARNING line names it, the traceback is at DEBUG."""
    log.debug("%s %s failed", method, path, exc_info=exc)
    return RouterError(
        f"the router failed on {method} {path}: {type(exc).__name__}: {exc}; see the router's log"
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where errors become HTTP answers, all OpenAI error JSON: ``RouterError``,
    aiohttp's own (unknown path, wrong method, body too large) and anything unexpected."""
    try:
        try:
            return await handler(request)
        except web.HTTPException as http:
            if http.status < 400:
                raise  # redirects and the like stay what they are
            err = _http_error(request, http)
            headers = {"Allow": http.headers["Allow"]} if "Allow" in http.headers else {}
            return web.json_response(err.to_json(), status=err.status, headers=headers)
        except RouterError:
            raise
        except ConnectionError:
            # The client went away; there is no one to answer. One line, not a traceback
            # per disconnect (aiohttp logs a cancelled handler at DEBUG only).
            log.warning("%s %s: the client disconnected", request.method, request.path)
            raise asyncio.CancelledError from None
        except Exception as unexpected:
            # A bug: the 500's one WARNING line below names it; the traceback is at DEBUG.
            raise unexpected_error(request.method, request.path, unexpected) from unexpected
    except RouterError as exc:
        rid = request.get(_RID_KEY)
        headers = error_headers(exc, rid, request.method, request.path)
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
    router.admit()  # 429 before anything is read when the in-flight bound is reached
    try:
        cfg = router.config
        try:
            if request.content.is_eof():  # the whole body came with the head: nothing to wait for
                raw = await read_body(request, body_limit(cfg.max_model_len))
            else:
                async with asyncio.timeout(cfg.admission.body_timeout_s):
                    raw = await read_body(request, body_limit(cfg.max_model_len))
        except TimeoutError as exc:
            raise BadRequestError(
                f"the request body did not arrive within {cfg.admission.body_timeout_s:g} s",
                status=408,
            ) from exc
        relay = await router.handle(kind, raw, rid)
        return await relay.respond(request)
    finally:
        router.release()


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes: by ``Content-Length`` before reading, and
    while reading after decompression (a small gzip body can inflate a thousandfold), so an
    oversized body never sits whole in memory."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(
            f"request body of {request.content_length} bytes is over this router's limit of "
            f"{limit} bytes (sized from maxModelLen); shorten the prompt"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"request body is over this router's limit of {limit} bytes once decompressed "
                "(sized from maxModelLen); shorten the prompt"
            )
        chunks.append(chunk)
    return b"".join(chunks)


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
