"""``latency_model(model, gpu, tp, pp)``: the best latency model the planner has for one instance.

Each phase (prefill, decode) is resolved on its own, best evidence first:

1. ``measured`` / ``published`` — profile points for exactly this (GPU, TP, PP), a ``prfaas
   profile`` of the user's hardware before published ones: fitted in DistServe's form (decode
   with fewer than three points calibrates the roofline curve instead);
2. ``roofline`` transfer — published points for another GPU/TP/PP of the same model, moved part
   by part by the ratios of peak figures (``roofline.transfer``);
3. ``fit`` — the per-layer H200 measurements, when one of their shapes *is* a TP shard of this
   model (× layers, plus TP all-reduce and the LM head), moved by the roofline if the GPU or PP
   differs;
4. ``roofline`` — FLOPs and bytes against the data sheet.

The returned ``InstanceLatency`` says which one each phase used (``prefill.source``/``note``).
"""

from __future__ import annotations

from collections.abc import Sequence

from prfaas.planner.latency.catalog import GpuSpec, ModelArch, gpu_spec
from prfaas.planner.latency.model import DecodePhase, InstanceLatency, PrefillPhase
from prfaas.planner.latency.profiles import (
    CATALOG_PROFILES,
    FittedDecode,
    FittedPrefill,
    LayerFit,
    ProfileData,
    fit_decode_piecewise,
    fit_prefill,
    layer_profile,
)
from prfaas.planner.latency.roofline import (
    RooflineDecode,
    RooflinePrefill,
    RooflineSettings,
    ScaledDecode,
    TransferredDecode,
    TransferredPrefill,
    collective_seconds,
)

__all__ = ["latency_model", "profiles_for"]


def profiles_for(model: ModelArch, extra: Sequence[ProfileData] = ()) -> tuple[ProfileData, ...]:
    """Measured profiles first, then the others given with the plan, then the catalog's
    published ones for this model."""
    given = sorted(extra, key=lambda p: p.source != "measured")
    return (*given, *CATALOG_PROFILES.get(model.name, ()))


def _same(p: ProfileData, gpu: GpuSpec, tp: int, pp: int) -> bool:
    return (
        p.accelerator.lower() == gpu.name.lower()
        and p.tensor_parallel == tp
        and p.pipeline_parallel == pp
    )


def _closest(cands: list[ProfileData], tp: int, pp: int) -> ProfileData:
    return min(cands, key=lambda p: abs(p.tensor_parallel - tp) + abs(p.pipeline_parallel - pp))


def _gpu_of(p: ProfileData, fallback: GpuSpec) -> GpuSpec:
    try:
        return gpu_spec(p.accelerator)
    except KeyError:
        return fallback


def _layer_fit(model: ModelArch, tp: int) -> tuple[LayerFit | None, int]:
    """The measured layer shape for this TP, else for the nearest TP that has one."""
    for cand in sorted(range(1, 65), key=lambda x: (abs(x - tp), x)):
        fit = layer_profile(model, cand)
        if fit is not None:
            return fit, cand
    return None, tp


def _published_prefill(p: ProfileData) -> FittedPrefill:
    (a, b, c), rep = fit_prefill(p.prefill)
    return FittedPrefill(
        a,
        b,
        c,
        p.source,
        f"prefill {p.accelerator} TP{p.tensor_parallel}×PP{p.pipeline_parallel} fitted to "
        f"{rep.points} {p.source} points (max error {rep.max_rel_error:.1%}): {p.origin}",
    )


def _published_decode(p: ProfileData, roof: RooflineDecode) -> DecodePhase:
    points = p.decode
    if len({(b, c) for b, c, _ in points}) >= 3:
        fit = fit_decode_piecewise(points)
        return FittedDecode.of(
            fit, p.source, f"decode fitted to {p.source} points ({fit.describe()}): {p.origin}"
        )
    ratios = [s / roof(int(b), b * ctx) for b, ctx, s in points]
    return ScaledDecode(roof, sum(ratios) / len(ratios), p.origin, p.source)


def _collective_line(model: ModelArch, gpu: GpuSpec, tp: int) -> tuple[float, float]:
    """``(α part, per-token part)`` of the TP all-reduce, which a per-layer TP1 fit lacks."""
    fixed = collective_seconds(model, gpu, tp, 1, 0.0)
    return fixed, collective_seconds(model, gpu, tp, 1, 1.0) - fixed


