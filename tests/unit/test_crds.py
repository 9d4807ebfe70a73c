"""The generated CRDs: in sync with the models, valid for Kubernetes, structural."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from prfaas.operator.api import models as api
from prfaas.operator.api.crds import (
    CrdError,
    build_crd,
    crd_file_name,
    render_crds,
    structural_schema,
)
from prfaas.operator.cli.app import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
FORBIDDEN_IN_JUNCTORS = ("description", "type", "default", "additionalProperties", "nullable")

FREE_FORM = (".spec.model.measuredProfile.inline", ".status.plan")
"""The only free-form objects: the planner's JSON and a ``prfaas profile`` JSON (each checked
by its own parser, ``Plan.from_dict`` and ``latency.measured``)."""


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node outside logical junctors, with a readable path."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def _junctor_problems(node: Any, outer: dict[str, Any], path: str) -> list[str]:
    """Inside allOf/anyOf/oneOf/not: value checks only, on fields the outer schema declares."""
    problems: list[str] = []
    if isinstance(node, list):
        for item in node:
            problems += _junctor_problems(item, outer, path)
        return problems
    if not isinstance(node, dict):
        return problems
    for key in FORBIDDEN_IN_JUNCTORS:
        if key in node:
            problems.append(f"{path}: {key} inside a logical junctor")
    for name, sub in node.get("properties", {}).items():
        if name not in outer.get("properties", {}):
            problems.append(f"{path}.{name}: only declared inside a logical junctor")
        else:
            problems += _junctor_problems(sub, outer["properties"][name], f"{path}.{name}")
    for key in JUNCTORS:
        if key in node:
            problems += _junctor_problems(node[key], outer, path)
    return problems


def structural_problems(schema: dict[str, Any]) -> list[str]:
    """The apiextensions rules for structural schemas (and defaults), as a checker."""
    problems: list[str] = []
    props = schema.get("properties", {})
    if props.get("metadata", {}) not in ({}, {"type": "object"}):
        problems.append(".metadata: only name/generateName may be restricted")
    for path, node in _walk(schema):
        if "$ref" in node:
            problems.append(f"{path}: $ref")
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        if not node.get("type") and not preserve and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties beside additionalProperties")
        if preserve and path not in FREE_FORM:
            problems.append(f"{path}: x-kubernetes-preserve-unknown-fields on a typed field")
        for key in JUNCTORS:
            if key in node:
                problems += _junctor_problems(node[key], node, path)
        if "default" in node:
            errors = list(OAS30Validator(node).iter_errors(node["default"]))
            if errors:
                problems.append(f"{path}: default {node['default']!r} fails its own schema")
        for key in node.get("x-kubernetes-list-map-keys", []):
            item = node["items"]
            if key not in item.get("required", []) and "default" not in item["properties"][key]:
                problems.append(f"{path}: list-map key {key} neither required nor defaulted")
    return problems


def _crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(text) for text in render_crds().values()]


def test_crds_directory_matches_the_models_byte_for_byte() -> None:
    rendered = render_crds()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in CRDS.glob("*.yaml")}
    assert set(on_disk) == set(rendered), "run `prfaas crds` to regenerate crds/"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"crds/{name} is stale; run `prfaas crds`"


def test_rendering_is_deterministic() -> None:
    assert render_crds() == render_crds()


def test_cli_writes_the_same_bytes(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["crds", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for name, text in render_crds().items():
        assert (tmp_path / "out" / name).read_bytes() == text.encode("utf-8")
        assert (tmp_path / "out" / name).read_bytes() == (CRDS / name).read_bytes()


def test_cli_writes_crds_and_the_charts_copy_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["crds"]).exit_code == 0
    for name, text in render_crds().items():
        assert (tmp_path / "crds" / name).read_text(encoding="utf-8") == text
        assert (tmp_path / "charts" / "prfaas" / "crds" / name).read_text(encoding="utf-8") == text
    assert runner.invoke(app, ["crds", "--check"]).exit_code == 0
    (tmp_path / "charts" / "prfaas" / "crds" / crd_file_name(api.ServingPlan)).write_text("x")
    result = runner.invoke(app, ["crds", "--check"])
    assert result.exit_code == 1 and "charts/prfaas/crds" in result.output


def test_cli_check_flags_a_stale_directory(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["crds", "-o", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crds", "-o", str(tmp_path), "--check"]).exit_code == 0
    victim = tmp_path / crd_file_name(api.ServingPlan)
    victim.write_text(victim.read_text() + "# edited\n")
    result = runner.invoke(app, ["crds", "-o", str(tmp_path), "--check"])
    assert result.exit_code == 1
    assert crd_file_name(api.ServingPlan) in result.output


@pytest.mark.parametrize("crd", _crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_crd_validates_against_kubernetes_own_schema(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_validate_rejects_a_non_structural_keyword() -> None:
    crd = build_crd(api.InterDCLink)
    _schema(crd)["properties"]["spec"]["properties"]["bandwidthGbps"]["exclusiveMinimum"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("crd", _crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_crd_schema_is_structural(crd: dict[str, Any]) -> None:
    assert structural_problems(_schema(crd)) == []


def test_structural_checker_catches_violations() -> None:
    schema = _schema(build_crd(api.ServingPlan))
    broken = copy.deepcopy(schema)
    broken["properties"]["spec"]["properties"]["slo"].pop("type")
    dist = broken["properties"]["spec"]["properties"]["workload"]["properties"]["inputLength"]
    dist["oneOf"][0]["type"] = "object"
    dist["oneOf"][1]["properties"]["bogus"] = {"enum": [1]}
    broken["properties"]["spec"]["properties"]["engine"]["properties"]["blockSize"]["default"] = 0
    problems = structural_problems(broken)
    assert any(p.startswith(".spec.slo: no type") for p in problems)
    assert any("type inside a logical junctor" in p for p in problems)
    assert any("bogus: only declared inside" in p for p in problems)
    assert any("blockSize: default 0" in p for p in problems)


@pytest.mark.parametrize("cls", api.KINDS, ids=lambda c: c.KIND)
def test_names_scope_and_status_subresource(cls: type[api.Resource]) -> None:
    crd = build_crd(cls)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{cls.PLURAL}.prfaas.io"
    assert spec["group"] == "prfaas.io"
    assert spec["names"]["kind"] == cls.KIND
    assert spec["names"]["shortNames"] == list(cls.SHORT_NAMES)
    assert spec["scope"] == ("Namespaced" if cls.NAMESPACED else "Cluster")
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    status = _schema(crd)["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize(
    ("cls", "columns"),
    [
        (api.ServingPlan, ["Ready", "Threshold", "Throughput", "Age"]),
        (api.InterDCLink, ["From", "To", "Gbps", "Measured", "Age"]),
    ],
)
def test_printer_columns(cls: type[api.Resource], columns: list[str]) -> None:
    printed = build_crd(cls)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in printed] == columns


@pytest.mark.parametrize("cls", api.KINDS, ids=lambda c: c.KIND)
def test_printer_columns_point_at_schema_fields(cls: type[api.Resource]) -> None:
    crd = build_crd(cls)
    schema = _schema(crd)
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[")[0].strip(".").split(".")
        if path[0] == "metadata":
            continue
        node = schema
        for part in path:
            assert part in node["properties"], f"{column['name']}: {column['jsonPath']}"
            node = node["properties"][part]


def test_preserve_unknown_fields_only_on_the_free_form_fields() -> None:
    for crd in _crds():
        marked = [
            path
            for path, node in _walk(_schema(crd))
            if node.get("x-kubernetes-preserve-unknown-fields")
        ]
        expected = sorted(FREE_FORM) if crd["spec"]["names"]["kind"] == "ServingPlan" else []
        assert sorted(marked) == expected


def test_distribution_union_is_one_object_with_a_tag_enum() -> None:
    schema = _schema(build_crd(api.ServingPlan))
    dist = schema["properties"]["spec"]["properties"]["workload"]["properties"]["inputLength"]
    assert dist["type"] == "object"
    assert dist["required"] == ["type"]
    assert dist["properties"]["type"]["enum"] == ["lognormal", "empirical", "fixed"]
    assert set(dist["properties"]) == {"type", "mu", "sigma", "min", "max", "buckets", "value"}
    validator = OAS30Validator(dist)
    assert validator.is_valid({"type": "fixed", "value": 1024})
    assert validator.is_valid({"type": "lognormal", "mu": 9.9, "sigma": 1.0, "max": 131072})
    assert not validator.is_valid({"type": "fixed", "value": 1024, "mu": 1.0})
    assert not validator.is_valid({"type": "lognormal", "mu": 9.9, "sigma": 1.0})
    assert not validator.is_valid({"type": "uniform", "value": 3})
    # A default inside a union would be added to the other variants by the API server.
    assert "default" not in dist["properties"]["min"]


def test_bounds_use_openapi_3_0_forms() -> None:
    spec = _schema(build_crd(api.InterDCLink))["properties"]["spec"]["properties"]
    assert spec["bandwidthGbps"]["minimum"] == 0
    assert spec["bandwidthGbps"]["exclusiveMinimum"] is True
    accel = _schema(build_crd(api.PrefillCluster))["properties"]["spec"]["properties"]
    assert accel["accelerator"]["properties"]["count"]["minimum"] == 1


def test_structural_schema_refuses_untagged_unions() -> None:
    with pytest.raises(CrdError, match="non-null variants"):
        structural_schema({"anyOf": [{"type": "string"}, {"type": "integer"}]})
    with pytest.raises(CrdError, match="discriminator"):
        structural_schema({"oneOf": [{"type": "string"}, {"type": "integer"}]})
    with pytest.raises(CrdError, match="unresolvable"):
        structural_schema({"$ref": "#/$defs/Missing"})
