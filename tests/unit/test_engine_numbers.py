"""The engine numbers a plan carries are vLLM's flags and the simulator's limits, from one place."""

from __future__ import annotations

from pathlib import Path

import pytest
from prfaas.engine.vllm.launch import vllm_argv
from prfaas.operator.api import models as api
from prfaas.operator.api.manifests import read_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.operator.controller.builders import engine_launch
from prfaas.planner.plan import Plan
from prfaas.planner.sim.scenarios import PRFAAS, scenarios
from prfaas.planner.solver import plan as make_plan
from pydantic import ValidationError

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"


def _resources(budget: int | None = None) -> list[api.Resource]:
    resources = list(read_manifests([SAMPLE]).resources)
    if budget is not None:
        for i, r in enumerate(resources):
            if isinstance(r, api.ServingPlan):
                engine = r.spec.engine.model_copy(update={"max_num_batched_tokens": budget})
                spec = r.spec.model_copy(update={"engine": engine})
                resources[i] = r.model_copy(update={"spec": spec})
    return resources


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("budget", [None, 4096])
def test_plan_numbers_are_the_vllm_flags_and_the_simulated_limits(budget: int | None) -> None:
    resources = _resources(budget)
    spec = next(r for r in resources if isinstance(r, api.ServingPlan)).spec
    problem = problems_from_manifests(resources)[0]
    plan = Plan.from_dict(make_plan(problem).to_dict())  # through the JSON the operator stores
    want_budget = budget or 8192
    assert spec.engine.max_num_batched_tokens == want_budget
    decode = next(c for c in plan.clusters if c.role == "decode")
    assert decode.max_num_seqs is not None and 1 <= decode.max_num_seqs <= 256
    assert decode.kv_cache_tokens is not None and decode.kv_cache_tokens > 0
    for cp in plan.clusters:
        argv = vllm_argv(engine_launch(spec, cp))
        assert _flag(argv, "--max-num-batched-tokens") == str(want_budget)
        assert _flag(argv, "--gpu-memory-utilization") == "0.9"
        if cp.role == "decode":
            assert _flag(argv, "--max-num-seqs") == str(cp.max_num_seqs)
    config = next(s for s in scenarios(problem, plan) if s.name == PRFAAS).config
    assert config.decode is not None
    assert config.decode.max_batch == decode.max_num_seqs
    assert config.decode.kv_capacity_tokens == decode.kv_cache_tokens // decode.pipeline_parallel
    assert {p.token_budget for p in config.prefill} == {want_budget}


def test_max_num_batched_tokens_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="maxNumBatchedTokens"):
        api.EngineSpec.model_validate({"maxNumBatchedTokens": 0})


def test_the_planner_batches_short_prefills_up_to_max_num_batched_tokens() -> None:
    from dataclasses import replace

    from prfaas.planner.distributions import Fixed

    problem = problems_from_manifests(_resources())[0]
    short = replace(problem.workload, input_length=Fixed(1024.0), requests_per_second=None)
    base = replace(problem, workload=short, offload=replace(problem.offload, mode="off"))
    batched = make_plan(base)  # 8 prompts of 1024 tokens share one 8192-token step
    alone = make_plan(replace(base, max_num_batched_tokens=1024))
    assert batched.feasible and alone.feasible

    def per_instance(plan: Plan) -> float:
        return plan.stages["pdPrefill"] / plan.instances("pd-h20", "prefill")

    assert per_instance(batched) > 1.5 * per_instance(alone)
    assert batched.throughput_rps >= alone.throughput_rps  # fewer PD-P, more PD-D
    assert batched.instances("pd-h20", "prefill") < alone.instances("pd-h20", "prefill")
    # Long prompts do not fit twice in a step: the budget changes nothing for them.
    long = replace(base, workload=replace(short, input_length=Fixed(20000.0)))
    a, b = make_plan(long), make_plan(replace(long, max_num_batched_tokens=1024))
    assert a.stages["pdPrefill"] == pytest.approx(b.stages["pdPrefill"])
