"""The PrfaaS case study (papers.md §1.7-1.8) through the simulator: the plan beats homogeneous PD.

The paper reports −64% P90 TTFT and +54% throughput against homogeneous PD; the issue asks for
the direction and at least half of each effect (≤ −32% P90 TTFT, ≥ +27% goodput).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prfaas.operator.api.manifests import read_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.operator.cli.app import app
from prfaas.planner.plan import Plan
from prfaas.planner.problem import Problem, SloInput
from prfaas.planner.sim.goodput import SloTarget, config_goodput
from prfaas.planner.sim.scenarios import (
    ScenarioRun,
    common_rate,
    predict,
    run_scenarios,
    scenarios,
)
from prfaas.planner.sim.traces import load_trace
from prfaas.planner.solver import plan as make_plan
from typer.testing import CliRunner

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"


@pytest.fixture(scope="module")
def problem() -> Problem:
    return problems_from_manifests(read_manifests([SAMPLE]).resources)[0]


@pytest.fixture(scope="module")
def runs(problem: Problem) -> dict[str, ScenarioRun]:
    found = scenarios(problem, make_plan(problem))
    out = run_scenarios(problem, found, requests=6000, rate=common_rate(problem, found), seed=1)
    return {r.scenario.name: r for r in out}


def test_scenarios_follow_the_plan(problem: Problem) -> None:
    found = {s.name: s for s in scenarios(problem, make_plan(problem))}
    assert set(found) == {"prfaas-pd", "homogeneous-pd", "naive-heterogeneous"}
    ours = found["prfaas-pd"].config
    assert {p.name: p.instances for p in ours.prefill} == {
        "prfaas-h200/prefill": 4,
        "pd-h20/prefill": 3,
    }
    assert ours.decode is not None and ours.decode.instances == 5
    assert ours.routing.threshold_tokens == pytest.approx(19_400, rel=0.05)
    homo = found["homogeneous-pd"].config
    assert homo.links == () and homo.routing.threshold_tokens is None
    naive = found["naive-heterogeneous"].config
    assert [p.name for p in naive.prefill] == ["prfaas-h200/prefill"]
    assert naive.decode is not None and naive.decode.instances == 8
    assert naive.routing.threshold_tokens == 0.0


def test_p90_ttft_at_least_half_the_papers_reduction(runs: dict[str, ScenarioRun]) -> None:
    ours = float(np.percentile(runs["prfaas-pd"].result.ttft, 90))
    homo = float(np.percentile(runs["homogeneous-pd"].result.ttft, 90))
    assert ours <= (1 - 0.64 / 2) * homo
    assert runs["prfaas-pd"].result.offload_fraction == pytest.approx(0.5, abs=0.05)
    # Egress stays far below the 100 Gbps link, as in the paper (≈13% at Λ_max).
    egress = runs["prfaas-pd"].result.mean_egress_bps("dc-a-to-dc-b")
    assert 2e9 < egress < 20e9


def _goodputs(problem: Problem, ttft_s: float) -> dict[str, float]:
    slo = SloTarget(ttft_s, problem.slo.tpot_s, problem.slo.attainment)
    w = problem.workload
    return {
        s.name: config_goodput(
            s.config,
            w.input_length,
            w.output_length,
            slo,
            requests=2000,
            seed=3,
            guess=0.8 * s.planned_rps,
        ).rate
        for s in scenarios(problem, make_plan(problem))
        if s.name != "naive-heterogeneous"
    }


def test_goodput_at_least_half_the_papers_gain(problem: Problem) -> None:
    at_slo = _goodputs(problem, problem.slo.ttft_s)
    assert at_slo["prfaas-pd"] > 0.8 * make_plan(problem).throughput_rps
    assert at_slo["prfaas-pd"] >= (1 + 0.54 / 2) * at_slo["homogeneous-pd"]
    # At the sample's 10 s TTFT the H20-only cluster cannot prefill its longest prompts in time
    # (its unloaded P90 TTFT is above 10 s), so its goodput is 0; with a looser TTFT objective
    # both are positive and the comparison is about capacity, as the paper's +54%.
    loose = _goodputs(problem, 30.0)
    assert loose["homogeneous-pd"] > 1.0
    # With latency out of the way the simulated capacity meets the analytical Λ_max (Eq. 6).
    assert loose["prfaas-pd"] == pytest.approx(make_plan(problem).throughput_rps, rel=0.1)
    assert loose["prfaas-pd"] >= (1 + 0.54 / 2) * loose["homogeneous-pd"]


def test_predict_fills_the_plan_and_its_baselines(problem: Problem) -> None:
    pl = make_plan(problem)
    predict(problem, pl, requests=2000, seed=2)
    assert pl.predicted is not None and pl.predicted.ttft_p90_s is not None
    homo = next(b for b in pl.baselines if b.name == "homogeneous-pd")
    assert homo.predicted is not None and homo.predicted.ttft_p90_s is not None
    assert pl.predicted.ttft_p90_s < homo.predicted.ttft_p90_s
    assert pl.predicted.rate_rps == homo.predicted.rate_rps
    back = Plan.from_dict(json.loads(json.dumps(pl.to_dict())))
    assert back.predicted == pl.predicted


def test_tight_tpot_lowers_attainment(problem: Problem) -> None:
    """Joint attainment: a TPOT objective below the decode step fails every request."""
    tight = replace(problem, slo=SloInput(problem.slo.ttft_s, 0.001, 0.9, 0.9))
    pl = make_plan(problem)
    predict(tight, pl, requests=1000, rate=1.0)
    assert pl.predicted is not None and pl.predicted.attainment == 0.0


def test_cli_simulate_prints_json_and_plots(tmp_path: Path) -> None:
    png = tmp_path / "sim.png"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            str(SAMPLE),
            "-n",
            "3000",
            "--no-goodput",
            "-o",
            "json",
            "--bandwidth-schedule",
            "0:100,600:50,1200:100",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout[result.stdout.index("{") :])
    rows = {r["name"]: r for r in data["configurations"]}
    assert rows["prfaas-pd"]["ttftP90S"] < rows["homogeneous-pd"]["ttftP90S"]
    assert rows["prfaas-pd"]["rateRps"] == rows["homogeneous-pd"]["rateRps"]
    predicted = Plan.from_dict(data["plan"]).predicted
    assert predicted is not None and predicted.ttft_p90_s == rows["prfaas-pd"]["ttftP90S"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_simulate_table_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(app, ["simulate", str(SAMPLE), "-n", "500", "--no-goodput"])
    assert table.exit_code == 0, table.output
    assert "vs homogeneous-pd" in table.stdout and "TTFT P90" in table.stdout
    both = runner.invoke(app, ["simulate", str(SAMPLE), "--rate", "1", "--rate-scale", "2"])
    assert both.exit_code != 0
    bad = runner.invoke(app, ["simulate", str(SAMPLE), "--bandwidth-schedule", "fast"])
    assert bad.exit_code == 1
    assert "SECONDS:GBPS" in bad.output


def test_cli_simulate_uses_bursty_arrivals_from_the_servingplan(tmp_path: Path) -> None:
    bursty = tmp_path / "bursty.yaml"
    text = SAMPLE.read_text()
    marker = "    outputLength:\n"
    assert marker in text
    bursty.write_text(
        text.replace(marker, "    arrival:\n      kind: gamma\n      cv: 4\n" + marker)
    )
    args = ["-n", "3000", "--no-goodput", "-o", "json", "--seed", "5"]
    runner = CliRunner()
    p90 = {}
    for name, path in (("poisson", SAMPLE), ("gamma", bursty)):
        result = runner.invoke(app, ["simulate", str(path), *args])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout[result.stdout.index("{") :])
        p90[name] = data["configurations"][0]["ttftP90S"]
    assert p90["gamma"] > 1.5 * p90["poisson"]


def test_cli_simulate_replays_a_trace(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    trace = tmp_path / "trace.csv"
    times = np.cumsum(rng.exponential(1.0, 300))
    lengths = np.clip(rng.lognormal(9.9, 1.0, 300), 128, 131072).astype(int)
    rows = [
        f"{t:.3f},{n},1024,{i % 7}" for i, (t, n) in enumerate(zip(times, lengths, strict=True))
    ]
    trace.write_text("time,input_tokens,output_tokens,prefix_id\n" + "\n".join(rows) + "\n")
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            str(SAMPLE),
            "--trace",
            str(trace),
            "--rate-scale",
            "1.5",
            "--no-goodput",
            "-o",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout[result.stdout.index("{") :])
    first = data["configurations"][0]
    assert first["requests"] == 300
    assert first["rateRps"] == pytest.approx(1.5 * 300 / times[-1], rel=1e-3)


def test_trace_prefix_ids_hit_the_prefill_caches(problem: Problem, tmp_path: Path) -> None:
    """Multi-turn conversations: each turn extends the previous one, so most of it is cached."""
    trace = tmp_path / "turns.csv"
    rows = [f"{2.0 * i:.1f},{4000 + 500 * (i // 10)},64,{i % 10}" for i in range(100)]
    trace.write_text("time,input_tokens,output_tokens,prefix_id\n" + "\n".join(rows) + "\n")
    stream = load_trace(trace)
    found = scenarios(problem, make_plan(problem))
    runs = run_scenarios(problem, found, requests=len(stream), rate=stream.rate, stream=stream)
    res = runs[0].result
    later = np.arange(len(res)) >= 10  # every conversation's first turn is a miss
    assert (res.uncached_tokens[:10] == res.input_tokens[:10]).all()
    assert (res.uncached_tokens[later] <= 512).all()


def test_prfaas_plan_simulate_fills_predicted() -> None:
    result = CliRunner().invoke(app, ["plan", str(SAMPLE), "-o", "json", "--simulate", "1000"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["predicted"]["ttftP90S"] > 0
    assert {b["name"]: b["predicted"] is not None for b in data["baselines"]}["homogeneous-pd"]
    plain = CliRunner().invoke(app, ["plan", str(SAMPLE), "-o", "json"])
    assert json.loads(plain.stdout)["predicted"] is None  # not simulated unless asked


def test_prfaas_plan_simulated_goodput_flag() -> None:
    result = CliRunner().invoke(app, ["plan", str(SAMPLE), "-o", "json", "--simulated-goodput"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["feasible"] and data["throughputRps"] == pytest.approx(
        make_plan(problems_from_manifests(read_manifests([SAMPLE]).resources)[0]).throughput_rps,
        rel=0.05,
    )


def test_plot_marks_the_slo_and_keeps_t_off_the_capacity_line(
    runs: dict[str, ScenarioRun], problem: Problem
) -> None:
    import matplotlib.pyplot as plt
    from prfaas.operator.cli.simulate import plot_figure

    fig = plot_figure(list(runs.values()), "case study", problem.slo.ttft_s)
    try:
        cdf = fig.axes[0]
        assert any(list(line.get_xdata()) == [problem.slo.ttft_s] * 2 for line in cdf.lines)
        panels = {ax.get_title().split(":")[0]: ax for ax in fig.axes
                  if "link egress" in ax.get_title()}
        t_axes = [ax for ax in fig.axes if ax.get_ylabel() == "threshold t (K tokens)"]
        assert len(t_axes) == 1  # prfaas-pd only: naive heterogeneous has t = 0 throughout
        assert "t = 0" in panels["naive-heterogeneous"].get_title()
        egress, t_axis = panels["prfaas-pd"], t_axes[0]

        def height(ax: plt.Axes, label: str) -> float:
            line = next(x for x in ax.lines if label in x.get_label())
            low, high = ax.get_ylim()
            return (float(np.nanmax(line.get_ydata())) - low) / (high - low)

        assert height(egress, "capacity") - height(t_axis, "t (") > 0.3
    finally:
        plt.close(fig)
