"""The two legs' bodies and request validation, as pure functions."""

from __future__ import annotations

import json

import pytest
from prfaas.engine.router.errors import BadRequestError
from prfaas.engine.router.request import decode_body, parse_request, prefill_body


def test_prefill_body_is_the_handshake_and_leaves_the_client_body_alone() -> None:
    body = {
        "prompt": "p",
        "max_tokens": 9,
        "max_completion_tokens": 9,
        "stream": True,
        "stream_options": {"include_usage": True},
        "min_tokens": 3,
        "top_p": 0.5,
        "kv_transfer_params": {"stale": True},
    }
    original = json.loads(json.dumps(body))
    assert prefill_body(body) == {
        "prompt": "p",
        "max_tokens": 1,
        "max_completion_tokens": 1,
        "stream": False,
        "top_p": 0.5,
        "kv_transfer_params": {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        },
    }
    assert body == original
    assert "max_completion_tokens" not in prefill_body({"prompt": "p"})


def test_decode_body_carries_exactly_the_prefill_params() -> None:
    params = {"do_remote_prefill": True, "remote_block_ids": [1, 2]}
    body = {"prompt": "p", "stream": True, "kv_transfer_params": {"client": "junk"}}
    assert decode_body(body, params) == {
        "prompt": "p",
        "stream": True,
        "kv_transfer_params": params,
    }
    assert decode_body(body, None) == {"prompt": "p", "stream": True}


def test_parse_request_accepts_the_openai_shapes() -> None:
    assert parse_request("completions", b'{"prompt": ["one"]}').body["prompt"] == "one"
    ids = parse_request("completions", b'{"prompt": [[5, 6, 7]], "max_tokens": 4}')
    assert ids.prompt_ids == [5, 6, 7] and ids.max_tokens == 4
    chat = parse_request(
        "chat",
        b'{"messages": [{"role": "user", "content": "x"}], "stream": true, '
        b'"max_completion_tokens": 3, "max_tokens": 8}',
    )
    assert chat.stream and chat.max_tokens == 3


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"nul",
        b'"text"',
        b'{"prompt": 5}',
        b'{"prompt": [1, "a"]}',
        b'{"prompt": [true]}',
        b'{"prompt": "x", "max_tokens": 1.5}',
    ],
)
def test_parse_request_rejects_malformed_completions(raw: bytes) -> None:
    with pytest.raises(BadRequestError):
        parse_request("completions", raw)
