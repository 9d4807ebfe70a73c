"""The two-step disaggregated call: prefill (``max_tokens=1`` + ``kv_transfer_params``), then
decode with the params the prefill returned, its answer streamed through to the client.

``RouterCore.handle`` validates, tokenises, asks ``RoutingPolicy`` where to go, runs the prefill
leg (remote → on failure local → on failure the decode instance prefills itself), opens the
decode leg and returns a ``Relay``; ``Relay.respond`` writes the decode answer to the client
and does the bookkeeping (metrics, loads, prefix caches, KV bytes in flight). Errors are raised
as ``RouterError`` subclasses; ``router_app`` turns them into HTTP answers. The bodies of
the two legs are built in ``router_request``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.errors import (
    BadRequestError,
    ConfigError,
    LocalResourceError,
    ModelNotFoundError,
    NoBackendError,
    OverloadedError,
    PromptTooLongError,
    RouterError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)
from prfaas.engine.router.metrics import RouterMetrics
from prfaas.engine.router.policy import Decision, Instance, LinkState, RoutingPolicy
from prfaas.engine.router.request import (
    API_PATHS,
    ApiKind,
    ParsedRequest,
    decode_body,
    dump_json,
    engine_error_reason,
    load_json,
    parse_request,
    prefill_body,
)
from prfaas.engine.router.tokenizer import PromptTokenizer, load_tokenizer, max_token_bytes
from prfaas.engine.router.upstream import EngineConnectionError, UpstreamPool, UpstreamResponse
from prometheus_client import Gauge

__all__ = ["ROUTE_HEADER", "UNCACHED_HEADER", "ClientSink", "Relay", "RouterCore"]

log = logging.getLogger(__name__)

ROUTE_HEADER = "X-PrfaaS-Route"
"""Response header: ``local``, ``remote`` or ``fallback`` — the path this request took."""
UNCACHED_HEADER = "X-PrfaaS-Uncached-Tokens"
"""Response header: prompt tokens no local prefix cache held (what ``t`` was compared with)."""

_API_PATH_BYTES: dict[ApiKind, bytes] = {k: v.encode() for k, v in API_PATHS.items()}

_INLINE_TOKENIZE_CHARS = 16384
"""Longer prompts (characters; chat: bytes of the messages as JSON) are tokenised in a worker
thread so the event loop keeps serving."""


def _chat_chars(messages: list[Any]) -> int:
    """Characters of text in chat ``messages`` (string contents and text parts)."""
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    n += len(text)
    return n


def _request_id_header(rid: str) -> bytes:
    """The ``X-Request-Id`` header line both legs carry (the client's id may be any text the
    HTTP parser let through; line breaks never are)."""
    return b"X-Request-Id: " + rid.encode("utf-8", "surrogateescape") + b"\r\n"


# ---------------------------------------------------------------------- bookkeeping
@dataclass(slots=True)
class _Ticket:
    """What one request holds (KV bytes on a link) until it is done; released exactly once."""

    link: LinkState | None = None
    kv_bytes: float = 0.0
    metrics: RouterMetrics | None = None
    """Set once the remote prefill answered: decode is pulling the KV over ``link``."""

    def pulling(self, metrics: RouterMetrics, now: float) -> None:
        """The remote prefill answered: the KV transfer on ``link`` starts (metered)."""
        if self.link is not None:
            self.metrics = metrics
            metrics.transfer_started(self.link.name, now)

    def deliver(self, now: float = 0.0, *, shipped: bool = False) -> None:
        """Release the bytes; ``shipped``: decode answered, so the KV crossed the link."""
        if self.link is not None:
            if self.metrics is not None:
                self.metrics.transfer_ended(self.link.name, now, self.kv_bytes if shipped else 0)
            self.link.delivered(self.kv_bytes)
            self.link, self.kv_bytes, self.metrics = None, 0.0, None


_OWN_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""``OSError`` numbers that say the router itself is short of something, not the engine."""