def _lm_head_seconds(model: ModelArch, gpu: GpuSpec, tp: int, s: RooflineSettings) -> float:
    """Streaming the LM head once (a per-layer fit lacks it): prefill runs it for the last token
    of each sequence, decode for every new token — memory-bound either way."""
    return (
        model.vocab_params
        * model.weight_bytes_per_param
        / (tp * gpu.hbm_gbps * 1e9 * s.bandwidth_efficiency)
    )


def _prefill_phase(
    model: ModelArch,
    gpu: GpuSpec,
    tp: int,
    pp: int,
    profiles: Sequence[ProfileData],
    s: RooflineSettings,
) -> PrefillPhase:
    target = RooflinePrefill(model, gpu, tp, pp, s)
    with_prefill = [p for p in profiles if p.prefill]
    exact = [p for p in with_prefill if _same(p, gpu, tp, pp)]
    if exact:
        return _published_prefill(exact[0])
    if with_prefill:
        p = _closest(with_prefill, tp, pp)
        base_roof = RooflinePrefill(
            model, _gpu_of(p, gpu), p.tensor_parallel, p.pipeline_parallel, s
        )
        return TransferredPrefill(_published_prefill(p), base_roof, target)
    fit, ftp = _layer_fit(model, tp)
    if fit is not None:
        h200 = gpu_spec("H200")
        comm_fixed, comm_per_token = _collective_line(model, h200, ftp)
        a, b, c = fit.prefill
        base = FittedPrefill(
            model.layers * a
            + h200.step_overhead_s
            + _lm_head_seconds(model, h200, ftp, s)
            + comm_fixed,
            model.layers * b + comm_per_token,
            model.layers * c,
            "fit",
            f"per-layer H200 fit of shape {fit.shape} (max error "
            f"{fit.prefill_report.max_rel_error:.1%}) × {model.layers} layers + LM head + TP "
            "all-reduce",
        )
        if gpu.name == h200.name and pp == 1 and ftp == tp:
            return base
        return TransferredPrefill(base, RooflinePrefill(model, h200, ftp, 1, s), target)
    return target


def _decode_phase(
    model: ModelArch,
    gpu: GpuSpec,
    tp: int,
    pp: int,
    profiles: Sequence[ProfileData],
    s: RooflineSettings,
) -> DecodePhase:
    target = RooflineDecode(model, gpu, tp, pp, s)
    with_decode = [p for p in profiles if p.decode]
    exact = [p for p in with_decode if _same(p, gpu, tp, pp)]
    if exact:
        return _published_decode(exact[0], target)
    if with_decode:
        p = _closest(with_decode, tp, pp)
        base_roof = RooflineDecode(
            model, _gpu_of(p, gpu), p.tensor_parallel, p.pipeline_parallel, s
        )
        return TransferredDecode(_published_decode(p, base_roof), base_roof, target)
    fit, ftp = _layer_fit(model, tp)
    if fit is not None:
        h200 = gpu_spec("H200")
        lm_head = _lm_head_seconds(model, h200, ftp, s)
        comm_fixed, comm_per_token = _collective_line(model, h200, ftp)
        a, b, c = fit.decode
        base = FittedDecode(
            model.layers * a + h200.step_overhead_s + lm_head + comm_fixed,
            model.layers * b,
            model.layers * c + comm_per_token,
            "fit",
            f"per-layer H200 CUDA-graph decode fit of shape {fit.shape} (max error "
            f"{fit.decode_report.max_rel_error:.1%}) × {model.layers} layers + LM head",
        )
        if gpu.name == h200.name and pp == 1 and ftp == tp:
            return base
        return TransferredDecode(base, RooflineDecode(model, h200, ftp, 1, s), target)
    return target


def latency_model(
    model: ModelArch,
    gpu: GpuSpec,
    tp: int = 1,
    pp: int = 1,
    profiles: Sequence[ProfileData] = (),
    settings: RooflineSettings | None = None,
) -> InstanceLatency:
    """The latency model of one TP×PP instance of ``model`` on ``gpu``.

    ``profiles`` are extra points (e.g. from a ServingPlan); the catalog's published profiles
    for ``model.name`` are always considered after them.
    """
    s = settings or RooflineSettings()
    every = profiles_for(model, profiles)
    return InstanceLatency(
        _prefill_phase(model, gpu, tp, pp, every, s),
        _decode_phase(model, gpu, tp, pp, every, s),
        tp,
        pp,
    )
