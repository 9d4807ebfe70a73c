"""Prompt lengths from a real (tiny, locally built) Hugging Face tokenizer, chat template too."""

from __future__ import annotations

from pathlib import Path

import pytest
from prfaas.engine.router.tokenizer import (
    ByteTokenizer,
    FastPromptTokenizer,
    HFPromptTokenizer,
    PromptTokenizer,
    load_tokenizer,
)

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["hello world, the quick brown fox"] * 20, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", unk_token="<unk>"
    )
    fast.chat_template = TEMPLATE
    out = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(out)
    return out


def test_hf_tokenizer_counts_like_the_model_and_applies_the_chat_template(
    tokenizer_dir: Path,
) -> None:
    tok = HFPromptTokenizer(str(tokenizer_dir))
    assert isinstance(tok, PromptTokenizer)
    ids = tok.encode_prompt("hello world")
    assert ids[0] == tok._tok.convert_tokens_to_ids("<s>")  # BOS, as vLLM's completions add it
    assert 1 < len(ids) < len("hello world")  # merges learnt: fewer tokens than bytes
    chat = tok.encode_chat([{"role": "user", "content": "hello world"}])
    no_gen = tok.encode_chat(
        [{"role": "user", "content": "hello world"}], add_generation_prompt=False
    )
    special = tok._tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    assert chat[0] == special[0] and chat[-1] == special[1]
    assert len(no_gen) == len(chat) - 1


CHATS = [
    [{"role": "user", "content": "hello world"}],
    [
        {"role": "user", "content": "the quick brown fox"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "world, fox"},
    ],
]


def test_fast_tokenizer_counts_exactly_like_transformers(tokenizer_dir: Path) -> None:
    fast, hf = load_tokenizer(str(tokenizer_dir)), HFPromptTokenizer(str(tokenizer_dir))
    assert isinstance(fast, FastPromptTokenizer)
    for text in ("hello world", "the quick brown fox, hello!", "ünïcode ✓ text"):
        assert fast.encode_prompt(text) == hf.encode_prompt(text)
    for chat in CHATS:
        assert fast.encode_chat(chat) == hf.encode_chat(chat)
        assert fast.encode_chat(chat, add_generation_prompt=False) == hf.encode_chat(
            chat, add_generation_prompt=False
        )
    partial = [*CHATS[1][:2]]
    cont = fast.encode_chat(partial, continue_final_message=True, add_generation_prompt=False)
    assert cont == hf.encode_chat(partial, continue_final_message=True, add_generation_prompt=False)


def test_fast_tokenizer_without_a_template_estimates_from_the_text(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    (tmp_path / "tokenizer.json").write_text((tokenizer_dir / "tokenizer.json").read_text())
    tok = load_tokenizer(str(tmp_path))
    assert isinstance(tok, FastPromptTokenizer)
    assert len(tok.encode_chat(CHATS[0])) > 0


def test_byte_tokenizer_is_the_default_without_a_path() -> None:
    tok = load_tokenizer(None)
    assert isinstance(tok, ByteTokenizer)
    assert tok.encode_prompt("héllo") == list("héllo".encode())
    assert len(tok.encode_chat([{"role": "user", "content": "hi"}])) == len("user: hi\n")


def test_a_template_that_raises_falls_back_to_an_estimate(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    (tmp_path / "tokenizer.json").write_text((tokenizer_dir / "tokenizer.json").read_text())
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('roles must alternate') }}")
    tok = load_tokenizer(str(tmp_path))
    assert tok.encode_chat(CHATS[0]) == tok.encode_prompt("user: hello world\n")


def test_long_prompts_take_the_gil_free_path_with_the_same_ids(tokenizer_dir: Path) -> None:
    tok = load_tokenizer(str(tokenizer_dir))
    assert isinstance(tok, FastPromptTokenizer)
    text = "hello world, the quick brown fox " * 2000  # past the GIL-free threshold
    assert tok.encode_prompt(text) == list(tok._tok.encode(text).ids)
    # No vocabulary entry stands for more bytes than max_token_bytes: a length lower bound.
    assert tok.max_token_bytes is not None
    ids = tok.encode_prompt(text)
    assert len(ids) >= len(text.encode()) / tok.max_token_bytes
    assert ByteTokenizer.max_token_bytes == 1
