"""The tiny model is deterministic, cached, and shaped as vLLM's CPU backend needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prfaas.engine.vllm.tinymodel import TinyModelSpec, ensure_tiny_model


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_two_generations_are_byte_identical(tmp_path: Path) -> None:
    a = ensure_tiny_model(root=tmp_path / "a")
    b = ensure_tiny_model(root=tmp_path / "b")
    assert a.name == b.name
    assert _files(a) == _files(b)


def test_cached_directory_is_reused(tmp_path: Path) -> None:
    first = ensure_tiny_model(root=tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(root=tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dirs left


def test_env_overrides_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRFAAS_CACHE", str(tmp_path))
    assert ensure_tiny_model().parent == tmp_path


def test_spec_change_gives_another_directory(tmp_path: Path) -> None:
    assert ensure_tiny_model(root=tmp_path) != ensure_tiny_model(
        TinyModelSpec(seed=7), root=tmp_path
    )


def test_config_and_tokenizer_fit_the_cpu_engine(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    d = ensure_tiny_model(root=tmp_path)
    config = json.loads((d / "config.json").read_text())
    assert config["head_dim"] >= 64
    assert config["hidden_size"] == config["num_attention_heads"] * config["head_dim"]
    assert config["max_position_embeddings"] >= 4096
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert 256 < tok.get_vocab_size() <= config["vocab_size"] == 512
    text = "Prefill long prompts remotely; décodé ✓"
    assert tok.decode(tok.encode(text).ids) == text
    assert len(tok.encode("prefill decode threshold").ids) < len("prefill decode threshold")
