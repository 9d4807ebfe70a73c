"""Aggregated vs disaggregated: one chunked-prefill instance's SLO rate and the plan's shape
comparison (``planner.shapes``, ``Plan.shapes``, the ``prfaas plan`` table)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.distributions import Fixed, LogNormal
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.latency.estimator import latency_model
from prfaas.planner.plan import Plan
from prfaas.planner.shapes import KV_BLOCK_TOKENS, aggregated_instance, mean_prefill_seconds
from prfaas.planner.solver import plan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
LLAMA = latency_model(MODELS["llama-3-8b"], GPUS["H200"], 1, 1)


def _agg(prompt: float, tpot: float, share: float = 1.0, ttft: float = 10.0):  # type: ignore[no-untyped-def]
    return aggregated_instance(LLAMA, prompt, 300, prompt + 150, tpot, ttft, 4e5, 256, share)


def test_rate_meets_the_tpot_slo_with_the_mixed_step() -> None:
    for prompt in (500, 4000, 32000):
        for tpot in (0.015, 0.03, 0.08):
            pt = _agg(prompt, tpot)
            assert pt.rate_rps > 0
            assert pt.step_s <= tpot * (1 + 1e-9)
            # τ = S(n, n·ctx) + λ·τ·P([L]) at the rate found, n the step's whole decode batch
            # (⌈d⌉ of the step before the fixed point: ⌈d⌉ ± 1).
            rho = pt.rate_rps * LLAMA.prefill_seconds([prompt])
            n0 = math.ceil(pt.decode_batch)
            fixed_points = [
                LLAMA.decode_step_seconds(n, n * (prompt + 150)) / (1 - rho)
                for n in (n0 - 1, n0, n0 + 1)
                if n >= 1
            ]
            assert any(pt.step_s == pytest.approx(f, rel=1e-6) for f in fixed_points)
            assert pt.token_budget % KV_BLOCK_TOKENS == 0
            assert pt.token_budget >= max(KV_BLOCK_TOKENS, pt.decode_batch)
            # Just above the rate something binds.
            assert pt.limit in {"tpot", "ttft", "kv", "max-num-seqs"}


def test_mean_prefill_is_the_mean_over_lengths_not_the_time_at_the_mean() -> None:
    assert mean_prefill_seconds(LLAMA, Fixed(3000)) == pytest.approx(
        LLAMA.prefill_seconds([3000]), rel=1e-12
    )
    spread = LogNormal(math.log(3000) - 0.5, 1.0, 1.0, 1e6)
    # Prefill is convex in the length: spread lengths cost more than the mean length.
    assert mean_prefill_seconds(LLAMA, spread) > LLAMA.prefill_seconds([spread.mean])
    # Only the prompts kept local (below t) count.
    assert mean_prefill_seconds(LLAMA, spread, 2000) < LLAMA.prefill_seconds([2000])
    # More expensive prompts per token leave room for fewer chunk tokens in a step.
    base = _agg(4000, 0.03)
    dear = aggregated_instance(
        LLAMA, 4000, 300, 4150, 0.03, 10.0, 4e5, 256, prefill_s=2 * LLAMA.prefill_seconds([4000])
    )
    assert dear.token_budget < base.token_budget and dear.rate_rps < base.rate_rps


def test_rate_grows_with_looser_tpot_and_shorter_prompts() -> None:
    tight, loose = _agg(4000, 0.015), _agg(4000, 0.05)
    assert loose.rate_rps > tight.rate_rps
    assert loose.token_budget >= tight.token_budget
    assert _agg(1000, 0.03).rate_rps > _agg(8000, 0.03).rate_rps
    # Offloading half the prompts (arriving with their KV) lets the pool serve more requests.
    assert _agg(8000, 0.03, share=0.5).rate_rps > _agg(8000, 0.03).rate_rps


def test_ttft_and_memory_limits_bind() -> None:
    ttft_bound = _agg(32000, 0.1, ttft=0.5)
    assert ttft_bound.limit == "ttft"
    assert ttft_bound.ttft_s <= 0.5
    kv_bound = aggregated_instance(LLAMA, 4000, 300, 4150, 0.1, 10.0, 20_000, 256)
    assert kv_bound.limit == "kv"
    assert kv_bound.decode_batch * (4150 + 150) <= 20_000 * (1 + 1e-6)
    # A TPOT SLO below the one-decode step: no rate at all.
    assert _agg(4000, LLAMA.decode_step_seconds(1, 4150) * 0.5).rate_rps == 0.0
    with pytest.raises(ValueError, match="output"):
        aggregated_instance(LLAMA, 4000, 0, 4000, 0.1, 10.0, 4e5, 256)


@pytest.fixture(scope="module")
def case_study() -> Plan:
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    return plan(problem)


def test_case_study_compares_four_shapes_and_auto_deploys_the_split(case_study: Plan) -> None:
    rows = {o.shape: o for o in case_study.shapes}
    assert set(rows) == {
        "disaggregated",
        "disaggregated+offload",
        "aggregated",
        "aggregated+offload",
    }
    chosen = [o for o in case_study.shapes if o.chosen]
    assert [o.shape for o in chosen] == ["disaggregated+offload"]
    assert chosen[0].goodput_rps == pytest.approx(case_study.throughput_rps, rel=1e-6)
    assert chosen[0].threshold_tokens == case_study.threshold_tokens
    # One decode cluster: the aggregated rows are deployable and carry a budget; auto keeps
    # the split, which ranks best here.
    for shape in ("aggregated", "aggregated+offload"):
        assert rows[shape].deployable
        assert rows[shape].token_budget is not None and rows[shape].token_budget >= 16
    assert not any(c.aggregated for c in case_study.clusters)
    # Offload helps either shape (long prompts leave the local pool).
    assert rows["aggregated+offload"].goodput_rps > rows["aggregated"].goodput_rps
    assert rows["disaggregated+offload"].goodput_rps > rows["disaggregated"].goodput_rps
    # The best per GPU here is the deployed split with offload (Table 6 stays as it is).
    best = max(case_study.shapes, key=lambda o: o.goodput_per_gpu)
    assert best.shape == "disaggregated+offload"


def test_shapes_survive_the_json_round_trip_and_old_plans_load(case_study: Plan) -> None:
    data = case_study.to_dict()
    assert data["shapes"][0]["decodeCluster"] == "pd-h20"
    assert "tokenBudget" in data["shapes"][0] and "goodputPerGpu" in data["shapes"][0]
    assert Plan.from_dict(data).to_dict() == data
    old = {k: v for k, v in data.items() if k != "shapes"}
    assert Plan.from_dict(old).shapes == []


def test_plan_prints_the_shape_table(case_study: Plan) -> None:
    from prfaas.operator.cli.plan import render_table
    from rich.console import Console

    console = Console(record=True, width=200)
    render_table(console, "case-study", case_study)
    text = console.export_text()
    assert "Shapes per decode cluster" in text
    assert "†" not in text.split("Shapes per decode cluster")[1].split(")", 1)[1]
    for word in (
        "aggregated+offload",
        "disaggregated+offload ✓",
        "token budget",
        "per GPU",
        "per USD/h",
        f"{case_study.shapes[0].goodput_per_cost:.5f}",
    ):
        assert word in text


def test_pinned_shapes(case_study: Plan) -> None:
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    assert problem.shape == "auto"
    split = plan(replace(problem, shape="disaggregated"))
    assert split.feasible and split.throughput_rps == case_study.throughput_rps
    pinned = plan(replace(problem, shape="aggregated"))
    assert pinned.feasible, pinned.reason
    _check_deploys_aggregated(pinned, "aggregated+offload")


def _check_deploys_aggregated(p: Plan, shape: str) -> None:
    """``p`` deploys its ``shape`` row for pd-h20: one aggregated decode row with the row's
    instances and token budget, no PD-P, the row's ``t`` and rate, PrfaaS running."""
    (row,) = [o for o in p.shapes if o.chosen]
    assert row.shape == shape and row.deployable
    mine = [c for c in p.clusters if c.name == "pd-h20"]
    assert [(c.role, c.aggregated) for c in mine] == [("decode", True)]
    assert mine[0].instances == row.instances
    assert mine[0].max_num_batched_tokens == row.token_budget
    assert p.throughput_rps == pytest.approx(row.goodput_rps)
    assert p.threshold_tokens == row.threshold_tokens
    (router,) = p.routers
    assert router.threshold_tokens == row.threshold_tokens
    assert router.rate_rps == pytest.approx(row.goodput_rps)
    assert "aggregated" in p.stages and p.bottleneck in ("aggregated", "prfaas", "link")
    assert p.convertible() == []  # no PD-P: not a convertible pool
    prfaas = [c for c in p.clusters if c.name == "prfaas-h200"]
    if row.threshold_tokens is not None:
        assert [r.prefill_cluster for r in router.remotes] == ["prfaas-h200"]
        assert prfaas[0].instances > 0 and 0 < p.offload_fraction < 1
        assert sum(lk.egress_gbps for lk in p.links) > 0
    else:
        assert router.remotes == [] and p.offload_fraction == 0
    assert any(f"pd-h20 deployed as {shape}" in n for n in p.notes)
    # The JSON contract carries the choice and reads back.
    data = p.to_dict()
    assert [c["aggregated"] for c in data["clusters"] if c["name"] == "pd-h20"] == [True]
    assert Plan.from_dict(data).to_dict() == data