def _own_resource_error(exc: BaseException) -> LocalResourceError | None:
    """A ``LocalResourceError`` when ``exc`` (or what it wraps) is the router running out of
    descriptors or memory; such a failure must not open an engine's circuit."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        os_error = getattr(seen, "os_error", None)
        for e in (seen, os_error):
            if isinstance(e, OSError) and e.errno in _OWN_RESOURCE_ERRNOS:
                what = "file descriptors" if e.errno in (errno.EMFILE, errno.ENFILE) else "memory"
                return LocalResourceError(
                    f"the router is out of {what} ({e.strerror}); retry shortly",
                    retry_after_s=1.0,
                )
        seen = seen.__cause__ or seen.__context__
    return None


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, RouterError) and 400 <= exc.status < 500:
        return "client_error"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


# ---------------------------------------------------------------------- the router
class RouterCore:
    """The routing core: one per router process; owns the engines' connections and the policy.

    Use ``await router.start()`` before ``handle`` and ``await router.close()`` after;
    ``clock`` (monotonic seconds) and ``tokenizer`` may be injected by tests.
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        tokenizer: PromptTokenizer | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.config = config
        self.policy = RoutingPolicy(config)
        self.clock = clock
        self.metrics = metrics or RouterMetrics()
        self.tokenizer = tokenizer
        self._tokenizer_injected = tokenizer is not None
        self.in_flight = 0
        """Client requests admitted and not finished (``admit``/``release``)."""
        self._upstream: UpstreamPool | None = None
        self._link_gauges: dict[str, tuple[Gauge, ...]] = {}
        """Per link name: its threshold, KV-in-flight, up and egress gauge children (looking
        them up by label costs more than setting them, on every remote request)."""
        self.update_gauges()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = await self._load_tokenizer(self.config.tokenizer)
        if self._upstream is None:
            self._upstream = UpstreamPool(keepalive_s=60.0)

    async def close(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    @property
    def upstream(self) -> UpstreamPool:
        """The keep-alive connections to the engines (both legs and the health probes)."""
        if self._upstream is None:
            raise RuntimeError("RouterCore.start() was not awaited before serving requests")
        return self._upstream

    async def reconfigure(self, config: RouterConfig) -> None:
        """Adopt a new router file (endpoints, t, links…); caches and loops carry over."""
        if config.tokenizer != self.config.tokenizer and not self._tokenizer_injected:
            self.tokenizer = await self._load_tokenizer(config.tokenizer)
        self.config = config
        self.policy.reconfigure(config)
        m = self.metrics
        for gauge in (
            m.threshold,
            m.kv_in_flight,
            m.link_up,
            m.egress,
            m.instance_up,
            m.planned_threshold,
            m.capacity,
            m.headroom,
        ):
            gauge.clear()  # links and instances may have been renamed or removed
        self._link_gauges = {}
        self.update_gauges()
        self.update_instance_gauges()

    @staticmethod
    async def _load_tokenizer(path: str | None) -> PromptTokenizer:
        try:
            return await asyncio.to_thread(load_tokenizer, path)
        except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError…
            raise ConfigError(
                f"cannot load the tokenizer {path!r} named in the router file: {exc}; point "
                "'tokenizer' at the served model's directory (or null to count bytes)"
            ) from exc

    def tick(self) -> None:
        """Run the bandwidth loop (decay ``t`` when idle) and refresh gauges."""
        self.policy.tick(self.clock())
        self.update_gauges()
        self.update_instance_gauges()

    def update_gauges(self) -> None:
        now = self.clock()
        m = self.metrics
        children = self._link_gauges
        for link in self.policy.links.values():
            name = link.name
            gauges = children.get(name)
            if gauges is None:
                gauges = children[name] = (
                    m.threshold.labels(name),
                    m.kv_in_flight.labels(name),
                    m.link_up.labels(name),
                    m.egress.labels(name),
                    m.planned_threshold.labels(name),
                    m.capacity.labels(name),
                    m.headroom.labels(name),
                )
            threshold, in_flight, up, egress, planned, capacity, headroom = gauges
            ctl = link.controller
            threshold.set(ctl.threshold)
            planned.set(math.inf if ctl.planned is None else ctl.planned)
            capacity.set(ctl.capacity_bps)
            headroom.set(ctl.headroom)
            in_flight.set(link.bytes_in_flight)
            up.set(1.0 if link.usable(now) else 0.0)
            egress.set(link.estimated_bps(now))

    async def probe(self) -> None:
        """One round of health probes over every instance (concurrently). Refused or reset
        connections and 5xx answers count as failures; a probe that times out counts as
        nothing, so a busy engine is not taken out of service for being slow."""
        h = self.config.health
        path = h.path.encode()

        async def one(inst: Instance) -> None:
            try:
                resp = await self.upstream.request(
                    b"GET", inst.url, path, connect_s=h.timeout_s, total_s=h.timeout_s
                )
                try:
                    await resp.read()
                finally:
                    resp.release()
                ok = resp.status < 500
            except TimeoutError:
                return  # slow, not dead (a busy engine on a small host): no verdict
            except OSError:
                ok = False
            if ok:
                if inst.down_by_probe:
                    inst.circuit.record_success()
                    inst.down_by_probe = False
            else:
                inst.circuit.record_failure(self.clock())
                inst.down_by_probe = True

        await asyncio.gather(*(one(i) for i in list(self.policy.instances.values())))
        self.update_instance_gauges()

    def update_instance_gauges(self) -> None:
        now = self.clock()
        for i in self.policy.instances.values():
            up = 1.0 if i.circuit.allows(now) else 0.0
            self.metrics.instance_up.labels(i.datacenter, i.role, i.url).set(up)

    def snapshot(self) -> dict[str, Any]:
        """Routing state as JSON (``GET /status``): links with their ``t`` and egress, and
        every instance's load, cached blocks and health."""
        now = self.clock()

        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        links = [
            {
                "name": ln.name,
                "datacenter": ln.datacenter,
                "thresholdTokens": finite(ln.controller.threshold),
                "plannedTokens": ln.controller.planned,
                "egressBps": ln.estimated_bps(now),
                "budgetBps": finite(ln.controller.budget_bps),
                "kvBytesInFlight": ln.bytes_in_flight,
                "up": ln.usable(now),
            }
            for ln in self.policy.links.values()
        ]
        instances = [
            {
                "url": i.url,
                "datacenter": i.datacenter,
                "role": i.role,
                "state": i.state,
                "inFlight": i.in_flight,
                "cachedBlocks": len(i.cache),
                "healthy": i.circuit.allows(now),
                "consecutiveFailures": i.circuit.failures,
            }
            for i in self.policy.instances.values()
        ]
        return {
            "model": self.config.model,
            "localDatacenter": self.config.local_datacenter,
            "links": links,
            "instances": instances,
        }

    def healthy_decode(self) -> int:
        now = self.clock()
        pool = self.policy.pool(self.config.local_datacenter, "decode")
        return sum(1 for i in pool if i.circuit.allows(now))

    # ------------------------------------------------------------------ one request
    def admit(self) -> None:
        """Take one in-flight place, or raise ``OverloadedError`` (429 + ``Retry-After``) when
        ``admission.maxInFlight`` are taken; pair with ``release``."""
        a = self.config.admission
        if a.max_in_flight is not None and self.in_flight >= a.max_in_flight:
            self.metrics.request_done("none", "rejected")
            raise OverloadedError(
                f"this router is serving its limit of {a.max_in_flight} requests; retry after "
                f"{a.retry_after_s:g} s",
                retry_after_s=a.retry_after_s,
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    async def handle(self, kind: ApiKind, raw: bytes, request_id: str) -> Relay:
        """Validate, route, prefill, open decode. Raises ``RouterError``; returns a ``Relay``."""
        t0 = self.clock()
        path = "none"
        ticket = _Ticket()
        try:
            req = parse_request(kind, raw)
            self._check_model(req)
            tokens = await self._tokenize(req)
            self._check_length(req, len(tokens))
            d = self.policy.decide(tokens, t0)
            for target in (d.link, d.prefill, d.decode):
                if target is not None:
                    target.circuit.take_trial(t0)  # a half-open circuit admits this one only
            self.metrics.uncached.observe(d.uncached_tokens)
            path = d.route
            if d.link is not None:
                d.link.send(t0, d.kv_bytes, d.uncached_tokens)
                ticket.link, ticket.kv_bytes = d.link, d.kv_bytes
                self.update_gauges()
            d.decode.started()  # reserved while prefilling, so concurrent picks see the load
            try:
                kv_params, path = await self._prefill(req, d, request_id, ticket)
            finally:
                d.decode.finished()
            resp, decode = await self._open_decode(req, d, kv_params, request_id)
        except BaseException as exc:
            ticket.deliver(self.clock())
            self.metrics.request_done(path, _outcome(exc))
            self.update_gauges()
            raise
        return Relay(
            self, req, request_id, path, t0, resp, decode, d.hashes, ticket, d.uncached_tokens
        )

    def _check_model(self, req: ParsedRequest) -> None:
        model = req.body.get("model")
        if model is not None and model != self.config.model:
            raise ModelNotFoundError(
                f"The model `{model}` does not exist; this router serves `{self.config.model}`"
            )

    async def _tokenize(self, req: ParsedRequest) -> list[int]:
        if req.prompt_ids is not None:
            vocab = getattr(self.tokenizer, "vocab_size", None)
            if isinstance(vocab, int) and max(req.prompt_ids) >= vocab:
                raise BadRequestError(
                    f"token id {max(req.prompt_ids)} is outside the model's vocabulary "
                    f"(0 to {vocab - 1})"
                )
            return req.prompt_ids
        tok = self.tokenizer
        if tok is None:
            raise RuntimeError("RouterCore.start() was not awaited (no tokenizer)")
        if req.kind == "completions":
            text: str = req.body["prompt"]
            self._check_text_length(req, len(text))
            if len(text) > _INLINE_TOKENIZE_CHARS:
                return await asyncio.to_thread(tok.encode_prompt, text)
            return tok.encode_prompt(text)
        options = {
            k: req.body[k]
            for k in ("add_generation_prompt", "continue_final_message", "chat_template_kwargs")
            if k in req.body
        }
        messages = req.body["messages"]
        self._check_text_length(req, _chat_chars(messages))
        if len(dump_json(messages, plain=req.plain_json)) > _INLINE_TOKENIZE_CHARS:
            return await asyncio.to_thread(tok.encode_chat, messages, **options)
        return tok.encode_chat(messages, **options)

    def _check_text_length(self, req: ParsedRequest, chars: int) -> None:
        """Refuse text that cannot fit before tokenising it: ``chars`` characters are at least
        as many bytes, and no token stands for more than the tokenizer's ``max_token_bytes``."""
        limit, per = self.config.max_model_len, max_token_bytes(self.tokenizer)
        if limit is None or per is None:
            return
        least = -(-chars // per)
        want = req.max_tokens or 1
        if least + want > limit:
            raise PromptTooLongError(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested at least {least + want} tokens (the prompt's {chars} characters are "
                f"at least {least} tokens, {want} for the completion). Shorten the prompt or "
                "lower max_tokens."
            )

    def _check_length(self, req: ParsedRequest, n: int) -> None:
        limit = self.config.max_model_len
        if limit is None:
            return
        want = req.max_tokens or 1
        if n + want > limit:
            raise PromptTooLongError(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {n + want} tokens ({n} in the prompt, {want} for the completion). "
                "Shorten the prompt or lower max_tokens."
            )

    # ------------------------------------------------------------------ prefill leg
    async def _prefill(
        self, req: ParsedRequest, d: Decision, rid: str, ticket: _Ticket
    ) -> tuple[dict[str, Any] | None, str]:
        """Run the prefill leg; returns (KV params or ``None`` for decode-prefills, path)."""
        path: str = d.route
        prefill = d.prefill
        if d.route == "remote":
            assert prefill is not None and d.link is not None
            try:
                params = await self._call_prefill(prefill, req, d, rid)
            except UpstreamRejectedError:
                raise
            except UpstreamError as exc:
                d.link.circuit.record_failure(self.clock())
                ticket.deliver()
                log.warning(
                    "request %s: remote prefill on %s failed (%s); falling back to local prefill",
                    rid,
                    prefill.url,
                    exc.message,
                )
                path = "fallback"
                prefill = self.policy.local_prefill(d.hashes, self.clock())
                if prefill is not None:
                    prefill.circuit.take_trial(self.clock())
            else:
                d.link.circuit.record_success()
                ticket.pulling(self.metrics, self.clock())
                return params, path
        tried: set[int] = set()
        while prefill is not None:
            tried.add(id(prefill))
            try:
                return await self._call_prefill(prefill, req, d, rid), path
            except UpstreamRejectedError:
                raise
            except UpstreamError as exc:
                log.warning(
                    "request %s: local prefill on %s failed (%s)", rid, prefill.url, exc.message
                )
                now = self.clock()
                pool = self.policy.pool(self.config.local_datacenter, "prefill")
                rest = [i for i in pool if id(i) not in tried and i.circuit.allows(now)]
                prefill, _ = self.policy.pick(rest, d.hashes, now)
                if prefill is not None:
                    prefill.circuit.take_trial(now)
        return None, path  # no local PD-P (or all failed): decode prefills itself

    async def _call_prefill(
        self, inst: Instance, req: ParsedRequest, d: Decision, rid: str
    ) -> dict[str, Any]:
        t = self.config.timeouts
        payload = dump_json(prefill_body(req.body), plain=req.plain_json)
        inst.started()
        try:
            resp = await self.upstream.request(
                b"POST",
                inst.url,
                _API_PATH_BYTES[req.kind],
                payload,
                headers=_request_id_header(rid),
                connect_s=t.connect_s,
                total_s=t.prefill_s,
            )
            try:
                data = await resp.read()
            finally:
                resp.release()
            status = resp.status
        except TimeoutError as exc:
            self.record_failure(inst)
            raise UpstreamTimeoutError(
                f"prefill on {inst.url} did not answer within {t.prefill_s:g} s"
            ) from exc
        except OSError as exc:
            own = _own_resource_error(exc)
            if own is not None:
                raise own from exc
            self.record_failure(inst)
            raise UpstreamError(f"prefill on {inst.url} failed: {exc!r}") from exc
        finally:
            inst.finished()
        if 400 <= status < 500:
            raise UpstreamRejectedError(engine_error_reason(data), status=status, body=data)
        if status >= 300:
            self.record_failure(inst)
            raise UpstreamError(
                f"prefill on {inst.url} answered {status}: {engine_error_reason(data)}"
            )
        try:
            answer, plain = load_json(data)
            params = answer.get("kv_transfer_params")
        except (ValueError, AttributeError):
            params = None
        else:
            req.plain_json = req.plain_json and plain  # the decode body carries these params
        if not isinstance(params, dict):
            self.record_failure(inst)
            raise UpstreamError(
                f"prefill on {inst.url} answered without kv_transfer_params; start it with "
                "--kv-transfer-config kv_role=kv_producer"
            )
        inst.circuit.record_success()
        inst.cache.insert(d.hashes)
        return params

    def record_failure(self, inst: Instance) -> None:
        """An engine call failed: count it and feed the instance's circuit."""
        inst.down_by_probe = False
        inst.circuit.record_failure(self.clock())
        self.metrics.backend_failures.labels(inst.datacenter, inst.role).inc()

    # ------------------------------------------------------------------ decode leg
    async def _open_decode(
        self, req: ParsedRequest, d: Decision, kv: dict[str, Any] | None, rid: str
    ) -> tuple[UpstreamResponse, Instance]:
        """POST to decode and wait for its status line; tries other decode instances on failure."""
        t = self.config.timeouts
        payload = dump_json(decode_body(req.body, kv), plain=req.plain_json)
        headers = _request_id_header(rid)
        inst: Instance | None = d.decode
        tried: set[int] = set()
        last = "no decode instance was healthy"
        while inst is not None:
            tried.add(id(inst))
            inst.started()
            try:
                resp = await self.upstream.request(
                    b"POST",
                    inst.url,
                    _API_PATH_BYTES[req.kind],
                    payload,
                    headers=headers,
                    connect_s=t.connect_s,
                    total_s=t.decode_s,
                    read_s=t.first_byte_s,
                )
            except (TimeoutError, OSError) as exc:
                inst.finished()
                own = _own_resource_error(exc)
                if own is not None:
                    raise own from exc
                self.record_failure(inst)
                last = f"decode on {inst.url} failed: {exc!r}"
            except BaseException:
                inst.finished()
                raise
            else:
                if resp.status < 300:
                    return resp, inst
                try:
                    data = await resp.read()
                finally:
                    resp.release()
                    inst.finished()
                if 400 <= resp.status < 500:
                    raise UpstreamRejectedError(
                        engine_error_reason(data), status=resp.status, body=data
                    )
                self.record_failure(inst)
                last = f"decode on {inst.url} answered {resp.status}: {engine_error_reason(data)}"
            log.warning("request %s: %s", rid, last)
            now = self.clock()
            pool = self.policy.pool(self.config.local_datacenter, "decode")
            rest = [i for i in pool if id(i) not in tried]
            inst, _ = self.policy.pick(rest, d.hashes, now)
            if inst is not None:
                inst.circuit.take_trial(now)
        if len(tried) == 0:
            raise NoBackendError(last)
        raise UpstreamError(f"every decode attempt failed; last: {last}")


# ---------------------------------------------------------------------- the answer
@dataclass(slots=True)
class Relay:
    """An open decode response, written to the client by ``respond`` (which also accounts)."""

    router: RouterCore
    req: ParsedRequest
    request_id: str
    path: str
    t0: float
    resp: UpstreamResponse
    decode: Instance
    hashes: list[int]
    ticket: _Ticket
    uncached_tokens: int = 0

    def headers(self, content_type: str) -> dict[str, str]:
        """Response headers: the request id, and which path the router chose and why."""
        return {
            "Content-Type": content_type,
            "X-Request-Id": self.request_id,
            ROUTE_HEADER: self.path,
            UNCACHED_HEADER: str(self.uncached_tokens),
        }

    async def respond(self, request: web.Request) -> web.StreamResponse:
        """Answer through aiohttp (``router_app``'s routes)."""
        sink = _AiohttpSink(request)
        await self.send(sink)
        assert sink.response is not None
        return sink.response

    async def send(self, sink: ClientSink) -> None:
        """Write the decode answer to the client through ``sink`` and account for it."""
        router, resp = self.router, self.resp
        outcome = "error"
        try:
            if self.req.stream and resp.content_type == "text/event-stream":
                outcome = await self._stream(sink)
            else:
                data = await resp.read()
                now = router.clock()
                router.metrics.ttft.observe(now - self.t0)
                self.ticket.deliver(now, shipped=True)
                sink.whole(
                    resp.status, self.headers(resp.content_type_header or "application/json"), data
                )
                outcome = "ok"
        except (TimeoutError, EngineConnectionError) as exc:
            router.record_failure(self.decode)
            raise UpstreamError(f"decode on {self.decode.url} broke off: {exc!r}") from exc
        except (asyncio.CancelledError, ConnectionResetError):
            outcome = "cancelled"
            raise
        finally:
            if outcome == "ok":
                resp.release()
                self.decode.circuit.record_success()
                self.decode.cache.insert(self.hashes)
            else:
                resp.close()
            self.decode.finished()
            self.ticket.deliver(router.clock())
            router.metrics.request_done(self.path, outcome)
            if self.path != "local":  # link gauges moved (the tick loop refreshes them too)
                router.update_gauges()

    async def _stream(self, sink: ClientSink) -> str:
        router, resp = self.router, self.resp
        headers = self.headers(resp.content_type_header or "text/event-stream")
        headers["Cache-Control"] = "no-cache"
        await sink.open(resp.status, headers)
        first = last = 0.0
        events = 0
        try:
            async for chunk in resp.chunks():
                now = router.clock()
                if events == 0:
                    first = now
                    router.metrics.ttft.observe(now - self.t0)
                    self.ticket.deliver(now, shipped=True)
                events += chunk.count(b"data:") - chunk.count(b"data: [DONE]")
                last = now
                await sink.write(chunk)
        except ConnectionResetError:  # the client went away; closing resp aborts decode
            return "cancelled"
        except (TimeoutError, EngineConnectionError) as exc:
            # Headers are out: tell the client in-band, then end the stream.
            router.record_failure(self.decode)
            err = UpstreamError(f"decode on {self.decode.url} broke off: {exc!r}")
            await sink.write(b"data: " + json.dumps(err.to_json()).encode() + b"\n\n")
            await sink.end()
            return "error"
        if events > 1:
            router.metrics.tpot.observe((last - first) / (events - 1))
        await sink.end()
        return "ok"


class ClientSink(Protocol):
    """Where a ``Relay`` writes the answer: aiohttp's response objects, or the completions
    fast lane's connection. ``write`` raises ``ConnectionResetError`` once the client left."""

    def whole(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """The whole answer at once (not streamed)."""
        ...

    async def open(self, status: int, headers: dict[str, str]) -> None:
        """Start a streamed answer (chunked)."""
        ...

    async def write(self, chunk: bytes) -> None: ...

    async def end(self) -> None:
        """End the streamed answer."""
        ...


class _AiohttpSink:
    __slots__ = ("request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    def whole(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.response = web.Response(body=body, status=status, headers=headers)

    async def open(self, status: int, headers: dict[str, str]) -> None:
        self.response = web.StreamResponse(status=status, headers=headers)
        await self.response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def end(self) -> None:
        assert self.response is not None
        await self.response.write_eof()
