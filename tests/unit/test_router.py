"""The router over HTTP, against fake vLLM engines on loopback (``prfaas.engine.router.fakes``).

Every prompt here is tokenised by ``ByteTokenizer`` (one token per byte), block size 4,
planned ``t`` = 20 tokens: ``SHORT`` stays local, ``LONG`` goes to the remote datacenter.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prfaas.engine.router.config import RouterConfig, dump_router_config
from prfaas.engine.router.errors import ConfigError
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.request import PREFILL_KV_PARAMS
from prfaas.engine.router.service import RouterService
from prfaas.engine.router.tokenizer import ByteTokenizer

SHORT = "hello"
LONG = "a long prompt that has well over twenty tokens in it, as bytes"
LONG_KV_BYTES = 100.0 * 4 * -(-len(LONG) // 4)
"""What ``LONG`` (62 byte tokens) puts on the link: 16 whole 4-token KV blocks at 100 B/token."""


def _config(
    remote: list[str], local_prefill: list[str], decode: list[str], **overrides: Any
) -> RouterConfig:
    data: dict[str, Any] = {
        "model": "tiny",
        "local_datacenter": "dc-b",
        "datacenters": {
            "dc-b": {"prefill": local_prefill, "decode": decode},
            "dc-a": {"prefill": remote},
        },
        "links": {"dc-a": {"name": "a-to-b", "capacity_gbps": 10.0}},
        "threshold_tokens": 20,
        "kv_bytes_per_token": 100.0,
        "block_size": 4,
        "max_model_len": 256,
        "timeouts": {"connect_s": 1.0, "prefill_s": 0.3, "decode_s": 5.0, "first_byte_s": 5.0},
        "circuit": {"failures": 2, "retry_after_s": 600.0},
        "health": {"enabled": False},  # tests run probe rounds themselves
    }
    data.update(overrides)
    return RouterConfig.model_validate(data)


@dataclass
class Rig:
    svc: RouterService
    http: aiohttp.ClientSession
    remote: list[FakeEngine]
    local_prefill: list[FakeEngine]
    decode: list[FakeEngine]

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.http.post(self.svc.url + path, data=data, headers=headers) as r:
            return r.status, r.headers.copy(), await r.read()

    def metric(self, name: str, **labels: str) -> float:
        value = self.svc.router.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def requests(self, outcome: str = "ok", path: str = "local") -> float:
        return self.metric("prfaas_router_requests_total", path=path, outcome=outcome)

    @property
    def engines(self) -> list[FakeEngine]:
        return self.remote + self.local_prefill + self.decode


@asynccontextmanager
async def rig(
    *, remote: int = 1, local_prefill: int = 0, decode: int = 1, **overrides: Any
) -> AsyncIterator[Rig]:
    fakes = (
        [FakeEngine("prefill", f"remote{i}") for i in range(remote)],
        [FakeEngine("prefill", f"local{i}") for i in range(local_prefill)],
        [FakeEngine("decode", f"decode{i}") for i in range(decode)],
    )
    for group in fakes:
        for f in group:
            await f.start()
    cfg = _config(*([f.url for f in g] for g in fakes), **overrides)
    svc = RouterService(cfg, port=0, tokenizer=ByteTokenizer())
    await svc.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(svc, http, *fakes)
    finally:
        await svc.stop()
        for group in fakes:
            for f in group:
                await f.stop()


def _sse_texts(raw: bytes) -> list[str]:
    out = []
    for event in raw.decode().split("\n\n"):
        if event.startswith("data: "):
            payload = event[len("data: ") :]
            if payload == "[DONE]":
                out.append("[DONE]")
            else:
                choice = json.loads(payload)["choices"][0]
                out.append(choice.get("text") or choice.get("delta", {}).get("content", ""))
    return out


# ---------------------------------------------------------------------- paths and handshake
async def test_short_prompt_goes_straight_to_local_decode_without_a_prefill_pool() -> None:
    async with rig() as r:
        body = {"model": "tiny", "prompt": SHORT, "max_tokens": 3}
        status, _, data = await r.post("/v1/completions", body)
        assert status == 200
        assert json.loads(data)["choices"][0]["text"] == "t0 t1 t2 "
        assert r.remote[0].received == []
        (got,) = r.decode[0].received
        assert got.body == body  # untouched: decode prefills itself
        assert r.requests("ok", "local") == 1


async def test_short_prompt_uses_the_local_prefill_pool_with_the_same_handshake() -> None:
    async with rig(local_prefill=1) as r:
        status, _, _ = await r.post("/v1/completions", {"prompt": SHORT, "max_tokens": 3})
        assert status == 200
        (pre,) = r.local_prefill[0].received
        assert pre.body["kv_transfer_params"] == PREFILL_KV_PARAMS
        (dec,) = r.decode[0].received
        assert dec.body["kv_transfer_params"] == r.local_prefill[0].issued[0]
        assert r.remote[0].received == []


async def test_long_prompt_handshake_fields_are_exactly_right() -> None:
    async with rig() as r:
        body = {
            "model": "tiny",
            "prompt": LONG,
            "max_tokens": 5,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "min_tokens": 2,
            "seed": 7,
        }
        status, headers, raw = await r.post("/v1/completions", body)
        assert status == 200
        assert headers["Content-Type"].startswith("text/event-stream")
        (pre,) = r.remote[0].received
        assert pre.path == "/v1/completions"
        assert pre.body == {
            "model": "tiny",
            "prompt": LONG,
            "max_tokens": 1,
            "temperature": 0.0,
            "stream": False,
            "seed": 7,
            "kv_transfer_params": PREFILL_KV_PARAMS,
        }
        (dec,) = r.decode[0].received
        assert dec.body == {**body, "kv_transfer_params": r.remote[0].issued[0]}
        assert _sse_texts(raw) == ["t0 ", "t1 ", "t2 ", "t3 ", "t4 ", "[DONE]"]
        assert r.requests("ok", "remote") == 1
        assert headers["X-PrfaaS-Route"] == "remote"
        assert headers["X-PrfaaS-Uncached-Tokens"] == str(len(LONG))
        assert r.metric("prfaas_router_ttft_seconds_count") == 1
        assert r.metric("prfaas_router_tpot_seconds_count") == 1


async def test_chat_prefill_sets_max_completion_tokens_when_present() -> None:
    async with rig() as r:
        body = {"messages": [{"role": "user", "content": LONG}], "max_completion_tokens": 4}
        status, _, data = await r.post("/v1/chat/completions", body)
        assert status == 200
        assert json.loads(data)["choices"][0]["message"]["content"] == "t0 t1 t2 t3 "
        (pre,) = r.remote[0].received
        assert pre.path == "/v1/chat/completions"
        assert pre.body["max_completion_tokens"] == 1 and pre.body["max_tokens"] == 1
        assert r.decode[0].received[0].body["max_completion_tokens"] == 4


async def test_streaming_passes_every_event_through_in_order() -> None:
    async with rig() as r:
        r.decode[0].token_delay_s = 0.001
        body = {"messages": [{"role": "user", "content": SHORT}], "stream": True, "max_tokens": 12}
        status, _, raw = await r.post("/v1/chat/completions", body)
        assert status == 200
        assert _sse_texts(raw) == [f"t{i} " for i in range(12)] + ["[DONE]"]


async def test_request_id_is_propagated_to_both_legs_and_returned() -> None:
    async with rig() as r:
        _, headers, _ = await r.post(
            "/v1/completions", {"prompt": LONG}, headers={"X-Request-Id": "req-42"}
        )
        assert headers["X-Request-Id"] == "req-42"
        assert r.remote[0].received[0].headers["X-Request-Id"] == "req-42"
        assert r.decode[0].received[0].headers["X-Request-Id"] == "req-42"
        _, headers, _ = await r.post("/v1/completions", {"prompt": "2" + LONG})
        rid = headers["X-Request-Id"]
        assert len(rid) >= 16
        assert r.remote[0].received[1].headers["X-Request-Id"] == rid
        assert r.decode[0].received[1].headers["X-Request-Id"] == rid


# ---------------------------------------------------------------------- bad requests
@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b"[1, 2]", 400, "JSON object"),
        ("/v1/completions", {"max_tokens": 3}, 400, "'prompt' is required"),
        ("/v1/completions", {"prompt": ""}, 400, "empty"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "batched prompts"),
        ("/v1/completions", {"prompt": "x" * 300}, 400, "maximum context length is 256"),
        ("/v1/completions", {"prompt": "x" * 200, "max_tokens": 100}, 400, "300 tokens"),
        ("/v1/completions", {"prompt": SHORT, "max_tokens": -1}, 400, "positive integer"),
        ("/v1/completions", {"prompt": SHORT, "stream": "yes"}, 400, "'stream'"),
        ("/v1/completions", {"prompt": SHORT, "model": "other"}, 404, "`other` does not exist"),
        ("/v1/chat/completions", {"prompt": SHORT}, 400, "'messages' is required"),
        ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "'role'"),
    ],
)
async def test_bad_requests_get_4xx_with_the_reason_and_never_reach_an_engine(
    path: str, body: Any, status: int, needle: str
) -> None:
    async with rig(local_prefill=1) as r:
        got, headers, data = await r.post(path, body, headers={"X-Request-Id": "bad-1"})
        assert got == status
        assert needle in json.loads(data)["error"]["message"]
        assert headers["X-Request-Id"] == "bad-1"
        assert all(e.received == [] for e in r.engines)
        assert r.requests("client_error", "none") == 1


async def test_engine_4xx_is_passed_through_without_fallback() -> None:
    async with rig() as r:
        r.remote[0].fail_status = 400
        status, _, data = await r.post("/v1/completions", {"prompt": LONG})
        assert status == 400
        assert "fails on purpose" in json.loads(data)["error"]["message"]
        assert r.decode[0].received == []


# ---------------------------------------------------------------------- no backends, failures
async def test_no_decode_instance_gives_503_with_the_reason() -> None:
    async with rig(decode=0) as r:
        status, _, data = await r.post("/v1/completions", {"prompt": SHORT})
        assert status == 503
        assert "no healthy decode instance in datacenter 'dc-b'" in data.decode()
        async with r.http.get(r.svc.url + "/healthz") as h:
            assert h.status == 503
        async with r.http.get(r.svc.url + "/livez") as h:
            assert h.status == 200  # the process itself is fine: no restart wanted
        assert r.requests("error", "local") == 0
        assert r.requests("error", "none") == 1


async def test_dead_decode_gives_502_then_503_once_its_circuit_opens() -> None:
    async with rig() as r:
        r.decode[0].fail_status = 500
        first, _, _ = await r.post("/v1/completions", {"prompt": SHORT})
        second, _, _ = await r.post("/v1/completions", {"prompt": SHORT})
        third, _, data = await r.post("/v1/completions", {"prompt": SHORT})
        assert (first, second, third) == (502, 502, 503)
        assert "no healthy decode instance" in data.decode()
        assert len(r.decode[0].received) == 2  # the open circuit keeps it from the third
        assert (
            r.metric("prfaas_router_backend_failures_total", datacenter="dc-b", role="decode") == 2
        )


async def test_decode_failure_retries_on_another_decode_instance() -> None:
    async with rig(decode=2) as r:
        r.decode[0].fail_status = 503
        for _ in range(3):
            status, _, _ = await r.post("/v1/completions", {"prompt": SHORT})
            assert status == 200
        assert len(r.decode[1].received) == 3


@pytest.mark.parametrize("failure", ["500", "timeout", "refused"])
async def test_remote_prefill_failure_falls_back_to_local(failure: str) -> None:
    async with rig(local_prefill=1) as r:
        if failure == "500":
            r.remote[0].fail_status = 500
        elif failure == "timeout":
            r.remote[0].delay_s = 2.0  # prefill timeout is 0.3 s
        else:
            await r.remote[0].stop()
        status, headers, data = await r.post("/v1/completions", {"prompt": LONG, "max_tokens": 2})
        assert status == 200
        assert json.loads(data)["choices"][0]["text"] == "t0 t1 "
        assert len(r.local_prefill[0].received) == 1
        (dec,) = r.decode[0].received
        assert dec.body["kv_transfer_params"] == r.local_prefill[0].issued[0]
        assert r.requests("ok", "fallback") == 1
        assert headers["X-PrfaaS-Route"] == "fallback"
        assert r.metric("prfaas_router_kv_bytes_in_flight", link="a-to-b") == 0


async def test_fallback_without_local_prefill_pool_lets_decode_prefill() -> None:
    async with rig() as r:
        r.remote[0].fail_status = 500
        status, _, _ = await r.post("/v1/completions", {"prompt": LONG})
        assert status == 200
        assert "kv_transfer_params" not in r.decode[0].received[0].body
        assert r.requests("ok", "fallback") == 1


async def test_link_circuit_opens_after_consecutive_failures_and_long_prompts_stay_local() -> None:
    async with rig() as r:
        r.remote[0].fail_status = 500
        for i in range(4):  # distinct prompts: decode caches none of the others' prefix
            status, _, _ = await r.post("/v1/completions", {"prompt": f"{i}{LONG}"})
            assert status == 200
        assert len(r.remote[0].received) == 2  # circuit.failures = 2
        assert r.requests("ok", "fallback") == 2
        assert r.requests("ok", "local") == 2
        assert r.metric("prfaas_router_link_up", link="a-to-b") == 0


async def test_link_marked_down_in_config_sends_nothing_remote() -> None:
    async with rig(links={"dc-a": {"name": "a-to-b", "capacity_gbps": 1.0, "down": True}}) as r:
        status, _, _ = await r.post("/v1/completions", {"prompt": LONG})
        assert status == 200
        assert r.remote[0].received == []
        assert r.requests("ok", "local") == 1


# ---------------------------------------------------------------------- policy through HTTP
async def test_cache_affinity_sends_a_repeated_prefix_to_the_same_prefill_instance() -> None:
    async with rig(local_prefill=2, threshold_tokens=1000) as r:
        a = "shared system prompt, version A: " * 2
        b = "a completely different preamble! " * 2
        for prompt in (a, b, a + "q1", a + "q2", b + "q3"):
            status, _, _ = await r.post("/v1/completions", {"prompt": prompt})
            assert status == 200
        first, second = ([x.body["prompt"] for x in e.received] for e in r.local_prefill)
        holder_a = first if a in first else second
        holder_b = second if holder_a is first else first
        assert holder_a == [a, a + "q1", a + "q2"]
        assert holder_b == [b, b + "q3"]


async def test_an_aggregated_pool_prefills_locally_by_affinity_and_decodes_remote_kv() -> None:
    """An aggregated pool (the plan's ``aggregated`` row: decode instances, no local prefill
    pool): a local prompt goes untouched to one aggregated instance, the one holding its prefix;
    a long one is prefilled remotely and decoded by an aggregated instance with the KV params."""
    async with rig(decode=2, threshold_tokens=80) as r:
        a = "shared system prompt, version A: " * 2
        b = "a completely different preamble! " * 2
        for prompt in (a, b, a + "q1", a + "q2", b + "q3"):
            status, headers, _ = await r.post("/v1/completions", {"prompt": prompt})
            assert status == 200 and headers["X-PrfaaS-Route"] == "local"
        got = [[x.body for x in e.received] for e in r.decode]
        assert all("kv_transfer_params" not in body for bodies in got for body in bodies)
        prompts = [[body["prompt"] for body in bodies] for bodies in got]
        assert sorted(prompts) == sorted([[a, a + "q1", a + "q2"], [b, b + "q3"]])
        long = "an unrelated long prompt with many more than eighty byte tokens in it, " * 2
        status, headers, _ = await r.post("/v1/completions", {"prompt": long})
        assert status == 200 and headers["X-PrfaaS-Route"] == "remote"
        (issued,) = r.remote[0].issued
        pulled = [x.body for e in r.decode for x in e.received if x.body["prompt"] == long]
        assert [body["kv_transfer_params"] for body in pulled] == [issued]


async def test_a_cached_long_prompt_is_not_offloaded_again() -> None:
    async with rig() as r:
        await r.post("/v1/completions", {"prompt": LONG})
        await r.post("/v1/completions", {"prompt": LONG + "!"})
        assert len(r.remote[0].received) == 1  # decode now holds the prefix
        assert r.requests("ok", "remote") == 1 and r.requests("ok", "local") == 1
        assert r.metric("prfaas_router_uncached_tokens_count") == 2


async def test_threshold_rises_under_link_load_and_decays_back() -> None:
    now = [100.0]
    # 64-byte prompt × 100 B/token = 6400 B per remote prefill; window 2 s; capacity
    # 1e-5 Gbps = 10 kbit/s, budget 8 kbit/s: three prefills in a window (76.8 kbit/s) exceed it.
    link = {"name": "a-to-b", "capacity_gbps": 1e-5, "headroom": 0.8}
    async with rig(links={"dc-a": link}) as r:
        r.svc.router.clock = lambda: now[0]
        r.svc.router.tick()
        assert r.metric("prfaas_router_threshold_tokens", link="a-to-b") == 20
        for i in range(3):
            await r.post("/v1/completions", {"prompt": f"{i}" + LONG})
        now[0] += 0.6
        r.svc.router.tick()
        raised = r.metric("prfaas_router_threshold_tokens", link="a-to-b")
        assert raised >= 30  # ×1.5 at most once per 0.5 s interval
        assert len(r.remote[0].received) == 3
        # Still over budget: keeps rising until prompts of this length stay local.
        for _ in range(4):
            now[0] += 0.6
            r.svc.router.tick()
        assert r.metric("prfaas_router_threshold_tokens", link="a-to-b") > len(LONG) + 1
        await r.post("/v1/completions", {"prompt": "z" + LONG})
        assert len(r.remote[0].received) == 3
        # Idle: the window empties and t decays back to the planned 20.
        for _ in range(40):
            now[0] += 0.6
            r.svc.router.tick()
        assert r.metric("prfaas_router_threshold_tokens", link="a-to-b") == 20
        await r.post("/v1/completions", {"prompt": "y" + LONG})
        assert len(r.remote[0].received) == 4


async def test_kv_bytes_in_flight_are_counted_until_decode_answers() -> None:
    async with rig() as r:
        r.decode[0].delay_s = 0.2
        r.svc.router.tick()
        task = r.post("/v1/completions", {"prompt": LONG})
        pending = asyncio.create_task(task)
        while not r.decode[0].received:
            await asyncio.sleep(0.01)
        in_flight = r.metric("prfaas_router_kv_bytes_in_flight", link="a-to-b")
        assert in_flight == LONG_KV_BYTES
        await pending
        assert r.metric("prfaas_router_kv_bytes_in_flight", link="a-to-b") == 0


# ---------------------------------------------------------------------- service endpoints
async def test_models_health_and_metrics_endpoints() -> None:
    async with rig() as r:
        async with r.http.get(r.svc.url + "/v1/models") as resp:
            assert (await resp.json())["data"][0]["id"] == "tiny"
        async with r.http.get(r.svc.url + "/healthz") as resp:
            assert resp.status == 200
        await r.post("/v1/completions", {"prompt": LONG})
        async with r.http.get(r.svc.url + "/metrics") as resp:
            text = await resp.text()
        async with r.http.get(r.svc.url + "/status") as resp:
            state = await resp.json()
        (link,) = state["links"]
        assert link["name"] == "a-to-b" and link["thresholdTokens"] == 20 and link["up"]
        roles = sorted((i["datacenter"], i["role"], i["inFlight"]) for i in state["instances"])
        assert roles == [("dc-a", "prefill", 0), ("dc-b", "decode", 0)]
        for name in (
            'prfaas_router_requests_total{outcome="ok",path="remote"} 1.0',
            "prfaas_router_ttft_seconds_bucket",
            "prfaas_router_tpot_seconds",
            "prfaas_router_uncached_tokens_bucket",
            'prfaas_router_kv_bytes_in_flight{link="a-to-b"}',
            'prfaas_router_threshold_tokens{link="a-to-b"} 20.0',
        ):
            assert name in text


@pytest.mark.parametrize(
    ("method", "path", "status", "kind", "says"),
    [
        ("GET", "/v1/completions", 405, "MethodNotAllowedError", "use POST"),
        ("POST", "/v1/models", 405, "MethodNotAllowedError", "use GET"),
        ("GET", "/v1/embeddings", 404, "NotFoundError", "POST /v1/chat/completions"),
    ],
    ids=["get-completions", "post-models", "unknown-path"],
)
async def test_wrong_method_and_unknown_path_get_openai_error_json(
    method: str, path: str, status: int, kind: str, says: str
) -> None:
    async with rig() as r, r.http.request(method, r.svc.url + path) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert error["type"] == kind and error["code"] == status
    assert path in error["message"] and says in error["message"]


async def test_an_unexpected_failure_is_a_500_in_openai_error_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prfaas.engine.router.proxy import RouterCore

    def broken(self: RouterCore) -> dict[str, Any]:
        raise KeyError("links")

    monkeypatch.setattr(RouterCore, "snapshot", broken)
    async with rig() as r, r.http.get(r.svc.url + "/status") as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
    assert error["type"] == "InternalServerError" and "KeyError" in error["message"]


async def test_config_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    old, new = FakeEngine("decode", "old"), FakeEngine("decode", "new")
    async with old, new:
        path = tmp_path / "router.yaml"
        path.write_text(dump_router_config(_config([], [], [old.url])))
        svc = RouterService(path, port=0, tokenizer=ByteTokenizer(), reload_interval_s=3600)
        async with svc, aiohttp.ClientSession() as http:
            assert not await svc.reload_if_changed()
            path.write_text(dump_router_config(_config([], [], [new.url], threshold_tokens=5)))
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            assert await svc.reload_if_changed()
            async with http.post(svc.url + "/v1/completions", json={"prompt": SHORT}) as resp:
                assert resp.status == 200
            assert old.received == [] and len(new.received) == 1
            assert svc.router.config.threshold_tokens == 5
            # A broken file is reported and the running config kept.
            path.write_text("model: [unclosed")
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
            assert not await svc.reload_if_changed()
            reg = svc.router.metrics.registry
            assert (
                reg.get_sample_value("prfaas_router_config_reloads_total", {"outcome": "error"})
                == 1
            )
            assert svc.router.config.threshold_tokens == 5


# ---------------------------------------------------------------------- broken streams
async def test_decode_dying_mid_stream_ends_the_stream_with_an_error_event() -> None:
    async with rig() as r:
        r.decode[0].break_after = 2
        body = {"prompt": SHORT, "stream": True, "max_tokens": 6}
        status, _, raw = await r.post("/v1/completions", body)
        assert status == 200  # headers were already sent
        events = [e for e in raw.decode().split("\n\n") if e]
        assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:2]] == ["t0 ", "t1 "]
        assert "broke off" in json.loads(events[-1][6:])["error"]["message"]
        assert r.requests("error", "local") == 1
        assert r.svc.router.policy.pool("dc-b", "decode")[0].in_flight == 0


async def test_client_going_away_mid_stream_is_counted_and_releases_the_instance() -> None:
    async with rig() as r:
        r.decode[0].token_delay_s = 0.05
        body = {"prompt": SHORT, "stream": True, "max_tokens": 200}
        async with r.http.post(r.svc.url + "/v1/completions", json=body) as resp:
            await resp.content.readline()
            resp.close()
        for _ in range(200):
            if r.requests("cancelled", "local"):
                break
            await asyncio.sleep(0.02)
        assert r.requests("cancelled", "local") == 1
        assert r.svc.router.policy.pool("dc-b", "decode")[0].in_flight == 0


async def test_decode_load_counts_requests_still_prefilling() -> None:
    async with rig(local_prefill=1, decode=2, threshold_tokens=1000, affinity_max_imbalance=1) as r:
        await r.post("/v1/completions", {"prompt": LONG})  # one decode now holds LONG's prefix
        holder, other = sorted(r.decode, key=lambda d: -len(d.received))
        r.local_prefill[0].delay_s = 0.2
        await asyncio.gather(
            *(r.post("/v1/completions", {"prompt": f"{LONG}{i}"}) for i in range(6))
        )
        # Affinity alone would send all six to the holder: their decode legs start only after
        # the prefill, so without counting them from the decision the holder looks idle.
        assert len(other.received) >= 2
        assert len(holder.received) > len(other.received)


async def test_a_tokenizer_that_cannot_load_is_a_config_error(tmp_path: Path) -> None:
    cfg = _config([], [], ["http://127.0.0.1:9"], tokenizer=str(tmp_path / "missing"))
    svc = RouterService(cfg, port=0)
    with pytest.raises(ConfigError, match="cannot load the tokenizer"):
        await svc.start()
    await svc.stop()


async def test_health_probes_take_a_dead_decode_out_and_bring_it_back() -> None:
    async with rig(decode=2) as r:
        dead = r.decode[0]
        await dead.stop()
        await r.svc.router.probe()
        await r.svc.router.probe()  # circuit.failures = 2
        up = {
            d.url: r.metric(
                "prfaas_router_instance_up", datacenter="dc-b", role="decode", url=d.url
            )
            for d in r.decode
        }
        assert up == {dead.url: 0.0, r.decode[1].url: 1.0}
        for _ in range(3):
            status, _, _ = await r.post("/v1/completions", {"prompt": SHORT})
            assert status == 200
        assert dead.received == [] and len(r.decode[1].received) == 3
        await dead.start()  # same port
        await r.svc.router.probe()
        assert (
            r.metric("prfaas_router_instance_up", datacenter="dc-b", role="decode", url=dead.url)
            == 1.0
        )
        async with r.http.get(r.svc.url + "/healthz") as h:
            assert (await h.json())["decode_healthy"] == 2


async def test_a_passing_probe_does_not_reopen_an_instance_failing_requests() -> None:
    async with rig() as r:
        r.decode[0].fail_status = 500  # /health still answers 200
        for _ in range(2):
            await r.post("/v1/completions", {"prompt": SHORT})
        await r.svc.router.probe()
        status, _, _ = await r.post("/v1/completions", {"prompt": SHORT})
        assert status == 503


async def test_a_slow_health_answer_is_not_a_failure() -> None:
    async with rig(health={"enabled": False, "timeout_s": 0.05}) as r:
        r.decode[0].health_delay_s = 0.5
        for _ in range(3):
            await r.svc.router.probe()
        status, _, _ = await r.post("/v1/completions", {"prompt": SHORT})
        assert status == 200


async def test_shipped_kv_bytes_and_transfer_seconds_are_counted_per_link() -> None:
    async with rig() as r:
        r.decode[0].delay_s = 0.05
        await r.post("/v1/completions", {"prompt": LONG})
        await r.post("/v1/completions", {"prompt": SHORT})  # local: nothing crosses the link
        assert r.metric("prfaas_router_kv_bytes_total", link="a-to-b") == LONG_KV_BYTES
        assert r.metric("prfaas_router_kv_transfer_seconds_total", link="a-to-b") >= 0.05


async def test_abandoned_transfer_counts_busy_time_but_no_shipped_bytes() -> None:
    async with rig() as r:
        r.decode[0].fail_status = 500
        status, _, _ = await r.post("/v1/completions", {"prompt": LONG})
        assert status >= 500
        assert r.metric("prfaas_router_kv_bytes_total", link="a-to-b") == 0
        assert r.metric("prfaas_router_kv_bytes_in_flight", link="a-to-b") == 0
