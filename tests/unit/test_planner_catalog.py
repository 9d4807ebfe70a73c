"""Catalog: KV bytes per token and fixed state computed from architectures."""

from __future__ import annotations

import pytest
from prfaas.planner.errors import CatalogError, PlannerError
from prfaas.planner.latency.catalog import GPUS, MODELS, gpu_spec, model_arch
from prfaas.planner.latency.profiles import CATALOG_PROFILES

KiB = 1024


@pytest.mark.parametrize(
    ("name", "kib"),
    [("llama-3-70b", 320), ("llama-3-8b", 128), ("qwen3-235b-a22b", 188), ("deepseek-v3", 68.625)],
)
def test_kv_per_token_matches_papers_digest(name: str, kib: float) -> None:
    # papers.md §1.2 "[derived] per-token KV for comparison".
    assert MODELS[name].kv_bytes_per_token / KiB == pytest.approx(kib)
    assert MODELS[name].fixed_state_bytes == 0


def test_hybrid_1t_reproduces_table5_kv_sizes() -> None:
    m = MODELS["hybrid-1t"]
    assert 16.4 <= m.kv_bytes_per_token / KiB <= 16.9  # "marginal KV 16.4-16.8 KiB/token"
    assert m.fixed_state_bytes / 2**20 == pytest.approx(174, rel=0.03)  # "~174 MiB"
    for tokens, mib in CATALOG_PROFILES["hybrid-1t"][0].kv_mib:
        assert m.kv_bytes(tokens) / 2**20 == pytest.approx(mib, rel=0.02)


def test_hybrid_is_far_smaller_than_dense() -> None:
    assert (
        MODELS["qwen3-235b-a22b"].kv_bytes_per_token / MODELS["hybrid-1t"].kv_bytes_per_token > 10
    )


def test_all_fixed_names_exist() -> None:
    assert {"H100", "H200", "H20", "A100-80G", "L40S", "B200", "CPU"} <= set(GPUS)
    assert {
        "llama-3-8b",
        "llama-3-70b",
        "qwen3-32b",
        "qwen3-235b-a22b",
        "deepseek-v3",
        "kimi-linear-48b",
        "hybrid-1t",
    } <= set(MODELS)
    assert gpu_spec("h200") is GPUS["H200"]


def test_unknown_names_say_what_exists() -> None:
    with pytest.raises(PlannerError, match="H200"):
        gpu_spec("TPUv9")
    with pytest.raises(CatalogError, match="hybrid-1t"):
        model_arch("gpt-9")


def test_planner_imports_no_kubernetes_or_http() -> None:
    import subprocess
    import sys

    code = (
        "import sys, prfaas.planner.solver, prfaas.planner.latency.estimator;"
        "bad = {'kopf', 'kubernetes', 'aiohttp', 'httpx', 'pydantic', 'torch'} & set(sys.modules);"
        "print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
