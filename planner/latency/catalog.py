"""GPUs and models the planner knows, with every derived size computed from the architecture.

GPU figures are vendor data sheets (dense bf16, no sparsity); prices are an *assumption* (typical
on-demand USD per GPU-hour in 2026, H20 priced at half an H200 — the ratio the PrfaaS paper's
"+15% at equal cost" implies, papers.md §1.8). Model architectures are the published configs;
``kv_bytes_per_token`` and ``fixed_state_bytes`` are computed from them, never typed in:

* full-attention layer, GQA: ``2 · kv_heads · head_dim · dtype`` bytes per token;
  MLA: ``(kv_lora_rank + rope_dim) · dtype`` (the compressed latent is what is cached);
* a hybrid model has one full-attention layer per ``full_attention_every`` layers; its other
  layers keep per-request state of fixed size: a linear-attention (KDA/GDN) layer holds
  ``linear_heads · d_k · d_v`` recurrent state plus a short-convolution window, an SWA layer holds
  ``window`` tokens of GQA KV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from prfaas.planner.errors import CatalogError

__all__ = [
    "GPUS",
    "MODELS",
    "GiB",
    "GpuSpec",
    "ModelArch",
    "gpu_spec",
    "model_arch",
    "with_memory",
]

GiB = 1024**3


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One accelerator type. Units are in the field names."""

    name: str
    bf16_tflops: float
    """Dense bf16 peak, TFLOP/s."""
    hbm_gbps: float
    """Memory bandwidth, GB/s."""
    memory_gib: float
    nic_gbps: float
    """Typical scale-out NIC per GPU, Gbit/s."""
    interconnect_gbps: float
    """Intra-node GPU↔GPU bandwidth per GPU and direction (NVLink or PCIe), GB/s; TP traffic."""
    price_per_hour: float
    """USD per GPU-hour; an assumption, used only for the equal-cost baselines."""
    step_overhead_s: float = 0.002
    """Fixed host cost of one forward pass (scheduling, launches), seconds. Host time: it does not
    move with the GPU's FLOP/s or HBM bandwidth when a profile moves to another GPU."""
    collective_latency_s: float = 20e-6
    """Per-call latency ``α`` of a TP all-reduce, seconds (tens of µs on NVLink/NVSwitch, more
    over PCIe); it dominates decode-sized messages."""

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GiB


def _gib(gb: float) -> float:
    return gb * 1e9 / GiB


GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("H100", 989.0, 3350.0, _gib(80), 400.0, 450.0, 2.50),
        GpuSpec("H200", 989.0, 4800.0, _gib(141), 400.0, 450.0, 3.50),
        # H20: the export-market Hopper (148 TFLOP/s bf16, 4.0 TB/s HBM3, 96 GB, NVLink 900 GB/s).
        GpuSpec("H20", 148.0, 4000.0, _gib(96), 400.0, 450.0, 1.75),
        GpuSpec("A100-80G", 312.0, 2039.0, _gib(80), 200.0, 300.0, 1.60),
        # L40S has no NVLink: TP traffic crosses PCIe 4.0 x16 (32 GB/s).
        GpuSpec("L40S", 362.0, 864.0, _gib(48), 100.0, 32.0, 1.00, collective_latency_s=50e-6),
        GpuSpec("B200", 2250.0, 8000.0, _gib(180), 400.0, 900.0, 5.00),
        # "CPU": a small x86 host running vLLM-CPU (2 cores of AVX2 FMA ≈ 0.2 TFLOP/s fp32,
        # ~20 GB/s DRAM). Only for the local runtime and its plans.
        GpuSpec("CPU", 0.2, 20.0, 8.0, 10.0, 10.0, 0.05, step_overhead_s=0.01),
    )
}