def test_auto_deploys_an_aggregated_row_that_ranks_best() -> None:
    """With a looser TPOT SLO the case study's aggregated pool with offload ranks above the
    split per USD/h: ``auto`` deploys it (issue #18: ``auto`` deploys the best-ranked shape)."""
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    loose = replace(problem, slo=replace(problem.slo, tpot_s=0.2))
    p = plan(loose)
    assert p.feasible, p.reason
    best = max(p.shapes, key=lambda o: o.goodput_per_cost)
    assert best.shape == "aggregated+offload"
    _check_deploys_aggregated(p, "aggregated+offload")
    split = plan(replace(loose, shape="disaggregated"))
    assert not any(c.aggregated for c in split.clusters)
    assert [o.shape for o in split.shapes if o.chosen] == ["disaggregated+offload"]


def test_a_pinned_aggregated_shape_without_offload_deploys_no_prfaas() -> None:
    """``aggregated`` with offload off: the local pool alone, PrfaaS idle, nothing routed."""
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    loose = replace(
        problem,
        slo=replace(problem.slo, tpot_s=0.2),
        offload=replace(problem.offload, mode="off"),
        shape="aggregated",
    )
    p = plan(loose)
    assert p.feasible, p.reason
    _check_deploys_aggregated(p, "aggregated")
    assert all(c.instances == 0 for c in p.clusters if c.name == "prfaas-h200")


