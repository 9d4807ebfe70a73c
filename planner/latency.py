"""Latency models: how long one instance takes to prefill and to run a decode step.

``LatencyModel`` is the interface the throughput model, the parallelism search and the
simulator all use. ``DistServeForm`` is DistServe's calibrated form (papers.md §2.4):
prefill ``a + b·Σl + c·Σl²`` seconds for a batch of prompt lengths, decode step
``a + b·Σctx + c·batch`` seconds. Fits, roofline and published profiles all produce one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["DistServeForm", "LatencyModel", "LatencySource"]

LatencySource = Literal["fit", "roofline", "published"]


class LatencyModel(Protocol):
    """Step times of one engine instance (one TP×PP group), in seconds."""

    source: LatencySource

    def prefill_seconds(self, lengths: Sequence[float]) -> float:
        """Time to prefill one batch holding prompts of these (uncached) lengths."""
        ...

    def decode_step_seconds(self, batch: int, total_context: float) -> float:
        """Time of one decode step for ``batch`` sequences with ``total_context`` cached tokens."""
        ...


@dataclass(frozen=True, slots=True)
class DistServeForm:
    """DistServe's latency form with fitted coefficients (seconds, tokens)."""

    prefill_a: float
    prefill_b: float
    prefill_c: float
    decode_a: float
    decode_b: float
    decode_c: float
    source: LatencySource = "fit"

    def prefill_seconds(self, lengths: Sequence[float]) -> float:
        total = sum(lengths)
        squares = sum(x * x for x in lengths)
        return self.prefill_a + self.prefill_b * total + self.prefill_c * squares

    def decode_step_seconds(self, batch: int, total_context: float) -> float:
        return self.decode_a + self.decode_b * total_context + self.decode_c * batch
