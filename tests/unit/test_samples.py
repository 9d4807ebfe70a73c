"""Every sample in crds/samples validates against the models and against its generated CRD."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator
from prfaas.operator.api import models as api
from prfaas.operator.api.crds import build_crd
from prfaas.operator.api.manifests import load_manifests

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in SAMPLES:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def _crd_validator(kind: str) -> OAS30Validator:
    crd = build_crd(api.model_for_kind(kind))
    return OAS30Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_samples_exist() -> None:
    assert {p.name for p in SAMPLES} >= {"case-study.yaml", "local.yaml"}


@pytest.mark.parametrize(("label", "doc"), _documents(), ids=[d[0] for d in _documents()])
def test_sample_parses_with_the_model(label: str, doc: dict[str, Any]) -> None:
    resource = api.model_for_kind(doc["kind"]).model_validate(doc)
    assert resource.metadata.name == doc["metadata"]["name"]


@pytest.mark.parametrize(("label", "doc"), _documents(), ids=[d[0] for d in _documents()])
def test_sample_validates_against_its_crd_schema(label: str, doc: dict[str, Any]) -> None:
    errors = [e.message for e in _crd_validator(doc["kind"]).iter_errors(doc)]
    assert errors == []


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("InterDCLink", ("spec", "bandwidthGbps"), -1),
        ("InterDCLink", ("spec", "bandwidthGbps"), "100"),
        ("ServingPlan", ("spec", "offload", "mode"), "sometimes"),
        ("ServingPlan", ("spec", "slo", "ttft"), "fast"),
        ("ServingPlan", ("spec", "slo", "percentile"), 1.0),
        ("ServingPlan", ("spec", "workload", "outputLength"), {"type": "fixed", "mu": 1.0}),
        ("ServingPlan", ("spec", "workload", "outputLength"), {"type": "lognormal", "mu": 1.0}),
        ("PrefillCluster", ("spec", "accelerator", "count"), 0),
    ],
)
def test_crd_schema_and_model_reject_the_same_bad_values(
    kind: str, path: tuple[str, ...], value: Any
) -> None:
    doc = next(d for _, d in _documents() if d["kind"] == kind)
    bad = yaml.safe_load(yaml.safe_dump(doc))
    node = bad
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert not _crd_validator(kind).is_valid(bad)
    with pytest.raises(ValueError):
        api.model_for_kind(kind).model_validate(bad)


def test_case_study_matches_the_paper_setup() -> None:
    """PrfaaS §4.1: 32×H200 in one DC, 64×H20 in another, ~100 Gbps, lognormal(9.90, 1.00)."""
    m = load_manifests(ROOT / "crds" / "samples" / "case-study.yaml")
    (pfc,) = m.of_kind(api.PrefillCluster)
    (dcc,) = m.of_kind(api.DecodeCluster)
    (link,) = m.of_kind(api.InterDCLink)
    (plan,) = m.of_kind(api.ServingPlan)
    assert (pfc.spec.accelerator.type, pfc.spec.accelerator.count) == ("H200", 32)
    assert (dcc.spec.accelerator.type, dcc.spec.accelerator.count) == ("H20", 64)
    assert pfc.spec.datacenter != dcc.spec.datacenter
    assert (link.spec.from_, link.spec.to) == (pfc.spec.datacenter, dcc.spec.datacenter)
    assert link.spec.bandwidth_gbps == 100
    spec = plan.spec
    assert spec.model.catalog == "hybrid-1t"
    dist = spec.workload.input_length
    assert isinstance(dist, api.LogNormalDistribution)
    assert (dist.mu, dist.sigma, dist.min, dist.max) == (9.90, 1.00, 128, 131072)
    out = spec.workload.output_length
    assert isinstance(out, api.FixedDistribution) and out.value == 1024
    assert spec.clusters.prefill == [pfc.metadata.name]
    assert spec.clusters.decode == [dcc.metadata.name]
    # 40 tok/s decode SLO → 25 ms per output token.
    assert math.isclose(api.duration_seconds(spec.slo.tpot), 1 / 40)
    assert spec.offload.mode == "auto"


def test_local_sample_fits_one_cpu_machine() -> None:
    m = load_manifests(ROOT / "crds" / "samples" / "local.yaml")
    (plan,) = m.of_kind(api.ServingPlan)
    arch = plan.spec.model.architecture
    assert arch is not None
    assert (arch.layers, arch.hidden, arch.heads, arch.kv_heads, arch.head_dim) == (
        2, 128, 2, 2, 64,
    )
    assert arch.head_dim >= 64  # vLLM CPU attention rejects smaller heads
    clusters = [*m.of_kind(api.PrefillCluster), *m.of_kind(api.DecodeCluster)]
    assert {c.spec.accelerator.type for c in clusters} == {"CPU"}
    assert sum(c.spec.accelerator.count for c in clusters) <= 2
    assert m.warnings == []


# ----------------------------------------------------------------------------------------------
# The CRD schema is never stricter than the models: whatever the API server would refuse, the
# models refuse too (the reverse need not hold: cross-field rules live in the models).
# ----------------------------------------------------------------------------------------------


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            paths += _leaf_paths(value, (*prefix, i))
    return paths


_VALUES = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
    st.sampled_from(["10s", "25ms", "0s", "auto", "fixed", "lognormal", "H200", "dc-a"]),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=3), max_size=2),
    st.dictionaries(st.sampled_from(["type", "value", "mu"]), st.integers(0, 3), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_crd_schema_is_never_stricter_than_the_models(data: st.DataObject) -> None:
    _, doc = data.draw(st.sampled_from(_documents()), label="document")
    doc = yaml.safe_load(yaml.safe_dump(doc))
    paths = [p for p in _leaf_paths(doc) if p[0] == "spec"]
    path = data.draw(st.sampled_from(paths), label="path")
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if data.draw(st.booleans(), label="delete"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_VALUES, label="value")
    if _crd_validator(doc["kind"]).is_valid(doc):
        return
    with pytest.raises(ValueError):
        api.model_for_kind(doc["kind"]).model_validate(doc)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_stands_alone(path: Path) -> None:
    """A sample's comments cite only files a clone has (not the authors' shared notes)."""
    import re

    text = path.read_text(encoding="utf-8")
    cited = re.findall(r"[\w.-]+(?:/[\w.-]+)+\.(?:md|py|yaml|json)", text)
    missing = [c for c in cited if not (ROOT / c).exists()]
    assert missing == [], f"{path.name} cites files outside the repository: {missing}"
    assert "shared/" not in text
