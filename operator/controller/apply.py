"""Idempotent create-or-patch of a plan's children in one cluster, pruning what the plan dropped.

Two ways to write, chosen per operator (``ApplyMode``):

- ``server-side``: server-side apply with field manager ``prfaas`` and ``force`` — what a real
  API server should get; re-applying the same manifest is a no-op there.
- ``merge``: read, then create (a 409 means someone created it meanwhile: read again) or send
  a JSON merge-patch only when the live object differs from the manifest. For API servers
  without server-side apply, such as kmock's emulator.

Ownership is by labels: an existing object of the same name *without* our ``prfaas.io/plan``
label naming this plan is never modified (``ApplyError``), and pruning lists only objects
carrying this plan's labels. Same-cluster, same-namespace children get an owner reference to
the ServingPlan so the garbage collector removes them; the rest are removed by
``delete_children`` from the ServingPlan's finalizer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prfaas.operator.api.labels import (
    LABEL_CLUSTER,
    LABEL_PLAN,
    LABEL_PLAN_NAMESPACE,
    label_value,
)
from prfaas.operator.controller.clients import (
    KINDS,
    ApiError,
    ClusterClient,
    OperatorError,
    kind_of,
)

__all__ = [
    "CHILD_KINDS",
    "FIELD_MANAGER",
    "LAST_APPLIED",
    "ApplyError",
    "ApplyMode",
    "ApplyResult",
    "apply_children",
    "availability",
    "cluster_selector",
    "delete_children",
    "is_subset",
    "merge_patch_body",
    "owner_reference",
    "plan_selector",
]

log = logging.getLogger(__name__)

FIELD_MANAGER = "prfaas"
LAST_APPLIED = "prfaas.io/last-applied"
"""Merge mode only: the manifest last written, for removing fields dropped since."""
ApplyMode = Literal["server-side", "merge"]
CHILD_KINDS: tuple[str, ...] = (
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Deployment",
    "LeaderWorkerSet",
    "Service",
    "ConfigMap",
    "PodMonitor",
)
"""Kinds the builders emit; pruning and deletion look at exactly these."""


class ApplyError(OperatorError):
    """An object with a child's name exists but is not ours; rename or delete it by hand."""


