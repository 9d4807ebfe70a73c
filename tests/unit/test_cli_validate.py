"""``prfaas validate``: exit codes and problem reports as a user sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
from prfaas.operator.cli.app import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
CASE_STUDY = ROOT / "crds" / "samples" / "case-study.yaml"
LOCAL = ROOT / "crds" / "samples" / "local.yaml"


def _validate(*files: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", *map(str, files)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = CASE_STUDY.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / "edited.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_case_study_is_valid_with_a_one_line_summary() -> None:
    code, output = _validate(CASE_STUDY)
    assert code == 0
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert "4 object(s) valid" in lines[0]


def test_both_samples_together_are_valid() -> None:
    code, output = _validate(CASE_STUDY, LOCAL)
    assert code == 0, output
    assert "8 object(s) valid in 2 file(s)" in output


@pytest.mark.parametrize(
    ("old", "new", "field", "given", "allowed"),
    [
        ("bandwidthGbps: 100", "bandwidthGbps: -5", "spec.bandwidthGbps", "-5", "greater than 0"),
        ("    mode: auto\n", "    mode: auto\n    speed: 3\n", "spec.offload.speed", "3", "mode"),
        ("ttft: 10s", "ttft: fast", "spec.slo.ttft", '"fast"', "unit"),
        ("type: fixed", "type: uniform", "spec.workload.outputLength.type", '"uniform"', "fixed"),
        ("sigma: 1.00", "sigma: -1", "spec.workload.inputLength.sigma", "-1", "greater than 0"),
        ("percentile: 0.9", "percentile: 1.5", "spec.slo.percentile", "1.5", "less than 1"),
        ("decode: [pd-h20]", "decode: []", "spec.clusters.decode", "[]", "at least 1"),
        ("bandwidthGbps: 100", 'bandwidthGbps: "100"', "spec.bandwidthGbps", '"100"', "number"),
        ("  to: dc-b", "  to: dc-a", "spec:", "dc-a", "two datacenters"),
        ("perNode: 8\n---\napiVersion: prfaas.io/v1alpha1\nkind: DecodeCluster",
         "perNode: 5\n---\napiVersion: prfaas.io/v1alpha1\nkind: DecodeCluster",
         "spec.accelerator", "32", "multiple of perNode"),
    ],
    ids=["negative-bandwidth", "unknown-field", "ttft-fast", "unknown-distribution",
         "negative-sigma", "percentile-above-1", "no-decode-cluster", "string-number",
         "link-to-itself", "count-not-multiple"],
)
def test_invalid_field_exits_2_and_names_it(
    tmp_path: Path, old: str, new: str, field: str, given: str, allowed: str
) -> None:
    code, output = _validate(_edited(tmp_path, old, new))
    assert code == 2
    problem = next(line for line in output.splitlines() if field in line)
    assert f"got {given}" in problem or given in problem
    assert allowed in problem.split("allowed:", 1)[1]
    assert "Traceback" not in output


def test_problem_names_document_and_line(tmp_path: Path) -> None:
    path = _edited(tmp_path, "bandwidthGbps: 100", "bandwidthGbps: -5")
    line = next(
        i for i, text in enumerate(path.read_text().splitlines(), 1) if "bandwidthGbps" in text
    )
    code, output = _validate(path)
    assert code == 2
    assert f"{path}:{line} InterDCLink/dc-a-to-dc-b spec.bandwidthGbps: got -5" in output
    assert output.strip().splitlines()[-1].startswith("✗ 1 problem(s)")


def test_unknown_field_lists_the_known_ones(tmp_path: Path) -> None:
    code, output = _validate(_edited(tmp_path, "  rttMs: 5", "  rttMs: 5\n  latency: 3"))
    assert code == 2
    assert "spec.latency" in output
    assert "known fields: from, to, bandwidthGbps, rttMs, probing" in output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: [\n", "YAML that does not parse"),
        ("apiVersion: prfaas.io/v1alpha1\nkind: Gadget\nmetadata: {name: g}\n", "kind"),
        ("- just\n- a list\n", "a mapping with apiVersion"),
        ("", "no documents"),
        ("kind: InterDCLink\nkind: InterDCLink\n", "the key twice"),
        ("apiVersion: prfaas.io/v1alpha1\nkind: ServingPlan\nmetadata: {name: x}\n", "spec"),
    ],
    ids=["bad-yaml", "unknown-kind", "not-a-mapping", "empty", "duplicate-key", "no-spec"],
)
def test_malformed_files_are_problems_not_tracebacks(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(content, encoding="utf-8")
    code, output = _validate(path)
    assert code == 2
    assert expected in output
    assert "Traceback" not in output


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    code, output = _validate(tmp_path / "absent.yaml")
    assert code == 2
    assert "absent.yaml" in output


def test_the_same_object_twice_is_a_problem() -> None:
    code, output = _validate(CASE_STUDY, CASE_STUDY)
    assert code == 2
    assert "ServingPlan/hybrid-1t metadata.name: got 2 objects" in output


def test_dangling_cluster_reference_is_a_warning_only(tmp_path: Path) -> None:
    code, output = _validate(_edited(tmp_path, "decode: [pd-h20]", "decode: [pd-h20, pd-far]"))
    assert code == 0
    assert "spec.clusters.decode[1]" in output
    assert "pd-far" in output


def test_unresolved_reference_is_labelled_a_warning_and_strict_agrees_with_plan(
    tmp_path: Path,
) -> None:
    """validate marks it a warning and says what plan does with it; --strict fails as plan."""
    path = _edited(tmp_path, "prefill: [prfaas-h200]", "prefill: [prfaas-h100]")
    code, output = _validate(path)
    assert code == 0
    warning = next(line for line in output.splitlines() if "prfaas-h100" in line)
    assert warning.startswith("warning: ")
    assert "1 warning(s)" in output and "prfaas plan" in output
    strict = CliRunner().invoke(app, ["validate", "--strict", str(path)])
    plan = CliRunner().invoke(app, ["plan", str(path)])
    assert strict.exit_code == plan.exit_code == 2
    assert "no PrefillCluster 'prfaas-h100' in the file (defined: prfaas-h200)" in plan.output


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [("ttft: 10s", "ttft: 10", "spec.slo.ttft"), ("tpot: 25ms", "tpot: 25", "spec.slo.tpot"),
     ("tpot: 25ms", "tpot: [25]", "spec.slo.tpot"),
     ("    maxBatchSize: 20", "    maxBatchSize: 20\n  autoscaling: {interval: 30}",
      "spec.autoscaling.interval")],
    ids=["ttft-number", "tpot-number", "tpot-list", "interval-number"],
)
def test_every_duration_field_explains_the_units(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    code, output = _validate(_edited(tmp_path, old, new))
    assert code == 2
    problem = next(line for line in output.splitlines() if field in line)
    assert "write a number with a unit: ms, s, m or h" in problem


def test_no_arguments_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 2
