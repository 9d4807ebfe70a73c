"""``load_json`` / ``dump_json``: orjson where it reads and writes exactly what ``json`` would."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prfaas.engine.router.errors import InvalidJSONError
from prfaas.engine.router.request import dump_json, load_json, parse_request

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 80), 1 << 80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(_values, st.booleans())
def test_reads_and_writes_what_json_does(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    loaded, plain = load_json(raw)
    assert _same(loaded, json.loads(raw))
    assert _same(json.loads(dump_json(loaded, plain=plain)), loaded)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"x": NaN}',
        b'{"x": 1e400}',
        b'{"seed": 18446744073709551616}',
        b'{"x": -Infinity}',
        b'{"x": "\\ud800"}',
    ],
)
def test_what_orjson_would_change_goes_through_json(raw: bytes) -> None:
    loaded, plain = load_json(raw)
    assert not plain
    assert dump_json(loaded, plain=plain) == json.dumps(json.loads(raw)).encode()


def test_big_ints_stay_ints_in_the_forwarded_body() -> None:
    req = parse_request("completions", b'{"prompt": "hi", "seed": 123456789012345678901}')
    assert req.body["seed"] == 123456789012345678901 and not req.plain_json
    fast = parse_request("completions", b'{"prompt": "hi", "seed": 7}')
    assert fast.plain_json


def test_invalid_json_is_reported_as_before() -> None:
    with pytest.raises(InvalidJSONError, match="Expecting value: line 1 column 1"):
        parse_request("completions", b"not json")
    with pytest.raises(InvalidJSONError, match="must be a JSON object"):
        parse_request("completions", b"[1, 2]")
