"""An aggregated pool on real engines (``crds/samples/aggregated.yaml``, ``spec.shape:
aggregated``): ONE chunked-prefill ``kv_both`` engine in dc-b with the plan's token budget, one
prefill engine in dc-a, the router in front of dc-b.

Short prompts go to the aggregated engine, which prefills them itself (chunked prefill) and
decodes them; long ones (over ``t``) are prefilled in dc-a and the aggregated engine pulls their
KV and decodes. Every greedy answer equals the monolithic engine's. One module-scoped
deployment of two engines (after the session's reference engine has stopped).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prfaas.engine.local.runtime import LocalRuntime
from prfaas.engine.router.proxy import ROUTE_HEADER
from prfaas.engine.vllm.launch import vllm_argv

from .conftest import (
    AGG_LONG,
    AGG_SHORT,
    CHUNKED,
    LONG,
    ROOT,
    SHORT,
    completion_body,
    metric,
    running,
    token_ids,
)

pytestmark = pytest.mark.e2e

SAMPLE = ROOT / "crds" / "samples" / "aggregated.yaml"
_REQUESTS = "prfaas_router_requests_total"
_BY_SOURCE = "vllm:prompt_tokens_by_source_total"


@pytest.fixture(scope="module")
def pool(reference: dict[str, list[int]], tiny_model: Path) -> Iterator[LocalRuntime]:
    """The aggregated sample running (after ``reference`` has stopped its engine)."""
    with running(SAMPLE, tiny_model) as runtime:
        yield runtime


def _urls(runtime: LocalRuntime) -> tuple[str, str, str]:
    layout = runtime.layout
    return layout.router_url, layout.engine("aggregated").url, layout.engine("prefill").url


def _post(url: str, prompt: str) -> httpx.Response:
    r = httpx.post(url + "/v1/completions", json=completion_body(prompt), timeout=180)
    assert r.status_code == 200, r.text
    return r


def test_the_aggregated_engine_chunk_prefills_within_the_plans_budget(
    pool: LocalRuntime, reference: dict[str, list[int]]
) -> None:
    """Sent straight to the aggregated engine, a prompt over its token budget is prefilled by
    the engine itself (vLLM's scheduler runs at most the budget per step, so in chunks), and
    the answer is the monolithic engine's."""
    plan_row = next(c for c in pool.layout.plan.clusters if c.aggregated)
    engine = pool.layout.engine("aggregated")
    argv = vllm_argv(engine.launch)
    budget = plan_row.max_num_batched_tokens
    assert budget is not None
    assert "--enable-chunked-prefill" in argv
    assert argv[argv.index("--max-num-batched-tokens") + 1] == str(budget)
    # vLLM took the flags: chunked prefill at the plan's budget.
    log = pool.processes[engine.name].log_path.read_text(errors="replace")
    assert f"Chunked prefill is enabled with max_num_batched_tokens={budget}." in log
    local = metric(engine.url, _BY_SOURCE, source="local_compute")
    answer = _post(engine.url, CHUNKED).json()
    assert token_ids(answer) == reference[CHUNKED]
    prompt = answer["usage"]["prompt_tokens"]
    assert prompt > budget  # more than one step's budget: prefilled in chunks
    assert metric(engine.url, _BY_SOURCE, source="local_compute") - local == prompt


def test_a_short_prompt_is_prefilled_by_the_aggregated_engine(
    pool: LocalRuntime, reference: dict[str, list[int]]
) -> None:
    router, agg, prefill = _urls(pool)
    before = {
        "local": metric(router, _REQUESTS, path="local", outcome="ok"),
        "remote": metric(router, _REQUESTS, path="remote"),
        "computed": metric(agg, _BY_SOURCE, source="local_compute"),
        "prefill": metric(prefill, "vllm:prompt_tokens_total"),
    }
    r = _post(router, SHORT)
    assert r.headers[ROUTE_HEADER] == "local"
    answer = r.json()
    assert token_ids(answer) == reference[SHORT]
    assert metric(router, _REQUESTS, path="local", outcome="ok") == before["local"] + 1
    assert metric(router, _REQUESTS, path="remote") == before["remote"]
    computed = metric(agg, _BY_SOURCE, source="local_compute") - before["computed"]
    assert computed == answer["usage"]["prompt_tokens"]
    assert metric(prefill, "vllm:prompt_tokens_total") == before["prefill"]


def test_a_long_prompt_is_prefilled_in_dc_a_and_decoded_by_the_aggregated_engine(
    pool: LocalRuntime, reference: dict[str, list[int]]
) -> None:
    router, agg, prefill = _urls(pool)
    before = {
        "remote": metric(router, _REQUESTS, path="remote", outcome="ok"),
        "external": metric(agg, _BY_SOURCE, source="external_kv_transfer"),
        "computed": metric(agg, _BY_SOURCE, source="local_compute"),
        "prefill": metric(prefill, "vllm:prompt_tokens_total"),
    }
    r = _post(router, LONG)
    assert r.headers[ROUTE_HEADER] == "remote"
    answer = r.json()
    assert token_ids(answer) == reference[LONG]
    assert metric(router, _REQUESTS, path="remote", outcome="ok") == before["remote"] + 1
    # dc-a computed the prompt; the aggregated engine imported all of it and computed none.
    assert metric(prefill, "vllm:prompt_tokens_total") > before["prefill"]
    imported = metric(agg, _BY_SOURCE, source="external_kv_transfer") - before["external"]
    assert imported == answer["usage"]["prompt_tokens"]
    assert metric(agg, _BY_SOURCE, source="local_compute") == before["computed"]
    assert metric(agg, "vllm:nixl_num_failed_transfers_total") == 0


def test_local_chunks_and_remote_kv_share_the_aggregated_engines_steps(
    pool: LocalRuntime, reference: dict[str, list[int]]
) -> None:
    """Short and long prompts at once: the aggregated engine prefills the short ones between
    the decodes of the long ones (whose KV came from dc-a); every answer is the monolithic
    engine's and took the path its length gives."""
    router, _, _ = _urls(pool)
    prompts = [p for pair in itertools.zip_longest(AGG_SHORT, AGG_LONG) for p in pair if p]

    def send(prompt: str) -> tuple[str, str, list[int]]:
        r = _post(router, prompt)
        return prompt, r.headers[ROUTE_HEADER], token_ids(r.json())

    with ThreadPoolExecutor(len(prompts)) as ex:
        results: list[Any] = list(ex.map(send, prompts))
    for prompt, route, ids in results:
        assert ids == reference[prompt], prompt[:20]
        assert route == ("remote" if prompt in AGG_LONG else "local"), prompt[:20]
