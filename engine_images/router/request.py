"""What the router reads from a client request and what it sends to each engine leg.

``parse_request`` validates an OpenAI completions / chat body (``BadRequestError`` otherwise:
such a request never reaches an engine); ``prefill_body`` and ``decode_body`` build the two
legs of vLLM's disaggregated call (``shared/reference/vllm-cpu-pd.md``)::

    prefill ← request + {max_tokens: 1, [max_completion_tokens: 1], stream: false,
               kv_transfer_params: {do_remote_decode: true, do_remote_prefill: false,
               remote_engine_id: null, remote_block_ids: null, remote_host: null,
               remote_port: null}}          (no stream_options, no min_tokens)
    decode  ← request + {kv_transfer_params: <what prefill returned>}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from prfaas.engine.router.errors import BadRequestError, InvalidJSONError, MissingFieldError

__all__ = [
    "API_PATHS",
    "BODY_BYTES_PER_TOKEN",
    "MAX_BODY_BYTES",
    "MAX_COMPLETION_TOKENS",
    "MAX_TOKEN_ID",
    "PREFILL_KV_PARAMS",
    "ApiKind",
    "ParsedRequest",
    "body_limit",
    "decode_body",
    "dump_json",
    "engine_error_reason",
    "load_json",
    "new_request_id",
    "parse_request",
    "prefill_body",
]

ApiKind = Literal["completions", "chat"]
API_PATHS: dict[ApiKind, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
"""The engine endpoint of each kind of request (the router serves the same paths)."""

PREFILL_KV_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
"""What the prefill leg asks for: "prefill, keep the blocks, someone will pull them"."""


MAX_BODY_BYTES = 64 << 20
"""Largest accepted request body when the model's context is unknown."""
BODY_BYTES_PER_TOKEN = 16
"""Body bytes one prompt token may take: a token id is at most 11 (``4294967295,``); text is
about 4 bytes a token, 9 for CJK escaped as ``\\uXXXX``."""
_BODY_SLACK_BYTES = 1 << 20
"""Room for everything around the prompt (chat roles, sampling parameters, tools)."""


def body_limit(max_model_len: int | None) -> int:
    """Largest request body (decompressed) a prompt within ``max_model_len`` tokens needs."""
    if max_model_len is None:
        return MAX_BODY_BYTES
    return min(MAX_BODY_BYTES, _BODY_SLACK_BYTES + BODY_BYTES_PER_TOKEN * max_model_len)


_DIGIT_MAP = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_LONG_DIGITS = b"1" * 19
"""19 digits in a row (with every digit mapped to ``1`` by ``_DIGIT_MAP``): a number orjson
might not read as ``json`` does (ints beyond 64 bits become floats there). A translate and a
substring search: a regex is several times slower on digit-heavy bodies (token-id prompts)."""


def load_json(raw: bytes) -> tuple[Any, bool]:
    """``(value, plain)``: parsed by orjson (``plain``: no NaN/Infinity, no int beyond 64 bits,
    so ``dump_json(value, plain=True)`` writes it back exactly), or — for what orjson refuses
    or might read differently — by ``json``, which raises ``ValueError`` as before."""
    if _LONG_DIGITS not in raw.translate(_DIGIT_MAP):
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass  # json decides (and words the error): NaN, 1e400, UTF-16, lone surrogates…
    return json.loads(raw), False


