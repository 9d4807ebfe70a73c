"""Trace files → ``RequestStream``, in the formats people have.

* **Mooncake JSONL** (``kvcache-ai/Mooncake``, ``FAST25-release/traces/*.jsonl``): one object
  per line with ``timestamp`` (ms), ``input_length``, ``output_length`` and ``hash_ids`` — the
  ids of the prompt's 512-token blocks, prefix-chained (equal ids, equal prefixes; the last id
  may cover a partial block). The ids of the *full* blocks become the stream's chains at 512
  tokens per block: like the router (and vLLM), nothing caches a partial block, so a cached
  length is a whole number of trace blocks (rounded down: a repeated prompt's partial tail,
  under 512 tokens, counts as uncached).
* **prfaas CSV / JSONL**: ``time`` (s), ``input_tokens``, ``output_tokens`` and optionally
  ``prefix_id`` (CSV with a header, or one JSON object per line). Chains come from the ids.

A ``.gz`` or ``.xz`` suffix is decompressed first. Every line is checked: not JSON, a missing
field, a negative or non-integer length, a time before the previous line's, or a chain longer
than the prompt's block count (rounded up) is refused with the file, the line and the field;
an empty trace is refused. Nothing is returned from a half-read file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import lzma
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prfaas.planner.routing.prefix import Chains
from prfaas.planner.routing.threshold import DEFAULTS
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.errors import SimulatorError

__all__ = ["MOONCAKE_BLOCK_TOKENS", "TraceError", "load_trace"]

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` block in Mooncake's traces (their README)."""


class TraceError(SimulatorError):
    """A trace file that cannot be read as a whole; the message names file, line and field."""


def _text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        elif path.suffix == ".xz":
            raw = lzma.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot decompress or decode as UTF-8 ({exc})") from exc


def _kind(path: Path) -> str:
    stem = path.name
    for suffix in (".gz", ".xz"):
        stem = stem.removesuffix(suffix)
    return "csv" if stem.endswith(".csv") else "jsonl"


class _Reader:
    """Column accumulator with located errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: list[float] = []
        self.ins: list[int] = []
        self.outs: list[int] = []
        self.pids: list[int] = []
        self.chains: list[list[int]] = []
        self.mooncake: bool | None = None

    def fail(self, line: int, field: str, why: str) -> TraceError:
        return TraceError(f"{self.path}:{line}: field {field!r}: {why}")

    def count(self, line: int, row: Mapping[str, Any], field: str, *, minimum: int) -> int:
        if field not in row or row[field] in (None, ""):
            raise self.fail(line, field, "missing")
        value = row[field]
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise self.fail(line, field, f"{row[field]!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise self.fail(line, field, f"{row[field]!r} is not a whole number of tokens")
        if value < minimum:
            raise self.fail(line, field, f"{row[field]!r} is below {minimum}")
        return int(value)

    def time(self, line: int, row: Mapping[str, Any], field: str, scale: float) -> None:
        if field not in row or row[field] in (None, ""):
            raise self.fail(line, field, "missing")
        try:
            t = float(row[field]) * scale
        except (TypeError, ValueError):
            raise self.fail(line, field, f"{row[field]!r} is not a number") from None
        if not math.isfinite(t) or t < 0:
            raise self.fail(line, field, f"{row[field]!r} must be a finite time >= 0")
        if self.times and t < self.times[-1]:
            raise self.fail(
                line,
                field,
                f"{row[field]!r} runs backwards in time (the line before is later); "
                "sort the trace by time",
            )
        self.times.append(t)

    def add(self, line: int, row: Any) -> None:
        if not isinstance(row, Mapping):
            raise TraceError(f"{self.path}:{line}: expected a JSON object, got {row!r:.60}")
        mooncake = "hash_ids" in row or "timestamp" in row
        if self.mooncake is None:
            self.mooncake = mooncake
        elif mooncake != self.mooncake:
            raise TraceError(
                f"{self.path}:{line}: mixes Mooncake fields (timestamp, hash_ids) with "
                "prfaas fields (time, input_tokens); use one format per file"
            )
        if mooncake:
            self.time(line, row, "timestamp", 1e-3)
            n = self.count(line, row, "input_length", minimum=1)
            self.ins.append(n)
            self.outs.append(self.count(line, row, "output_length", minimum=1))
            ids = row.get("hash_ids")
            if not isinstance(ids, list):
                raise self.fail(line, "hash_ids", "missing or not a list of block ids")
            if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in ids):
                raise self.fail(line, "hash_ids", "block ids must be integers >= 0")
            most = -(-n // MOONCAKE_BLOCK_TOKENS)
            if len(ids) > most:
                raise self.fail(
                    line,
                    "hash_ids",
                    f"{len(ids)} blocks for {n} tokens (at most {most} of "
                    f"{MOONCAKE_BLOCK_TOKENS} tokens)",
                )
            self.chains.append(ids[: n // MOONCAKE_BLOCK_TOKENS])  # full blocks only
            self.pids.append(-1)
        else:
            self.time(line, row, "time", 1.0)
            self.ins.append(self.count(line, row, "input_tokens", minimum=1))
            self.outs.append(self.count(line, row, "output_tokens", minimum=1))
            pid = row.get("prefix_id")
            if pid in (None, ""):
                self.pids.append(-1)
            else:
                self.pids.append(self.count(line, row, "prefix_id", minimum=-1))

    def stream(self) -> RequestStream:
        if not self.times:
            raise TraceError(f"{self.path}: no requests found (an empty trace)")
        t = np.asarray(self.times, dtype=np.float64)
        ins = np.asarray(self.ins, dtype=np.int64)
        pids = np.asarray(self.pids, dtype=np.int64)
        if self.mooncake:
            chains = Chains.from_lists(self.chains, MOONCAKE_BLOCK_TOKENS)
        else:
            chains = Chains.from_prefix_ids(pids, ins, DEFAULTS.block_size)
        return RequestStream(t, ins, np.asarray(self.outs, dtype=np.int64), pids, chains)


def _json_rows(text: str, reader: _Reader) -> Iterator[tuple[int, Any]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TraceError(
                f"{reader.path}:{line}: not JSON ({exc.msg} at column {exc.colno}); "
                "one object per line"
            ) from exc


def load_trace(path: str | Path) -> RequestStream:
    """Read a Mooncake JSONL, prfaas CSV or prfaas JSONL trace (see the module docstring)."""
    p = Path(path)
    text = _text(p)
    reader = _Reader(p)
    if _kind(p) == "csv":
        rows = csv.DictReader(io.StringIO(text))
        for i, row in enumerate(rows, start=2):  # line 1 is the header
            reader.add(i, row)
    else:
        for line, row in _json_rows(text, reader):
            reader.add(line, row)
    return reader.stream()
