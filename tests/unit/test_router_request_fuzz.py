"""Malformed requests get a 400 that names the problem and never reach an engine, the parser
never raises anything but ``BadRequestError`` (a Hypothesis fuzz, bounded), and errors are
logged as one WARNING line, never a traceback (issue #11, items 10-12)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.errors import BadRequestError
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.request import MAX_TOKEN_ID, dump_json, parse_request
from prfaas.engine.router.service import RouterService
from prfaas.engine.router.tokenizer import ByteTokenizer
from prfaas.planner.routing.prefix import block_hashes


class VocabTokenizer(ByteTokenizer):
    vocab_size = 300


@asynccontextmanager
async def _rig(**overrides: Any) -> AsyncIterator[tuple[RouterService, FakeEngine]]:
    async with FakeEngine("decode", "decode", token_delay_s=0.2) as dec:
        data: dict[str, Any] = {
            "model": "tiny",
            "local_datacenter": "dc-b",
            "datacenters": {"dc-b": {"prefill": [], "decode": [dec.url]}},
            "block_size": 4,
            "health": {"enabled": False},
        }
        data.update(overrides)
        svc = RouterService(RouterConfig.model_validate(data), port=0, tokenizer=VocabTokenizer())
        async with svc:
            yield svc, dec


CASES: list[tuple[str, bytes, str]] = [
    ("/v1/completions", b'{"prompt": [9223372036854775808]}', "token ids must be"),
    ("/v1/completions", b'{"prompt": [-1, 5]}', "token ids must be"),
    ("/v1/completions", b'{"prompt": [150, 299, 300]}', "outside the model's vocabulary"),
    ("/v1/completions", b'{"prompt": "x", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
    ("/v1/completions", b'{"prompt": "\\ud800 hi"}', "surrogate"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": NaN}', "NaN"),
    ("/v1/completions", b'{"prompt": "hi", "top_p": 1e400}', "out of range"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 1000000000000}', "max_tokens"),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
        "content[0].text must be a string",
    ),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": "x"}',
        "'chat_template_kwargs' must be an object",
    ),
]


async def test_junk_gets_400_and_never_reaches_an_engine(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    async with _rig() as (svc, dec), aiohttp.ClientSession() as http:
        for path, body, reason in CASES:
            headers = {"Content-Type": "application/json"}
            async with http.post(svc.url + path, data=body, headers=headers) as r:
                assert r.status == 400, (body[:80], await r.text())
                assert reason in (await r.json())["error"]["message"], body[:80]
    assert dec.received == []
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]


async def test_a_client_that_leaves_mid_stream_is_one_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with _rig() as (svc, dec), aiohttp.ClientSession() as http:
        body = {"prompt": "hello", "max_tokens": 50, "stream": True}
        async with http.post(svc.url + "/v1/completions", json=body) as r:
            assert r.status == 200
            await r.content.readany()  # the first event, then the client hangs up
        while svc.router.in_flight:
            await asyncio.sleep(0.01)
    assert len(dec.received) == 1
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]) | st.integers()},
    optional={
        "content": _json | st.lists(st.dictionaries(st.sampled_from(["type", "text"]), _json))
    },
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "prompt": _json | st.lists(st.integers(min_value=-5, max_value=2**64), max_size=6),
        "messages": _json | st.lists(_message, max_size=3),
        "max_tokens": _json,
        "max_completion_tokens": _json,
        "stream": _json,
        "chat_template_kwargs": _json,
        "temperature": _json,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["completions", "chat"]), body=_request | _json)
def test_the_parser_accepts_or_says_bad_request(kind: Any, body: Any) -> None:
    raw = json.dumps(body).encode()
    try:
        req = parse_request(kind, raw)
    except BadRequestError:
        return
    dump_json(req.body, plain=req.plain_json)  # what the engines get can be written
    if req.prompt_ids is not None:
        assert all(0 <= t <= MAX_TOKEN_ID for t in req.prompt_ids)
        block_hashes(req.prompt_ids, 4)
    if kind == "chat":
        ByteTokenizer().encode_chat(req.body["messages"])
    assert req.max_tokens is None or 1 <= req.max_tokens < 2**31


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_arbitrary_bytes_never_escape_as_anything_but_bad_request(raw: bytes) -> None:
    with contextlib.suppress(BadRequestError):
        parse_request("completions", raw)
