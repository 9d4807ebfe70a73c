"""What the operator writes where others read it (status conditions, Events, status messages):
redacted and bounded.

Messages often carry text the operator did not write: an API server's error, a kubeconfig
loader's complaint, a Prometheus answer. Cluster-scoped status is readable by many, so
anything that looks like a credential is masked, control characters go, and the length is
capped (a 2 MB remote error once became a 2 MB condition).
"""

from __future__ import annotations

import re

__all__ = ["MESSAGE_LIMIT", "safe_message"]

MESSAGE_LIMIT = 1024
"""Characters a status or Event message keeps (Kubernetes caps Event messages at 1 KiB too)."""

_SECRET_FIELD = re.compile(
    r"(?i)((?:token|password|passwd|secret|api[-_]?key|authorization|client-key-data|"
    r"client-certificate-data|certificate-authority-data)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',}\]]+"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_BLOB = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _mask_blob(m: re.Match[str]) -> str:
    """Mixed-case letters and digits in one long run without ``-``: base64. Object names and
    paths (lower case, hyphens) are kept."""
    s = m.group(0)
    mixed = any(c.isupper() for c in s) and any(c.islower() for c in s)
    return "<redacted>" if mixed and "-" not in s and any(c.isdigit() for c in s) else s


def safe_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` with credential-looking values masked, control characters dropped and at most
    ``limit`` characters (the cut is said)."""
    if len(text) > 4 * limit:  # never run the patterns over megabytes
        text = text[: 4 * limit]
    out = _BEARER.sub(r"\1 <redacted>", text)
    out = _SECRET_FIELD.sub(r"\1<redacted>", out)
    out = _BLOB.sub(_mask_blob, out)
    out = _CONTROL.sub("", out)
    if len(out) > limit:
        out = out[: limit - 20] + " … (message cut)"
    return out
