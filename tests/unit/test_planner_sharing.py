"""A ServingPlan with ``workload.sharing`` plans from the sharing pattern: its uncached lengths are
those of a seeded sample of the pattern's requests under one unbounded shared cache (as
``prfaas trace stats``), and ``p``, ``l_long`` and ``l_short`` are computed over them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prfaas.operator.api.manifests import read_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.distributions import Fixed, LogNormal
from prfaas.planner.errors import PlannerError
from prfaas.planner.problem import Problem, WorkloadInput
from prfaas.planner.sharing import ConversationSharing, DocumentSharing
from prfaas.planner.sim.arrivals import synthetic_stream
from prfaas.planner.solver import plan
from prfaas.planner.trace_workload import SHARING_SAMPLE, sharing_uncached, with_sharing
from pydantic import ValidationError

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
DOCS = DocumentSharing(documents=300, length=LogNormal(8.5, 0.5, 512.0, 32768.0), zipf=1.0)


@pytest.fixture(scope="module")
def case_study() -> Problem:
    return problems_from_manifests(read_manifests([SAMPLE]).resources)[0]


def _with(problem: Problem, **changes: Any) -> Problem:
    """``problem`` with its workload changed; a new ``sharing`` comes with its sample."""
    w = problem.workload
    if "sharing" in changes:
        sharing = changes.pop("sharing")
        return replace(problem, workload=with_sharing(replace(w, **changes), sharing))
    return replace(problem, workload=replace(w, **changes))


def _independent_uncached(problem: Problem) -> tuple[np.ndarray, float]:
    """The sample's uncached lengths, computed here: each prompt minus its longest chain prefix
    any earlier prompt had (whole 512-token blocks; at least 1 token left)."""
    w = problem.workload
    stream = synthetic_stream(
        SHARING_SAMPLE, 1.0, w.input_length, w.output_length, seed=0, sharing=DOCS
    )
    chains, seen, out = stream.block_chains, set(), []
    for r, n in enumerate(stream.input_tokens.tolist()):
        chain = chains.chain(r)
        held = next((i for i, b in enumerate(chain) if b not in seen), len(chain))
        out.append(max(1, n - held * 512))
        seen.update(chain)
    uncached = np.array(out, dtype=np.float64)
    return uncached, 1.0 - uncached.sum() / stream.input_tokens.sum()


def test_documents_plan_over_the_sampled_uncached_lengths(case_study: Problem) -> None:
    problem = _with(case_study, sharing=DOCS)
    pl = plan(problem)
    assert pl.feasible and pl.threshold_tokens is not None
    uncached, hit = _independent_uncached(problem)
    long = uncached[uncached > pl.threshold_tokens]
    assert 0 < len(long) < len(uncached)
    assert pl.offload_fraction == pytest.approx(len(long) / len(uncached), rel=1e-12)
    assert pl.l_long == pytest.approx(long.mean(), rel=1e-9)
    assert pl.l_short == pytest.approx(uncached[uncached <= pl.threshold_tokens].mean(), rel=1e-9)
    note = next(n for n in pl.notes if n.startswith("uncached prompt lengths"))
    assert (
        "from workload.sharing documents (300 documents, zipf 1), 512-token blocks, "
        f"{SHARING_SAMPLE} sampled requests, hit ratio {hit:.3f}" in note
    )
    assert "unbounded prefix cache shared by all instances" in note


def test_the_sample_is_seeded(case_study: Problem) -> None:
    w = case_study.workload
    sharing = ConversationSharing(concurrent=16, turns=4)
    a = sharing_uncached(sharing, w.input_length, w.output_length, requests=3000)
    sharing_uncached.cache_clear()
    again = sharing_uncached(sharing, w.input_length, w.output_length, requests=3000)
    other = sharing_uncached(sharing, w.input_length, w.output_length, requests=3000, seed=1)
    assert again is not a and again == a  # drawn afresh, the same lengths
    assert other.uncached != a.uncached
    assert other.hit_ratio == pytest.approx(a.hit_ratio, abs=0.05)  # the same pattern
    assert "conversations (concurrent 16, turns 4)" in a.note and "3000 sampled" in a.note


def test_conversations_plan_offloads_less_than_their_prompts_suggest(case_study: Problem) -> None:
    """A turn's earlier turns are cached: far less to prefill than the whole conversation."""
    sharing = ConversationSharing(concurrent=32, turns=8)
    problem = _with(case_study, sharing=sharing)
    sample = problem.workload.sharing_sample
    assert sample is not None and sample.hit_ratio > 0.5
    assert problem.workload.uncached is sample.uncached
    assert plan(problem).feasible


