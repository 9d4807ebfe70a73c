"""A tiny, deterministic Llama for tests and demos: ``python -m prfaas.engine.vllm.tinymodel``.

vLLM needs a real model directory (``config.json``, safetensors weights, a tokenizer) to start,
and end-to-end tests need the same model on every run so greedy outputs can be compared. This
module writes one: a Llama of 2 layers, hidden 128, 2 heads of 64 (head_dim 16 is rejected by
vLLM's CPU attention), seeded random float32 weights, and a byte-level BPE tokenizer of 512
tokens trained on a fixed built-in corpus. Nothing is downloaded.

The directory is ``$PRFAAS_CACHE/tinymodel-<hash>`` (default ``~/.cache/prfaas``), where the
hash covers the spec and the generator version, so a changed spec never reuses stale files.
Generation writes into a temporary directory renamed into place, so concurrent callers are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CHAT_TEMPLATE",
    "TinyModelError",
    "TinyModelSpec",
    "cache_root",
    "ensure_tiny_model",
    "main",
]

_GENERATOR_VERSION = 1
"""Bump when the output of ``_write`` changes for the same spec."""

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""A minimal chat template so ``/v1/chat/completions`` works against the tiny model."""

_SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")

_CORPUS = """\
Prefill-as-a-Service moves the compute-heavy prefill of long prompts to a dense cluster in
another datacenter and ships the resulting key-value cache over ordinary Ethernet to the
cluster that decodes. Short prompts are prefilled where they are decoded. A router decides,
per request, from the uncached prompt length: longer than the threshold goes remote.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump!
Attention layers keep keys and values for every token; a hybrid model keeps most layers
linear, so its cache grows slowly and a long prompt's cache fits through a thin link.
Throughput, latency, bandwidth, threshold, decode, prefill, token, request, cluster, link.
def main():\n    for i in range(10):\n        print(i * i)\n    return {"ok": True}
0123456789 +-*/=<>()[]{} .,;:!? 'quoted' "double" #hash @at $dollar %percent &and
In the beginning the engines were idle; then requests arrived, one every second, each with a
prompt of a few hundred tokens and an answer of thirty-two. The operator watched the link.
Kubernetes reconciles what is declared with what runs: deployments, services, config maps.
"""


class TinyModelError(RuntimeError):
    """The tiny model could not be generated (missing ``tokenizers``, unwritable cache, ...)."""


@dataclass(frozen=True, slots=True)
class TinyModelSpec:
    """Shape and seed of the generated model; every field enters the cache hash."""

    layers: int = 2
    hidden: int = 128
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 64
    ffn: int = 256
    vocab: int = 512
    max_positions: int = 4096
    seed: int = 1234
    weight_scale: float = 1.0
    """Multiplies the ``1/sqrt(fan_in)`` weight std of every projection."""
    attention_scale: float = 3.0
    """Extra factor on the query/key projections: sharper attention makes greedy outputs depend
    on the whole prompt (so KV that arrived wrong changes the answer) instead of settling into
    one repeated token."""

    def digest(self) -> str:
        blob = json.dumps({"v": _GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root() -> Path:
    """``$PRFAAS_CACHE`` or ``~/.cache/prfaas``."""
    env = os.environ.get("PRFAAS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prfaas"


def ensure_tiny_model(spec: TinyModelSpec | None = None, root: Path | None = None) -> Path:
    """The directory holding the tiny model, generating it on first use."""
    spec = spec or TinyModelSpec()
    root = root or cache_root()
    target = root / f"tinymodel-{spec.digest()}"
    if (target / "config.json").exists():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tinymodel-", dir=root))
    except OSError as exc:
        raise TinyModelError(f"cannot write the tiny model under {root}: {exc}; "
                             "set PRFAAS_CACHE to a writable directory") from exc
    try:
        tmp.chmod(0o755)
        _write(spec, tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent winner: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write(spec: TinyModelSpec, out: Path) -> None:
    _write_tokenizer(spec, out)
    _write_weights(spec, out)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.ffn,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab,
        "max_position_embeddings": spec.max_positions,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_tokenizer(spec: TinyModelSpec, out: Path) -> None:
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as exc:  # pragma: no cover - tokenizers ships with transformers
        raise TinyModelError("the tiny model needs the `tokenizers` package") from exc
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        min_frequency=1,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True) * 4, trainer=trainer)
    if tok.get_vocab_size() > spec.vocab:
        raise TinyModelError(f"tokenizer has {tok.get_vocab_size()} tokens > vocab {spec.vocab}")
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": False,
        "model_max_length": spec.max_positions,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _write_weights(spec: TinyModelSpec, out: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(spec.seed)

    def normal(rows: int, cols: int) -> np.ndarray:
        std = spec.weight_scale / np.sqrt(cols)
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    q_out = spec.heads * spec.head_dim
    kv_out = spec.kv_heads * spec.head_dim
    tensors: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": (rng.standard_normal((spec.vocab, spec.hidden))).astype(
            np.float32
        ),
    }
    for i in range(spec.layers):
        p = f"model.layers.{i}"
        sharp = np.float32(spec.attention_scale)
        tensors[f"{p}.self_attn.q_proj.weight"] = normal(q_out, spec.hidden) * sharp
        tensors[f"{p}.self_attn.k_proj.weight"] = normal(kv_out, spec.hidden) * sharp
        tensors[f"{p}.self_attn.v_proj.weight"] = normal(kv_out, spec.hidden)
        tensors[f"{p}.self_attn.o_proj.weight"] = normal(spec.hidden, q_out)
        tensors[f"{p}.mlp.gate_proj.weight"] = normal(spec.ffn, spec.hidden)
        tensors[f"{p}.mlp.up_proj.weight"] = normal(spec.ffn, spec.hidden)
        tensors[f"{p}.mlp.down_proj.weight"] = normal(spec.hidden, spec.ffn)
        tensors[f"{p}.input_layernorm.weight"] = np.ones(spec.hidden, np.float32)
        tensors[f"{p}.post_attention_layernorm.weight"] = np.ones(spec.hidden, np.float32)
    tensors["model.norm.weight"] = np.ones(spec.hidden, np.float32)
    tensors["lm_head.weight"] = normal(spec.vocab, spec.hidden) * np.float32(4.0)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def main() -> None:
    """Print the tiny model's directory, generating it if needed."""
    print(ensure_tiny_model())


if __name__ == "__main__":
    main()
