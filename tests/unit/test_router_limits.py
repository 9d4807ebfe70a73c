"""Memory and event-loop limits of the router: bodies bounded by the model's context (before
and after decompression), text that cannot fit refused before tokenising, liveness answered
while a long prompt is tokenised, and the operator always telling the router ``maxModelLen``."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.request import body_limit
from prfaas.engine.router.service import RouterService
from prfaas.engine.router.tokenizer import ByteTokenizer

MAX_LEN = 1000


def _config(decode: str, **overrides: Any) -> RouterConfig:
    data: dict[str, Any] = {
        "model": "tiny",
        "local_datacenter": "dc-b",
        "datacenters": {"dc-b": {"prefill": [], "decode": [decode]}},
        "threshold_tokens": 20,
        "kv_bytes_per_token": 100.0,
        "block_size": 4,
        "max_model_len": MAX_LEN,
        "health": {"enabled": False},
    }
    data.update(overrides)
    return RouterConfig.model_validate(data)


class CountingTokenizer(ByteTokenizer):
    """Bytes, counting calls; ``gate``: block inside ``encode_prompt`` until it is set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.gate = gate
        self.released_by_gate: bool | None = None

    def encode_prompt(self, prompt: str) -> list[int]:
        self.calls += 1
        if self.gate is not None:
            self.released_by_gate = self.gate.wait(timeout=20)
        return super().encode_prompt(prompt)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        self.calls += 1
        return super().encode_chat(messages, **options)


@asynccontextmanager
async def _router(
    tok: ByteTokenizer, **overrides: Any
) -> AsyncIterator[tuple[RouterService, FakeEngine, aiohttp.ClientSession]]:
    async with FakeEngine("decode", "decode0") as dec:
        svc = RouterService(_config(dec.url, **overrides), port=0, tokenizer=tok)
        async with svc, aiohttp.ClientSession() as http:
            yield svc, dec, http


def test_body_limit_follows_the_model_context() -> None:
    assert body_limit(None) == 64 << 20
    assert body_limit(1000) < body_limit(128_000) < 64 << 20
    # A prompt of max_model_len token ids (the widest ids) fits.
    assert len(json.dumps({"prompt": [4294967295] * 128_000})) < body_limit(128_000)


async def test_oversized_body_is_refused_by_content_length() -> None:
    tok = CountingTokenizer()
    async with _router(tok) as (svc, dec, http):
        body = json.dumps({"prompt": "x" * (body_limit(MAX_LEN) + 1)}).encode()
        async with http.post(svc.url + "/v1/completions", data=body) as r:
            assert r.status == 413
            assert "sized from maxModelLen" in (await r.json())["error"]["message"]
    assert tok.calls == 0 and dec.received == []


async def test_gzip_bomb_is_refused_once_decompressed_past_the_limit() -> None:
    tok = CountingTokenizer()
    ids = "[" + ",".join(["7"] * 2_000_000) + "]"  # 4 MB of token ids, 10 KB gzipped
    raw = gzip.compress(('{"prompt": ' + ids + "}").encode())
    assert len(raw) < body_limit(MAX_LEN) // 10
    async with _router(tok) as (svc, dec, http):
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        async with http.post(svc.url + "/v1/completions", data=raw, headers=headers) as r:
            assert r.status == 413
            assert "once decompressed" in (await r.json())["error"]["message"]
        # A small gzip body within the limit is still served.
        small = gzip.compress(json.dumps({"prompt": "hello", "max_tokens": 2}).encode())
        async with http.post(svc.url + "/v1/completions", data=small, headers=headers) as r:
            assert r.status == 200
    assert len(dec.received) == 1


async def test_text_that_cannot_fit_is_refused_before_tokenising() -> None:
    tok = CountingTokenizer()
    async with _router(tok) as (svc, dec, http):
        body = {"prompt": "y" * (MAX_LEN + 1)}
        async with http.post(svc.url + "/v1/completions", json=body) as r:
            assert r.status == 400
            assert "characters are at least 1001 tokens" in (await r.json())["error"]["message"]
        chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 1000}]}]}
        async with http.post(svc.url + "/v1/chat/completions", json=chat) as r:
            assert r.status == 400
    assert tok.calls == 0 and dec.received == []


async def test_liveness_answers_while_a_long_prompt_is_tokenised() -> None:
    gate = threading.Event()
    tok = CountingTokenizer(gate)
    async with _router(tok, max_model_len=100_000) as (svc, _, http):
        long_prompt = "w" * 50_000
        task = asyncio.create_task(
            http.post(svc.url + "/v1/completions", json={"prompt": long_prompt, "max_tokens": 1})
        )
        while tok.calls == 0:  # the request reached the tokenizer, which now blocks
            await asyncio.sleep(0.01)
        async with http.get(svc.url + "/livez") as r:
            assert r.status == 200
        gate.set()
        async with await task as r:
            assert r.status == 200
    assert tok.released_by_gate is True  # /livez was served while the tokenizer was blocked
