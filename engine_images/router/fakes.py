"""A fake vLLM engine (aiohttp, loopback) that speaks the prefill/decode handshake.

Tests and ``bench/router.py`` put these behind the router instead of real engines: a
``prefill`` fake answers one token plus ``kv_transfer_params`` (the fields vLLM's
``NixlConnector`` returns), a ``decode`` fake answers ``max_tokens`` tokens, streamed as SSE when
asked, and every fake records what it received. Failure knobs: ``fail_status`` (answer with that
status), ``delay_s`` (wait before answering, for timeouts), ``token_delay_s`` (between streamed
tokens).

    async with FakeEngine("decode") as dec:
        ...  # dec.url, dec.received[-1].body
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from prfaas.engine.router.emulation import EngineEmulation, KvPullError, prompt_length
from prfaas.engine.router.serving import AsyncService, serve_app

__all__ = ["FakeEngine", "Received", "fake_kv_params"]

FakeRole = Literal["prefill", "decode", "monolithic"]


@dataclass(slots=True)
class Received:
    """One request a fake engine got."""

    path: str
    body: dict[str, Any]
    headers: Mapping[str, str]
    """Case-insensitive, as on the wire."""


def fake_kv_params(engine_id: str, request_id: str, num_tokens: int) -> dict[str, Any]:
    """What vLLM's prefill returns in ``kv_transfer_params`` (pull mode), with fake values."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": list(range((num_tokens + 127) // 128)),
        "remote_engine_id": engine_id,
        "remote_request_id": request_id,
        "remote_host": "127.0.0.1",
        "remote_port": 5600,
        "tp_size": 1,
        "dcp_size": 1,
        "pp_size": 1,
        "remote_num_tokens": num_tokens,
        "remote_blocks_expiry_time": time.time() + 30,
        "transfer_mode": "pull",
        "remote_prefill_cached_tokens": 0,
    }


