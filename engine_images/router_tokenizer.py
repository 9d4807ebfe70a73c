"""Prompt length as the engine will see it: the served model's tokenizer, or a stand-in.

``PromptTokenizer`` is the interface the router needs (two methods). ``HFPromptTokenizer``
loads the served model's tokenizer with ``transformers.AutoTokenizer`` (offline; chat template
applied for chat requests, as vLLM does). ``ByteTokenizer`` counts UTF-8 bytes: used when the
router file names no tokenizer, and by tests and benchmarks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["ByteTokenizer", "HFPromptTokenizer", "PromptTokenizer", "load_tokenizer"]

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


class ByteTokenizer:
    """One token per UTF-8 byte; chat messages rendered as ``role: content`` lines."""

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


def load_tokenizer(path: str | None) -> PromptTokenizer:
    """``HFPromptTokenizer(path)``, or ``ByteTokenizer()`` when ``path`` is ``None``."""
    if path is None:
        return ByteTokenizer()
    return HFPromptTokenizer(path)
