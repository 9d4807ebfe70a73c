"""Several decode clusters in one simulation: one router per cluster with its own ``t``, shared
PrfaaS pools and links, each request served by the cluster it arrived at."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.operator.cli.app import app
from prfaas.planner.distributions import LogNormal
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.plan import Plan
from prfaas.planner.problem import Problem
from prfaas.planner.sim.arrivals import FixedLengths, RequestStream, synthetic_stream
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.links import LinkSpec
from prfaas.planner.sim.scenarios import predict, scenarios
from prfaas.planner.sim.simulator import (
    DecodeCluster,
    DecodePool,
    PrefillPool,
    RoutingSpec,
    SimConfig,
    Simulation,
    simulate,
)
from prfaas.planner.solver import plan
from typer.testing import CliRunner

FAST = DistServeForm(0.05, 2e-5, 1e-11, 0.0, 0.0, 0.0)
SLOW = DistServeForm(0.1, 5e-5, 2.5e-11, 0.0, 0.0, 0.0)
DECODE = DistServeForm(0.0, 0.0, 0.0, 0.01, 1e-9, 1e-4)
T = {"east": 8_000.0, "west": 30_000.0}
SHARES = {"east": 0.5, "west": 0.3, "north": 0.2}
N = 3000


def _fixed(t: float | None) -> RoutingSpec:
    return RoutingSpec(threshold_tokens=t, adaptive=False)


def _cluster(name: str, remotes: tuple[tuple[str, str], ...] = ()) -> DecodeCluster:
    return DecodeCluster(
        name,
        DecodePool(f"{name}-d", f"dc-{name}", 3, DECODE, max_batch=64),
        SHARES[name],
        local=(f"{name}-p",),
        remotes=remotes,
        routing=_fixed(T.get(name)),
    )


def _config(*, west_offloads: bool = True, prfaas_a: int = 2) -> SimConfig:
    """east offloads to prfaas-a; west to prfaas-a and prfaas-b (or nowhere); north has a
    link into its datacenter but no remote in its plan."""
    west = (("prfaas-a", "a-west"), ("prfaas-b", "b-west")) if west_offloads else ()
    return SimConfig(
        "multi",
        (
            PrefillPool("prfaas-a", "dc-a", prfaas_a, FAST),
            PrefillPool("prfaas-b", "dc-b", 2, FAST),
            *(PrefillPool(f"{n}-p", f"dc-{n}", 3, SLOW) for n in SHARES),
        ),
        None,
        links=(
            LinkSpec("a-east", "dc-a", "dc-east", 50.0, rtt_s=0.01),
            LinkSpec("a-west", "dc-a", "dc-west", 50.0, rtt_s=0.02),
            LinkSpec("b-west", "dc-b", "dc-west", 25.0, rtt_s=0.01),
            LinkSpec("a-north", "dc-a", "dc-north", 50.0),
        ),
        kv_bytes_per_token=4_000,
        kv_fixed_bytes=1e6,
        clusters=(
            _cluster("east", (("prfaas-a", "a-east"),)),
            _cluster("west", west),
            _cluster("north"),
        ),
    )


def _stream(n: int = N, rate: float = 3.0, seed: int = 5) -> RequestStream:
    lengths = LogNormal(mu=9.3, sigma=1.0, lower=128, upper=131072)
    return synthetic_stream(n, rate, lengths, FixedLengths(32), seed=seed)


class _Recorded(Simulation):
    """Counts every request's last token and which requests each prefill batch held."""

    def __init__(self, config: SimConfig, stream: RequestStream, seed: int = 0) -> None:
        super().__init__(config, stream, seed=seed)
        self.done: Counter[int] = Counter()
        self.served: dict[str, list[int]] = {p.name: [] for p in config.prefill}

    def _on_prefill_done(self, idx: int, batch: list[int]) -> None:
        self.served[self._pools[self._instances[idx].pool].name] += batch
        super()._on_prefill_done(idx, batch)

    def _decode_done(self, r: int) -> None:
        self.done[r] += 1
        super()._decode_done(r)


@pytest.fixture(scope="module")
def recorded() -> tuple[_Recorded, Any]:
    sim = _Recorded(_config(), _stream())
    return sim, sim.run()


