"""Names and labels of the operator's children: the contract that label selectors, the apply
layer's ownership check and the autoscaler's Prometheus queries share.

Every child carries ``prfaas.io/plan``, ``prfaas.io/plan-namespace``, ``prfaas.io/cluster`` and
``prfaas.io/role``; values longer than a label allows end with a stable hash.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "LABEL_CLUSTER",
    "LABEL_PLAN",
    "LABEL_PLAN_NAMESPACE",
    "LABEL_ROLE",
    "MANAGED_BY",
    "child_name",
    "label_value",
]

LABEL_PLAN = "prfaas.io/plan"
LABEL_PLAN_NAMESPACE = "prfaas.io/plan-namespace"
LABEL_CLUSTER = "prfaas.io/cluster"
LABEL_ROLE = "prfaas.io/role"
MANAGED_BY = "prfaas"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def child_name(*parts: str, limit: int = 63) -> str:
    """``a-b-c`` as a DNS-1035 label (≤ 63 chars; long names end with a stable hash)."""
    name = "-".join(p.strip("-").lower().replace(".", "-") for p in parts if p)
    if not name[:1].isalpha():
        name = "p-" + name
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9].rstrip('-')}-{_short_hash(name)}"


def label_value(value: str) -> str:
    """A label value (≤ 63 chars, alphanumeric at both ends), hashed when too long."""
    if len(value) <= 63:
        return value
    return f"{value[:54].rstrip('-.')}-{_short_hash(value)}"
