"""``prfaas up``'s live table reads the router's real metric names."""

from __future__ import annotations

from pathlib import Path

from prfaas.engine.router.metrics import RouterMetrics
from prfaas.operator.cli.app import app
from prfaas.operator.cli.up import live_table, router_snapshot
from rich.console import Console
from typer.testing import CliRunner


def test_snapshot_of_router_metrics() -> None:
    m = RouterMetrics()
    m.requests.labels(path="remote", outcome="ok").inc(3)
    m.requests.labels(path="fallback", outcome="ok").inc()
    m.ttft.observe(0.2)
    m.ttft.observe(0.4)
    m.threshold.labels(link="dc-a-to-dc-b").set(384)
    m.kv_in_flight.labels(link="dc-a-to-dc-b").set(2e6)
    snap = router_snapshot(m.exposition().decode())
    assert snap["requests"] == {("remote", "ok"): 3.0, ("fallback", "ok"): 1.0}
    assert snap["ttft_count"] == 2 and abs(snap["ttft_sum"] - 0.6) < 1e-9
    assert snap["threshold"] == {"dc-a-to-dc-b": 384.0}
    console = Console(width=120, record=True)
    console.print(live_table(snap))
    text = console.export_text()
    assert "fallback" in text and "TTFT mean 300 ms over 2" in text and "384" in text


def test_up_reports_a_bad_file_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: prfaas.io/v1alpha1\nkind: Nope\nmetadata: {name: x}\n")
    result = CliRunner().invoke(app, ["up", str(bad)])
    assert result.exit_code == 1
    assert "prfaas up:" in result.output and "Traceback" not in result.output
