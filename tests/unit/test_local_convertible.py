"""``prfaas up`` with a convertible pool: kv_both engines, their role assignment in the router's
file, live re-assignment and removal (without starting vLLM)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prfaas.engine.local.runtime import LocalRuntime, LocalRuntimeError, build_layout
from prfaas.engine.router.config import RouterConfigError, load_router_config
from prfaas.engine.vllm.launch import kv_transfer_config
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.cli.local_plan import local_plan
from prfaas.planner.plan import Plan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "local.yaml"


def convertible_plan() -> Plan:
    """The local sample with a PD-P row beside dc-b's decode row: the same CPU engine, so one
    convertible pool of two kv_both engines (one prefill, one decode)."""
    plan = local_plan(load_manifests(SAMPLE))
    decode = next(c for c in plan.clusters if c.role == "decode")
    plan.clusters.append(replace(decode, role="prefill", max_num_seqs=None))
    return plan


def test_the_plan_says_which_roles_are_convertible() -> None:
    plan = convertible_plan()
    (pool,) = plan.convertible()
    assert (pool.decode_cluster, pool.datacenter, pool.prefill, pool.decode) == (
        "local-decode", "dc-b", 1, 1,
    )
    assert plan.to_dict()["convertible"] == [
        {"decodeCluster": "local-decode", "datacenter": "dc-b", "prefill": 1, "decode": 1}
    ]
    assert Plan.from_dict(plan.to_dict()).convertible() == [pool]
    # Other flags: not interchangeable, separate pools as before.
    other = convertible_plan()
    other.clusters[-1].max_num_batched_tokens = 4096
    assert other.convertible() == []
    assert local_plan(load_manifests(SAMPLE)).convertible() == []


def test_a_convertible_pool_runs_as_kv_both_engines(tmp_path: Path) -> None:
    layout = build_layout(convertible_plan(), model_dir=tmp_path)
    roles = {e.name: e.role for e in layout.engines}
    assert roles == {
        "local-prefill-prefill-0": "prefill",
        "local-decode-both-0": "both",
        "local-decode-both-1": "both",
    }
    assert layout.assignment == {"local-decode-both-0": "prefill", "local-decode-both-1": "decode"}
    config = kv_transfer_config(layout.named("local-decode-both-0").launch)
    assert config is not None and config["kv_role"] == "kv_both"
    assert kv_transfer_config(layout.engine("prefill").launch)["kv_role"] == "kv_producer"  # type: ignore[index]


def test_the_router_file_carries_the_assignment_and_follows_assign(tmp_path: Path) -> None:
    layout = build_layout(convertible_plan(), model_dir=tmp_path)
    runtime = LocalRuntime(layout, workdir=tmp_path)
    b0, b1 = (layout.named(f"local-decode-both-{i}").router_url for i in range(2))
    cfg = load_router_config(runtime.write_router_config())
    dc_b = cfg.datacenters["dc-b"]
    assert dc_b.prefill == [] and dc_b.decode == []
    assert dc_b.convertible == {b0: "prefill", b1: "decode"}
    assert cfg.datacenters["dc-a"].prefill == [layout.engine("prefill").router_url]
    cfg = load_router_config(runtime.assign({"local-decode-both-0": "decode"}))
    assert cfg.datacenters["dc-b"].convertible == {b0: "decode", b1: "decode"}
    assert runtime.describe()["engines"][1]["role"] == "decode"


def test_an_assignment_without_a_decode_engine_is_refused_and_not_kept(tmp_path: Path) -> None:
    runtime = LocalRuntime(build_layout(convertible_plan(), model_dir=tmp_path), workdir=tmp_path)
    runtime.write_router_config()
    with pytest.raises(RouterConfigError, match="leaves no decode instance"):
        runtime.assign({"local-decode-both-1": "prefill"})
    assert runtime.roles["local-decode-both-1"] == "decode"
    with pytest.raises(LocalRuntimeError, match="not a kv_both engine"):
        runtime.assign({"local-prefill-prefill-0": "decode"})


def test_a_removed_engine_leaves_the_router_file_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = build_layout(convertible_plan(), model_dir=tmp_path)
    runtime = LocalRuntime(layout, workdir=tmp_path)
    runtime.write_router_config()
    seen: list[dict[str, str]] = []

    def fake_drain(url: str, **kw: object) -> str:
        # The router's file no longer names the engine when its drain starts.
        seen.append(dict(load_router_config(runtime.router_config_path)
                         .datacenters["dc-b"].convertible))
        return "idle"

    class Stopped:
        def stop(self, timeout_s: float) -> None:
            seen.append({"stopped": str(timeout_s)})

    monkeypatch.setattr("prfaas.engine.vllm.drain.drain", fake_drain)
    runtime.processes["local-decode-both-0"] = Stopped()  # type: ignore[assignment]
    assert runtime.remove("local-decode-both-0") == "idle"
    b1 = layout.named("local-decode-both-1").router_url
    assert seen == [{b1: "decode"}, {"stopped": "20.0"}]


def test_prfaas_up_summary_names_the_kv_both_engines_and_how_to_move_one(tmp_path: Path) -> None:
    from prfaas.operator.cli.up import _print_summary
    from rich.console import Console

    runtime = LocalRuntime(build_layout(convertible_plan(), model_dir=tmp_path), workdir=tmp_path)
    console = Console(width=300, record=True)
    _print_summary(runtime, console)
    text = console.export_text()
    assert "local-decode-both-0" in text and "prefill (kv_both)" in text
    assert "decode (kv_both)" in text
    assert f"`convertible` in {runtime.router_config_path}" in " ".join(text.split())
