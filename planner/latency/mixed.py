"""Mixed engine steps: decodes and prefill chunks in one step (chunked prefill, SARATHI/vLLM).

vLLM schedules the running decodes first and fills the rest of the step's token budget
(``max_num_batched_tokens``) with prefill chunks. One such step holds ``d`` decode sequences
with total context ``D`` and chunks ``(c_i, p_i)``: ``c_i`` new prompt tokens attending to the
``p_i`` tokens of their prompt already prefilled. Its time is built only from the instance's
own prefill phase ``P(lengths)`` and decode phase ``S(batch, context)``::

    step(d, D, chunks) = S(d, D) + Σ_i W(c_i, p_i)          (S(0, ·) = 0)
    W(c, 0) = P([c])                  the first chunk of a prompt
    W(c, p) = P([p + c]) − P([p])     a later chunk (p > 0)

* ``S(d, D)`` is the decode step: its fixed part (weights read once, launch) is shared by the
  chunks riding in the same step, and it holds the decodes' linear work and their attention
  over ``D`` keys.
* ``W`` is a chunk's own work: the GEMM (linear) work of its ``c`` tokens (``b·c`` in
  DistServe's form) plus its attention over ``p + c`` keys (``c·((p+c)² − p²)``). A prompt's
  chunks add up to exactly ``P([L])``: its per-prompt fixed part (the fitted intercept) is
  charged once, on its first chunk.

A step always runs one forward pass: its fixed part (weights read, launch) is in ``S(d, ·)``
or in a first chunk's ``P([c])``. A step with no decodes and only later chunks would carry it
nowhere (with a memory-bound roofline, ``P([p + c]) − P([p])`` is 0 for small chunks), so it
takes at least a one-sequence decode step ``S(1, 0)``::

    step(0, 0, later chunks only) = max(Σ_i W(c_i, p_i), S(1, 0))

So the linear work is on ``d + Σc_i`` tokens and attention is per sequence, each over its own
context. Limits (tested): no chunks gives today's decode step; no decodes and one whole prompt
gives today's prefill time ``P([L])``; the step never gets shorter when a decode, a context
token or a chunk token is added (as long as ``P`` and ``S`` are monotone). In steady state the
mean step is ``S(d, D) + (prompts started per step)·P([L])``.

Latencies of chunked serving follow: a prompt's TTFT is its queueing delay plus the steps that
carry its chunks (``chunked_ttft_seconds``); a decode's TPOT is the mean of the steps it lives
through (``tpot_seconds``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.planner.latency.model import LatencyModel

__all__ = [
    "Chunk",
    "chunk_plan",
    "chunk_seconds",
    "chunked_ttft_seconds",
    "mixed_step_seconds",
    "tpot_seconds",
]


@dataclass(frozen=True, slots=True)
class Chunk:
    """``tokens`` new prompt tokens of one request, after ``prefix`` of its prompt already done."""

    tokens: float
    prefix: float = 0.0

    def __post_init__(self) -> None:
        if not (self.tokens >= 0 and self.prefix >= 0):
            raise ValueError(
                f"chunk tokens ({self.tokens}) and prefix ({self.prefix}) must be >= 0"
            )


def mixed_step_seconds(
    lat: LatencyModel,
    decodes: int,
    decode_context: float,
    chunks: Sequence[Chunk] = (),
) -> float:
    """Time of one engine step with ``decodes`` sequences (``decode_context`` cached tokens in
    total) and these prefill ``chunks`` (the model in the module docstring)."""
    if decodes < 0 or decode_context < 0:
        raise ValueError(f"decodes ({decodes}) and decode_context ({decode_context}) must be >= 0")
    work = sum(chunk_seconds(lat, c) for c in chunks)
    if decodes > 0:
        return lat.decode_step_seconds(decodes, decode_context) + work
    live = [c for c in chunks if c.tokens > 0]
    if live and all(c.prefix > 0 for c in live):  # no one pays the pass's fixed part
        return max(work, lat.decode_step_seconds(1, 0.0))
    return work


def chunk_seconds(lat: LatencyModel, chunk: Chunk) -> float:
    """A chunk's own work ``W(c, p)`` (module docstring); 0 for an empty chunk."""
    if chunk.tokens <= 0:
        return 0.0
    if chunk.prefix <= 0:
        return lat.prefill_seconds((chunk.tokens,))
    end = lat.prefill_seconds((chunk.prefix + chunk.tokens,))
    return max(end - lat.prefill_seconds((chunk.prefix,)), 0.0)


def chunk_plan(prompt: float, chunk_tokens: float) -> list[Chunk]:
    """The chunks one prompt is prefilled in when each step leaves it ``chunk_tokens``."""
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0 (got {chunk_tokens})")
    if prompt <= 0:
        return []
    n = math.ceil(prompt / chunk_tokens)
    return [Chunk(min(chunk_tokens, prompt - k * chunk_tokens), k * chunk_tokens) for k in range(n)]


def chunked_ttft_seconds(
    lat: LatencyModel,
    prompt: float,
    token_budget: float,
    decodes: int = 0,
    decode_context: float = 0.0,
    queueing_s: float = 0.0,
) -> float:
    """TTFT of one prompt chunk-prefilled in steps of ``token_budget`` tokens, each step also
    carrying ``decodes`` decode sequences (which take their tokens from the budget first):
    the queueing delay plus the sum of the steps that carry its chunks."""
    room = token_budget - decodes
    if room <= 0:
        raise ValueError(
            f"token budget {token_budget:g} leaves no room for prefill beside {decodes} decodes"
        )
    steps = (
        mixed_step_seconds(lat, decodes, decode_context, (c,)) for c in chunk_plan(prompt, room)
    )
    return queueing_s + sum(steps)


def tpot_seconds(step_times: Sequence[float]) -> float:
    """TPOT of a decode: the mean time of the steps it lives through (one token each)."""
    if not step_times:
        raise ValueError("a decode lives through at least one step")
    return sum(step_times) / len(step_times)
