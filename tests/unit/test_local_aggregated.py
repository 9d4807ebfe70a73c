"""``prfaas up`` of an aggregated pool (``crds/samples/aggregated.yaml``), without starting vLLM:
the plan's aggregated row becomes chunked-prefill ``kv_both`` engines with the plan's budget,
the router's local decode pool."""

from __future__ import annotations

import json
from pathlib import Path

from prfaas.engine.local.runtime import LocalRuntime, build_layout
from prfaas.engine.router.config import load_router_config
from prfaas.engine.vllm.launch import vllm_argv
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.cli.local_plan import local_plan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "aggregated.yaml"


def test_the_sample_plans_one_aggregated_pool_beside_prfaas() -> None:
    plan = local_plan(load_manifests(SAMPLE))
    assert plan.feasible, plan.reason
    rows = {(c.name, c.role, c.aggregated, c.instances) for c in plan.clusters}
    assert rows == {("local-prefill", "prefill", False, 1), ("local-decode", "decode", True, 1)}
    (chosen,) = [o for o in plan.shapes if o.chosen]
    assert chosen.shape == "aggregated+offload" and chosen.deployable
    (agg,) = [c for c in plan.clusters if c.aggregated]
    assert agg.max_num_batched_tokens == chosen.token_budget
    assert plan.threshold_tokens == 256  # offload.mode fixed: the router's t


def test_aggregated_engines_run_chunked_prefill_with_the_plans_budget(tmp_path: Path) -> None:
    plan = local_plan(load_manifests(SAMPLE))
    (agg,) = [c for c in plan.clusters if c.aggregated]
    layout = build_layout(plan, model_dir=tmp_path, cores=2)
    assert sorted(e.name for e in layout.engines) == [
        "local-decode-aggregated-0",
        "local-prefill-prefill-0",
    ]
    engine = layout.engine("aggregated")
    argv = vllm_argv(engine.launch)
    assert "--enable-chunked-prefill" in argv
    assert argv[argv.index("--max-num-batched-tokens") + 1] == str(agg.max_num_batched_tokens)
    assert json.loads(argv[argv.index("--kv-transfer-config") + 1])["kv_role"] == "kv_both"
    assert "--enable-chunked-prefill" not in vllm_argv(layout.engine("prefill").launch)
    # The router: the aggregated engine is dc-b's decode pool (it prefills its own short
    # prompts: no local PD-P), PrfaaS in dc-a prefills the long ones for it.
    cfg = load_router_config(LocalRuntime(layout, workdir=tmp_path).write_router_config())
    assert cfg.local_datacenter == "dc-b"
    assert cfg.datacenters["dc-b"].decode == [engine.router_url]
    assert cfg.datacenters["dc-b"].prefill == [] and cfg.datacenters["dc-b"].convertible == {}
    assert cfg.datacenters["dc-a"].prefill == [layout.engine("prefill").router_url]
    assert cfg.threshold_tokens == 256


def test_prfaas_up_summary_names_the_aggregated_engine_and_its_budget(tmp_path: Path) -> None:
    from prfaas.operator.cli.up import _print_summary
    from rich.console import Console

    plan = local_plan(load_manifests(SAMPLE))
    (agg,) = [c for c in plan.clusters if c.aggregated]
    runtime = LocalRuntime(build_layout(plan, model_dir=tmp_path), workdir=tmp_path)
    console = Console(width=300, record=True)
    _print_summary(runtime, console)
    text = console.export_text()
    assert "local-decode-aggregated-0" in text
    assert f"aggregated (chunked prefill, budget {agg.max_num_batched_tokens})" in text
