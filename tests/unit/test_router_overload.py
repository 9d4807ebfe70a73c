"""Overload protection of the router: a bounded number of requests in flight (429 with a
``Retry-After`` sized from the plan), slow clients cut off, upstream legs cancelled when the
client leaves, and the router's own descriptor/memory errors never blamed on an engine."""

from __future__ import annotations

import asyncio
import errno
import resource
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prfaas.engine.router.config import RouterConfig, admission_from_plan
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.service import RouterService, raise_open_files_limit
from prfaas.engine.router.tokenizer import ByteTokenizer
from prfaas.planner.plan import ClusterPlan, Plan

LONG = "a long prompt that has well over twenty tokens in it, as bytes"


def _config(remote: str, decode: str, **overrides: Any) -> RouterConfig:
    data: dict[str, Any] = {
        "model": "tiny",
        "local_datacenter": "dc-b",
        "datacenters": {"dc-b": {"prefill": [], "decode": [decode]}, "dc-a": {"prefill": [remote]}},
        "links": {"dc-a": {"name": "a-to-b", "capacity_gbps": 10.0}},
        "threshold_tokens": 20,
        "kv_bytes_per_token": 100.0,
        "block_size": 4,
        "max_model_len": 4096,
        "circuit": {"failures": 1, "retry_after_s": 600.0},
        "health": {"enabled": False},
    }
    data.update(overrides)
    return RouterConfig.model_validate(data)


@asynccontextmanager
async def _rig(
    remote_delay_s: float = 0.0, decode_delay_s: float = 0.0, **overrides: Any
) -> AsyncIterator[tuple[RouterService, FakeEngine, FakeEngine, aiohttp.ClientSession]]:
    async with (
        FakeEngine("prefill", "remote", delay_s=remote_delay_s) as pre,
        FakeEngine("decode", "decode", delay_s=decode_delay_s) as dec,
    ):
        svc = RouterService(
            _config(pre.url, dec.url, **overrides), port=0, tokenizer=ByteTokenizer()
        )
        async with svc, aiohttp.ClientSession() as http:
            yield svc, pre, dec, http


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)


def test_admission_is_sized_from_the_plan() -> None:
    plan = Plan(
        model="m",
        throughput_rps=40.0,
        clusters=[
            ClusterPlan("pd", "dc-b", "decode", "H20", 5, 8, 1, "roofline"),
            ClusterPlan(
                "pd", "dc-b", "prefill", "H20", 3, 8, 1, "roofline", max_num_batched_tokens=4096
            ),
        ],
    )
    a = admission_from_plan(plan, "pd", decode_batch=16)
    assert a.max_in_flight == 2 * 5 * 16
    assert a.retry_after_s == 4.0  # 160 in flight drain in 160 / 40 rps
    # A convertible pool (PD-P alike in every flag): any of its 8 engines may decode, and the
    # bound must not move with the split (a new split is a reload, never a new router).
    plan.clusters[1].max_num_batched_tokens = None
    assert plan.convertible_pool("pd") is not None
    assert admission_from_plan(plan, "pd", decode_batch=16).max_in_flight == 2 * 8 * 16


async def test_requests_past_the_bound_get_429_with_retry_after_and_reach_no_engine() -> None:
    admission = {"max_in_flight": 2, "retry_after_s": 2.5}
    async with _rig(decode_delay_s=30.0, admission=admission) as (svc, _, dec, http):
        url = svc.url + "/v1/completions"
        held = [asyncio.create_task(http.post(url, json={"prompt": "hi"})) for _ in range(2)]
        await _until(lambda: len(dec.received) == 2)
        async with http.post(url, json={"prompt": "hi"}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "3"
            assert (await r.json())["error"]["type"] == "RateLimitError"
        assert len(dec.received) == 2
        for task in held:
            task.cancel()
        # The clients left: their places are given back (their handlers were cancelled).
        await _until(lambda: svc.router.in_flight == 0)
        value = svc.router.metrics.registry.get_sample_value(
            "prfaas_router_requests_total", {"path": "none", "outcome": "rejected"}
        )
        assert value == 1.0


async def test_a_client_that_leaves_during_prefill_never_causes_a_decode_call() -> None:
    async with _rig(remote_delay_s=30.0) as (svc, pre, dec, http):
        task = asyncio.create_task(http.post(svc.url + "/v1/completions", json={"prompt": LONG}))
        await _until(lambda: len(pre.received) == 1)
        task.cancel()
        await _until(lambda: svc.router.in_flight == 0)
        await asyncio.sleep(0.05)  # let anything still scheduled run
        assert dec.received == []
        value = svc.router.metrics.registry.get_sample_value(
            "prfaas_router_requests_total", {"path": "remote", "outcome": "cancelled"}
        )
        assert value == 1.0


async def test_a_connection_that_never_finishes_its_headers_is_closed() -> None:
    async with _rig(admission={"header_timeout_s": 0.2}) as (svc, _, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed by the router
        writer.close()


async def test_a_body_that_trickles_in_gets_408() -> None:
    async with _rig(admission={"body_timeout_s": 0.2}) as (svc, _, dec, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt":'
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), timeout=30)
        assert head.startswith(b"HTTP/1.1 408")
        writer.close()
        assert dec.received == []


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM])
async def test_the_routers_own_resource_errors_never_open_an_engine_circuit(code: int) -> None:
    async with _rig() as (svc, _, _, http):
        router = svc.router
        real_post = router.upstream.request

        def failing_post(*args: Any, **kw: Any) -> Any:
            raise OSError(code, "out of resources")

        router.upstream.request = failing_post  # type: ignore[method-assign]
        try:
            for prompt in ("hi", LONG, "hi"):
                async with http.post(svc.url + "/v1/completions", json={"prompt": prompt}) as r:
                    assert r.status == 503
                    assert r.headers["Retry-After"] == "1"
                    assert "the router is out of" in (await r.json())["error"]["message"]
        finally:
            router.upstream.request = real_post  # type: ignore[method-assign]
        now = router.clock()
        assert all(i.circuit.allows(now) for i in router.policy.instances.values())
        assert all(ln.circuit.allows(now) for ln in router.policy.links.values())
        failures = router.metrics.registry.get_sample_value(
            "prfaas_router_backend_failures_total", {"datacenter": "dc-b", "role": "decode"}
        )
        assert not failures
        async with http.post(svc.url + "/v1/completions", json={"prompt": "hi"}) as r:
            assert r.status == 200


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 2:
        pytest.skip("no finite hard limit to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard // 2), hard))
    try:
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
