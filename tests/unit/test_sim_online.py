"""The simulator's online re-plan loop: role changes drain, counts follow the plan, and in the
README's outage (case study, 100 → 5 Gbps at 3000 s for 3000 s) P90 TTFT recovers with it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prfaas.operator.api.manifests import read_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.operator.cli.app import app
from prfaas.planner.problem import Problem
from prfaas.planner.sim.arrivals import RequestStream, synthetic_stream
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.links import parse_schedule
from prfaas.planner.sim.metrics import SimResult
from prfaas.planner.sim.online import (
    OnlineLoop,
    OnlineResult,
    OnlineSpec,
    Split,
    recovery_s,
    simulate_online,
    solver_replan,
    windowed_p90,
)
from prfaas.planner.sim.scenarios import scenarios
from prfaas.planner.sim.simulator import SimConfig, Simulation, simulate
from prfaas.planner.solver import plan
from typer.testing import CliRunner

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
DOWN, UP, LOW = 3000.0, 6000.0, 5.0
NAME = "prfaas-pd"  # a single-cluster run's cluster: the configuration's name


@dataclass
class Case:
    problem: Problem
    config: SimConfig
    homogeneous: SimConfig
    stream: RequestStream
    planned: Split
    degraded: Split
    rate: float


@pytest.fixture(scope="module")
def case() -> Case:
    problem = problems_from_manifests(read_manifests([SAMPLE]).resources)[0]
    found = scenarios(problem, plan(problem), schedule=parse_schedule("0:100,3000:5,6000:100"))
    replan = solver_replan(problem)
    planned = next(iter(replan(0.0, {"dc-a-to-dc-b": 100.0}).values()))
    degraded = next(iter(replan(0.0, {"dc-a-to-dc-b": LOW}).values()))
    # 0.7 × what the re-planned split serves at 5 Gbps: more than the planned split serves there.
    slow = replace(problem, links=(replace(problem.links[0], bandwidth_gbps=LOW),))
    rate = 0.7 * plan(slow).throughput_rps
    w = problem.workload
    stream = synthetic_stream(int(rate * 9000), rate, w.input_length, w.output_length, seed=1)
    homogeneous = next(s.config for s in found if s.config.links == ())
    return Case(problem, found[0].config, homogeneous, stream, planned, degraded, rate)


@dataclass
class Recorded:
    """Every routing decision: (time, prefill persona, decode persona), and whether each was
    leaving or outside its pool at that moment."""

    decisions: list[tuple[float, Any, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def run_recorded(
    config: SimConfig, stream: RequestStream, spec: OnlineSpec
) -> tuple[Simulation, OnlineLoop, SimResult, Recorded]:
    sim = Simulation(config, stream, seed=1)
    loop = OnlineLoop(sim, spec)
    rec = Recorded()
    for router in sim._routers:
        core = router.core
        decide = core.decide

        def spy(hashes: Any, n: int, now: float, core: Any = core, decide: Any = decide) -> Any:
            d = decide(hashes, n, now)
            checks = [(d.decode, core.decode)]
            if d.route == "local":
                checks.append((d.prefill, core.local_prefill))
            for inst, pool in checks:
                if inst is None:
                    continue
                if getattr(inst, "leaving", False):
                    rec.violations.append(f"{now}: picked a leaving instance")
                if inst not in pool:
                    rec.violations.append(f"{now}: picked an instance outside its pool")
            rec.decisions.append((now, d.prefill, d.decode))
            return d

        core.decide = spy  # type: ignore[method-assign]
    return sim, loop, sim.run(), rec


def scripted(*steps: tuple[float, Split]) -> Any:
    """A re-plan callback that returns the split of the last step at or before ``now``."""

    def replan(now: float, measured: Mapping[str, float]) -> Mapping[str, Split]:
        split = None
        for when, s in steps:
            if when <= now:
                split = s
        return {} if split is None else {"c": split}

    return replan


@pytest.fixture(scope="module")
def scripted_run(case: Case) -> tuple[Simulation, OnlineLoop, SimResult, Recorded]:
    p, d = case.planned.prefill, case.planned.decode
    t = case.planned.threshold_tokens
    spec = OnlineSpec(
        scripted((600.0, Split(p + 2, d - 2, t)), (1200.0, Split(p - 1, d + 1, t))),
        interval_s=60.0,
    )
    short = case.stream.head(int(case.rate * 2400))
    return run_recorded(case.config, short, spec)


def test_role_changes_drain_and_lose_nothing(case: Case, scripted_run: Any) -> None:
    sim, loop, res, rec = scripted_run
    assert np.all(np.isfinite(res.finish_s)) and np.all(np.isfinite(res.first_token_s))
    assert np.all(res.finish_s >= res.first_token_s)
    assert not rec.violations
    done = [c for c in loop.changes if math.isfinite(c.joined_s)]
    assert len(done) == 2 + 3  # two D→P at 600 s, then three P→D at 1200 s
    for c in done:
        assert c.asked_s <= c.drained_s <= c.joined_s
    # Each instance that drained had finished everything routed to it before it was asked to
    # leave, and took nothing of its old role from then until it came back.
    for change in done:
        slot = next(s for cl in loop.clusters for s in cl.slots if s.number == change.instance)
        old = slot.decoder if change.to == "prefill" else slot.prefiller
        rows = [
            (i, now)
            for i, (now, pre, dec) in enumerate(rec.decisions)
            if (dec if change.to == "prefill" else pre) is old
        ]
        assert rows, "the instance served before its change"
        before = [i for i, now in rows if now < change.asked_s]
        during = [i for i, now in rows if change.asked_s <= now < change.joined_s]
        assert not during
        ends = res.finish_s if change.to == "prefill" else res.prefill_end_s
        data_plane = max(sim.config.data_plane_s)
        assert max(ends[before]) <= change.drained_s + data_plane + 1e-9


def test_counts_follow_the_replan_after_the_drain(case: Case, scripted_run: Any) -> None:
    _, loop, _, _ = scripted_run
    p, d = case.planned.prefill, case.planned.decode
    c = loop.clusters[0]
    assert (len(c.router.core.local_prefill), len(c.router.core.decode)) == (p - 1, d + 1)
    res = OnlineResult(scripted_run[2], tuple(loop.replans), tuple(loop.changes))
    assert res.roles_at(NAME, 599.0, (p, d)) == (p, d)
    last_join = max(ch.joined_s for ch in loop.changes if ch.asked_s < 1200.0)
    assert res.roles_at(NAME, last_join, (p, d)) == (p + 2, d - 2)
    assert res.roles_at(NAME, 2400.0, (p, d)) == (p - 1, d + 1)


def test_a_switch_delay_keeps_the_instance_out_of_both_pools(case: Case) -> None:
    p, d = case.planned.prefill, case.planned.decode
    t = case.planned.threshold_tokens
    spec = OnlineSpec(
        scripted((300.0, Split(p + 1, d - 1, t))), interval_s=60.0, switch_delay_s=45.0
    )
    short = case.stream.head(int(case.rate * 900))
    _, loop, res, rec = run_recorded(case.config, short, spec)
    assert np.all(np.isfinite(res.finish_s)) and not rec.violations
    (change,) = loop.changes
    assert change.asked_s == 300.0 and change.joined_s == change.drained_s + 45.0
    slot = next(s for s in loop.clusters[0].slots if s.number == change.instance)
    used = [now for now, pre, dec in rec.decisions if slot.prefiller is pre or slot.decoder is dec]
    assert not [now for now in used if change.asked_s <= now < change.joined_s]
    assert any(now >= change.joined_s for now in used)  # serves prefill after the delay
    online = OnlineResult(res, tuple(loop.replans), tuple(loop.changes))
    assert online.roles_at(NAME, change.drained_s + 1.0, (p, d)) == (p, d - 1)
    assert online.roles_at(NAME, change.joined_s, (p, d)) == (p + 1, d - 1)


def test_an_unchanged_plan_changes_nothing(case: Case) -> None:
    """The loop with a re-plan that keeps the split routes exactly as the plain simulator."""
    short = case.stream.head(int(case.rate * 1200))
    keep = OnlineSpec(scripted((0.0, case.planned)), interval_s=60.0)
    online = simulate_online(case.config, short, keep, seed=1)
    plain = simulate(case.config, short, seed=1)
    assert not online.changes and len(online.replans) >= 19
    assert np.array_equal(online.result.first_token_s, plain.first_token_s)
    assert np.array_equal(online.result.finish_s, plain.finish_s)


def test_spec_and_config_errors_name_the_fix(case: Case) -> None:
    with pytest.raises(SimulatorError, match="replan interval"):
        OnlineSpec(scripted(), interval_s=0.0)
    with pytest.raises(SimulatorError, match="switch delay"):
        OnlineSpec(scripted(), switch_delay_s=-1.0)
    cfg = case.config
    assert cfg.decode is not None
    remote_only = replace(
        cfg, prefill=tuple(p for p in cfg.prefill if p.datacenter != cfg.decode.datacenter)
    )
    with pytest.raises(SimulatorError, match="one PD-P pool"):
        simulate_online(remote_only, case.stream.head(20), OnlineSpec(scripted()))


@pytest.fixture(scope="module")
def outage(case: Case) -> dict[str, Any]:
    online = simulate_online(case.config, case.stream, OnlineSpec(solver_replan(case.problem)))
    return {
        "online": online,
        "static": simulate(case.config, case.stream, seed=0),
        "homogeneous": simulate(case.homogeneous, case.stream, seed=0),
    }


def _p90(res: SimResult, start: float, end: float) -> float:
    m = (res.arrival_s >= start) & (res.arrival_s < end)
    return float(np.percentile(res.ttft[m], 90))


def test_outage_replan_follows_the_measured_link(case: Case, outage: dict[str, Any]) -> None:
    online = outage["online"]
    p, d = case.planned.prefill, case.planned.decode
    assert (case.degraded.prefill, case.degraded.decode) != (p, d)
    drop = [r for r in online.replans if DOWN < r.at_s <= UP]
    assert drop and all(abs(g - LOW) < 0.01 for r in drop for g in r.measured_gbps.values())
    asked = [c.asked_s for c in online.changes]
    assert min(asked) == DOWN + 60.0  # the first tick after the drop
    switched = max(c.joined_s for c in online.changes if c.asked_s < UP)
    assert switched < DOWN + 120.0
    assert online.roles_at(NAME, switched, (p, d)) == (case.degraded.prefill, case.degraded.decode)
    assert online.roles_at(NAME, 9000.0 + 1e6, (p, d)) == (p, d)  # back after the link returns


def test_outage_p90_recovers_with_replan_and_not_without(
    case: Case, outage: dict[str, Any]
) -> None:
    slo = case.problem.slo.ttft_s
    online, static, homog = outage["online"].result, outage["static"], outage["homogeneous"]
    after = DOWN + 180.0  # a re-plan period, the drain, and the requests queued before it
    assert _p90(online, after, UP) <= slo
    assert _p90(static, after, UP) > 1.5 * slo
    assert _p90(homog, after, UP) > _p90(online, after, UP)  # over the same window
    assert recovery_s(online, slo, DOWN, UP) <= 180.0
    assert math.isinf(recovery_s(static, slo, DOWN, UP))
    starts, p90 = windowed_p90(online, 60.0)
    assert starts[1] - starts[0] == 60.0 and len(starts) == len(p90)
    assert _p90(online, 0.0, DOWN) <= slo and _p90(online, UP + 120.0, 9000.0) <= slo


def test_cli_simulate_replans_online_and_reports_the_outage() -> None:
    runner = CliRunner()
    args = ["simulate", str(SAMPLE), "-n", "4000", "--no-goodput", "--seed", "1"]
    args += ["--bandwidth-schedule", "0:100,600:5,1800:100", "--replan-interval", "1m"]
    result = runner.invoke(app, [*args, "-o", "json"])
    assert result.exit_code == 0, result.output
    online = json.loads(result.stdout[result.stdout.index("{") :])["online"]
    changes = online["roleChanges"]
    assert [c["to"] for c in changes if c["askedS"] < 1800] == ["prefill", "prefill"]
    assert all(c["askedS"] == 660.0 for c in changes if c["askedS"] < 1800)
    assert any(c["to"] == "decode" and c["askedS"] == 1860.0 for c in changes)
    outage = online["outage"]
    assert (outage["dropS"], outage["returnS"]) == (600.0, 1800.0)
    assert 60.0 < outage["rolesSettledS"] < 180.0
    rows = {r["name"]: r["p90TtftS"]["during"] for r in outage["configurations"]}
    assert rows["prfaas-pd (online re-plan)"] < rows["naive-heterogeneous"]
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "online re-plan:" in table.stdout and "decode → prefill" in table.stdout
    bad = runner.invoke(app, [*args[:-1], "60"])
    assert bad.exit_code != 0 and "replan-interval" in bad.output


MORE_CLUSTERS = """---
apiVersion: prfaas.io/v1alpha1
kind: DecodeCluster
metadata: {name: pd-h20-c}
spec: {datacenter: dc-c, accelerator: {type: H20, count: 32, perNode: 8}}
---
apiVersion: prfaas.io/v1alpha1
kind: InterDCLink
metadata: {name: dc-a-to-dc-c}
spec: {from: dc-a, to: dc-c, bandwidthGbps: 10, rttMs: 20}
"""


def test_several_decode_clusters_each_follow_their_own_split(tmp_path: Path) -> None:
    """A two-cluster plan: every router's roles and ``t`` follow its own cluster's re-plan."""
    text = SAMPLE.read_text(encoding="utf-8").replace(
        "decode: [pd-h20]", "decode: [pd-h20, pd-h20-c]"
    )
    path = tmp_path / "two.yaml"
    path.write_text(text + MORE_CLUSTERS, encoding="utf-8")
    (problem,) = problems_from_manifests(read_manifests([path]).resources)
    pl = plan(problem)
    schedule = parse_schedule("0:100,600:5,1800:100")
    config = scenarios(problem, pl, schedule=schedule)[0].config
    assert len(config.clusters) == 2
    w = problem.workload
    rate = 0.6 * pl.throughput_rps
    stream = synthetic_stream(int(rate * 2400), rate, w.input_length, w.output_length, seed=1)
    replan = solver_replan(problem)
    online = simulate_online(config, stream, OnlineSpec(replan), seed=1)
    assert np.all(np.isfinite(online.result.finish_s))
    assert {c.cluster for c in online.changes} <= {c.name for c in config.clusters}
    assert online.changes  # the drop moves some cluster's split
    assert all(math.isfinite(c.joined_s) or math.isfinite(c.cancelled_s) for c in online.changes)
    # Each cluster's roles end at its own last re-plan's split (the link back at 100 Gbps).
    last = online.replans[-1].splits
    pools = {p.name: p.instances for p in config.prefill}
    for c in config.clusters:
        assert len(c.local) == 1  # both clusters have a PD-P pool
        start = (pools[c.local[0]], c.decode.instances)
        assert online.roles_at(c.name, math.inf, start) == (
            last[c.name].prefill,
            last[c.name].decode,
        )