@dataclass(slots=True)
class ApplyResult:
    created: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The live object after the write, by ``Kind/namespace/name``."""


def _ref(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']}/{meta.get('namespace')}/{meta['name']}"


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any] | None:
    """The owner reference pointing at ``owner`` (``None`` when it has no uid yet)."""
    meta = owner.get("metadata", {})
    if not meta.get("uid"):
        return None
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_subset(want: Any, have: Any) -> bool:
    """Whether every field of ``want`` is present with the same value in ``have``.

    Dicts compare key by key (extra live keys, defaults the server added, are fine); lists and
    scalars compare whole, as a merge-patch would write them.
    """
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and is_subset(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(is_subset(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want == have) or (_num(want) is not None and _num(want) == _num(have))


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _ours(live: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    have = live.get("metadata", {}).get("labels") or {}
    mine = want["metadata"]["labels"]
    return all(have.get(k) == mine[k] for k in (LABEL_PLAN, LABEL_PLAN_NAMESPACE))


async def _apply_one(
    client: ClusterClient, obj: dict[str, Any], mode: ApplyMode, result: ApplyResult
) -> None:
    kind = kind_of(obj)
    meta = obj["metadata"]
    ref = _ref(obj)
    live = await client.get(kind, meta.get("namespace"), meta["name"])
    if live is not None and not _ours(live, obj):
        raise ApplyError(
            f"{client.name}: {ref} exists without labels {LABEL_PLAN}={meta['labels'][LABEL_PLAN]}"
            f", {LABEL_PLAN_NAMESPACE}={meta['labels'][LABEL_PLAN_NAMESPACE]}; prfaas does not "
            "touch objects it does not own — delete or rename it"
        )
    if mode == "server-side":
        if live is not None and is_subset(obj, live):
            result.unchanged.append(ref)
            result.live[ref] = live
            return
        result.live[ref] = await client.apply(obj, FIELD_MANAGER)
        (result.patched if live is not None else result.created).append(ref)
        return
    obj = _with_last_applied(obj)
    if live is None:
        try:
            result.live[ref] = await client.create(obj)
            result.created.append(ref)
            return
        except ApiError as exc:
            if exc.status != 409:
                raise
            # Created meanwhile (another worker, or our own earlier attempt): patch it instead.
            live = await client.get(kind, meta.get("namespace"), meta["name"])
            if live is None:
                raise
            if not _ours(live, obj):
                raise ApplyError(f"{client.name}: {ref} was created by someone else") from exc
    if is_subset(obj, live):
        result.unchanged.append(ref)
        result.live[ref] = live
        return
    body = merge_patch_body(_last_applied(live), obj)
    result.live[ref] = await client.patch(kind, meta.get("namespace"), meta["name"], body)
    result.patched.append(ref)


def _with_last_applied(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its own JSON in the ``LAST_APPLIED`` annotation (merge mode's memory of what
    it wrote, so a field dropped from the manifest is removed from the live object)."""
    meta = dict(obj["metadata"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    meta["annotations"] = annotations
    plain = {**obj, "metadata": meta}
    meta["annotations"] = {
        **annotations,
        LAST_APPLIED: json.dumps(plain, sort_keys=True, separators=(",", ":")),
    }
    return {**obj, "metadata": meta}


def _last_applied(live: Mapping[str, Any]) -> dict[str, Any]:
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        out = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def merge_patch_body(last: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge-patch (RFC 7386) writing ``new`` and deleting (``null``) the keys that
    ``last`` — what we wrote before — had and ``new`` no longer has."""
    body: dict[str, Any] = {}
    for key in last:
        if key not in new:
            body[key] = None
    for key, value in new.items():
        old = last.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            body[key] = merge_patch_body(old, value)
        else:
            body[key] = value
    return body


async def apply_children(
    client: ClusterClient,
    desired: Iterable[dict[str, Any]],
    *,
    selector: Mapping[str, str],
    mode: ApplyMode = "server-side",
    owner: Mapping[str, Any] | None = None,
    prune: bool = True,
    kinds: Iterable[str] = CHILD_KINDS,
) -> ApplyResult:
    """Write ``desired`` to ``client``'s cluster; delete children matching ``selector`` that are
    no longer desired. ``owner``: the ServingPlan, referenced from children in its namespace."""
    result = ApplyResult()
    objs = [dict(o) for o in desired]
    owner_ref = owner_reference(owner) if owner is not None else None
    owner_ns = owner.get("metadata", {}).get("namespace") if owner is not None else None
    for obj in objs:
        if owner_ref is not None and obj["metadata"].get("namespace") == owner_ns:
            obj["metadata"] = {**obj["metadata"], "ownerReferences": [owner_ref]}
        await _apply_one(client, obj, mode, result)
    if prune:
        keep = {_ref(o) for o in objs}
        for name in kinds:
            kind = KINDS[name]
            for live in await client.list_objects(kind, None, selector):
                live.setdefault("kind", name)
                ref = _ref(live)
                if ref in keep:
                    continue
                meta = live["metadata"]
                if await client.delete(kind, meta.get("namespace"), meta["name"]):
                    log.info("%s: pruned %s", client.name, ref)
                    result.pruned.append(ref)
    return result


async def delete_children(
    client: ClusterClient, selector: Mapping[str, str], kinds: Iterable[str] = CHILD_KINDS
) -> list[str]:
    """Delete every child matching ``selector`` (all namespaces); the references deleted."""
    deleted: list[str] = []
    for name in kinds:
        kind = KINDS[name]
        for live in await client.list_objects(kind, None, selector):
            meta = live["metadata"]
            if await client.delete(kind, meta.get("namespace"), meta["name"]):
                deleted.append(f"{name}/{meta.get('namespace')}/{meta['name']}")
    return deleted


def availability(obj: Mapping[str, Any]) -> tuple[int, int]:
    """(available, wanted) replicas of a Deployment or LeaderWorkerSet from its live status.

    A Deployment counts as available only for replicas that are available *and* updated to the
    current template, once the controller has observed the current generation.
    """
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    gen = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if gen is not None and observed is not None and observed < gen:
        return 0, wanted
    if obj.get("kind") == "LeaderWorkerSet":
        return int(status.get("readyReplicas", 0)), wanted
    available = int(status.get("availableReplicas", 0))
    if "updatedReplicas" in status:
        available = min(available, int(status["updatedReplicas"]))
    return available, wanted


def cluster_selector(plan_name: str, plan_namespace: str, cluster: str) -> dict[str, str]:
    """The labels that select one plan's children in one cluster."""
    return {
        LABEL_PLAN: label_value(plan_name),
        LABEL_PLAN_NAMESPACE: label_value(plan_namespace),
        LABEL_CLUSTER: label_value(cluster),
    }


def plan_selector(plan_name: str, plan_namespace: str) -> dict[str, str]:
    """The labels that select all of one plan's children."""
    return {LABEL_PLAN: label_value(plan_name), LABEL_PLAN_NAMESPACE: label_value(plan_namespace)}
