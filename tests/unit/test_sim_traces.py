"""Trace files: Mooncake JSONL and prfaas CSV/JSONL in, chains out; bad lines named by file,
line and field."""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest
from prfaas.planner.routing.prefix import Chains
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.traces import MOONCAKE_BLOCK_TOKENS, TraceError, load_trace

MOONCAKE = (
    '{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]}\n'
    '{"timestamp": 1500, "input_length": 700, "output_length": 3, "hash_ids": [0, 3]}\n'
    "\n"
    '{"timestamp": 1500, "input_length": 512, "output_length": 1, "hash_ids": [0]}\n'
)


def test_prfaas_csv_and_jsonl(tmp_path: Path) -> None:
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("time,input_tokens,output_tokens,prefix_id\n1.0,50,3,7\n2.0,100,5,\n")
    s = load_trace(csv_file)
    assert list(s.arrival_s) == [1.0, 2.0]
    assert list(s.input_tokens) == [50, 100]
    assert list(s.prefix_id) == [7, -1]
    # prefix_id → chains at 16 tokens: 50 // 16 = 3 full blocks of id 7, none for -1.
    assert s.block_chains.chain(0) == [(7 << 32) | i for i in range(3)]
    assert s.block_chains.chain(1) == []
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"time": 0.5, "input_tokens": 9, "output_tokens": 2}\n')
    assert list(load_trace(jl).input_tokens) == [9]


def test_mooncake_jsonl_gives_chains_at_512_tokens(tmp_path: Path) -> None:
    path = tmp_path / "conv.jsonl"
    path.write_text(MOONCAKE)
    s = load_trace(path)
    assert list(s.arrival_s) == [0.0, 1.5, 1.5]
    assert list(s.input_tokens) == [1100, 700, 512]
    assert list(s.output_tokens) == [5, 3, 1]
    chains = s.block_chains
    assert chains.block_tokens == MOONCAKE_BLOCK_TOKENS
    # Full blocks only: 1100 tokens hold 2 of 512, 700 hold 1, 512 hold 1.
    assert [chains.chain(r) for r in range(3)] == [[0, 1], [0], [0]]
    xz = tmp_path / "conv.jsonl.xz"
    xz.write_bytes(lzma.compress(MOONCAKE.encode()))
    assert load_trace(xz).block_chains.chain(0) == [0, 1]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", r":2: not JSON"),
        (
            '{"timestamp": 9, "output_length": 1, "hash_ids": []}',
            r":2: field 'input_length': missing",
        ),
        (
            '{"timestamp": 9, "input_length": -4, "output_length": 1, "hash_ids": []}',
            r":2: field 'input_length'.*below 1",
        ),
        (
            '{"timestamp": 9, "input_length": 4.5, "output_length": 1, "hash_ids": []}',
            r":2: field 'input_length'.*whole number",
        ),
        (
            '{"timestamp": 9, "input_length": 4, "output_length": "x", "hash_ids": []}',
            r":2: field 'output_length'.*not a number",
        ),
        (
            '{"timestamp": -1, "input_length": 4, "output_length": 1, "hash_ids": []}',
            r":2: field 'timestamp'",
        ),
        (
            '{"timestamp": 9, "input_length": 600, "output_length": 1, "hash_ids": [0, 1, 2]}',
            r":2: field 'hash_ids': 3 blocks for 600 tokens \(at most 2",
        ),
        (
            '{"timestamp": 9, "input_length": 6, "output_length": 1, "hash_ids": "abc"}',
            r":2: field 'hash_ids'",
        ),
        ('{"time": 9, "input_tokens": 6, "output_tokens": 1}', r":2: mixes Mooncake fields"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [0]}\n' + line + "\n"
    )
    with pytest.raises(TraceError, match=str(path) + match):
        load_trace(path)


def test_time_running_backwards_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("time,input_tokens,output_tokens\n2.0,100,5\n1.0,50,3\n")
    with pytest.raises(TraceError, match=rf"{path}:3: field 'time'.*runs backwards.*sort"):
        load_trace(path)
    bad = tmp_path / "bad.csv"
    bad.write_text("time,input_tokens\n1.0,5\n")
    with pytest.raises(TraceError, match=r":2: field 'output_tokens': missing"):
        load_trace(bad)


def test_empty_and_missing_traces(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TraceError, match="no requests found"):
        load_trace(empty)
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.csv")


def test_chains_take_and_prefix_ids() -> None:
    c = Chains.from_lists([[1, 2, 3], [], [1, 4]], 16)
    assert list(c.lengths()) == [3, 0, 2]
    sub = c.take(np.array([2, 0]))
    assert [sub.chain(0), sub.chain(1)] == [[1, 4], [1, 2, 3]]
    assert c.take(slice(1, 2)).chain(0) == []
    p = Chains.from_prefix_ids(np.array([5, -1, 5]), np.array([40, 100, 20]), 16)
    assert [p.chain(r) for r in range(3)] == [[5 << 32, (5 << 32) | 1], [], [5 << 32]]


def test_stream_head_keeps_chains() -> None:
    chains = Chains.from_lists([[0, 1], [0, 2], [0]], 512)
    s = RequestStream(
        np.array([0.0, 1.0, 2.0]),
        np.array([1024, 1024, 100]),
        np.array([1, 1, 1]),
        np.full(3, -1),
        chains,
    )
    assert s.head(2).block_chains.chain(1) == [0, 2]
    assert s.scaled(2.0).block_chains is chains