def test_every_arrival_finishes_once_at_its_own_cluster(recorded: tuple[_Recorded, Any]) -> None:
    sim, res = recorded
    assert res.clusters == ("east", "west", "north")
    assert sorted(sim.done) == list(range(N)) and set(sim.done.values()) == {1}
    assert np.all(np.isfinite(res.finish_s)) and np.all(res.finish_s >= res.first_token_s)
    assert np.all(res.first_token_s > res.arrival_s)
    counts = np.bincount(res.cluster, minlength=3)
    assert counts.sum() == N and all(counts > 0)
    for i, name in enumerate(res.clusters):
        part = res.of_cluster(name)
        assert len(part) == counts[i]
        assert part.name == f"multi/{name}"
        # The split follows the shares (binomial: 4 sigma).
        sd = (N * SHARES[name] * (1 - SHARES[name])) ** 0.5
        assert abs(counts[i] - N * SHARES[name]) < 4 * sd
    # Each request decodes on its own cluster's instances (3 per cluster, in cluster order).
    decoder_cluster = np.asarray(sim._dec_of) // 3
    assert np.array_equal(decoder_cluster, res.cluster)
    # Each request prefills on its own PD-P pool or on a PrfaaS pool its plan names.
    allowed = {
        0: {"east-p", "prfaas-a"},
        1: {"west-p", "prfaas-a", "prfaas-b"},
        2: {"north-p"},
    }
    seen: Counter[int] = Counter()
    for pool, reqs in sim.served.items():
        for r in reqs:
            seen[r] += 1
            assert pool in allowed[int(res.cluster[r])], (pool, r)
    assert set(seen.values()) == {1} and len(seen) == N


def test_each_cluster_applies_its_own_planned_t(recorded: tuple[_Recorded, Any]) -> None:
    _, res = recorded
    for name, t in T.items():
        part = res.of_cluster(name)
        # No prefix cache: uncached is the whole prompt; remote iff above this cluster's t.
        assert np.array_equal(part.uncached_tokens, part.input_tokens)
        assert np.array_equal(part.remote, part.uncached_tokens > t), name
        assert 0 < part.remote.sum() < len(part)
    east, west = res.of_cluster("east"), res.of_cluster("west")
    # Same length distribution, different t: east (lower t) offloads a larger share.
    assert east.offload_fraction > west.offload_fraction + 0.1
    # Each router's threshold series is its own and stays as planned (adaptive off).
    assert np.all(res.thresholds["east/a-east"].v == T["east"])
    assert np.all(res.thresholds["west/a-west"].v == T["west"])
    assert np.all(res.thresholds["west/b-west"].v == T["west"])


def test_a_cluster_without_remotes_never_offloads(recorded: tuple[_Recorded, Any]) -> None:
    sim, res = recorded
    north = res.of_cluster("north")
    assert not north.remote.any()
    assert north.input_tokens.max() > T["east"]  # it had prompts others would offload
    assert not any(k.startswith("north/") for k in res.thresholds)
    # The link into its datacenter exists but carries nothing.
    assert len(res.offered["a-north"][0]) == 0
    assert not np.any(res.links["a-north"].v > 0)
    assert sim.served["north-p"] and all(res.cluster[r] == 2 for r in sim.served["north-p"])


def test_a_shared_prfaas_pool_serves_several_clusters(recorded: tuple[_Recorded, Any]) -> None:
    sim, res = recorded
    on_a = Counter(int(res.cluster[r]) for r in sim.served["prfaas-a"])
    assert on_a[0] > 0 and on_a[1] > 0 and on_a[2] == 0
    assert sim.served["prfaas-b"] and all(res.cluster[r] == 1 for r in sim.served["prfaas-b"])
    # Every link carries exactly the KV of its own cluster's remote requests.
    east, west = res.of_cluster("east"), res.of_cluster("west")
    assert len(res.offered["a-east"][0]) == east.remote.sum()
    assert len(res.offered["a-west"][0]) + len(res.offered["b-west"][0]) == west.remote.sum()
    assert len(res.offered["a-west"][0]) > 0 and len(res.offered["b-west"][0]) > 0


