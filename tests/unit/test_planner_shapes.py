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


def test_case_study_compares_four_shapes_and_deploys_the_split(case_study: Plan) -> None:
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
    # The operator cannot deploy aggregated pools: those rows are advisory and carry a budget.
    for shape in ("aggregated", "aggregated+offload"):
        assert not rows[shape].deployable
        assert rows[shape].token_budget is not None and rows[shape].token_budget >= 16
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
    for word in (
        "aggregated+offload †",
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
    assert not pinned.feasible
    assert "spec.shape: aggregated" in pinned.reason
    assert "best feasible alternative: disaggregated+offload" in pinned.reason
    assert "aggregated+offload" in pinned.reason  # what aggregated would have given


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
