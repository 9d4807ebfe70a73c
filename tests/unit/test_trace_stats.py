"""``prfaas trace stats`` on the committed Mooncake subset agrees with an independent computation
written here: raw JSON lines, prefixes as tuples of block ids (not the chain-id shortcut),
percentiles by hand."""

from __future__ import annotations

import json
import lzma
import math
from pathlib import Path

import numpy as np
import pytest
from prfaas.operator.cli.app import app
from prfaas.planner.routing.prefix import Chains
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.trace_workload import replayed_uncached, shared_cache_uncached
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
SUBSET = ROOT / "bench" / "data" / "mooncake-conversation-30min.jsonl.xz"
THRESHOLDS = (2048, 19_400)


def _records() -> list[dict[str, object]]:
    text = lzma.decompress(SUBSET.read_bytes()).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q / 100 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@pytest.fixture(scope="module")
def independent() -> dict[str, object]:
    records = _records()
    seen: set[tuple[int, ...]] = set()
    uncached: list[int] = []
    inputs: list[int] = []
    for rec in records:
        n = int(rec["input_length"])  # type: ignore[call-overload]
        ids = list(rec["hash_ids"])[: n // 512]  # type: ignore[call-overload]  # full blocks
        k = 0
        while k < len(ids) and tuple(ids[: k + 1]) in seen:
            k += 1
        uncached.append(max(1, n - min(n, 512 * k)))
        inputs.append(n)
        for i in range(len(ids)):
            seen.add(tuple(ids[: i + 1]))
    times = [int(rec["timestamp"]) / 1000 for rec in records]  # type: ignore[call-overload]
    return {"uncached": uncached, "inputs": inputs, "times": times}


def test_trace_stats_json_matches_an_independent_computation(
    independent: dict[str, object],
) -> None:
    args = ["trace", "stats", str(SUBSET), "-o", "json"]
    for t in THRESHOLDS:
        args += ["--threshold", str(t)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    unc: list[int] = independent["uncached"]  # type: ignore[assignment]
    ins: list[int] = independent["inputs"]  # type: ignore[assignment]
    times: list[float] = independent["times"]  # type: ignore[assignment]
    assert got["requests"] == len(ins) == 5719
    assert got["durationSeconds"] == pytest.approx(times[-1] - times[0])
    per_minute: dict[int, int] = {}
    for t in times:
        per_minute[int((t - times[0]) // 60)] = per_minute.get(int((t - times[0]) // 60), 0) + 1
    assert got["arrivalsPerMinute"]["peak"] == max(per_minute.values())
    assert got["prefixHitRatio"] == pytest.approx(1 - sum(unc) / sum(ins), rel=1e-12)
    for key, values in (("inputTokens", ins), ("uncachedTokens", unc)):
        assert got[key]["mean"] == pytest.approx(sum(values) / len(values))
        for q in (50, 90, 99):
            assert got[key][f"p{q}"] == pytest.approx(_percentile([float(v) for v in values], q))
    rows = {row["tokens"]: row for row in got["thresholds"]}
    assert sorted(rows) == sorted(THRESHOLDS)
    for t in THRESHOLDS:
        above = [u for u in unc if u > t]
        assert rows[t]["requestShare"] == pytest.approx(len(above) / len(unc))
        assert rows[t]["uncachedTokenShare"] == pytest.approx(sum(above) / sum(unc))
    # The conversation trace reuses a lot but not uniformly: every request shares block 0.
    assert 0.2 < got["prefixHitRatio"] < 0.6
    assert "unbounded" in got["cacheModel"]


def test_trace_stats_table_says_which_cache_model() -> None:
    result = CliRunner().invoke(app, ["trace", "stats", str(SUBSET)])
    assert result.exit_code == 0, result.output
    assert "5719 requests" in result.stdout
    assert "unbounded prefix cache shared by all instances" in result.stdout


def test_bad_trace_exits_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [0]}\n{')
    result = CliRunner().invoke(app, ["trace", "stats", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:2: not JSON" in result.output


def _stream(chains: list[list[int]], lengths: list[int]) -> RequestStream:
    n = len(chains)
    return RequestStream(
        np.arange(n, dtype=np.float64),
        np.asarray(lengths, dtype=np.int64),
        np.ones(n, dtype=np.int64),
        np.full(n, -1, dtype=np.int64),
        Chains.from_lists(chains, 512),
    )


def test_a_shared_chain_gives_exactly_the_shared_blocks() -> None:
    s = _stream([[0, 1, 2], [0, 1, 5], [7]], [1600, 2000, 600])
    # Second request: blocks 0 and 1 (1024 tokens) are held; the third shares nothing.
    assert list(shared_cache_uncached(s)) == [1600, 2000 - 1024, 600]


def test_a_fully_cached_prompt_still_computes_one_token() -> None:
    s = _stream([[0, 1], [0, 1]], [1024, 1024])
    assert list(shared_cache_uncached(s)) == [1024, 1]


def test_replay_through_small_caches_evicts_lru() -> None:
    # One instance of 3 blocks: A=[0,1], B=[2,3] evicts A's tail block 1 (vLLM's order);
    # A again finds its head block 0.
    s = _stream([[0, 1], [2, 3], [0, 1]], [1024, 1024, 1024])
    assert list(replayed_uncached(s, cache_blocks=3, instances=1)) == [1024, 1024, 512]
    assert list(replayed_uncached(s, cache_blocks=2, instances=1)) == [1024, 1024, 1024]
    assert list(replayed_uncached(s, cache_blocks=4, instances=1)) == [1024, 1024, 1]
    # Two instances: B goes to the other (rotation), A finds its blocks on the first.
    assert list(replayed_uncached(s, cache_blocks=2, instances=2)) == [1024, 1024, 1]


def test_emitted_workload_plans_like_the_trace(tmp_path: Path) -> None:
    """``--emit-workload`` pasted into the case study plans (nearly) as ``plan --trace`` does:
    the histograms keep the trace's uncached-length distribution."""
    import yaml
    from prfaas.operator.api import models as api
    from pydantic import ValidationError

    out = CliRunner().invoke(app, ["trace", "stats", str(SUBSET), "--emit-workload"])
    assert out.exit_code == 0, out.output
    block = yaml.safe_load(out.stdout)["workload"]
    sample = ROOT / "crds" / "samples" / "case-study.yaml"
    docs = list(yaml.safe_load_all(sample.read_text()))
    for doc in docs:
        if doc and doc.get("kind") == "ServingPlan":
            doc["spec"]["workload"] = {**block, "arrival": doc["spec"]["workload"].get("arrival")}
            if doc["spec"]["workload"]["arrival"] is None:
                del doc["spec"]["workload"]["arrival"]
    pasted = tmp_path / "case-study-from-trace.yaml"
    pasted.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    runner = CliRunner()
    a = runner.invoke(app, ["plan", str(pasted), "-o", "json"])
    b = runner.invoke(app, ["plan", str(sample), "--trace", str(SUBSET), "-o", "json"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    pa, pb = json.loads(a.stdout), json.loads(b.stdout)
    assert pa["offloadFraction"] == pytest.approx(pb["offloadFraction"], abs=0.03)
    assert pa["thresholdTokens"] == pytest.approx(pb["thresholdTokens"], rel=0.1)
    assert any("measured" in n for n in pa["notes"])
    with pytest.raises(ValidationError, match="not both"):
        api.Workload.model_validate({**block, "prefixCacheHitRate": 0.3})