def test_target_sizing_scales_the_aggregated_pool() -> None:
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    pinned = replace(problem, slo=replace(problem.slo, tpot_s=0.2), shape="aggregated")
    full = plan(pinned)
    row = next(o for o in full.shapes if o.chosen)
    workload = replace(pinned.workload, requests_per_second=row.goodput_rps / 2)
    half = plan(replace(pinned, workload=workload))
    assert half.feasible, half.reason
    (agg,) = [c for c in half.clusters if c.aggregated]
    assert 1 <= agg.instances < row.instances
    assert half.throughput_rps >= row.goodput_rps / 2
    assert agg.max_num_batched_tokens == row.token_budget


def test_a_pinned_shape_that_cannot_meet_the_slo_is_infeasible_with_the_best_alternative() -> None:
    """Without offload the case study's aggregated pool meets no rate within the SLOs (its
    long prompts' chunked TTFT binds): pinned, the plan is infeasible saying so, and names the
    best feasible alternative with its numbers."""
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    local_only = replace(problem, offload=replace(problem.offload, mode="off"))
    rows = {o.shape: o for o in plan(local_only).shapes}
    assert set(rows) == {"disaggregated", "aggregated"}
    assert rows["aggregated"].goodput_rps == 0.0 and rows["aggregated"].limit == "ttft"
    pinned = plan(replace(local_only, shape="aggregated"))
    assert not pinned.feasible
    assert "pd-h20 aggregated: no rate meets the SLO (ttft binds)" in pinned.reason
    split = rows["disaggregated"]
    assert (
        f"best feasible alternative: disaggregated on pd-h20 at {split.goodput_rps:.3g} req/s"
        in pinned.reason
    )
    assert "per USD/h" in pinned.reason