@dataclass(frozen=True, slots=True)
class ModelArch:
    """A model's architecture: enough for FLOPs, weight bytes, KV bytes and fixed state."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    params_b: float
    """Total parameters, billions."""
    active_params_b: float | None = None
    """Parameters used per token (MoE), billions; ``None``: all of them."""
    attention: Literal["gqa", "mla"] = "gqa"
    kv_lora_rank: int = 0
    rope_dim: int = 0
    full_attention_every: int = 1
    """One full-attention layer per N layers (layers N, 2N, ...); 1: every layer is full."""
    linear_kind: Literal["none", "linear", "swa"] = "none"
    """What the other layers are: ``linear`` (KDA/GDN/Lightning recurrent state) or ``swa``."""
    linear_heads: int = 0
    linear_head_dim: int = 0
    linear_state_dtype_bytes: int = 4
    """Recurrent state is kept in fp32 (vLLM's ``mamba_ssm_cache_dtype``) for accuracy."""
    conv_kernel: int = 0
    """Short causal convolution on q, k, v of linear layers; its state is ``kernel - 1`` tokens."""
    sliding_window: int = 0
    linear_state_bytes_per_layer: int | None = None
    """Explicit fixed state per non-full layer (bytes), for inline models; overrides the above."""
    dtype_bytes: int = 2
    """KV cache and activation element size."""
    weight_bytes_per_param: float = 2.0
    max_context: int = 131072
    note: str = ""

    # -- derived sizes -------------------------------------------------------------------------

    @property
    def full_layers(self) -> int:
        return self.layers // self.full_attention_every

    @property
    def other_layers(self) -> int:
        return self.layers - self.full_layers

    @property
    def qk_dim(self) -> int:
        return self.head_dim + (self.rope_dim if self.attention == "mla" else 0)

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        if self.attention == "mla":
            return (self.kv_lora_rank + self.rope_dim) * self.dtype_bytes
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """``s_kv``: bytes of KV cache each prompt token adds (full-attention layers only)."""
        return self.full_layers * self.kv_bytes_per_token_per_layer

    @property
    def state_bytes_per_other_layer(self) -> int:
        if self.linear_state_bytes_per_layer is not None:
            return self.linear_state_bytes_per_layer
        if self.linear_kind == "linear":
            width = self.linear_heads * self.linear_head_dim
            recurrent = self.linear_heads * self.linear_head_dim**2 * self.linear_state_dtype_bytes
            conv = max(self.conv_kernel - 1, 0) * 3 * width * self.linear_state_dtype_bytes
            return recurrent + conv
        if self.linear_kind == "swa":
            return self.sliding_window * 2 * self.kv_heads * self.head_dim * self.dtype_bytes
        return 0

    @property
    def fixed_state_bytes(self) -> int:
        """Per-request state independent of length (recurrent state, SWA windows)."""
        if self.full_attention_every == 1:
            return 0
        return self.other_layers * self.state_bytes_per_other_layer

    def kv_bytes(self, tokens: float) -> float:
        """``S_kv(l)``: bytes shipped for a prefill of ``tokens`` (KV plus fixed state)."""
        return self.fixed_state_bytes + tokens * self.kv_bytes_per_token

    @property
    def weight_bytes(self) -> float:
        return self.params_b * 1e9 * self.weight_bytes_per_param

    @property
    def active_params(self) -> float:
        return (self.active_params_b or self.params_b) * 1e9

    # -- FLOPs ---------------------------------------------------------------------------------

    @property
    def vocab_params(self) -> float:
        """``vocab · hidden``: the embedding table, and again the (untied) LM head."""
        return float(self.vocab * self.hidden)

    @property
    def dense_active_params(self) -> float:
        """Parameters every token multiplies through, less the embedding (a gather, not a GEMM)
        and the LM head (which prefill runs for the last token only)."""
        return max(self.active_params - 2.0 * self.vocab_params, 0.0)

    def _attention_width(self) -> int:
        """``heads · (d_qk + d_v)``: FLOPs per (query, key) pair are twice this."""
        return self.heads * (self.qk_dim + self.head_dim)

    def attention_prefill_flops(self, tokens: float) -> float:
        """Attention FLOPs of prefilling one prompt: causal ``l²/2`` pairs per full layer,
        windowed for SWA, linear in ``l`` for KDA."""
        flops = self.full_layers * tokens * tokens * self._attention_width()
        if self.linear_kind == "swa":
            span = min(tokens, self.sliding_window)
            flops += self.other_layers * 2.0 * tokens * span * self._attention_width()
        elif self.linear_kind == "linear":
            flops += self.other_layers * 4.0 * tokens * self.linear_heads * self.linear_head_dim**2
        return flops

    def prefill_flops(self, tokens: float) -> float:
        """FLOPs of prefilling one prompt of ``tokens``: GEMMs ``2·N_dense·l``, the LM head for
        the last token only (vLLM computes no other logits), and attention."""
        return (
            2.0 * self.dense_active_params * tokens
            + 2.0 * self.vocab_params
            + self.attention_prefill_flops(tokens)
        )

    def attention_decode_flops(self, batch: int, total_context: float) -> float:
        """Attention FLOPs of one decode step: ``batch`` new tokens over ``total_context``."""
        flops = self.full_layers * 2.0 * total_context * self._attention_width()
        if self.linear_kind == "swa":
            span = min(total_context, batch * self.sliding_window)
            flops += self.other_layers * 2.0 * span * self._attention_width()
        elif self.linear_kind == "linear":
            flops += self.other_layers * 4.0 * batch * self.linear_heads * self.linear_head_dim**2
        return flops

    def decode_flops(self, batch: int, total_context: float) -> float:
        """FLOPs of one decode step: GEMMs and the LM head for every new token, plus attention."""
        return 2.0 * (self.dense_active_params + self.vocab_params) * batch + (
            self.attention_decode_flops(batch, total_context)
        )

    def decode_weight_bytes(self, batch: int) -> float:
        """Weight bytes one decode step streams: the weights the batch touches (each token uses a
        fraction ``N_active/N`` of MoE weights, independently), less the embedding table, of
        which only ``batch`` rows are gathered."""
        frac = self.active_params / (self.params_b * 1e9)
        touched = 1.0 - (1.0 - frac) ** max(batch, 1) if frac < 1.0 else 1.0
        embedding = self.vocab_params * self.weight_bytes_per_param
        return max(self.weight_bytes * touched - embedding, 0.0)

    def decode_state_bytes(self, batch: int, total_context: float) -> float:
        """Per-request bytes one decode step reads: the KV cache and the fixed state (read and
        written)."""
        return total_context * self.kv_bytes_per_token + 2.0 * batch * self.fixed_state_bytes

    def decode_bytes(self, batch: int, total_context: float) -> float:
        """HBM bytes one decode step reads: touched weights, KV cache and fixed state."""
        return self.decode_weight_bytes(batch) + self.decode_state_bytes(batch, total_context)

    def check(self) -> ModelArch:
        """Raise ``CatalogError`` for an architecture the planner cannot use."""
        if self.attention == "mla" and (self.kv_lora_rank <= 0 or self.rope_dim <= 0):
            raise CatalogError(f"model {self.name!r}: MLA needs kvLoraRank and ropeDim > 0")
        if self.full_attention_every < 1 or self.full_attention_every > self.layers:
            raise CatalogError(
                f"model {self.name!r}: fullAttentionEvery must be in 1..layers ({self.layers})"
            )
        if self.heads % self.kv_heads:
            raise CatalogError(f"model {self.name!r}: heads must be a multiple of kvHeads")
        return self


_K2_NOTE = (
    "Kimi-K2-sized backbone (61 layers, hidden 7168, 64 MLA heads, kv_lora 512 + rope 64, "
    "1T total / 32B active MoE) with every 4th layer MLA and the rest KDA (56 heads × 128, fp32 "
    "state, conv kernel 4): 15 MLA layers × 576 × 2 B = 16.9 KiB/token (Table 5 implies "
    "16.4-16.8) and 46 × 3.75 MiB = 172 MiB fixed state (Table 5 implies ~174 MiB). Weights "
    "W4A16 like Kimi-K2-Thinking: 4-bit routed experts (~97% of parameters, plus group scales) "
    "and bf16 attention/shared parts ≈ 0.56 B/param, so one instance fits 8×H20 (96 GB)."
)

MODELS: dict[str, ModelArch] = {
    m.name: m.check()
    for m in (
        ModelArch("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8.03),
        ModelArch("llama-3-70b", 80, 8192, 64, 8, 128, 28672, 128256, 70.6),
        ModelArch("qwen3-32b", 64, 5120, 64, 8, 128, 25600, 151936, 32.8, max_context=131072),
        ModelArch(
            "qwen3-235b-a22b",
            94,
            4096,
            64,
            4,
            128,
            12288,
            151936,
            235.0,
            22.0,
            note="MoE, 128 experts (8 active, 1536 wide); ffn = active expert width",
        ),
        ModelArch(
            "deepseek-v3",
            61,
            7168,
            128,
            128,
            128,
            18432,
            129280,
            671.0,
            37.0,
            attention="mla",
            kv_lora_rank=512,
            rope_dim=64,
            weight_bytes_per_param=1.0,
            note="MLA, FP8 weights",
        ),
        ModelArch(
            "kimi-linear-48b",
            27,
            2304,
            32,
            32,
            128,
            9216,
            163840,
            48.0,
            3.0,
            attention="mla",
            kv_lora_rank=512,
            rope_dim=64,
            full_attention_every=4,
            linear_kind="linear",
            linear_heads=32,
            linear_head_dim=128,
            conv_kernel=4,
            note="KDA:MLA 3:1 hybrid (Kimi Linear)",
        ),
        ModelArch(
            "hybrid-1t",
            61,
            7168,
            64,
            64,
            128,
            2048 * 9,
            163840,
            1000.0,
            32.0,
            attention="mla",
            kv_lora_rank=512,
            rope_dim=64,
            full_attention_every=4,
            linear_kind="linear",
            linear_heads=56,
            linear_head_dim=128,
            conv_kernel=4,
            weight_bytes_per_param=0.56,
            note=_K2_NOTE,
        ),
    )
}


def gpu_spec(name: str) -> GpuSpec:
    """The catalog GPU called ``name`` (exact match, then case-insensitive)."""
    if name in GPUS:
        return GPUS[name]
    for key, spec in GPUS.items():
        if key.lower() == name.lower():
            return spec
    raise CatalogError(f"unknown GPU type {name!r}; the catalog has {', '.join(GPUS)}")


def model_arch(name: str) -> ModelArch:
    """The catalog model called ``name``."""
    if name in MODELS:
        return MODELS[name]
    raise CatalogError(
        f"unknown catalog model {name!r}; use one of {', '.join(MODELS)} or give an architecture"
    )


def with_memory(gpu: GpuSpec, memory_gib: float | None) -> GpuSpec:
    """``gpu`` with its memory overridden (``Accelerator.memoryGiB``)."""
    return (
        gpu
        if memory_gib is None or math.isclose(memory_gib, gpu.memory_gib)
        else replace(gpu, memory_gib=memory_gib)
    )
