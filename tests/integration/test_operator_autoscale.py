"""The autoscaling loop on two emulated clusters against a fake Prometheus: a rising request rate
grows the planned replicas at once, a falling one shrinks them only after the scale-down window,
the observed load and measured link bandwidth land in status, and an unreachable Prometheus
scales nothing down."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from prfaas.engine.router.config import parse_router_config
from prfaas.operator.autoscaling.loop import Autoscaler
from prfaas.operator.autoscaling.settings import AutoscaleSettings
from prfaas.operator.metrics import OperatorMetrics

from .conftest import World, case_study, serve_fake_prometheus

QUERY_WINDOW_S = 60.0
DECLARED_MEAN = 27485.7  # uncached mean of the case study's input distribution (factor 1)
LINK = "dc-a-to-dc-b"
DECODE = "hybrid-1t-pd-h20-both"  # the case study's PD-P + PD-D: one convertible pool
REMOTE_PREFILL = "hybrid-1t-prfaas-h200-prefill"


@dataclass
class FakePrometheus:
    """Answers the autoscaler's instant queries from ``rate`` and ``link_gbps``."""

    url: str = ""
    rate: float = 0.5
    link_gbps: float | None = None
    queries: list[str] = field(default_factory=list)

    def answer(self, expr: str) -> list[tuple[dict[str, str], float]]:
        self.queries.append(expr)
        requests = self.rate * QUERY_WINDOW_S
        if "requests_total" in expr:
            return [({}, requests)]
        if "uncached_tokens_count" in expr:
            return [({}, requests)]
        if "uncached_tokens_sum" in expr:
            return [({}, requests * DECLARED_MEAN)]
        if self.link_gbps is not None and "kv_transfer_seconds_total" in expr:
            return [({"link": LINK}, 20.0)]
        if self.link_gbps is not None and "kv_bytes_total" in expr:
            return [({"link": LINK}, self.link_gbps * 1e9 / 8 * 20.0)]
        return []


@pytest_asyncio.fixture()
async def prometheus() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()

    async with serve_fake_prometheus(fake):
        yield fake


def _settings(window_s: float) -> AutoscaleSettings:
    return AutoscaleSettings(
        tick_seconds=0.1,
        scale_down_window_seconds=window_s,
        query_window_seconds=QUERY_WINDOW_S,
        min_transfer_seconds=5.0,
    )


async def _create(world: World, url: str, **scaling: Any) -> None:
    docs = case_study()
    sp = docs["ServingPlan"]
    sp["spec"]["workload"]["observe"] = True
    sp["spec"]["autoscaling"] = {
        "enabled": True,
        "prometheusUrl": url,
        "interval": "300ms",
        **scaling,
    }
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(docs[kind])


def _replicas(world: World) -> tuple[int | None, int | None]:
    """(remote PrfaaS replicas, PD-D instances of the local pool), once the local pool runs
    what the plan in status says: one kv_both Deployment of PD-P + PD-D replicas, and the router
    assigning PD-P of them role prefill (its ConfigMap); ``None`` until then."""
    remote = world.children(world.remote).get(REMOTE_PREFILL)
    rows = {
        c["role"]: c["instances"]
        for c in (_status(world).get("plan") or {}).get("clusters", [])
        if c["name"] == "pd-h20"
    }
    local = world.children(world.local).get(DECODE)
    cm = world.children(world.local, "v1/configmaps").get("hybrid-1t-pd-h20-router")
    follows = None
    if local is not None and cm is not None and rows:
        cfg = parse_router_config(cm["data"]["router.yaml"])
        split = [p.prefill for p in (cfg.discovery.pools if cfg.discovery else [])
                 if p.role == "convertible"]
        if local["spec"]["replicas"] == sum(rows.values()) and split == [rows.get("prefill", 0)]:
            follows = rows.get("decode")
    return (None if remote is None else remote["spec"]["replicas"], follows)


def _status(world: World) -> dict[str, Any]:
    return dict((world.get_cr("ServingPlan", "hybrid-1t", "default") or {}).get("status") or {})