def test_precedence_and_contradictions(case_study: Problem) -> None:
    w = case_study.workload
    with pytest.raises(
        PlannerError, match=r"workload\.prefixCacheHitRate: give prefixCacheHitRate"
    ):
        WorkloadInput(w.input_length, w.output_length, prefix_cache_hit_rate=0.3, sharing=DOCS)
    measured = Fixed(5000.0)
    both = WorkloadInput(w.input_length, w.output_length, uncached_length=measured, sharing=DOCS)
    assert both.uncached is measured and both.sharing_sample is None  # measured lengths win
    assert "workload.sharing shapes only the simulated requests" in both.uncached_source
    assert WorkloadInput(w.input_length, w.output_length).sharing_sample is None


def test_the_servingplan_refuses_sharing_with_a_hit_rate() -> None:
    docs = yaml.safe_load_all(SAMPLE.read_text())
    resources = [d for d in docs if d]
    sp = next(d for d in resources if d["kind"] == "ServingPlan")
    sp["spec"]["workload"]["prefixCacheHitRate"] = 0.4
    sp["spec"]["workload"]["sharing"] = {"type": "conversations"}
    from prfaas.operator.api.models import ServingPlanSpec

    with pytest.raises(ValidationError, match="prefixCacheHitRate: give prefixCacheHitRate or"):
        ServingPlanSpec.model_validate(sp["spec"])
    del sp["spec"]["workload"]["prefixCacheHitRate"]
    assert ServingPlanSpec.model_validate(sp["spec"]).workload.sharing is not None


def test_a_conversations_decode_context_is_its_whole_prompt(case_study: Problem) -> None:
    """``inputLength`` is each turn's new message; a decode holds the whole conversation so
    far. With messages of m tokens and answers of o, turn k (0-based) has a prompt of
    k·(m + o) + m, so over conversations of T turns the mean prompt is m + (m + o)(T − 1)/2
    (open conversations at the sample's end pull it a little lower)."""
    m, o, turns = 400, 200, 8
    problem = _with(
        case_study,
        input_length=Fixed(m),
        output_length=Fixed(o),
        sharing=ConversationSharing(concurrent=16, turns=turns),
    )
    w = problem.workload
    expected = m + (m + o) * (turns - 1) / 2.0
    assert w.prompt_mean == pytest.approx(expected, rel=0.02)
    assert _with(case_study, input_length=Fixed(m)).workload.prompt_mean == m  # no sharing
    # The longer contexts cost decode throughput: the plan serves less than if each prompt
    # were only its new message (the same uncached lengths, given as measured).
    twin = _with(problem, uncached_length=w.uncached, sharing=None)
    assert twin.workload.prompt_mean == m
    assert plan(problem).throughput_rps < plan(twin).throughput_rps


def test_sharing_without_its_sample_is_refused(case_study: Problem) -> None:
    """The plan's uncached lengths come from the sample; a workload that names a pattern but
    holds none would plan as if nothing were shared."""
    w = case_study.workload
    with pytest.raises(PlannerError, match="with_sharing"):
        WorkloadInput(w.input_length, w.output_length, sharing=DOCS)
    assert with_sharing(w, DOCS).sharing_sample is not None
