"""Profiles: measured or published step times, and DistServe-form fits of them.

Two kinds of input:

* ``ProfileData`` — whole-instance points for one model on one (GPU, TP, PP): published tables
  such as PrfaaS Table 5 (``CATALOG_PROFILES``) or ``ServingPlan.spec.model.profiles``.
* the per-layer H200 measurements in ``data/h200-layer-bf16.json`` (copied from
  ``shared/profiles/``), fitted per shape and scaled by the layer count (``layer_profile``).

Fits use DistServe's form (papers.md §2.4): prefill ``a + b·l + c·l²``, decode
``a + b·Σctx + c·batch``, by least squares on *relative* error (as DistServe's fitting script),
with the coefficients kept non-negative. Decode steps change regime at large batches
(DistServe's own profile switches coefficients above batch 95), so when points span both,
``fit_decode_piecewise`` fits one plane per batch range and reports the error of each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
from prfaas.planner.errors import ProfileError
from prfaas.planner.latency.catalog import ModelArch
from prfaas.planner.latency.model import LatencySource

__all__ = [
    "CATALOG_PROFILES",
    "DecodeFit",
    "FitReport",
    "FittedDecode",
    "FittedPrefill",
    "LayerFit",
    "ProfileData",
    "fit_decode",
    "fit_decode_piecewise",
    "fit_prefill",
    "layer_fits",
    "layer_profile",
]


@dataclass(frozen=True, slots=True)
class ProfileData:
    """Points for one model on one accelerator at one TP×PP.

    ``prefill``: ``(tokens, seconds)`` for one prompt; ``decode``: ``(batch, context, seconds)``
    with ``context`` the cached tokens *per sequence*.
    """

    accelerator: str
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    origin: str = ""
    prefill: tuple[tuple[float, float], ...] = ()
    decode: tuple[tuple[float, float, float], ...] = ()
    kv_mib: tuple[tuple[float, float], ...] = field(default=())
    """``(tokens, MiB)``: published KV sizes, used to check the architecture's ``S_kv``."""
    source: LatencySource = "published"
    """``measured`` for a ``prfaas profile`` of the user's own hardware (``latency.measured``)."""


CATALOG_PROFILES: dict[str, tuple[ProfileData, ...]] = {
    "hybrid-1t": (
        ProfileData(
            "H200",
            8,
            1,
            "PrfaaS (arXiv 2604.15039) Table 5: internal 1T KDA:MLA 3:1 hybrid, 8×H200, "
            "in-house vLLM",
            prefill=((1024, 0.44), (8192, 0.72), (32768, 1.84), (131072, 7.40)),
            kv_mib=((1024, 190.8), (8192, 308.9), (32768, 701.3), (131072, 2316.3)),
        ),
    ),
}
"""Published profiles shipped with the catalog, by catalog model name."""


@dataclass(frozen=True, slots=True)
class FitReport:
    """Relative error of a fit on its own points."""

    points: int
    max_rel_error: float
    rms_rel_error: float


