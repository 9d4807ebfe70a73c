"""Metrics updated through cached children: link gauges follow the links (values after
routing, names after a reconfigure); request counters count per (path, outcome)."""

from __future__ import annotations

from typing import Any

from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.metrics import RouterMetrics
from prfaas.engine.router.proxy import RouterCore


def _config(link_name: str) -> RouterConfig:
    data: dict[str, Any] = {
        "model": "m",
        "local_datacenter": "local",
        "datacenters": {"local": {"decode": ["http://d0"]}, "far": {"prefill": ["http://rp0"]}},
        "links": {"far": {"name": link_name, "capacity_gbps": 1.0}},
        "threshold_tokens": 100,
        "kv_bytes_per_token": 10.0,
    }
    return RouterConfig.model_validate(data)


def _sample(router: RouterCore, metric: str, link: str) -> float | None:
    return router.metrics.registry.get_sample_value(metric, {"link": link})


async def test_gauges_track_bytes_in_flight_and_renamed_links() -> None:
    router = RouterCore(_config("far-to-local"), clock=lambda: 1.0)
    assert _sample(router, "prfaas_router_kv_bytes_in_flight", "far-to-local") == 0.0
    router.policy.links["far"].send(1.0, 500.0)
    router.update_gauges()
    assert _sample(router, "prfaas_router_kv_bytes_in_flight", "far-to-local") == 500.0
    assert _sample(router, "prfaas_router_threshold_tokens", "far-to-local") == 100.0
    await router.reconfigure(_config("renamed"))
    assert _sample(router, "prfaas_router_kv_bytes_in_flight", "far-to-local") is None
    assert _sample(router, "prfaas_router_kv_bytes_in_flight", "renamed") == 500.0
    router.policy.links["far"].delivered(500.0)
    router.update_gauges()
    assert _sample(router, "prfaas_router_kv_bytes_in_flight", "renamed") == 0.0
    assert _sample(router, "prfaas_router_link_up", "renamed") == 1.0


def test_request_counts_per_path_and_outcome() -> None:
    m = RouterMetrics()
    for path, outcome in [("remote", "ok"), ("remote", "ok"), ("local", "error")]:
        m.request_done(path, outcome)
    sample = m.registry.get_sample_value
    assert sample("prfaas_router_requests_total", {"path": "remote", "outcome": "ok"}) == 2.0
    assert sample("prfaas_router_requests_total", {"path": "local", "outcome": "error"}) == 1.0
    assert sample("prfaas_router_requests_total", {"path": "local", "outcome": "ok"}) is None


async def test_link_gauges_carry_planned_threshold_capacity_and_headroom() -> None:
    """What the alerts compare egress and ``t`` against (rendered chart's PrometheusRule)."""
    router = RouterCore(_config("far-to-local"), clock=lambda: 1.0)
    assert _sample(router, "prfaas_router_planned_threshold_tokens", "far-to-local") == 100.0
    assert _sample(router, "prfaas_router_link_capacity_bits_per_second", "far-to-local") == 1e9
    assert _sample(router, "prfaas_router_link_headroom_ratio", "far-to-local") == 0.8
    no_offload = _config("far-to-local").model_copy(update={"threshold_tokens": None})
    await router.reconfigure(no_offload)
    assert _sample(router, "prfaas_router_planned_threshold_tokens", "far-to-local") == float(
        "inf"
    )
