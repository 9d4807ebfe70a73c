"""Prompt length as the engine will see it: the served model's tokenizer, or a stand-in.

``PromptTokenizer`` is the interface the router needs (two methods). ``load_tokenizer`` picks:

* ``FastPromptTokenizer`` when the model directory has ``tokenizer.json``: the ``tokenizers``
  library plus the chat template rendered with Jinja the way ``transformers`` does it — no
  ``transformers``/``torch`` import, so the router starts in a second and stays small;
* ``HFPromptTokenizer`` otherwise (``transformers.AutoTokenizer``: slow tokenizers, hub ids);
* ``ByteTokenizer`` (UTF-8 bytes) when the router file names no tokenizer (tests, benchmarks).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ByteTokenizer",
    "FastPromptTokenizer",
    "HFPromptTokenizer",
    "PromptTokenizer",
    "load_tokenizer",
    "max_token_bytes",
]

log = logging.getLogger(__name__)


@runtime_checkable
class PromptTokenizer(Protocol):
    """Turns a request's prompt into token ids (only the length and the ids' prefix matter)."""

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a completions prompt, special tokens included as vLLM adds them."""
        ...

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        """Token ids of chat ``messages`` after the chat template (``options``: the request's
        ``add_generation_prompt``, ``continue_final_message``, ``chat_template_kwargs``)."""
        ...


_GIL_FREE_CHARS = 16384
"""Longer texts go through ``Tokenizer.encode_batch``, which releases the GIL (``encode``
holds it), so the router's event loop keeps running while a worker thread tokenises."""

_COMPOSING_NORMALIZERS = {"NFC": 3, "NFKC": 3, "NFD": 1, "NFKD": 1, "Lowercase": 1}
"""Normalizers and by how much they can shrink UTF-8 text at most (NFC composes three
3-byte Hangul jamo into one 3-byte syllable); others (strip, replace) have no bound."""


def max_token_bytes(tok: object) -> int | None:
    """Most input bytes one token of ``tok`` can stand for (its attribute ``max_token_bytes``),
    or ``None`` when unknown: then no length check happens before tokenising."""
    value = getattr(tok, "max_token_bytes", None)
    return value if isinstance(value, int) and value > 0 else None


class ByteTokenizer:
    """One token per UTF-8 byte; chat messages rendered as ``role: content`` lines."""

    max_token_bytes = 1

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(prompt.encode())

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        return list(_flatten_chat(messages).encode())


def _flatten_chat(messages: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        lines.append(f"{m.get('role', '')}: {content or ''}")
    return "\n".join(lines) + "\n"


class HFPromptTokenizer:
    """The served model's tokenizer through ``transformers`` (imported when constructed).

    ``path`` is a local directory, or a hub id that is looked up in the local cache first and
    downloaded only when it is missing there and ``HF_HUB_OFFLINE`` is not set.
    """

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.path = path
        try:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
                raise
            # Not on disk (a hub id in a fresh pod): fetch it once, like the engines do.
            self._tok = AutoTokenizer.from_pretrained(path)
        self._warned = False
        self.vocab_size: int = len(self._tok)
        """Token ids in a request must be below this."""

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self._tok.encode(prompt))

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        kwargs = dict(options.pop("chat_template_kwargs", None) or {})
        kwargs.update({k: v for k, v in options.items() if v is not None})
        kwargs.setdefault("add_generation_prompt", True)
        conversation: Any = [dict(m) for m in messages]
        try:
            out: Any = self._tok.apply_chat_template(conversation, tokenize=True, **kwargs)
        except Exception as exc:  # no template, bad message shape: the engine will judge
            if not self._warned:
                log.warning("chat template failed (%s); estimating length from the text", exc)
                self._warned = True
            return list(self._tok.encode(_flatten_chat(messages)))
        if isinstance(out, Mapping):  # transformers 5 returns a BatchEncoding
            out = out["input_ids"]
        return [int(t) for t in out]


class FastPromptTokenizer:
    """``tokenizer.json`` through ``tokenizers``; chat templates through a Jinja sandbox set up
    like ``transformers``' (trim/lstrip blocks, ``loopcontrols``, ``raise_exception``,
    ``strftime_now``, non-ASCII ``tojson``), with the special tokens of ``tokenizer_config``."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        root = Path(path)
        self.path = str(root)
        self._tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        cfg_file = root / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = root / "chat_template.jinja"
        if template is None and jinja_file.exists():
            template = jinja_file.read_text()
        self._specials = {
            k: (v.get("content") if isinstance(v, dict) else v)
            for k, v in cfg.items()
            if k.endswith("_token") and isinstance(v, str | dict)
        }
        self._template = _compile_template(template) if template else None
        self._warned = False
        self.max_token_bytes = _vocab_max_bytes(self._tok)
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        """Token ids in a request must be below this."""
        """Most input bytes one token covers (longest vocabulary entry, times what the
        normalizer may shrink); ``None`` when the normalizer's effect has no bound."""

    def _encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) > _GIL_FREE_CHARS:
            return list(
                self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
            )
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_prompt(self, prompt: str) -> list[int]:
        return self._encode(prompt)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        kwargs = dict(options.pop("chat_template_kwargs", None) or {})
        kwargs.update({k: v for k, v in options.items() if v is not None})
        continue_final = bool(kwargs.pop("continue_final_message", False))
        add_generation_prompt = bool(kwargs.pop("add_generation_prompt", not continue_final))
        if self._template is None:
            if not self._warned:
                log.warning(
                    "%s has no chat template; estimating chat length from the text", self.path
                )
                self._warned = True
            return self.encode_prompt(_flatten_chat(messages))
        conversation = [dict(m) for m in messages]
        try:
            text = self._template.render(
                messages=conversation,
                add_generation_prompt=add_generation_prompt,
                **{**self._specials, **kwargs},
            )
        except Exception as exc:  # the template refused these messages: the engine will judge
            if not self._warned:
                log.warning("chat template failed (%s); estimating length from the text", exc)
                self._warned = True
            return self.encode_prompt(_flatten_chat(messages))
        if continue_final and conversation:  # end the text where the last message's text ends
            last = conversation[-1].get("content")
            if isinstance(last, str) and last.strip() and last.strip() in text:
                text = text[: text.rindex(last.strip()) + len(last.strip())]
        return self._encode(text, add_special_tokens=False)


def _vocab_max_bytes(tok: Any) -> int | None:
    norm = tok.normalizer
    shrink = 1
    if norm is not None:
        factor = _COMPOSING_NORMALIZERS.get(type(norm).__name__)
        if factor is None:
            return None
        shrink = factor
    vocab = tok.get_vocab(with_added_tokens=True)
    # A vocabulary string's UTF-8 length bounds the bytes it stands for (byte-level BPE maps
    # each byte to one 1–2 byte character; "▁" and "<0x41>" only overestimate).
    longest = max((len(t.encode()) for t in vocab), default=1)
    return max(1, longest) * shrink


def _compile_template(source: str) -> Any:
    from jinja2 import TemplateError, ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def load_tokenizer(path: str | None) -> PromptTokenizer:
    """The lightest tokenizer that counts like the engine: ``FastPromptTokenizer`` for a
    directory with ``tokenizer.json``, else ``HFPromptTokenizer``; ``ByteTokenizer`` for
    ``None``."""
    if path is None:
        return ByteTokenizer()
    if (Path(path) / "tokenizer.json").is_file():
        return FastPromptTokenizer(path)
    return HFPromptTokenizer(path)
