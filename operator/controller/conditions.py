"""Status conditions the way Argo CD and kstatus read them, as pure functions.

``set_condition`` mirrors apimachinery's ``meta.SetStatusCondition``: ``lastTransitionTime``
moves only when ``status`` changes, and the caller learns whether anything changed. Time is
always passed in (``now``), never read here, so tests control it.

``summarize`` turns what a reconcile learnt (children available? clusters missing? planner
stalled?) into the *full* list of the five condition types; a merge-patch replaces lists, so a
partial list would drop conditions.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prfaas.operator.api.messages import safe_message

__all__ = [
    "CONDITION_TYPES",
    "Outcome",
    "condition",
    "format_time",
    "merge_conditions",
    "set_condition",
    "summarize",
]

Status = Literal["True", "False", "Unknown"]

CONDITION_TYPES: tuple[str, ...] = ("Ready", "Progressing", "Degraded", "Reconciling", "Stalled")
"""Every ServingPlan status carries all five, in this order."""


def format_time(now: _dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, second precision (``metav1.Time``)."""
    return now.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str,
    status: Status,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """A condition dict without ``lastTransitionTime`` (``set_condition`` stamps it)."""
    out: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": safe_message(message),
    }
    if observed_generation is not None:
        out["observedGeneration"] = observed_generation
    return out


def set_condition(conditions: list[dict[str, Any]], new: dict[str, Any], now: _dt.datetime) -> bool:
    """Insert or update ``new`` in ``conditions`` (in place); return whether anything changed.

    ``lastTransitionTime`` is set to ``now`` when the condition is new or its ``status``
    flips; otherwise the old time is kept, even if reason or message change.
    """
    for existing in conditions:
        if existing.get("type") != new["type"]:
            continue
        changed = False
        if existing.get("status") != new["status"]:
            existing["status"] = new["status"]
            existing["lastTransitionTime"] = format_time(now)
            changed = True
        elif not existing.get("lastTransitionTime"):
            existing["lastTransitionTime"] = format_time(now)
            changed = True
        for key in ("reason", "message", "observedGeneration"):
            if key in new and existing.get(key) != new[key]:
                existing[key] = new[key]
                changed = True
        return changed
    stamped = dict(new)
    stamped["lastTransitionTime"] = format_time(now)
    conditions.append(stamped)
    return True


@dataclass(slots=True)
class Outcome:
    """What one reconcile of a ServingPlan found, in words the conditions are made from."""

    generation: int | None = None
    planned: bool = False
    """A feasible plan was computed (or the last good one kept)."""
    stalled_reason: str = ""
    """Non-empty: the planner cannot satisfy the spec (``Stalled``); children untouched."""
    missing: list[str] = field(default_factory=list)
    """Referenced clusters or links that do not exist."""
    unreachable: list[str] = field(default_factory=list)
    """Clusters whose API server could not be reached."""
    errors: list[str] = field(default_factory=list)
    """Other failures while applying (retried)."""
    not_available: list[str] = field(default_factory=list)
    """Children (``cluster/kind/name``) whose replicas are not all available yet."""
    children: int = 0


def _join(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def summarize(outcome: Outcome) -> list[dict[str, Any]]:
    """The five conditions for ``outcome`` (without timestamps), in ``CONDITION_TYPES`` order."""
    gen = outcome.generation
    problems: list[str] = []
    if outcome.missing:
        problems.append(f"missing: {_join(outcome.missing)} (create them or fix spec.clusters)")
    if outcome.unreachable:
        problems.append(f"unreachable clusters: {_join(outcome.unreachable)}")
    if outcome.errors:
        problems.append(_join(outcome.errors, 3))
    stalled = bool(outcome.stalled_reason)
    degraded = bool(problems) or stalled
    waiting = bool(outcome.not_available)
    ready = outcome.planned and not degraded and not waiting

    if stalled:
        ready_c = condition(
            "Ready", "False", "PlanInfeasible", outcome.stalled_reason, observed_generation=gen
        )
    elif problems:
        reason = (
            "ClusterMissing"
            if outcome.missing
            else ("ClusterUnreachable" if outcome.unreachable else "ApplyFailed")
        )
        ready_c = condition("Ready", "False", reason, "; ".join(problems), observed_generation=gen)
    elif waiting:
        ready_c = condition(
            "Ready",
            "False",
            "ReplicasUnavailable",
            f"waiting for {_join(outcome.not_available)}",
            observed_generation=gen,
        )
    elif ready:
        ready_c = condition(
            "Ready",
            "True",
            "AllReplicasAvailable",
            f"{outcome.children} children available",
            observed_generation=gen,
        )
    else:
        ready_c = condition(
            "Ready", "Unknown", "NotPlanned", "no plan yet", observed_generation=gen
        )

    progressing = waiting and not stalled
    out = [
        ready_c,
        condition(
            "Progressing",
            "True" if progressing else "False",
            "RollingOut" if progressing else ("Stalled" if stalled else "Settled"),
            ready_c["message"] if progressing else "",
            observed_generation=gen,
        ),
        condition(
            "Degraded",
            "True" if degraded else "False",
            ready_c["reason"] if degraded else "AsPlanned",
            ready_c["message"] if degraded else "",
            observed_generation=gen,
        ),
        condition(
            "Reconciling",
            "True" if progressing else "False",
            "RollingOut" if progressing else "Idle",
            ready_c["message"] if progressing else "",
            observed_generation=gen,
        ),
        condition(
            "Stalled",
            "True" if stalled else "False",
            "PlanInfeasible" if stalled else "NotStalled",
            outcome.stalled_reason,
            observed_generation=gen,
        ),
    ]
    return out


def merge_conditions(
    existing: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]], now: _dt.datetime
) -> tuple[list[dict[str, Any]], bool]:
    """Apply every ``new`` condition onto a copy of ``existing``; the full list and a changed flag.

    Conditions of types we do not manage are dropped, so the list is exactly ``CONDITION_TYPES``.
    """
    current = [dict(c) for c in existing if c.get("type") in CONDITION_TYPES]
    changed = False
    for cond in new:
        changed |= set_condition(current, cond, now)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    current.sort(key=lambda c: order.get(c.get("type", ""), len(order)))
    return current, changed
