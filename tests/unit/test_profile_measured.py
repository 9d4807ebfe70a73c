"""``prfaas profile`` on CPU writes a profile that ``prfaas plan`` uses (latency source
``measured``), on a small shape: the tiny Llama of ``crds/samples/local.yaml``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import TranslateError, problems_from_manifests
from prfaas.operator.cli.app import app
from prfaas.planner.errors import ProfileError
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.latency.estimator import latency_model
from prfaas.planner.latency.measured import measured_profile
from typer.testing import CliRunner

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "local.yaml"


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("profile") / "tiny.json"
    args = ["profile", "--plan", str(SAMPLE), "-o", str(out), "--tokens", "16,64,256"]
    args += ["--batches", "1,4", "--contexts", "32,128", "--reps", "3", "--warmup", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _docs_with(profile: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The sample with ``profile`` inline instead of its own (``None``: without one)."""
    docs = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    for d in docs:
        if d["kind"] == "ServingPlan":
            d["spec"]["model"].pop("measuredProfile", None)
            if profile is not None:
                d["spec"]["model"]["measuredProfile"] = {"inline": profile}
    return docs


def test_the_profile_has_the_reference_shape(tiny_profile: dict[str, Any]) -> None:
    p = tiny_profile
    assert p["scope"] == "layer" and p["accelerator"] == "CPU" and p["tensorParallel"] == 1
    assert p["model"]["layers"] == 2 and p["model"]["hidden"] == 128
    assert p["shape"] == {
        "hidden": 128,
        "heads": 2,
        "kv_heads": 2,
        "head_dim": 64,
        "ffn": 256,
        "layers": 2,
    }
    assert [r["tokens"] for r in p["prefill"]] == [16, 64, 256]
    assert [(r["batch"], r["context"]) for r in p["decode"]] == [
        (1, 32),
        (1, 128),
        (4, 32),
        (4, 128),
    ]
    for row in (*p["prefill"], *p["decode"]):
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert p["software"]["torch"] and p["matmul_tflops"] > 0


def test_plan_uses_the_measured_profile(tiny_profile: dict[str, Any], tmp_path: Path) -> None:
    # The profile is timed on this machine, loaded or not: the SLO is opened wide so that what
    # this test checks is where the latency came from, never how fast the CPU was.
    docs = _docs_with(tiny_profile)
    for d in docs:
        if d["kind"] == "ServingPlan":
            d["spec"]["slo"] = {"ttft": "120s", "tpot": "10s"}
    file = tmp_path / "plan.yaml"
    file.write_text(yaml.safe_dump_all(docs))
    result = CliRunner().invoke(app, ["plan", str(file), "--output", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    sources = {(c["name"], c["role"]): c["latencySource"] for c in plan["clusters"]}
    assert set(sources.values()) == {"measured"}, sources
    assert any("measured profile CPU TP1" in n for n in plan["notes"])


def test_measured_beats_the_roofline_it_replaces(tiny_profile: dict[str, Any]) -> None:
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    model = problem.model
    data = measured_profile(tiny_profile, model)
    lat = latency_model(model, GPUS["CPU"], 1, 1, (data,))
    assert lat.prefill_source == "measured" and lat.decode_source == "measured"
    assert "measured points" in lat.prefill.note
    # The points are whole steps: layers × the layer's median plus the LM head and host time.
    row = tiny_profile["prefill"][-1]
    extra = dict(data.prefill)[row["tokens"]] - model.layers * row["median_ms"] / 1e3
    lm_head = model.vocab_params * model.weight_bytes_per_param / (GPUS["CPU"].hbm_gbps * 1e9 * 0.8)
    assert extra == pytest.approx(GPUS["CPU"].step_overhead_s + lm_head)
    # Decode rows use the CUDA-graph median where there is one.
    graph = dict(
        tiny_profile, decode=[dict(r, graph_median_ms=1.0) for r in tiny_profile["decode"]]
    )
    want = model.layers * 1e-3 + GPUS["CPU"].step_overhead_s + lm_head
    assert [s for *_, s in measured_profile(graph, model).decode] == pytest.approx(
        [want] * len(graph["decode"])
    )
    # Another TP of the same CPU moves the measurement (no longer "measured", but from it).
    moved = latency_model(model, GPUS["H100"], 1, 1, (data,))
    assert moved.prefill_source == "roofline" and "measured" in moved.prefill.note


def test_a_profile_of_another_model_is_refused(tiny_profile: dict[str, Any]) -> None:
    with pytest.raises(ProfileError, match=r"model.hidden: profile has 128.*has 4096"):
        measured_profile(tiny_profile, MODELS["llama-3-8b"])
    bad = dict(tiny_profile, prefill=[{"tokens": 16}])
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    with pytest.raises(ProfileError, match=r"prefill\[0\]: missing field 'median_ms'"):
        measured_profile(bad, problem.model)


def test_a_bad_inline_profile_names_the_field(tiny_profile: dict[str, Any], tmp_path: Path) -> None:
    file = tmp_path / "plan.yaml"
    file.write_text(yaml.safe_dump_all(_docs_with(dict(tiny_profile, accelerator="TPU9"))))
    with pytest.raises(TranslateError, match=r"measuredProfile.inline.accelerator"):
        problems_from_manifests(load_manifests(file).resources)


def test_profile_needs_one_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["profile", "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    assert "--model" in result.output


def test_the_local_sample_plans_from_its_committed_engine_profile() -> None:
    """``crds/samples/local.yaml`` inlines the profile bench/fidelity.py took of its vLLM CPU
    engine (the same JSON as ``crds/samples/profiles/``), so its plan is ``measured``."""
    docs = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    (sp,) = [d for d in docs if d["kind"] == "ServingPlan"]
    committed = json.loads((SAMPLE.parent / "profiles" / "tiny-llama-cpu-vllm.json").read_text())
    assert sp["spec"]["model"]["measuredProfile"]["inline"] == committed
    assert committed["scope"] == "instance" and committed["software"]["vllm"]
    result = CliRunner().invoke(app, ["plan", str(SAMPLE), "--output", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert {c["latencySource"] for c in plan["clusters"]} == {"measured"}
