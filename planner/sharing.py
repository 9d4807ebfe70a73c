"""How synthetic requests share prompt prefixes: the block chains of a described sharing pattern.

A trace gives each request's block chain; a synthetic workload describes how prompts share
instead (``workload.sharing`` in a ServingPlan), and ``generate`` turns the sampled lengths into
chains (``routing.prefix.Chains``, ``block_tokens`` tokens per block) for the simulator:

* ``ConversationSharing``: multi-turn conversations that extend. ``concurrent`` conversations
  are open at once; each request is the next turn of one of them, chosen uniformly at random,
  and a conversation ends after ``turns`` turns (a new one takes its place). A turn's prompt is
  the conversation so far (every earlier prompt, and the answers) followed by the new message,
  whose length is the workload's ``inputLength``: its chain is the previous turn's chain plus
  new blocks.
* ``DocumentSharing``: documents asked about many times. ``documents`` documents (lengths
  ``length``) are asked about with Zipf popularity (the ``k``-th most popular with weight
  ``1 / k^zipf``; 0: uniform); a prompt is the document followed by a question of its own, of
  the workload's ``inputLength``: its chain is the document's chain plus the question's blocks.

Block ids are dense (``0..n-1``, new blocks numbered in order of first use). Only full blocks are
in a chain (a prompt's partial last block is its own), so a cached length rounds down to whole
blocks. The same ``rng`` state gives the same chains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from prfaas.planner.routing.prefix import Chains

__all__ = ["ConversationSharing", "DocumentSharing", "LengthSampler", "Sharing"]

DEFAULT_BLOCK_TOKENS = 512
"""Tokens per generated block (Mooncake's trace block): the unit of sharing. Smaller is finer
and slower to simulate (a chain is prompt / block_tokens ids)."""


class LengthSampler(Protocol):
    """Draws ``n`` token lengths (positive integers) with ``rng``."""

    def sample(self, rng: np.random.Generator, n: int) -> npt.NDArray[Any]: ...


def _lengths(sampler: LengthSampler, rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
    return np.maximum(np.rint(np.asarray(sampler.sample(rng, n))).astype(np.int64), 1)


def _check_block(block_tokens: int) -> None:
    if block_tokens < 1:
        raise ValueError(f"sharing block_tokens must be >= 1, got {block_tokens}")


@dataclass(frozen=True, slots=True)
class ConversationSharing:
    """Multi-turn conversations whose turns extend each other (see the module docstring)."""

    concurrent: int = 32
    turns: int = 8
    block_tokens: int = DEFAULT_BLOCK_TOKENS

    def __post_init__(self) -> None:
        if self.concurrent < 1 or self.turns < 1:
            raise ValueError(
                f"conversations need concurrent >= 1 and turns >= 1, got {self.concurrent} "
                f"and {self.turns}"
            )
        _check_block(self.block_tokens)

    def generate(
        self,
        rng: np.random.Generator,
        messages: npt.NDArray[np.int64],
        outputs: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.int64], Chains]:
        """Prompt lengths and chains of requests whose new messages are ``messages`` tokens
        (and whose answers are ``outputs``), in arrival order."""
        n = len(messages)
        bt = self.block_tokens
        pick = rng.integers(0, self.concurrent, n).tolist()
        msg, out = messages.tolist(), outputs.tolist()
        context = [0] * self.concurrent  # tokens so far: prompts and answers
        chain: list[list[int]] = [[] for _ in range(self.concurrent)]
        done = [0] * self.concurrent
        inputs = np.empty(n, dtype=np.int64)
        lens = np.empty(n, dtype=np.int64)
        parts: list[list[int]] = []
        next_id = 0
        for r in range(n):
            c = pick[r]
            if done[c] == self.turns:  # the conversation ended: a new one starts here
                context[c], chain[c], done[c] = 0, [], 0
            prompt = context[c] + msg[r]
            old = chain[c]
            # The previous prompt's blocks stay; the ones after it are new (the last partial
            # block of the previous prompt now continues with the answer: a new block too).
            new = prompt // bt - len(old)
            ids = old + list(range(next_id, next_id + new))
            next_id += new
            chain[c] = ids
            parts.append(ids)
            inputs[r], lens[r] = prompt, len(ids)
            context[c] = prompt + out[r]
            done[c] += 1
        return inputs, _chains(parts, lens, bt)


@dataclass(frozen=True, slots=True)
class DocumentSharing:
    """Documents asked about many times, with Zipf popularity (see the module docstring)."""

    documents: int
    length: LengthSampler
    zipf: float = 1.0
    block_tokens: int = DEFAULT_BLOCK_TOKENS

    def __post_init__(self) -> None:
        if self.documents < 1:
            raise ValueError(f"documents must be >= 1, got {self.documents}")
        if not self.zipf >= 0:
            raise ValueError(f"zipf must be >= 0 (0: uniform popularity), got {self.zipf}")
        _check_block(self.block_tokens)

    def popularity(self) -> npt.NDArray[np.float64]:
        """Each document's probability of being asked about (most popular first)."""
        w = 1.0 / np.arange(1, self.documents + 1, dtype=np.float64) ** self.zipf
        return w / w.sum()

    def generate(
        self,
        rng: np.random.Generator,
        messages: npt.NDArray[np.int64],
        outputs: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.int64], Chains]:
        """Prompt lengths and chains of requests whose questions are ``messages`` tokens."""
        del outputs  # an answer is not part of a later prompt here
        n = len(messages)
        bt = self.block_tokens
        doc_tokens = _lengths(self.length, rng, self.documents)
        doc_blocks = doc_tokens // bt
        doc_base = np.zeros(self.documents + 1, dtype=np.int64)
        np.cumsum(doc_blocks, out=doc_base[1:])
        asked = rng.choice(self.documents, size=n, p=self.popularity())
        inputs = doc_tokens[asked] + messages
        lens = inputs // bt
        extra = lens - doc_blocks[asked]  # the question's full blocks (and the doc's tail)
        # Each request's chain: its document's blocks, then fresh ids for its own blocks.
        first_own = int(doc_base[-1]) + np.concatenate(([0], np.cumsum(extra)[:-1]))
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        owner = np.repeat(np.arange(n), lens)
        pos = np.arange(int(offsets[-1]), dtype=np.int64) - offsets[:-1][owner]
        d = asked[owner]
        in_doc = pos < doc_blocks[d]
        ids = np.where(in_doc, doc_base[d] + pos, first_own[owner] + pos - doc_blocks[d])
        return inputs.astype(np.int64), Chains(ids.astype(np.int64), offsets, bt)


Sharing = ConversationSharing | DocumentSharing


def _chains(parts: list[list[int]], lens: npt.NDArray[np.int64], bt: int) -> Chains:
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    ids = np.fromiter((b for p in parts for b in p), dtype=np.int64, count=int(offsets[-1]))
    return Chains(ids, offsets, bt)