MAX_TOKEN_ID = (1 << 31) - 1
"""Largest token id a request may carry (vocabularies are far smaller; engines use int32)."""
MAX_COMPLETION_TOKENS = (1 << 31) - 1
"""Largest ``max_tokens`` passed on, whatever the model's length (unknown to some routers)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _load_client_json(raw: bytes) -> tuple[Any, bool]:
    """``load_json`` for client bodies: no NaN/Infinity (an engine would get them), numbers
    that overflow refused, nesting bounded (``RecursionError`` becomes ``ValueError``)."""
    if _LONG_DIGITS not in raw.translate(_DIGIT_MAP):
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    try:  # lone surrogates ("\ud800") cannot be encoded for an engine or a tokenizer
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise ValueError("a string holds a lone UTF-16 surrogate") from exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    return value, False


def dump_json(value: Any, *, plain: bool) -> bytes:
    """JSON bytes of ``value``: orjson when everything in it came from ``load_json`` as
    ``plain`` (orjson would turn NaN into null), else ``json.dumps``."""
    if plain:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass  # e.g. lone surrogates in a str: json escapes them
    return json.dumps(value).encode()


def new_request_id() -> str:
    """A fresh id for a request that came without ``X-Request-Id``: 32 random hex digits (as
    ``uuid4().hex`` reads, at a third of its cost)."""
    return os.urandom(16).hex()


@dataclass(slots=True)
class ParsedRequest:
    """A validated client request (``body`` is forwarded; the rest is what the router needs)."""

    kind: ApiKind
    body: dict[str, Any]
    stream: bool
    max_tokens: int | None
    prompt_ids: list[int] | None = None
    """Set when the completions prompt is already token ids."""
    plain_json: bool = True
    """Every JSON value the legs' bodies will carry was read by orjson (``load_json``), so
    ``dump_json`` may write them with orjson; cleared when one was not."""


def _optional_positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 1 <= value <= MAX_COMPLETION_TOKENS
    ):
        raise BadRequestError(
            f"{key!r} must be a positive integer up to {MAX_COMPLETION_TOKENS}, "
            f"got {str(value)[:40]}"
        )
    return value


def _single_prompt(prompt: Any) -> str | list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise MissingFieldError("'prompt' is empty; send at least one character")
        return prompt
    if isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        if not prompt:
            raise MissingFieldError("'prompt' is an empty token list")
        if min(prompt) < 0 or max(prompt) > MAX_TOKEN_ID:
            raise BadRequestError(f"token ids must be from 0 to {MAX_TOKEN_ID}")
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        raise BadRequestError(
            f"batched prompts ({len(prompt)} in one request) are not supported by the "
            "disaggregated router; send one request per prompt"
        )
    raise MissingFieldError("'prompt' must be a string or a list of token ids")


def _check_content(i: int, content: Any) -> None:
    """A message's content: text, null, or a list of parts whose ``text`` is text."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequestError(f"messages[{i}].content must be a string or a list of parts")
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise BadRequestError(f"messages[{i}].content[{j}] must be an object")
        if "text" in part and not isinstance(part["text"], str):
            raise BadRequestError(f"messages[{i}].content[{j}].text must be a string")


def parse_request(kind: ApiKind, raw: bytes) -> ParsedRequest:
    """Validate the body; raises ``BadRequestError`` subclasses (the engines never see these)."""
    try:
        body, plain = _load_client_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSONError(f"request body is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(body, dict):
        raise InvalidJSONError(f"request body must be a JSON object, got {type(body).__name__}")
    prompt_ids: list[int] | None = None
    if kind == "completions":
        if "prompt" not in body or body["prompt"] is None:
            raise MissingFieldError("'prompt' is required for /v1/completions")
        prompt = _single_prompt(body["prompt"])
        if isinstance(prompt, list):
            prompt_ids = prompt
        body["prompt"] = prompt
    else:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise MissingFieldError(
                "'messages' is required for /v1/chat/completions: a non-empty list of "
                "{role, content} objects"
            )
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise MissingFieldError("every entry of 'messages' must be an object with a 'role'")
        for i, m in enumerate(messages):
            _check_content(i, m.get("content"))
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise BadRequestError("'chat_template_kwargs' must be an object")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequestError(f"'stream' must be true or false, got {stream!r}")
    max_tokens = _optional_positive_int(body, "max_completion_tokens")
    legacy = _optional_positive_int(body, "max_tokens")
    return ParsedRequest(kind, body, stream, max_tokens or legacy, prompt_ids, plain)


def prefill_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The prefill leg's body: one token, no streaming, KV kept for a remote decode."""
    out = {k: v for k, v in body.items() if k not in ("stream_options", "min_tokens")}
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out["stream"] = False
    out["kv_transfer_params"] = dict(PREFILL_KV_PARAMS)
    return out


def decode_body(body: Mapping[str, Any], kv_params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The decode leg's body: the client's request plus exactly the prefill's KV params."""
    out = dict(body)
    out.pop("kv_transfer_params", None)
    if kv_params is not None:
        out["kv_transfer_params"] = dict(kv_params)
    return out


def engine_error_reason(data: bytes, limit: int = 300) -> str:
    """An engine's error message (OpenAI error JSON or raw text), shortened."""
    try:
        obj = json.loads(data)
        msg = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        text = str(msg)
    except ValueError:
        text = data.decode(errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"
