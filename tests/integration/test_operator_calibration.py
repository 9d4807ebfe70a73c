"""Calibration while running, on the emulated clusters against a fake Prometheus that answers
vLLM-shaped histogram queries: decode engines twice as slow as planned move the decode factor
toward observed/predicted, the re-plan adds decode instances, a Warning Event says so, and when
the engine series disappear nothing moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from prfaas.operator.api import models as api
from prfaas.operator.autoscaling.calibration import plan_predictor
from prfaas.operator.autoscaling.settings import AutoscaleSettings

from .conftest import World, case_study, serve_fake_prometheus

WINDOW_S = 60.0
DECLARED_MEAN = 27485.7
DECODE = "hybrid-1t-pd-h20-both"  # the case study's PD-P + PD-D: one convertible pool
POOL = {"prfaas_io_cluster": "pd-h20", "prfaas_io_role": "both"}
BATCH, PROMPT, GENERATED, TOKENS = 8.0, 27000.0, 1024.0, 2000.0


@dataclass
class VllmPrometheus:
    """Router series for 0.5 req/s, and decode engines' histograms ``slowdown ×`` what the
    latency model predicts at their batch and context (``engines=False``: no engine series)."""

    predicted_itl: float
    url: str = ""
    slowdown: float = 2.0
    engines: bool = True
    queries: list[str] = field(default_factory=list)

    def answer(self, expr: str) -> list[tuple[dict[str, str], float]]:
        self.queries.append(expr)
        requests = 0.5 * WINDOW_S
        if "prfaas_router_requests_total" in expr or "uncached_tokens_count" in expr:
            return [({}, requests)]
        if "uncached_tokens_sum" in expr:
            return [({}, requests * DECLARED_MEAN)]
        if not self.engines or "vllm:" not in expr:
            return []
        values = {
            "inter_token_latency_seconds_sum": self.slowdown * self.predicted_itl * TOKENS,
            "inter_token_latency_seconds_count": TOKENS,
            "num_requests_running": BATCH,
            "request_prompt_tokens_sum": PROMPT * requests,
            "request_prompt_tokens_count": requests,
            "request_generation_tokens_sum": GENERATED * requests,
            "request_generation_tokens_count": requests,
        }
        for name, value in values.items():
            if f"vllm:{name}" in expr:
                return [(POOL, value)]
        return []


def _predicted_itl() -> float:
    spec = api.ServingPlanSpec.model_validate(case_study()["ServingPlan"]["spec"])
    shape = {"name": "pd-h20", "role": "decode", "accelerator": "H20", "tensorParallel": 8}
    model = plan_predictor(spec, {"clusters": [shape]})("pd-h20", "decode")
    assert model is not None
    context = PROMPT + GENERATED / 2
    return model.decode_step_seconds(int(BATCH), BATCH * context)


@pytest_asyncio.fixture()
async def prometheus() -> AsyncIterator[VllmPrometheus]:
    fake = VllmPrometheus(_predicted_itl())

    async with serve_fake_prometheus(fake):
        yield fake


def _status(world: World) -> dict[str, Any]:
    return dict((world.get_cr("ServingPlan", "hybrid-1t", "default") or {}).get("status") or {})


def _decode_factor(world: World) -> float | None:
    for row in _status(world).get("calibration") or []:
        if (row["cluster"], row["role"], row["phase"]) == ("pd-h20", "decode", "decode"):
            return float(row["factor"])
    return None


def _decode_replicas(world: World) -> int | None:
    """PD-D instances of the plan in status, once the kv_both Deployment runs PD-P + PD-D."""
    rows = {
        c["role"]: int(c["instances"])
        for c in (_status(world).get("plan") or {}).get("clusters", [])
        if c["name"] == "pd-h20"
    }
    # Without PD-P the cluster is no convertible pool: PD-D alone, kv_consumer.
    name = DECODE if rows.get("prefill") else "hybrid-1t-pd-h20-decode"
    child = world.children(world.local).get(name)
    if child is None or int(child["spec"]["replicas"]) != sum(rows.values()):
        return None
    return rows.get("decode")


async def test_slow_decode_engines_move_the_factor_and_add_instances(
    world: World, prometheus: VllmPrometheus
) -> None:
    prometheus.engines = False
    await world.start_operator(
        autoscale=AutoscaleSettings(
            tick_seconds=0.1, scale_down_window_seconds=0.2, query_window_seconds=WINDOW_S
        )
    )
    docs = case_study()
    sp = docs["ServingPlan"]
    sp["spec"]["workload"]["observe"] = True
    sp["spec"]["autoscaling"] = {
        "enabled": True,
        "prometheusUrl": prometheus.url,
        "interval": "300ms",
    }
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(docs[kind])
    await world.until(lambda: _decode_replicas(world) == 1, what="one decode instance at 0.5 req/s")
    assert any("vllm:inter_token_latency_seconds" in q for q in prometheus.queries)
    assert "calibration" not in _status(world)  # no engine series: nothing learned

    # The decode engines run twice as slow as the model predicts at their batch and context.
    prometheus.engines = True
    first = await world.until(lambda: _decode_factor(world), what="a decode correction factor")
    assert 1.0 < first <= 2.0
    await world.until(lambda: (_decode_factor(world) or 0) > 1.8, what="factor toward 2")
    row = next(r for r in _status(world)["calibration"] if r["role"] == "decode")
    assert row["observedSeconds"] / row["predictedSeconds"] == pytest.approx(2.0, rel=0.01)
    await world.until(
        lambda: (_decode_replicas(world) or 0) > 1,
        what="the re-plan to add decode instances",
    )
    notes = (_status(world).get("plan") or {}).get("notes") or []
    assert any("pd-h20/decode decode ×" in n for n in notes), "\n".join(notes)
    events = [r.data for r in world.local["post /api/v1/namespaces/default/events"]]
    moved = [e for e in events if e.get("reason") == "LatencyModelCorrected"]
    assert moved and moved[0]["type"] == "Warning" and "pd-h20/decode decode" in moved[0]["message"]

    # The engine series disappear: the factor and the replicas stay where they are. (A poll
    # may be in flight: once the next one has started, the one before it was complete.)
    prometheus.engines = False

    def polls() -> int:
        return len([q for q in prometheus.queries if "requests_total" in q])

    start = polls()
    await world.until(lambda: polls() >= start + 2, what="two more polls")
    settled, replicas = _decode_factor(world), _decode_replicas(world)
    await world.until(lambda: polls() >= start + 4, what="two polls after that")
    assert _decode_factor(world) == settled
    assert _decode_replicas(world) == replicas
