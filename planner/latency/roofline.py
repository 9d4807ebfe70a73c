"""Roofline latency: step times from FLOPs, bytes and the GPU's data sheet, for hardware without
a profile, and the *transfer* that moves a measured profile to another GPU or TP/PP.

Roofline estimate (the fallback; MFU and HBM efficiency are assumptions in every plan's notes).
Prefill of ``l`` tokens on a TP×PP instance::

    T = max(FLOPs(l) / (TP · peak · mfu), weights / (TP · HBM · eff))      # stages run in turn
        + collective(l) + PP · host

    collective(l) = layers · 2 · (α + 2(TP-1)/TP · l·hidden·dtype / bw)   # TP all-reduce
                  + (PP-1) · (α + l·hidden·dtype / bw)                   # PP hand-offs

Decode step (``batch`` tokens, ``ctx`` cached tokens): the same with ``decode_flops`` and
``decode_bytes`` (touched weights + KV + fixed state) — memory-bound at small batch.

Transfer (``TransferredPrefill``/``TransferredDecode``): a time ``T_A`` measured on
configuration A (GPU, TP, PP) is split into what each part of it waits on, and each part moves
by the ratio of B's to A's peak figure for that resource::

    T_A = H + N_A + K_A                     host overhead H = PP_A · step overhead (capped at T_A),
                                            TP/PP collective N_A (capped at the rest), kernels K_A
    K_A = E_A + U_A                         E_A = min(K_A, R_A): the part the roofline explains,
                                            U_A: the rest (small kernels, waits, inefficiency)
    R_X = Σ_ops max(F_op / (TP_X · P_X · ε_c), B_op / (TP_X · W_X · ε_m))
                                            per op class (dense GEMMs + LM head; attention + KV),
                                            at the shares of the data-sheet peaks the plan assumes
                                            (ε_c: prefill/decode MFU, ε_m: HBM efficiency)
    T_B = H · PP_B/PP_A + N_B · (N_A' / N_A) + E_A · R_B / R_A + U_A · W_A / W_B

``N_A'`` is the collective share actually found in ``T_A``. So: host time stays; the collective
moves with the interconnect (α and bandwidth); each explained op moves by the FLOP/s ratio while
it is compute-bound and by the HBM ratio while it is memory-bound (on either side, so an op that
crosses the ridge point is priced right); the unexplained rest is taken as memory/latency-bound
and moves by the HBM ratio of one GPU (each GPU of a TP group runs the same kernels, so it does
not shrink with TP). Nothing is clamped to an MFU-discounted roofline: a measurement that
beats the roofline is all explained (``E_A = K_A < R_A``) and scales by ``R_B / R_A``.

Why ``ε_c`` is the plan's MFU (0.5) and not a GEMM's achievable share (0.77 on H200): it only
decides how much of a *slow* measurement is compute. The H200 layers of ``shared/profiles`` run
at MFU 0.6-0.67 on long prompts, above 0.5, so they move by the FLOP/s ratio alone (H100/H200
compute-bound prefill = 1.00, parts with equal peaks); PrfaaS Table 5's 1T hybrid runs at ~0.24,
and with ``ε_c`` = 0.5 the H20/H200 prefill ratio comes out 2.3× at 10K and 2.8× at 27K tokens,
where Table 6 implies 2.3-2.7× (with 0.77 it would be 1.9-2.2×: too much of the time called
memory-bound).

Consequences (``tests/unit/test_planner_transfer.py``): equal specs give the measurement back;
more FLOP/s or more HBM bandwidth never predicts slower; compute-bound prefill moves by at most
the FLOP/s ratio; large-batch decode moves by about the HBM ratio.
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
    "StepCost",
    "TransferredDecode",
    "TransferredPrefill",
    "collective_seconds",
    "roofline_latency",
    "transfer",
]


@dataclass(frozen=True, slots=True)
class RooflineSettings:
    """Efficiencies of the roofline (assumptions, reported in every plan's notes)."""

    prefill_mfu: float = 0.5
    """Fraction of peak FLOP/s large prefill GEMMs reach; 0.4-0.6 is typical of tuned engines."""
    decode_mfu: float = 0.5
    bandwidth_efficiency: float = 0.8
    """Fraction of the data-sheet HBM bandwidth that streaming kernels reach."""


def collective_seconds(model: ModelArch, gpu: GpuSpec, tp: int, pp: int, tokens: float) -> float:
    """TP all-reduce (twice per layer, ring: ``2(TP-1)/TP`` of the activation each, plus the
    per-call latency ``α``) and PP hand-offs for a step over ``tokens`` tokens."""
    activation = tokens * model.hidden * model.dtype_bytes
    link = gpu.interconnect_gbps * 1e9
    alpha = gpu.collective_latency_s
    all_reduce = (
        model.layers * 2 * (alpha + 2 * (tp - 1) / tp * activation / link) if tp > 1 else 0.0
    )
    hops = (pp - 1) * (alpha + activation / link)
    return all_reduce + hops


@dataclass(frozen=True, slots=True)
class StepCost:
    """What one step on one configuration waits on, seconds (the module docstring's split)."""

    kernels: float
    """``R``: per-op roofline of the GPU kernels at the assumed shares of peak."""
    collective: float
    host: float
    hbm_bytes_per_s: float
    """``W`` of one GPU: what the unexplained rest of a step moves with. Not ``W · TP``: every
    GPU of a TP group runs the same kernel sequence, so latency-bound kernels and waits do not
    shrink with TP."""


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
        comm = collective_seconds(self.model, g, self.tp, self.pp, tokens)
        return max(compute, memory) + comm + self.pp * g.step_overhead_s

    def _cost(self, ops: Sequence[tuple[float, float]], tokens: float, mfu: float) -> StepCost:
        g, s = self.gpu, self.settings
        flops_per_s = self.tp * g.bf16_tflops * 1e12 * mfu
        bytes_per_s = self.tp * g.hbm_gbps * 1e9 * s.bandwidth_efficiency
        kernels = sum(max(f / flops_per_s, b / bytes_per_s) for f, b in ops)
        return StepCost(
            kernels,
            collective_seconds(self.model, g, self.tp, self.pp, tokens),
            self.pp * g.step_overhead_s,
            g.hbm_gbps * 1e9,
        )


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

    def cost(self, lengths: Sequence[float]) -> StepCost:
        """Op classes: dense GEMMs + last-token LM head (weights), attention (KV written)."""
        m = self.model
        dense = sum(m.prefill_flops(x) - m.attention_prefill_flops(x) for x in lengths)
        attention = sum(m.attention_prefill_flops(x) for x in lengths)
        kv = sum(m.kv_bytes(x) for x in lengths)
        return self._cost(
            ((dense, m.weight_bytes), (attention, kv)), sum(lengths), self.settings.prefill_mfu
        )


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

    def cost(self, batch: int, total_context: float) -> StepCost:
        """Op classes: dense GEMMs + LM head (touched weights), attention (KV and state)."""
        m = self.model
        dense = m.decode_flops(batch, total_context) - m.attention_decode_flops(
            batch, total_context
        )
        return self._cost(
            (
                (dense, m.decode_weight_bytes(batch)),
                (
                    m.attention_decode_flops(batch, total_context),
                    m.decode_state_bytes(batch, total_context),
                ),
            ),
            batch,
            self.settings.decode_mfu,
        )


def transfer(measured: float, base: StepCost, target: StepCost) -> float:
    """Move a step time measured on configuration A (``base``) to B (``target``): the module
    docstring's split, each part by its own ratio."""
    if base == target:
        return measured
    host = min(measured, base.host)
    comm = min(measured - host, base.collective)
    kernels = measured - host - comm
    explained = min(kernels, base.kernels)
    rest = kernels - explained
    host_b = host * target.host / base.host if base.host > 0 else target.host
    comm_b = (
        comm * target.collective / base.collective if base.collective > 0 else target.collective
    )
    moved = explained * target.kernels / base.kernels if base.kernels > 0 else explained
    return host_b + comm_b + moved + rest * base.hbm_bytes_per_s / target.hbm_bytes_per_s


_MOVED_BY = (
    ": compute-bound kernels by the FLOP/s ratio, memory-bound ones and the unexplained rest by"
    " the HBM ratio, the collective by the interconnect, host time kept"
)


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
    """A measured prefill phase moved to another GPU/TP/PP (the module docstring's transfer)."""

    base: PrefillPhase
    base_roofline: RooflinePrefill
    target: RooflinePrefill
    source: LatencySource = "roofline"

    @property
    def note(self) -> str:
        return _moved_note("prefill", self.base, self.base_roofline, self.target) + _MOVED_BY

    def __call__(self, lengths: Sequence[float]) -> float:
        return transfer(
            self.base(lengths), self.base_roofline.cost(lengths), self.target.cost(lengths)
        )


@dataclass(frozen=True, slots=True)
class TransferredDecode:
    """A measured decode phase moved to another GPU/TP/PP (the module docstring's transfer)."""

    base: DecodePhase
    base_roofline: RooflineDecode
    target: RooflineDecode
    source: LatencySource = "roofline"

    @property
    def note(self) -> str:
        return _moved_note("decode", self.base, self.base_roofline, self.target) + _MOVED_BY

    def __call__(self, batch: int, total_context: float) -> float:
        return transfer(
            self.base(batch, total_context),
            self.base_roofline.cost(batch, total_context),
            self.target.cost(batch, total_context),
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
        return (
            f"roofline decode × {self.scale:.3g} calibrated on {self.source} points ({self.origin})"
        )

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