def test_shape_and_token_budget_validation() -> None:
    from prfaas.operator.api.models import EngineSpec, ServingPlanSpec
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="maxNumBatchedTokens \\(8\\) is smaller than one"):
        EngineSpec.model_validate({"maxNumBatchedTokens": 8})
    assert EngineSpec.model_validate({"maxNumBatchedTokens": 16}).max_num_batched_tokens == 16
    with pytest.raises(ValidationError, match="shape"):
        ServingPlanSpec.model_validate(
            {
                "model": {"name": "llama-3-8b"},
                "workload": {
                    "inputLength": {"type": "fixed", "value": 100},
                    "outputLength": {"type": "fixed", "value": 10},
                },
                "clusters": {"decode": ["d"]},
                "shape": "split",
            }
        )


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        (  # an inline architecture: its maxContext
            "    maxNumBatchedTokens: 2048\n",
            "    maxNumBatchedTokens: 4096\n",
            "model.architecture.maxContext",
        ),
        (  # --max-model-len given to the engines wins over maxContext
            "    maxBatchSize: 8\n",
            "    maxBatchSize: 8\n    extraArgs: [--max-model-len, '1024']\n",
            "--max-model-len in engine.extraArgs",
        ),
    ],
)
def test_a_token_budget_above_the_model_length_is_refused(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    """``prfaas validate`` names the field, the limit, where the limit comes from, and the fix
    (the local sample: maxContext 2048, maxNumBatchedTokens 2048)."""
    from prfaas.operator.cli.app import app
    from typer.testing import CliRunner

    local = SAMPLE.parent / "local.yaml"
    text = local.read_text(encoding="utf-8")
    assert text.count(old) == 1
    edited = tmp_path / "local.yaml"
    edited.write_text(text.replace(old, new), encoding="utf-8")
    ok = CliRunner().invoke(app, ["validate", str(local)])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, ["validate", str(edited)])
    assert bad.exit_code == 2, bad.output
    out = " ".join(bad.output.split())
    assert "engine.maxNumBatchedTokens" in out and "larger than the model length" in out
    assert where in out and "set engine.maxNumBatchedTokens to at most" in out


def test_a_catalog_models_context_bounds_the_budget() -> None:
    from prfaas.operator.api.models import ServingPlanSpec
    from pydantic import ValidationError

    spec = {
        "model": {"servedName": "m", "catalog": "llama-3-8b"},
        "workload": {
            "inputLength": {"type": "fixed", "value": 100},
            "outputLength": {"type": "fixed", "value": 10},
        },
        "clusters": {"decode": ["d"]},
    }
    limit = MODELS["llama-3-8b"].max_context
    ok = ServingPlanSpec.model_validate({**spec, "engine": {"maxNumBatchedTokens": limit}})
    assert ok.model_length() == (limit, "the llama-3-8b catalog model's maxContext")
    with pytest.raises(ValidationError, match=f"at most {limit}"):
        ServingPlanSpec.model_validate({**spec, "engine": {"maxNumBatchedTokens": limit + 1}})


def test_options_carry_their_cost_and_rank_by_goodput_per_cost(case_study: Plan) -> None:
    """Catalog prices (H20 at half an H200) give every row a cost: the local GPUs plus the
    PrfaaS GPUs its offload keeps busy; ``best_option`` ranks by goodput per cost when every
    option is priced, else per GPU."""
    from prfaas.planner.plan import ShapeOption
    from prfaas.planner.shapes import best_option

    h20, h200 = GPUS["H20"].price_per_hour, GPUS["H200"].price_per_hour
    rows = {o.shape: o for o in case_study.shapes}
    split = rows["disaggregated"]
    assert split.cost_per_hour == pytest.approx(split.gpus * h20)
    for o in case_study.shapes:
        assert o.cost_per_hour > 0
        assert o.goodput_per_cost == pytest.approx(o.goodput_rps / o.cost_per_hour)
    # Offload adds PrfaaS GPUs at the H200 price: dearer per GPU than the H20 it replaces.
    off = rows["disaggregated+offload"]
    assert off.cost_per_hour > off.gpus * h20
    assert off.cost_per_hour < off.gpus * h200
    # Per cost and per GPU can disagree: a pool of cheap GPUs serving less per GPU wins on cost.
    cheap = ShapeOption("d", "aggregated", 10, 10, 5.0, 0.5, cost_per_hour=10.0)
    dear = ShapeOption("d", "disaggregated", 10, 10, 6.0, 0.6, cost_per_hour=20.0)
    for o in (cheap, dear):
        o.goodput_per_cost = o.goodput_rps / o.cost_per_hour
    assert best_option([dear, cheap]) is cheap
    dear.cost_per_hour = 0.0  # a price missing: rank per GPU
    assert best_option([dear, cheap]) is dear