def test_the_shared_pool_queue_is_shared() -> None:
    """East's offloaded prompts wait longer at one shared PrfaaS instance when west offloads
    to it too: the routers see one queue, not one copy each."""
    stream = _stream(2000, rate=4.0)
    alone = simulate(_config(west_offloads=False, prfaas_a=1), stream)
    shared = simulate(_config(west_offloads=True, prfaas_a=1), stream)
    assert np.array_equal(alone.cluster, shared.cluster)  # the same split (same seed)

    def east_remote_wait(res: Any) -> float:
        east = res.of_cluster("east")
        waits = (east.prefill_start_s - east.prefill_queued_s)[east.remote]
        return float(waits.mean())

    assert east_remote_wait(shared) > 1.5 * east_remote_wait(alone) > 0


def test_the_split_is_drawn_from_the_seed() -> None:
    stream = _stream(400)
    a = simulate(_config(), stream, seed=1)
    b = simulate(_config(), stream, seed=1)
    c = simulate(_config(), stream, seed=2)
    assert np.array_equal(a.cluster, b.cluster) and np.array_equal(a.finish_s, b.finish_s)
    assert not np.array_equal(a.cluster, c.cluster)


def test_one_cluster_given_as_clusters_is_the_single_cluster_run() -> None:
    """The multi-cluster path builds the same router as the one-decode-pool configuration."""
    prefill = (PrefillPool("prfaas-a", "dc-a", 2, FAST), PrefillPool("east-p", "dc-east", 3, SLOW))
    link = LinkSpec("a-east", "dc-a", "dc-east", 50.0, rtt_s=0.01)
    decode = DecodePool("east-d", "dc-east", 3, DECODE, max_batch=64)
    routing = RoutingSpec(threshold_tokens=T["east"])  # adaptive: the loop runs too
    single = SimConfig(
        "one", prefill, decode, (link,), routing, kv_bytes_per_token=4_000, kv_fixed_bytes=1e6
    )
    multi = replace(
        single,
        decode=None,
        routing=RoutingSpec(),
        clusters=(
            DecodeCluster("east", decode, 1.0, ("east-p",), (("prfaas-a", "a-east"),), routing),
        ),
    )
    stream = _stream(1500, rate=4.0)
    a, b = simulate(single, stream), simulate(multi, stream)
    for col in ("remote", "prefill_end_s", "kv_ready_s", "first_token_s", "finish_s"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    assert np.array_equal(a.thresholds["a-east"].v, b.thresholds["east/a-east"].v)
    assert 0 < a.remote.sum() < len(a)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c: replace(c, local=("nowhere",)), "local prefill pool 'nowhere'"),
        (lambda c: replace(c, remotes=(("prfaas-a", "no-link"),)), "link 'no-link'"),
        (lambda c: replace(c, remotes=(("prfaas-a", "a-west"),)), "'dc-a' → 'dc-west'"),
        (lambda c: replace(c, remotes=(("west-p", "a-east"),)), "a PD-P pool"),
        (lambda c: replace(c, share=-1.0), "shares must be finite"),
    ],
)
def test_bad_clusters_are_refused_by_name(change: Any, words: str) -> None:
    cfg = _config()
    bad = replace(cfg, clusters=(change(cfg.clusters[0]), *cfg.clusters[1:]))
    with pytest.raises(SimulatorError, match=words):
        Simulation(bad, _stream(10))


def test_a_pd_p_pool_belongs_to_one_cluster() -> None:
    cfg = _config()
    west = replace(cfg.clusters[1], local=("west-p", "east-p"))
    with pytest.raises(SimulatorError, match="local to both"):
        Simulation(replace(cfg, clusters=(cfg.clusters[0], west, cfg.clusters[2])), _stream(10))


# ---- from a plan: scenarios, predictions, the CLI --------------------------------------------

CASE_STUDY = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
MORE = """---
apiVersion: prfaas.io/v1alpha1
kind: DecodeCluster
metadata: {name: pd-h20-c}
spec: {datacenter: dc-c, accelerator: {type: H20, count: 32, perNode: 8}}
---
apiVersion: prfaas.io/v1alpha1
kind: DecodeCluster
metadata: {name: pd-h20-d}
spec: {datacenter: dc-d, accelerator: {type: H20, count: 32, perNode: 8}}
---
apiVersion: prfaas.io/v1alpha1
kind: InterDCLink
metadata: {name: dc-a-to-dc-c}
spec: {from: dc-a, to: dc-c, bandwidthGbps: 10, rttMs: 20}
"""


