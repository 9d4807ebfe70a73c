"""A latency model scaled by correction factors learned while running (``operator.autoscaling.
calibration``): ``observed / predicted`` per cluster, role and phase, as Dynamo's SLA planner
applies its prefill/decode correction factors to the profiled interpolators."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prfaas.planner.latency.model import (
    DecodePhase,
    InstanceLatency,
    LatencySource,
    PrefillPhase,
)

__all__ = ["CorrectedDecode", "CorrectedPrefill", "corrected"]

Phase = TypeVar("Phase", PrefillPhase, DecodePhase)


@dataclass(frozen=True, slots=True)
class _Corrected(Generic[Phase]):
    """``factor ×`` a phase (its source is kept: the correction is reported apart)."""

    base: Phase
    factor: float

    @property
    def source(self) -> LatencySource:
        return self.base.source

    @property
    def note(self) -> str:
        return f"{self.base.note} × {self.factor:.3g} (calibrated on the engines' own latency)"


class CorrectedPrefill(_Corrected[PrefillPhase]):
    """``factor ×`` a prefill phase."""

    __slots__ = ()

    def __call__(self, lengths: Sequence[float]) -> float:
        return self.factor * self.base(lengths)


class CorrectedDecode(_Corrected[DecodePhase]):
    """``factor ×`` a decode phase."""

    __slots__ = ()

    def __call__(self, batch: int, total_context: float) -> float:
        return self.factor * self.base(batch, total_context)


def corrected(lat: InstanceLatency, prefill: float = 1.0, decode: float = 1.0) -> InstanceLatency:
    """``lat`` with its phases scaled (unchanged where a factor is 1)."""
    if prefill == 1.0 and decode == 1.0:
        return lat
    return InstanceLatency(
        lat.prefill if prefill == 1.0 else CorrectedPrefill(lat.prefill, prefill),
        lat.decode if decode == 1.0 else CorrectedDecode(lat.decode, decode),
        lat.tensor_parallel,
        lat.pipeline_parallel,
    )