def _nnls_relative(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error with non-negative coefficients (active-set on 3 vars)."""
    w = 1.0 / y
    a, b = design * w[:, None], y * w
    n = design.shape[1]
    best: np.ndarray | None = None
    best_err = math.inf
    for mask in range(1, 1 << n):
        cols = [i for i in range(n) if mask >> i & 1]
        coef, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if np.any(coef < 0):
            continue
        full = np.zeros(n)
        full[cols] = coef
        err = float(np.sum((a @ full - b) ** 2))
        if err < best_err - 1e-15:
            best, best_err = full, err
    if best is None:
        raise ProfileError("no non-negative fit exists for these profile points")
    return best


def _report(design: np.ndarray, y: np.ndarray, coef: np.ndarray) -> FitReport:
    rel = design @ coef / y - 1.0
    return FitReport(len(y), float(np.max(np.abs(rel))), float(np.sqrt(np.mean(rel**2))))


def fit_prefill(
    points: Sequence[tuple[float, float]],
) -> tuple[tuple[float, float, float], FitReport]:
    """``(a, b, c)`` of ``a + b·l + c·l²`` (seconds) through ``(tokens, seconds)`` points.

    Two points fit ``a + b·l``; one point, ``b·l``.
    """
    pts = [(float(t), float(s)) for t, s in points]
    if not pts or any(t <= 0 or s <= 0 for t, s in pts):
        raise ProfileError("prefill profile points need positive tokens and seconds")
    x = np.array([t for t, _ in pts])
    y = np.array([s for _, s in pts])
    ncols = min(3, len(set(x.tolist())))
    design = np.vstack([np.ones_like(x), x, x * x]).T[:, :ncols] if ncols > 1 else x[:, None]
    coef = _nnls_relative(design, y)
    full = (
        (0.0, float(coef[0]), 0.0)
        if ncols == 1
        else tuple(float(v) for v in (*coef, *([0.0] * (3 - ncols))))
    )
    rep = _report(design, y, coef)
    return (full[0], full[1], full[2]), rep


def fit_decode(
    points: Sequence[tuple[float, float, float]],
) -> tuple[tuple[float, float, float], FitReport]:
    """``(a, b, c)`` of ``a + b·Σctx + c·batch`` through ``(batch, context, seconds)`` points
    (``context`` per sequence, so ``Σctx = batch · context``)."""
    pts = [(float(b), float(c), float(s)) for b, c, s in points]
    if len(pts) < 3 or any(b <= 0 or s <= 0 for b, _, s in pts):
        raise ProfileError("a decode fit needs at least three points with positive batch/time")
    design = np.array([[1.0, b * c, b] for b, c, _ in pts])
    y = np.array([s for *_, s in pts])
    coef = _nnls_relative(design, y)
    return (float(coef[0]), float(coef[1]), float(coef[2])), _report(design, y, coef)


@dataclass(frozen=True, slots=True)
class DecodeFit:
    """A decode fit: one plane, or two split at a batch size (``batch > split_batch`` uses
    ``high``), with the relative error of each regime on its own points."""

    low: tuple[float, float, float]
    low_report: FitReport
    split_batch: float = math.inf
    high: tuple[float, float, float] | None = None
    high_report: FitReport | None = None

    def describe(self) -> str:
        """The error per regime, for plan notes."""
        low = f"max error {self.low_report.max_rel_error:.1%}"
        if self.high is None or self.high_report is None:
            return f"{self.low_report.points} points, {low}"
        return (
            f"piecewise at batch {self.split_batch:g}: {self.low_report.points} points up to it "
            f"({low}), {self.high_report.points} above "
            f"(max error {self.high_report.max_rel_error:.1%})"
        )


def _sse(design: np.ndarray, y: np.ndarray, coef: np.ndarray) -> float:
    return float(np.sum((design @ coef / y - 1.0) ** 2))


def fit_decode_piecewise(
    points: Sequence[tuple[float, float, float]], *, min_points: int = 3, gain: float = 0.5
) -> DecodeFit:
    """``fit_decode``, or two planes split at the batch size that fits best when the points
    span two regimes: chosen only if each side has ``min_points`` points and the summed
    squared relative error drops below ``gain`` × the single plane's."""
    pts = [(float(b), float(c), float(s)) for b, c, s in points]
    single, rep = fit_decode(pts)

    def design(sub: list[tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([[1.0, b * c, b] for b, c, _ in sub]), np.array([s for *_, s in sub])

    base = _sse(*design(pts), np.array(single))
    best: DecodeFit | None = None
    best_sse = gain * base
    batches = sorted({b for b, _, _ in pts})
    for split in batches[:-1]:
        lo = [p for p in pts if p[0] <= split]
        hi = [p for p in pts if p[0] > split]
        if min(len(lo), len(hi)) < max(min_points, 3):
            continue
        try:
            lo_c, lo_rep = fit_decode(lo)
            hi_c, hi_rep = fit_decode(hi)
        except ProfileError:
            continue
        sse = _sse(*design(lo), np.array(lo_c)) + _sse(*design(hi), np.array(hi_c))
        if sse < best_sse:
            best, best_sse = DecodeFit(lo_c, lo_rep, split, hi_c, hi_rep), sse
    return best or DecodeFit(single, rep)


@dataclass(frozen=True, slots=True)
class FittedPrefill:
    """DistServe prefill form; a batch costs ``a + b·Σl + c·Σl²``."""

    a: float
    b: float
    c: float
    source: LatencySource
    note: str

    def __call__(self, lengths: Sequence[float]) -> float:
        return self.a + self.b * sum(lengths) + self.c * sum(x * x for x in lengths)


@dataclass(frozen=True, slots=True)
class FittedDecode:
    """DistServe decode form ``a + b·Σctx + c·batch``; above ``split_batch`` the ``high``
    coefficients (a piecewise fit)."""

    a: float
    b: float
    c: float
    source: LatencySource
    note: str
    split_batch: float = math.inf
    high: tuple[float, float, float] | None = None

    @classmethod
    def of(cls, fit: DecodeFit, source: LatencySource, note: str) -> FittedDecode:
        a, b, c = fit.low
        return cls(a, b, c, source, note, fit.split_batch, fit.high)

    def __call__(self, batch: int, total_context: float) -> float:
        if self.high is not None and batch > self.split_batch:
            a, b, c = self.high
            return a + b * total_context + c * batch
        return self.a + self.b * total_context + self.c * batch


# -- the per-layer H200 measurements --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerFit:
    """Per-layer DistServe fits for one measured shape (seconds per layer)."""

    shape: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    layers: int
    device: str
    prefill: tuple[float, float, float]
    prefill_report: FitReport
    decode: tuple[float, float, float]
    decode_report: FitReport


def _load_layer_json() -> dict[str, Any]:
    data_dir = resources.files("prfaas.planner.latency").joinpath("data")
    text = data_dir.joinpath("h200-layer-bf16.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def layer_fits() -> dict[str, LayerFit]:
    """Fit every shape of ``h200-layer-bf16.json`` (eager medians for prefill, CUDA-graph
    medians for decode, as serving engines replay decode from graphs)."""
    data = _load_layer_json()
    out: dict[str, LayerFit] = {}
    device = str(data.get("device", "NVIDIA H200")).removeprefix("NVIDIA ").strip()
    for name, shape in data["shapes"].items():
        pre = [(r["tokens"], r["median_ms"] / 1e3) for r in data["prefill"] if r["shape"] == name]
        dec = [
            (r["batch"], r["context"], (r.get("graph_median_ms") or r["median_ms"]) / 1e3)
            for r in data["decode"]
            if r["shape"] == name
        ]
        pc, prep = fit_prefill(pre)
        dc, drep = fit_decode(dec)
        out[name] = LayerFit(
            name,
            shape["hidden"],
            shape["heads"],
            shape["kv_heads"],
            shape["head_dim"],
            shape["ffn"],
            shape["layers"],
            device,
            pc,
            prep,
            dc,
            drep,
        )
    return out


def layer_profile(model: ModelArch, tp: int) -> LayerFit | None:
    """The measured shape that *is* one TP-sharded layer of ``model``, if any."""
    if model.attention != "gqa" or model.full_attention_every != 1 or model.heads % tp:
        return None
    for fit in layer_fits().values():
        if (
            fit.hidden == model.hidden
            and fit.heads * tp == model.heads
            and fit.kv_heads * tp == model.kv_heads
            and fit.head_dim == model.head_dim
            and fit.ffn * tp == model.ffn
        ):
            return fit
    return None