async def test_replicas_follow_the_observed_rate_with_a_scale_down_window(
    world: World, prometheus: FakePrometheus
) -> None:
    # The scale-down window runs on the autoscaler's monotonic clock, which the test moves on
    # (by the window) when it wants the window to pass: a slow machine cannot let it lapse.
    window_s = 600.0
    skipped = [0.0]
    settings = _settings(window_s=window_s)
    metrics = OperatorMetrics()
    autoscaler = Autoscaler(
        settings, metrics, monotonic=lambda: time.monotonic() + skipped[0]
    )
    await world.start_operator(autoscale=settings, autoscaler=autoscaler, metrics=metrics)
    prometheus.link_gbps = 40.0
    await _create(world, prometheus.url, maxReplicas=16)

    # 0.5 req/s observed: one instance per role (after the first window: the declared workload,
    # planned before the first poll, asked for the most).
    await world.until(
        lambda: (_status(world).get("observed") or {}).get("rateRps") == 0.5,
        what="status.observed to show 0.5 req/s",
    )
    observed = _status(world)["observed"]
    assert observed["meanInputTokens"] == DECLARED_MEAN and observed["windowSeconds"] == 60
    assert _status(world)["autoscaling"]["metricsAvailable"] is True
    skipped[0] += window_s
    await world.until(lambda: _replicas(world) == (1, 1), what="replicas to settle at 1/1")
    assert any('prfaas_io_plan="hybrid-1t"' in q for q in prometheus.queries)

    # The link's measured bandwidth reaches InterDCLink status and its Ready message.
    link = await world.until(
        lambda: (
            ((world.get_cr("InterDCLink", LINK) or {}).get("status") or {}).get("measuredGbps")
            and world.get_cr("InterDCLink", LINK)
        ),
        what="InterDCLink status.measuredGbps",
    )
    assert link["status"]["measuredGbps"] == 40.0 and link["status"]["lastProbe"]

    # Rising rate: more instances at once.
    prometheus.rate = 2.0
    await world.until(
        lambda: (
            (_replicas(world)[0] or 0) > 1
            and (_replicas(world)[1] or 0) > 1
            and (_status(world).get("observed") or {}).get("rateRps") == 2.0
        ),
        what="replicas to grow with the rate",
    )
    grown = _replicas(world)

    # Falling rate: status shows it while the replicas are held for the window, then shrink.
    prometheus.rate = 0.5
    await world.until(
        lambda: (_status(world).get("observed") or {}).get("rateRps") == 0.5,
        what="status.observed to show the lower rate",
    )
    notes = (_status(world).get("plan") or {}).get("notes") or []
    assert _replicas(world) == grown
    assert any("until the scale-down window passes" in n for n in notes), "\n".join(notes)
    skipped[0] += window_s
    await world.until(
        lambda: _replicas(world) == (1, 1), what="replicas to shrink after the window"
    )


async def test_unreachable_prometheus_is_reported_and_scales_nothing_down(world: World) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    await world.start_operator(autoscale=_settings(window_s=0.2))
    await _create(world, dead)
    await world.until(
        lambda: (_status(world).get("autoscaling") or {}).get("metricsAvailable") is False,
        what="status.autoscaling.metricsAvailable false",
    )
    message = _status(world)["autoscaling"]["message"]
    assert "unreachable" in message and "nothing is scaled down" in message
    assert "observed" not in _status(world)
    # The declared workload (no rate: the highest sustainable) still plans; nothing shrinks.
    await world.until(lambda: all(_replicas(world)), what="children")
    before = _replicas(world)
    await world.until(
        lambda: (
            len(world.local["post /api/v1/namespaces/default/events"]) > 0
            and any(
                r.data.get("reason") == "MetricsUnavailable"
                for r in world.local["post /api/v1/namespaces/default/events"]
            )
        ),
        what="a MetricsUnavailable Event",
    )
    assert _replicas(world) == before
