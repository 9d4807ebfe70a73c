"""``prfaas plan`` and ``prfaas simulate`` messages as a user reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from prfaas.operator.cli.app import app
from typer.testing import CliRunner

CASE_STUDY = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"


def _infeasible(tmp_path: Path) -> Path:
    path = tmp_path / "tight.yaml"
    path.write_text(CASE_STUDY.read_text(encoding="utf-8").replace("ttft: 10s", "ttft: 1ms"))
    return path


@pytest.mark.parametrize(
    "argv", [["plan"], ["simulate", "-n", "100", "--no-goodput"]], ids=["plan", "simulate"]
)
def test_the_infeasible_reason_is_printed_once(tmp_path: Path, argv: list[str]) -> None:
    result = CliRunner().invoke(app, [*argv, str(_infeasible(tmp_path))])
    assert result.exit_code == 1
    assert result.output.count("below the unloaded prefill time") == 1, result.output


def test_plan_simulate_says_which_rate_and_why() -> None:
    result = CliRunner().invoke(app, ["plan", str(CASE_STUDY), "--simulate", "300"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("simulated at "))
    # The case study declares no requestsPerSecond: 0.8 × homogeneous PD's 2.03 req/s.
    assert "1.62 req/s = 0.8 × the smallest planned Λ_max (homogeneous-pd, 2.03 req/s)" in line