def test_a_dear_prfaas_gpu_makes_aggregated_offload_offload_less() -> None:
    """The aggregated+offload threshold is chosen by goodput per cost: priced ten times higher,
    PrfaaS GPUs take fewer prompts (a higher ``t``) than at catalog prices."""
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    dear = replace(
        problem,
        clusters=tuple(
            replace(c, gpu=replace(c.gpu, price_per_hour=10 * c.gpu.price_per_hour))
            if c.kind == "prefill"
            else c
            for c in problem.clusters
        ),
    )
    t = {}
    for name, p in (("catalog", problem), ("dear", dear)):
        row = next(o for o in plan(p).shapes if o.shape == "aggregated+offload")
        assert row.threshold_tokens is not None
        t[name] = row.threshold_tokens
    assert t["dear"] > t["catalog"]


def test_several_decode_clusters_keep_aggregated_rows_advisory() -> None:
    """With several decode clusters each aggregated row's offload assumes the shared PrfaaS
    pools to itself: those rows are advisory, ``auto`` deploys the split and ``aggregated`` is
    infeasible saying why, with the best feasible alternative."""
    from prfaas.planner.problem import ClusterInput, LinkInput, Problem, SloInput, WorkloadInput

    problem = Problem(
        "two",
        MODELS["hybrid-1t"],
        (
            ClusterInput("pre", "a", "prefill", GPUS["H200"], 64),
            ClusterInput("fat", "b", "decode", GPUS["H20"], 64),
            ClusterInput("thin", "c", "decode", GPUS["H20"], 32),
        ),
        (LinkInput("ab", "a", "b", 100.0), LinkInput("ac", "a", "c", 3.0)),
        WorkloadInput(LogNormal(math.log(8000), 1.0, 256, 128_000), Fixed(1024)),
        SloInput(10.0, 0.2),
    )
    p = plan(problem)
    assert p.feasible, p.reason
    agg = [o for o in p.shapes if o.shape.startswith("aggregated")]
    assert agg and not any(o.deployable or o.chosen for o in agg)
    assert not any(c.aggregated for c in p.clusters)
    pinned = plan(replace(problem, shape="aggregated"))
    assert not pinned.feasible
    assert "deployed for one decode cluster only" in pinned.reason
    assert "best feasible alternative: disaggregated" in pinned.reason


def test_the_token_budget_stays_within_the_model_length() -> None:
    """The budget is vLLM's ``--max-num-batched-tokens``: at most the model length (whole KV
    blocks), like ``spec.engine.maxNumBatchedTokens``; a rate that needs more is refused."""
    free = _agg(4000, 0.2)
    assert free.token_budget > 1024
    capped = aggregated_instance(
        LLAMA, 4000, 300, 4150, 0.2, 10.0, 4e5, 256, max_budget=1000
    )
    assert capped.token_budget <= 1000 and capped.token_budget % KV_BLOCK_TOKENS == 0
    assert capped.rate_rps <= free.rate_rps
    sample = Path(__file__).resolve().parents[2] / "crds" / "samples" / "aggregated.yaml"
    (problem,) = problems_from_manifests(load_manifests(sample).resources)
    for row in plan(problem).shapes:
        assert row.token_budget is None or row.token_budget <= problem.model.max_context


def test_the_simulator_runs_the_deployed_aggregated_pool_as_one() -> None:
    """The plan's own configuration (``prfaas simulate``) simulates the aggregated row it
    deploys as an aggregated pool with its budget, with no (colocated) local prefill pool."""
    from prfaas.planner.sim.scenarios import PRFAAS, scenarios

    sample = Path(__file__).resolve().parents[2] / "crds" / "samples" / "aggregated.yaml"
    (problem,) = problems_from_manifests(load_manifests(sample).resources)
    p = plan(problem)
    (agg,) = [c for c in p.clusters if c.aggregated]
    cfg = next(s.config for s in scenarios(problem, p) if s.name == PRFAAS)
    assert cfg.decode is not None and cfg.decode.aggregated
    assert cfg.decode.token_budget == agg.max_num_batched_tokens
    assert [pool.datacenter for pool in cfg.prefill] == ["dc-a"]  # PrfaaS only
