"""A half-open circuit admits ONE trial request; the others keep avoiding the target until the
trial's outcome is known (issue #11, item 4)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.policy import Circuit
from prfaas.engine.router.service import RouterService
from prfaas.engine.router.tokenizer import ByteTokenizer

LONG = "a long prompt that has well over twenty tokens in it, as bytes"


def test_half_open_circuit_admits_one_trial_until_its_outcome() -> None:
    c = Circuit(failures_to_open=2, retry_after_s=10.0)
    c.record_failure(0.0)
    c.take_trial(0.5)  # closed: a plain request, not a trial
    assert c.allows(1.0)
    c.record_failure(1.0)
    assert not c.allows(5.0)
    assert c.allows(11.0)  # half-open
    c.take_trial(11.0)
    assert not c.allows(11.0) and not c.allows(20.9)  # the trial is out: nobody else
    assert c.allows(21.0)  # the trial never reported: a second one after another retry_after
    c.take_trial(21.0)
    c.record_success()
    assert c.allows(21.5) and c.failures == 0


async def test_a_remote_that_never_answers_delays_one_request_per_retry_window() -> None:
    now = [0.0]
    async with (
        FakeEngine("prefill", "remote", delay_s=60.0) as remote,
        FakeEngine("prefill", "local") as local,
        FakeEngine("decode", "decode") as dec,
    ):
        data: dict[str, Any] = {
            "model": "tiny",
            "local_datacenter": "dc-b",
            "datacenters": {
                "dc-b": {"prefill": [local.url], "decode": [dec.url]},
                "dc-a": {"prefill": [remote.url]},
            },
            "links": {"dc-a": {"name": "a-to-b", "capacity_gbps": 10.0}},
            "threshold_tokens": 20,
            "kv_bytes_per_token": 100.0,
            "block_size": 4,
            "timeouts": {"prefill_s": 0.3},
            "circuit": {"failures": 1, "retry_after_s": 10.0},
            "health": {"enabled": False},
        }
        svc = RouterService(
            RouterConfig.model_validate(data),
            port=0,
            tokenizer=ByteTokenizer(),
            clock=lambda: now[0],
        )
        async with svc, aiohttp.ClientSession() as http:

            async def ask(i: int) -> str:
                body = {"prompt": f"{i} {LONG}", "max_tokens": 1}
                async with http.post(svc.url + "/v1/completions", json=body) as r:
                    assert r.status == 200
                    return r.headers["X-PrfaaS-Route"]

            assert await ask(0) == "fallback"  # timed out remotely: the link's circuit opens
            assert len(remote.received) == 1
            now[0] = 11.0  # past retry_after: half-open
            routes = await asyncio.gather(*(ask(i) for i in range(1, 7)))
            assert len(remote.received) == 2  # one trial, not six
            # The trial timed out too and fell back; the others went local straight away.
            assert sorted(routes) == ["fallback"] + ["local"] * 5
            assert len(local.received) == 7
