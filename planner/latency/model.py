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

__all__ = [
    "DecodePhase",
    "DistServeForm",
    "InstanceLatency",
    "LatencyModel",
    "LatencySource",
    "PrefillPhase",
]

LatencySource = Literal["measured", "published", "fit", "roofline"]
"""Where a latency comes from, best evidence first (DESIGN §5.6)."""


class LatencyModel(Protocol):
    """Step times of one engine instance (one TP×PP group), in seconds."""

    @property
    def source(self) -> LatencySource:
        """Where the numbers come from: ``measured``, ``published``, ``fit`` or ``roofline``."""
        ...

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


class PrefillPhase(Protocol):
    """Prefill time of one batch on one instance, with where the number comes from."""

    @property
    def source(self) -> LatencySource: ...

    @property
    def note(self) -> str: ...

    def __call__(self, lengths: Sequence[float]) -> float: ...


class DecodePhase(Protocol):
    """Decode step time on one instance, with where the number comes from."""

    @property
    def source(self) -> LatencySource: ...

    @property
    def note(self) -> str: ...

    def __call__(self, batch: int, total_context: float) -> float: ...


@dataclass(frozen=True, slots=True)
class InstanceLatency:
    """A ``LatencyModel`` for one (model, GPU, TP, PP) made of a prefill and a decode phase that
    may come from different places (e.g. a published prefill profile and a roofline decode).

    With PP, one request still crosses every stage (``prefill_seconds`` is the whole latency),
    but stages work on different requests at once, so an instance completes prefills every
    ``prefill_stage_seconds`` = latency / PP (equal stages, no bubbles once the pipe is full)
    and keeps PP decode micro-batches in flight.
    """

    prefill: PrefillPhase
    decode: DecodePhase
    tensor_parallel: int = 1
    pipeline_parallel: int = 1

    @property
    def source(self) -> LatencySource:
        return self.prefill.source

    @property
    def prefill_source(self) -> LatencySource:
        return self.prefill.source

    @property
    def decode_source(self) -> LatencySource:
        return self.decode.source

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    def prefill_seconds(self, lengths: Sequence[float]) -> float:
        return self.prefill(lengths)

    def prefill_stage_seconds(self, lengths: Sequence[float]) -> float:
        """Time between completions when the pipeline is full (the throughput-limiting stage)."""
        return self.prefill(lengths) / self.pipeline_parallel

    def decode_step_seconds(self, batch: int, total_context: float) -> float:
        return self.decode(batch, total_context)
