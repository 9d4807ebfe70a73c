"""The chart's PrometheusRule through promtool: ``check rules`` (syntax, PromQL) and ``test
rules`` (tests/unit/promtool/prfaas_alerts_test.yaml: each alert firing and not firing).
`make test` / .ci/run install promtool (apt, Debian's ``prometheus`` package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "tests" / "unit" / "promtool" / "prfaas_alerts_test.yaml"
ALERTS = {
    "PrfaasSLOBurnFast",
    "PrfaasSLOBurnSlow",
    "PrfaasLinkEgressAboveHeadroom",
    "PrfaasOffloadThresholdPinned",
    "PrfaasHighFallbackRate",
    "PrfaasRouterCircuitOpen",
    "PrfaasEngineDown",
    "PrfaasAutoscalerMetricsUnavailable",
}

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian/Ubuntu: apt-get install prometheus; "
    "`make test` and .ci/run install it as root)",
)


@pytest.fixture()
def rules_dir(tmp_path: Path) -> Path:
    """The rendered rule groups as a Prometheus rules file, beside the test cases."""
    with helm.Chart.load(REPO / "charts" / "prfaas") as chart:
        out = chart.render({"prometheusRule": {"enabled": True}}, name="prfaas",
                           namespace="prfaas-system")
    rule = yaml.safe_load(out["prfaas/templates/prometheusrule.yaml"])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(CASES, tmp_path / CASES.name)
    return tmp_path


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)


def test_promtool_checks_the_rules(rules_dir: Path) -> None:
    done = _promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    groups = yaml.safe_load((rules_dir / "rules.yaml").read_text())["groups"]
    assert {r["alert"] for g in groups for r in g["rules"] if "alert" in r} == ALERTS


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(CASES.read_text())["tests"]
    firing = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c["exp_alerts"]}
    quiet = {c["alertname"] for t in tests for c in t["alert_rule_test"] if not c["exp_alerts"]}
    assert firing == ALERTS and quiet == ALERTS


def test_promtool_unit_tests_pass(rules_dir: Path) -> None:
    done = _promtool("test", "rules", CASES.name, cwd=rules_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
