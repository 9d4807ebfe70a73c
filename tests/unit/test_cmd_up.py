"""``prfaas up``'s live table reads the router's real metric names."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_piped_output_gets_plain_lines_and_only_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``make run | tee log``: no live table (it never reaches a pipe), timestamped lines."""
    import io

    from prfaas.operator.cli import up

    m = RouterMetrics()
    m.requests.labels(path="remote", outcome="ok").inc(2)
    m.threshold.labels(link="dc-a-to-dc-b").set(256)
    snapshots = [m.exposition().decode()] * 2
    m.requests.labels(path="local", outcome="ok").inc()
    snapshots.append(m.exposition().decode())

    class Answer:
        def __init__(self, text: str) -> None:
            self.text = text

    monkeypatch.setattr("httpx.get", lambda *a, **k: Answer(snapshots.pop(0)))
    monkeypatch.setattr(up.time, "sleep", lambda s: None)
    out = io.StringIO()  # not a terminal
    up._live("http://router", 1.0, out=out, rounds=3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the repeated snapshot prints nothing new
    assert "requests: remote/ok 2 | TTFT mean 0 ms over 0 | t: dc-a-to-dc-b 256" in lines[0]
    assert "local/ok 1, remote/ok 2" in lines[1]
    assert "\x1b[" not in out.getvalue()


def test_summary_describes_the_link_in_words(tmp_path: Path) -> None:
    from prfaas.engine.local.runtime import LocalRuntime, build_layout
    from prfaas.operator.api.manifests import load_manifests
    from prfaas.operator.cli.local_plan import local_plan
    from prfaas.operator.cli.up import _print_summary, describe_link

    sample = Path(__file__).resolve().parents[2] / "crds" / "samples" / "local.yaml"
    runtime = LocalRuntime(build_layout(local_plan(load_manifests(sample)), model_dir=tmp_path),
                           workdir=tmp_path)
    console = Console(width=200, record=True)
    _print_summary(runtime, console)
    text = console.export_text()
    assert "link local-dc-a-to-dc-b: loopback, not shaped" in text
    assert "{" not in text.split("endpoint")[0]  # no raw JSON before the endpoint line
    assert "threshold t = 256 tokens" in text
    shaped = describe_link({"name": "l", "gbps": 1.0, "shaped": True})
    assert shaped.startswith("link l: 1 Gbit/s, shaped with tc tbf")
