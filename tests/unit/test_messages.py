"""Messages written to status and Events are redacted and bounded (issue #11, item 6)."""

from __future__ import annotations

import json

from prfaas.operator.api.messages import MESSAGE_LIMIT, safe_message
from prfaas.operator.controller.clients import ApiError, _message
from prfaas.operator.controller.conditions import condition


def test_credentials_are_masked() -> None:
    text = (
        "kubeconfig: users[0] token: s3cr3t-abc, password=hunter2 "
        "Authorization: Bearer eyJhbGciOi.abc.def client-key-data: LS0tLS1CRUdJTi "
        "blob " + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" * 3
    )
    out = safe_message(text)
    for secret in ("s3cr3t", "hunter2", "eyJhbGciOi", "LS0tLS1CRUdJTi", "QUJDREVGR0hJSk"):
        assert secret not in out
    assert "token: <redacted>" in out and "users[0]" in out
    name = "hybrid-1t-prfaas-h200-prefill-0123456789-abcdefghij"  # a long object name stays
    assert safe_message(f"Deployment/{name} (0/3)") == f"Deployment/{name} (0/3)"


def test_messages_are_bounded_and_control_characters_dropped() -> None:
    out = safe_message("a\x1b[31m" + "x " * 1_000_000)
    assert len(out) <= MESSAGE_LIMIT and out.endswith("(message cut)")
    assert "\x1b" not in out


def test_conditions_carry_only_safe_messages() -> None:
    cond = condition("Reachable", "False", "Unreachable", "token: abc " + "y" * 5000)
    assert "abc" not in cond["message"] and len(cond["message"]) <= MESSAGE_LIMIT


def test_a_remote_api_error_message_is_bounded() -> None:
    huge = json.dumps({"kind": "Status", "message": "z" * 2_000_000})
    err = ApiError("dc-a", 500, _message(huge))
    assert len(str(err)) < 400