@dataclass(eq=False)
class FakeEngine(AsyncService):
    """One fake engine on ``127.0.0.1``; ``url`` is set by ``start``."""

    role: FakeRole
    name: str = ""
    default_tokens: int = 4
    fail_status: int | None = None
    delay_s: float = 0.0
    token_delay_s: float = 0.0
    health_delay_s: float = 0.0
    """Seconds ``GET /health`` takes (a busy engine)."""
    seats: int | None = None
    """At most this many completions are served at once, the rest wait (an engine's max
    batch): with ``delay_s`` it gives the fake a capacity of ``seats / delay_s`` requests/s."""
    break_after: int | None = None
    """Streaming: drop the connection after this many tokens (a crash mid-answer)."""
    record: bool = True
    received: list[Received] = field(default_factory=list)
    issued: list[dict[str, Any]] = field(default_factory=list)
    """``kv_transfer_params`` this (prefill) fake answered with, in order."""
    emulation: EngineEmulation | None = None
    """Planned timing and KV bytes (see the module docstring); None: instant answers."""
    host: str = "127.0.0.1"
    port: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None
    _seats: asyncio.Semaphore | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._seated)
        app.router.add_post("/v1/chat/completions", self._seated)
        app.router.add_get("/health", self._health)
        app.router.add_get("/emulation/records", self._records)
        return app

    async def start(self) -> str:
        if self.emulation is not None:
            await self.emulation.start()
        self._runner, self.port = await serve_app(
            self.app(), self.host, self.port, cancel_on_disconnect=True
        )
        self.url = f"http://{self.host}:{self.port}"
        self.name = self.name or f"{self.role}-{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.emulation is not None:
            await self.emulation.stop()

    async def _records(self, request: web.Request) -> web.Response:
        em = self.emulation
        records = [r.to_json() for r in em.records.values()] if em is not None else []
        return web.json_response({"engine": self.name, "role": self.role, "records": records})

    async def _health(self, request: web.Request) -> web.Response:
        if self.health_delay_s:
            await asyncio.sleep(self.health_delay_s)
        return web.Response()

    def requests_to(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _seated(self, request: web.Request) -> web.StreamResponse:
        if self.seats is None:
            return await self._handle(request)
        if self._seats is None:
            self._seats = asyncio.Semaphore(self.seats)
        async with self._seats:
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rid = request.headers.get("X-Request-Id", "none")
        if self.record:
            self.received.append(Received(request.path, body, request.headers.copy()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status is not None:
            err = {
                "error": {
                    "message": f"{self.name} fails on purpose",
                    "type": "Fake",
                    "param": None,
                    "code": self.fail_status,
                }
            }
            return web.json_response(err, status=self.fail_status)
        chat = request.path.endswith("/chat/completions")
        prompt = body.get("prompt", body.get("messages", ""))
        n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt))
        n = int(body.get("max_completion_tokens") or body.get("max_tokens") or self.default_tokens)
        if self.emulation is not None:
            return await self._emulated(request, body, chat, prompt, n, rid)
        kv = None
        if self.role == "prefill" and (body.get("kv_transfer_params") or {}).get(
            "do_remote_decode"
        ):
            kv = fake_kv_params(self.name, rid, n_prompt)
            if self.record:
                self.issued.append(kv)
        if body.get("stream"):
            return await self._stream(request, chat, n, rid)
        return self._answer(body, chat, n, rid, n_prompt, kv)

    def _answer(
        self,
        body: dict[str, Any],
        chat: bool,
        n: int,
        rid: str,
        n_prompt: int,
        kv: dict[str, Any] | None,
    ) -> web.Response:
        texts = [f"t{i} " for i in range(n)]
        choice: dict[str, Any] = (
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(texts)},
                "finish_reason": "length",
            }
            if chat
            else {"index": 0, "text": "".join(texts), "finish_reason": "length"}
        )
        answer = {
            "id": f"cmpl-{rid}",
            "object": "chat.completion" if chat else "text_completion",
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n,
                "total_tokens": n_prompt + n,
            },
            "kv_transfer_params": kv,
            "served_by": self.name,
        }
        return web.json_response(answer)

    async def _stream(
        self, request: web.Request, chat: bool, n: int, rid: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            if i and self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            if i == self.break_after and request.transport is not None:
                request.transport.abort()
                return resp
            await resp.write(self._event(chat, rid, f"t{i} "))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _event(self, chat: bool, rid: str, text: str) -> bytes:
        choice: dict[str, Any] = (
            {"index": 0, "delta": {"content": text}, "finish_reason": None}
            if chat
            else {"index": 0, "text": text, "finish_reason": None}
        )
        chunk = {"id": f"cmpl-{rid}", "choices": [choice], "served_by": self.name}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    # ------------------------------------------------------------------ emulated engines
    async def _emulated(
        self,
        request: web.Request,
        body: dict[str, Any],
        chat: bool,
        prompt: Any,
        n: int,
        rid: str,
    ) -> web.StreamResponse:
        em = self.emulation
        assert em is not None
        n_prompt = prompt_length(prompt)
        params = body.get("kv_transfer_params") or {}
        rec = em.record(rid, self.role, n_prompt)
        if self.role == "prefill":
            await em.prefill(prompt, rec)
            kv = None
            if params.get("do_remote_decode"):
                kv = fake_kv_params(self.name, rid, n_prompt)
                kv["remote_host"], kv["remote_port"], _ = em.offer_kv(rid, n_prompt)
                if self.record:
                    self.issued.append(kv)
            return self._answer(body, chat, 1, rid, n_prompt, kv)
        if params.get("do_remote_prefill"):
            try:
                await em.pull(params, rid, rec)
            except KvPullError as exc:
                err = {"error": {"message": str(exc), "type": "KvPull", "param": None, "code": 500}}
                return web.json_response(err, status=500)
        else:  # no KV from elsewhere: this engine prefills the prompt itself
            await em.prefill(prompt, rec)
        produced = em.decode(n_prompt, n, rec)
        if not body.get("stream"):
            count = 0
            async for k in produced:
                count += k
            return self._answer(body, chat, count, rid, n_prompt, None)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        i = 0
        async for k in produced:
            await resp.write(self._event(chat, rid, "".join(f"t{j} " for j in range(i, i + k))))
            i += k
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
