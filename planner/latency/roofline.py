"""Roofline latency: step times from FLOPs, bytes and the GPU's data sheet, for hardware without
a profile, and the *transfer* rule that moves a measured profile to another GPU or TP/PP.

Prefill of ``l`` tokens on a TP×PP instance::

    T = max(FLOPs(l) / (TP · peak · mfu), weights / (TP · HBM · eff))      # stages run in turn
        + TP all-reduce: layers · 2 · 2(TP-1)/TP · l · hidden · dtype / interconnect
        + PP hand-offs:  (PP-1) · l · hidden · dtype / interconnect
        + PP · step overhead

Decode step (``batch`` tokens, ``ctx`` cached tokens): the same with ``decode_flops`` and
``decode_bytes`` (touched weights + KV + fixed state) — memory-bound at small batch.

Transfer: a measured time ``T_A`` on configuration A is ``R_A`` (its roofline) plus a residue
(launches, expert all-to-all, kernel inefficiency) that the roofline does not see. The planner
keeps the residue and swaps the roofline: ``T_B = max(R_B, T_A + R_B - R_A)``. For compute-bound
prefill this moves only the FLOP-bound part by the peak-FLOPs ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prfaas.planner.latency.catalog import GpuSpec, ModelArch
from prfaas.planner.latency.model import (
    DecodePhase,
    InstanceLatency,
    LatencySource,
    PrefillPhase,
)

__all__ = [
    "RooflineDecode",
    "RooflinePrefill",
    "RooflineSettings",
    "ScaledDecode",
    "TransferredDecode",
    "TransferredPrefill",
    "roofline_latency",
]


@dataclass(frozen=True, slots=True)
class RooflineSettings:
    """Efficiencies of the roofline (assumptions, reported in every plan's notes)."""

    prefill_mfu: float = 0.5
    """Fraction of peak FLOP/s large prefill GEMMs reach; 0.4-0.6 is typical of tuned engines."""
    decode_mfu: float = 0.5
    bandwidth_efficiency: float = 0.8
    """Fraction of the data-sheet HBM bandwidth that streaming kernels reach."""


def _comm_seconds(model: ModelArch, gpu: GpuSpec, tp: int, pp: int, tokens: float) -> float:
    activation = tokens * model.hidden * model.dtype_bytes
    link = gpu.interconnect_gbps * 1e9
    all_reduce = model.layers * 2 * 2 * (tp - 1) / tp * activation / link if tp > 1 else 0.0
    hops = (pp - 1) * activation / link
    return all_reduce + hops


@dataclass(frozen=True, slots=True)
class _Roofline:
    """One TP×PP instance of ``model`` on ``gpu``, and the roofline step time shared by both
    phases (the module docstring's formula)."""

    model: ModelArch
    gpu: GpuSpec
    tp: int = 1
    pp: int = 1
    settings: RooflineSettings = field(default_factory=RooflineSettings)
    source: LatencySource = "roofline"

    def _step(self, flops: float, memory_bytes: float, mfu: float, tokens: float) -> float:
        g, s = self.gpu, self.settings
        compute = flops / (self.tp * g.bf16_tflops * 1e12 * mfu)
        memory = memory_bytes / (self.tp * g.hbm_gbps * 1e9 * s.bandwidth_efficiency)
        comm = _comm_seconds(self.model, g, self.tp, self.pp, tokens)
        return max(compute, memory) + comm + self.pp * g.step_overhead_s


@dataclass(frozen=True, slots=True)
class RooflinePrefill(_Roofline):
    @property
    def note(self) -> str:
        return (
            f"roofline prefill on {self.gpu.name} TP{self.tp}×PP{self.pp} "
            f"({self.gpu.bf16_tflops:g} TFLOP/s × MFU {self.settings.prefill_mfu:g})"
        )

    def __call__(self, lengths: Sequence[float]) -> float:
        m = self.model
        flops = sum(m.prefill_flops(x) for x in lengths)
        return self._step(flops, m.weight_bytes, self.settings.prefill_mfu, sum(lengths))


@dataclass(frozen=True, slots=True)
class RooflineDecode(_Roofline):
    @property
    def note(self) -> str:
        return (
            f"roofline decode on {self.gpu.name} TP{self.tp}×PP{self.pp} "
            f"({self.gpu.hbm_gbps:g} GB/s × {self.settings.bandwidth_efficiency:g})"
        )

    def __call__(self, batch: int, total_context: float) -> float:
        m = self.model
        return self._step(
            m.decode_flops(batch, total_context),
            m.decode_bytes(batch, total_context),
            self.settings.decode_mfu,
            batch,
        )


def _transfer(measured: float, base_roofline: float, target_roofline: float) -> float:
    """``T_B = max(R_B, T_A + R_B - R_A)``: keep the measured residue, swap the roofline."""
    return max(target_roofline, measured + target_roofline - base_roofline)


def _moved_note(
    phase: str,
    base: PrefillPhase | DecodePhase,
    b: _Roofline,
    t: _Roofline,
) -> str:
    return (
        f"{base.source} {phase} of {b.gpu.name} TP{b.tp}×PP{b.pp} moved to "
        f"{t.gpu.name} TP{t.tp}×PP{t.pp}"
    )


@dataclass(frozen=True, slots=True)
class TransferredPrefill:
    """A measured prefill phase moved to another GPU/TP/PP by the roofline difference."""

    base: PrefillPhase
    base_roofline: RooflinePrefill
    target: RooflinePrefill
    source: LatencySource = "roofline"

    @property
    def note(self) -> str:
        return _moved_note("prefill", self.base, self.base_roofline, self.target) + (
            f": T_B = T_A + R_B - R_A (roofline at MFU {self.target.settings.prefill_mfu:g})"
        )

    def __call__(self, lengths: Sequence[float]) -> float:
        return _transfer(self.base(lengths), self.base_roofline(lengths), self.target(lengths))


@dataclass(frozen=True, slots=True)
class TransferredDecode:
    """A measured decode phase moved to another GPU/TP/PP by the roofline difference."""

    base: DecodePhase
    base_roofline: RooflineDecode
    target: RooflineDecode
    source: LatencySource = "roofline"

    @property
    def note(self) -> str:
        return (
            _moved_note("decode", self.base, self.base_roofline, self.target)
            + " by the roofline difference"
        )

    def __call__(self, batch: int, total_context: float) -> float:
        return _transfer(
            self.base(batch, total_context),
            self.base_roofline(batch, total_context),
            self.target(batch, total_context),
        )


@dataclass(frozen=True, slots=True)
class ScaledDecode:
    """The roofline decode curve scaled to pass through published points (too few to fit the
    three DistServe coefficients): ``scale`` = mean of measured / roofline at those points."""

    roofline: RooflineDecode
    scale: float
    origin: str = ""
    source: LatencySource = "published"

    @property
    def note(self) -> str:
        return f"roofline decode × {self.scale:.3g} calibrated on published points ({self.origin})"

    def __call__(self, batch: int, total_context: float) -> float:
        return self.scale * self.roofline(batch, total_context)


def roofline_latency(
    model: ModelArch,
    gpu: GpuSpec,
    tp: int = 1,
    pp: int = 1,
    settings: RooflineSettings | None = None,
) -> InstanceLatency:
    """A pure-roofline ``LatencyModel`` for (model, GPU, TP, PP)."""
    s = settings or RooflineSettings()
    return InstanceLatency(
        RooflinePrefill(model, gpu, tp, pp, s), RooflineDecode(model, gpu, tp, pp, s), tp, pp
    )
