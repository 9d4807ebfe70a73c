"""Sharing patterns: conversations that extend and documents asked about many times become block
chains with the described structure, the same for the same seed, and the prefix-hit ratio the
trace tools compute on them matches one computed here from the pattern alone."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from prfaas.operator.api import models as api
from prfaas.operator.api.translate import sharing_pattern
from prfaas.planner.distributions import Fixed, LogNormal
from prfaas.planner.sharing import ConversationSharing, DocumentSharing
from prfaas.planner.sim.arrivals import FixedLengths, RequestStream, synthetic_stream
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.trace_workload import shared_cache_uncached
from pydantic import ValidationError

MSG = LogNormal(6.5, 0.8, 16, 8192)


def _stream(sharing: Any, n: int = 3000, seed: int = 3) -> RequestStream:
    return synthetic_stream(n, 5.0, MSG, FixedLengths(200), seed=seed, sharing=sharing)


def _chains(s: RequestStream) -> list[list[int]]:
    c = s.block_chains
    return [c.chain(r) for r in range(len(s))]


def test_a_single_conversation_extends_turn_by_turn() -> None:
    s = _stream(ConversationSharing(concurrent=1, turns=5, block_tokens=64), n=40)
    chains, ins, outs = _chains(s), s.input_tokens.tolist(), s.output_tokens.tolist()
    seen: set[int] = set()
    for r in range(40):
        assert len(chains[r]) == ins[r] // 64  # full blocks only
        if r % 5:  # the next turn: the conversation so far, then a new message
            assert chains[r][: len(chains[r - 1])] == chains[r - 1]
            assert ins[r] > ins[r - 1] + outs[r - 1]
            assert not set(chains[r][len(chains[r - 1]) :]) & seen
        else:  # a new conversation shares nothing
            assert not set(chains[r]) & seen
        seen.update(chains[r])


def test_concurrent_conversations_each_extend_their_previous_turn() -> None:
    s = _stream(ConversationSharing(concurrent=7, turns=4))
    chains = _chains(s)
    turns: dict[int, int] = {}  # a conversation's first block -> turns so far
    last: dict[int, list[int]] = {}
    for chain in chains:
        if not chain:
            continue
        head = chain[0]
        if head in last:
            assert chain[: len(last[head])] == last[head]  # extends its previous turn
            turns[head] += 1
        else:
            turns[head] = 1
        last[head] = chain
    assert max(turns.values()) <= 4
    assert sum(1 for t in turns.values() if t > 1) > 100  # most conversations have turns


def test_documents_repeat_with_zipf_popularity() -> None:
    docs = DocumentSharing(documents=20, length=Fixed(3000), zipf=1.2, block_tokens=128)
    s = _stream(docs, n=20000)
    chains = _chains(s)
    doc_blocks = 3000 // 128
    heads: dict[tuple[int, ...], int] = {}
    for r, chain in enumerate(chains):
        assert s.input_tokens[r] > 3000 and len(chain) == s.input_tokens[r] // 128
        heads.setdefault(tuple(chain[:doc_blocks]), 0)
        heads[tuple(chain[:doc_blocks])] += 1
    assert len(heads) == 20  # every request starts with one of the 20 documents
    counts = np.array(sorted(heads.values(), reverse=True), dtype=float)
    expected = 20000 * docs.popularity()
    # Each count within 4 binomial standard deviations of its Zipf share.
    sd = np.sqrt(expected * (1 - expected / 20000))
    assert np.all(np.abs(counts - expected) < 4 * sd + 1)
    # The questions are each request's own.
    own = [b for chain in chains for b in chain[doc_blocks:]]
    assert len(own) == len(set(own))


def test_the_same_seed_gives_the_same_chains() -> None:
    for sharing in (
        ConversationSharing(concurrent=5, turns=3),
        DocumentSharing(documents=9, length=MSG, zipf=0.8),
    ):
        a, b, c = _stream(sharing, seed=4), _stream(sharing, seed=4), _stream(sharing, seed=5)
        assert np.array_equal(a.block_chains.ids, b.block_chains.ids)
        assert np.array_equal(a.input_tokens, b.input_tokens)
        assert not np.array_equal(a.input_tokens, c.input_tokens)
    # Without sharing the stream is what it was: the sharing draws come after the lengths.
    plain = synthetic_stream(50, 5.0, MSG, FixedLengths(200), seed=4)
    docs = synthetic_stream(
        50, 5.0, MSG, FixedLengths(200), seed=4, sharing=DocumentSharing(3, Fixed(512))
    )
    assert np.array_equal(plain.arrival_s, docs.arrival_s)
    assert np.array_equal(plain.input_tokens + 512, docs.input_tokens)


def test_hit_ratio_matches_the_pattern() -> None:
    """An unbounded shared cache (``shared_cache_uncached``) against the pattern's own count:
    a conversation's turn finds its previous prompt's full blocks; a document's later
    requests find its full blocks, its first request nothing."""
    bt = 256
    conv = _stream(ConversationSharing(concurrent=1, turns=6, block_tokens=bt), n=600)
    ins = conv.input_tokens
    hits = sum((int(ins[r - 1]) // bt) * bt for r in range(600) if r % 6)
    uncached = shared_cache_uncached(conv)
    assert int((ins - uncached).sum()) == hits > 0  # a turn never repeats its whole prompt

    docs = DocumentSharing(documents=30, length=Fixed(3000), zipf=1.0, block_tokens=bt)
    s = _stream(docs, n=2000)
    doc_blocks = 3000 // bt  # the document's full blocks; the next one holds the question
    seen: set[tuple[int, ...]] = set()
    expect = 0
    for chain in _chains(s):
        doc = tuple(chain[:doc_blocks])
        expect += doc_blocks * bt if doc in seen else 0
        seen.add(doc)
    cached = s.input_tokens - shared_cache_uncached(s)
    assert int(cached.sum()) == expect > 0


def test_bad_patterns_are_refused() -> None:
    with pytest.raises(ValueError, match="turns"):
        ConversationSharing(turns=0)
    with pytest.raises(ValueError, match="zipf"):
        DocumentSharing(3, Fixed(100), zipf=-1.0)
    with pytest.raises(ValueError, match="block_tokens"):
        DocumentSharing(3, Fixed(100), block_tokens=0)
    with pytest.raises(SimulatorError, match="at least one request"):
        synthetic_stream(0, 1.0, MSG, FixedLengths(1), sharing=ConversationSharing())


def _plan(sharing: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "prfaas.io/v1alpha1",
        "kind": "ServingPlan",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {
            "model": {"servedName": "m", "catalog": "llama-3-8b"},
            "workload": {
                "inputLength": {"type": "lognormal", "mu": 7.0, "sigma": 1.0, "max": 8192},
                "outputLength": {"type": "fixed", "value": 256},
                "sharing": sharing,
            },
            "clusters": {"decode": ["d"]},
        },
    }


def test_the_workload_sharing_block_reaches_the_simulator() -> None:
    conv = api.ServingPlan.model_validate(_plan({"type": "conversations", "turns": 4}))
    pattern = sharing_pattern(conv.spec.workload.sharing)
    assert pattern == ConversationSharing(concurrent=32, turns=4, block_tokens=512)
    doc = api.ServingPlan.model_validate(
        _plan(
            {
                "type": "documents",
                "documents": 50,
                "zipf": 1.1,
                "length": {"type": "fixed", "value": 4096},
                "blockTokens": 256,
            }
        )
    )
    pattern = sharing_pattern(doc.spec.workload.sharing)
    assert isinstance(pattern, DocumentSharing) and pattern.documents == 50
    assert pattern.block_tokens == 256 and pattern.length.sample(np.random.default_rng(), 1)[0]
    dumped = doc.model_dump(by_alias=True, exclude_none=True)
    assert api.ServingPlan.model_validate(copy.deepcopy(dumped)) == doc
    assert sharing_pattern(None) is None


@pytest.mark.parametrize(
    ("sharing", "field"),
    [
        ({"type": "conversations", "turns": 0}, "turns"),
        ({"type": "conversations", "concurrent": 0}, "concurrent"),
        ({"type": "conversations", "blockTokens": 8}, "blockTokens"),
        ({"type": "documents", "documents": 5}, "length"),
        (
            {
                "type": "documents",
                "documents": 5,
                "length": {"type": "fixed", "value": 9},
                "zipf": -1,
            },
            "zipf",
        ),
        ({"type": "threads"}, "sharing"),
        ({"type": "conversations", "turn": 3}, "turn"),
    ],
)
def test_bad_sharing_blocks_name_the_field(sharing: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        api.ServingPlan.model_validate(_plan(sharing))
    text = str(exc.value)
    assert field in text and "sharing" in text