@pytest.fixture(scope="module")
def three_clusters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The case study plus two smaller H20 clusters: dc-c behind a thin link, dc-d with none."""
    text = CASE_STUDY.read_text(encoding="utf-8").replace(
        "decode: [pd-h20]", "decode: [pd-h20, pd-h20-c, pd-h20-d]"
    )
    path = tmp_path_factory.mktemp("multi") / "three.yaml"
    path.write_text(text + MORE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def planned(three_clusters: Path) -> tuple[Problem, Plan]:
    (problem,) = problems_from_manifests(load_manifests(three_clusters).resources)
    return problem, plan(problem)


def test_a_plan_with_several_decode_clusters_becomes_one_config(
    planned: tuple[Problem, Plan],
) -> None:
    problem, pl = planned
    routers = {r.decode_cluster: r for r in pl.routers}
    assert routers["pd-h20-d"].threshold_tokens is None  # no link: all local
    assert routers["pd-h20"].threshold_tokens is not None
    assert sum(r.rate_rps or 0.0 for r in pl.routers) == pytest.approx(pl.throughput_rps)
    (ours, *_) = scenarios(problem, pl)
    cfg = ours.config
    assert cfg.decode is None
    clusters = {c.name: c for c in cfg.clusters}
    assert set(clusters) == set(routers)
    for name, c in clusters.items():
        assert c.routing.threshold_tokens == routers[name].threshold_tokens
        assert c.share == routers[name].rate_rps
        assert c.remotes == tuple(
            ("prfaas-h200/prefill", rp.link) for rp in routers[name].remotes
        )
        assert c.local == (f"{name}/prefill",)
    assert clusters["pd-h20-d"].remotes == ()
    assert {link for c in cfg.clusters for _, link in c.remotes} == {
        "dc-a-to-dc-b",
        "dc-a-to-dc-c",
    }


def test_predict_fills_each_router_and_link(planned: tuple[Problem, Plan]) -> None:
    problem, pl = planned
    runs = predict(problem, pl, requests=1500)
    res = runs[0].result
    assert set(res.clusters) == {r.decode_cluster for r in pl.routers}
    for r in pl.routers:
        pr = r.predicted
        assert pr is not None and pr.offload_fraction is not None and pr.ttft_p90_s is not None
        part = res.of_cluster(r.decode_cluster)
        assert pr.offload_fraction == part.offload_fraction
        assert pr.ttft_p90_s == pytest.approx(float(np.percentile(part.ttft, 90)))
        if r.threshold_tokens is None:
            assert pr.offload_fraction == 0.0
    egress = {lk.name: lk.predicted_egress_gbps for lk in pl.links}
    assert egress["dc-a-to-dc-b"] and egress["dc-a-to-dc-c"]
    assert egress["dc-a-to-dc-c"] < 10.0
    back = Plan.from_dict(pl.to_dict())
    assert back.routers[0].predicted == pl.routers[0].predicted


def test_simulate_prints_a_row_per_decode_cluster_and_link(three_clusters: Path) -> None:
    argv = ["simulate", str(three_clusters), "-n", "1200", "--no-goodput"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "per decode cluster" in out and "link egress" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 6}
    assert {"pd-h20", "pd-h20-c", "pd-h20-d", "all"} <= set(rows)
    assert "0.0%" in rows["pd-h20-d"] and "∞ / ∞" in rows["pd-h20-d"]
    # pd-h20-d has no link: the all-remote layout cannot serve it, and the output says so.
    assert "naive-heterogeneous is not simulated" in out
    data = json.loads(CliRunner().invoke(app, [*argv, "-o", "json"]).stdout)
    ours = data["configurations"][0]
    assert [c["name"] for c in ours["clusters"]] == ["pd-h20", "pd-h20-c", "pd-h20-d"]
    assert sum(c["requests"] for c in ours["clusters"]) == ours["requests"] == 1200


def test_plan_simulate_prints_each_cluster(three_clusters: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(three_clusters), "--simulate", "600"])
    assert result.exit_code == 0, result.output
    assert "Simulated per decode cluster" in result.output
    assert "simulated Gbps" in result.output
