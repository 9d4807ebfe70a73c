"""The API models: wire names, strict types, defaults and cross-field checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from prfaas.operator.api import models as api
from pydantic import ValidationError


def _plan(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "prfaas.io/v1alpha1",
        "kind": "ServingPlan",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {
            "model": {"servedName": "m", "catalog": "llama-3-8b"},
            "workload": {
                "inputLength": {"type": "lognormal", "mu": 9.9, "sigma": 1.0, "max": 131072},
                "outputLength": {"type": "fixed", "value": 1024},
            },
            "clusters": {"decode": ["d"]},
        },
    }
    base["spec"].update(spec)
    return base


def _link(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "prfaas.io/v1alpha1",
        "kind": "InterDCLink",
        "metadata": {"name": "l"},
        "spec": {"from": "a", "to": "b", "bandwidthGbps": 100, **spec},
    }


def _error_locs(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[Any, ...]]:
    return [tuple(e["loc"]) for e in exc.value.errors()]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("4s", 4.0), ("1.5m", 90.0), ("2h", 7200.0), ("0.5s", 0.5)],
)
def test_duration_seconds(text: str, seconds: float) -> None:
    assert api.duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["4", "fast", "4 s", "-1s", "0s", "1d", "", "s"])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than zero"):
        api.duration_seconds(text)


def test_plan_defaults_and_camel_case_round_trip() -> None:
    plan = api.ServingPlan.model_validate(_plan())
    assert plan.spec.slo.percentile == 0.9
    assert plan.spec.offload.mode == "auto"
    assert plan.spec.engine.connector == "NixlConnector"
    assert plan.spec.clusters.prefill == []
    dumped = plan.model_dump(by_alias=True, exclude_none=True)
    assert dumped["apiVersion"] == "prfaas.io/v1alpha1"
    assert "servedName" in dumped["spec"]["model"]
    assert "inputLength" in dumped["spec"]["workload"]
    assert api.ServingPlan.model_validate(dumped) == plan


def test_link_uses_from_on_the_wire() -> None:
    link = api.InterDCLink.model_validate(_link(rttMs=5))
    assert (link.spec.from_, link.spec.to, link.spec.rtt_ms) == ("a", "b", 5)
    assert link.model_dump(by_alias=True)["spec"]["from"] == "a"


def test_unknown_fields_are_rejected_at_every_level() -> None:
    for where in (("spec",), ("spec", "slo"), ("spec", "workload", "inputLength")):
        doc = _plan(slo={})
        node = doc
        for part in where:
            node = node[part]
        node["bogus"] = 1
        with pytest.raises(ValidationError) as exc:
            api.ServingPlan.model_validate(doc)
        assert exc.value.errors()[0]["type"] == "extra_forbidden"


def test_strict_types_match_the_api_server() -> None:
    with pytest.raises(ValidationError):
        api.InterDCLink.model_validate(_link(bandwidthGbps="100"))
    with pytest.raises(ValidationError):
        api.ServingPlan.model_validate(_plan(autoscaling={"enabled": "true"}))
    # An integer is a fine number.
    assert api.InterDCLink.model_validate(_link(bandwidthGbps=1)).spec.bandwidth_gbps == 1.0


@pytest.mark.parametrize("bandwidth", [-1, 0])
def test_link_bandwidth_must_be_positive(bandwidth: float) -> None:
    with pytest.raises(ValidationError) as exc:
        api.InterDCLink.model_validate(_link(bandwidthGbps=bandwidth))
    assert _error_locs(exc) == [("spec", "bandwidthGbps")]


def test_link_ends_must_differ() -> None:
    with pytest.raises(ValidationError, match="joins two datacenters"):
        api.InterDCLink.model_validate(_link(to="a"))


@pytest.mark.parametrize(
    ("dist", "ok"),
    [
        ({"type": "lognormal", "mu": 9.9, "sigma": 1.0, "min": 128, "max": 131072}, True),
        ({"type": "lognormal", "mu": 9.9, "sigma": 1.0, "min": 200, "max": 100}, False),
        ({"type": "lognormal", "mu": 9.9, "sigma": 0, "max": 100}, False),
        ({"type": "fixed", "value": 1}, True),
        ({"type": "fixed", "value": 0}, False),
        ({"type": "empirical", "buckets": [{"upTo": 10, "weight": 1}, {"upTo": 20, "weight": 2}]},
         True),
        ({"type": "empirical", "buckets": [{"upTo": 20, "weight": 1}, {"upTo": 20, "weight": 2}]},
         False),
        ({"type": "empirical", "buckets": []}, False),
        ({"type": "uniform", "value": 3}, False),
        ({"value": 3}, False),
    ],
)
def test_distributions(dist: dict[str, Any], ok: bool) -> None:
    doc = _plan()
    doc["spec"]["workload"]["inputLength"] = dist
    if ok:
        plan = api.ServingPlan.model_validate(doc)
        assert plan.spec.workload.input_length.type == dist["type"]
    else:
        with pytest.raises(ValidationError):
            api.ServingPlan.model_validate(doc)


@pytest.mark.parametrize(
    ("slo", "ok"),
    [
        ({"percentile": 0.99, "attainment": 1.0}, True),
        ({"percentile": 1.0}, False),
        ({"percentile": 0}, False),
        ({"attainment": 0}, False),
        ({"attainment": 1.01}, False),
        ({"ttft": "fast"}, False),
        ({"tpot": "25"}, False),
    ],
)
def test_slo_bounds(slo: dict[str, Any], ok: bool) -> None:
    if ok:
        api.ServingPlan.model_validate(_plan(slo=slo))
    else:
        with pytest.raises(ValidationError):
            api.ServingPlan.model_validate(_plan(slo=slo))


def test_plan_needs_a_decode_cluster_and_unique_names() -> None:
    with pytest.raises(ValidationError):
        api.ServingPlan.model_validate(_plan(clusters={"prefill": ["p"], "decode": []}))
    with pytest.raises(ValidationError, match="more than once"):
        api.ServingPlan.model_validate(_plan(clusters={"decode": ["d", "d"]}))


def test_model_needs_exactly_one_of_catalog_or_architecture() -> None:
    arch: dict[str, Any] = {
        "layers": 2, "hidden": 128, "heads": 2, "kvHeads": 2, "headDim": 64, "ffn": 256,
        "paramsB": 0.001,
    }
    api.ServingPlan.model_validate(_plan(model={"servedName": "m", "architecture": arch}))
    for model in ({"servedName": "m"}, {"servedName": "m", "catalog": "x", "architecture": arch}):
        with pytest.raises(ValidationError, match="exactly one"):
            api.ServingPlan.model_validate(_plan(model=model))
    bad = copy.deepcopy(arch) | {"kvHeads": 3}
    with pytest.raises(ValidationError, match="multiple of kvHeads"):
        api.ServingPlan.model_validate(_plan(model={"servedName": "m", "architecture": bad}))
    mla = copy.deepcopy(arch) | {"attention": "mla"}
    with pytest.raises(ValidationError, match="kvLoraRank"):
        api.ServingPlan.model_validate(_plan(model={"servedName": "m", "architecture": mla}))


def test_offload_fixed_needs_a_threshold() -> None:
    with pytest.raises(ValidationError, match="thresholdTokens"):
        api.ServingPlan.model_validate(_plan(offload={"mode": "fixed"}))
    plan = api.ServingPlan.model_validate(_plan(offload={"mode": "fixed", "thresholdTokens": 8}))
    assert plan.spec.offload.threshold_tokens == 8


def test_autoscaling_bounds() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        api.ServingPlan.model_validate(_plan(autoscaling={"minReplicas": 9, "maxReplicas": 3}))


def test_accelerator_count_must_fill_whole_nodes() -> None:
    doc: dict[str, Any] = {
        "apiVersion": "prfaas.io/v1alpha1",
        "kind": "PrefillCluster",
        "metadata": {"name": "c"},
        "spec": {"datacenter": "dc", "accelerator": {"type": "H200", "count": 12}},
    }
    with pytest.raises(ValidationError, match="multiple of perNode"):
        api.PrefillCluster.model_validate(doc)
    doc["spec"]["accelerator"]["count"] = 4  # less than one node is fine
    assert api.PrefillCluster.model_validate(doc).spec.accelerator.per_node == 8


def test_profile_point_is_prefill_or_decode() -> None:
    api.ProfilePoint.model_validate({"tokens": 1024, "seconds": 0.44})
    api.ProfilePoint.model_validate({"batch": 8, "context": 1024, "seconds": 0.02})
    with pytest.raises(ValidationError, match="either tokens"):
        api.ProfilePoint.model_validate({"tokens": 1, "batch": 1, "seconds": 1})


def test_metadata_name_is_a_dns_name() -> None:
    doc = _link()
    doc["metadata"]["name"] = "Not_OK"
    with pytest.raises(ValidationError):
        api.InterDCLink.model_validate(doc)


def test_model_for_kind() -> None:
    assert [api.model_for_kind(c.KIND) for c in api.KINDS] == list(api.KINDS)
    with pytest.raises(KeyError, match="ServingPlan"):
        api.model_for_kind("Gadget")


def test_kind_metadata() -> None:
    assert api.API_VERSION == "prfaas.io/v1alpha1"
    assert [c.NAMESPACED for c in api.KINDS] == [False, False, False, True]
    assert len({s for c in api.KINDS for s in c.SHORT_NAMES}) == sum(
        len(c.SHORT_NAMES) for c in api.KINDS
    )
