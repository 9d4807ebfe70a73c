"""Apply helpers: subset comparison, availability, owner references, RBAC derived from KINDS."""

from __future__ import annotations

from typing import Any

import kmock
import pytest
from prfaas.operator.controller.apply import (
    ApplyError,
    apply_children,
    availability,
    is_subset,
    merge_patch_body,
    owner_reference,
)
from prfaas.operator.controller.clients import (
    KINDS,
    ApiError,
    ClusterClient,
    OperatorError,
    kind_of,
    rbac_rules,
)


def test_is_subset_ignores_server_defaults_but_not_changes() -> None:
    want = {"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "e"}]}}}}
    have = {
        "spec": {
            "replicas": 3,
            "progressDeadlineSeconds": 600,
            "template": {"spec": {"containers": [{"name": "e", "tty": False}]}},
        }
    }
    assert is_subset(want, have)
    assert not is_subset({"spec": {"replicas": 4}}, have)
    assert not is_subset({"spec": {"template": {"spec": {"containers": []}}}}, have)
    assert is_subset({"a": 1}, {"a": 1.0})


def test_availability_needs_updated_available_replicas_of_the_current_generation() -> None:
    dep: dict[str, Any] = {
        "kind": "Deployment",
        "metadata": {"generation": 2},
        "spec": {"replicas": 3},
        "status": {"observedGeneration": 2, "availableReplicas": 3, "updatedReplicas": 2},
    }
    assert availability(dep) == (2, 3)
    dep["status"]["observedGeneration"] = 1
    assert availability(dep) == (0, 3)
    lws = {"kind": "LeaderWorkerSet", "spec": {"replicas": 2}, "status": {"readyReplicas": 2}}
    assert availability(lws) == (2, 2)
    assert availability({"kind": "Deployment", "spec": {"replicas": 1}}) == (0, 1)


def test_owner_reference_needs_a_uid() -> None:
    sp: dict[str, Any] = {
        "apiVersion": "prfaas.io/v1alpha1",
        "kind": "ServingPlan",
        "metadata": {"name": "a", "namespace": "n"},
    }
    assert owner_reference(sp) is None
    sp["metadata"]["uid"] = "u-1"
    ref = owner_reference(sp)
    assert ref is not None and ref["uid"] == "u-1" and ref["controller"] is True


def test_kind_of_refuses_unmanaged_kinds_and_wrong_versions() -> None:
    assert kind_of({"apiVersion": "apps/v1", "kind": "Deployment"}).plural == "deployments"
    with pytest.raises(KeyError):
        kind_of({"apiVersion": "v1", "kind": "Pod"})
    with pytest.raises(KeyError):
        kind_of({"apiVersion": "apps/v1beta1", "kind": "Deployment"})


async def test_undeclared_verbs_are_refused_before_any_request() -> None:
    client = ClusterClient(name="x", server="http://127.0.0.1:9")
    with pytest.raises(OperatorError, match="does not declare verb 'delete' on secrets"):
        await client.delete(KINDS["Secret"], "ns", "s")
    await client.close()


def test_rbac_rules_cover_exactly_the_declared_kinds() -> None:
    granted = {
        (g, r, v)
        for rule in rbac_rules()
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    declared = {(k.group, k.plural, v) for k in KINDS.values() for v in k.verbs}
    status = {(g, r, v) for g, r, v in granted if r.endswith("/status")}
    assert granted - status == declared
    assert {r for _, r, _ in status} == {
        "servingplans/status",
        "prefillclusters/status",
        "decodeclusters/status",
        "interdclinks/status",
    }


def test_merge_patch_body_deletes_what_was_dropped() -> None:
    last = {"spec": {"a": 1, "sel": {"x": "1"}, "list": [1]}, "old": True}
    new = {"spec": {"a": 2, "list": [2]}}
    assert merge_patch_body(last, new) == {"old": None, "spec": {"a": 2, "sel": None, "list": [2]}}


async def test_merge_mode_is_idempotent_removes_dropped_fields_and_prunes(
    kmock: kmock.KubernetesEmulator,
) -> None:
    kmock.resources["v1/configmaps"] = kmock.ResourceInfo(
        kind="ConfigMap",
        singular="configmap",
        namespaced=True,
        verbs={"get", "list", "create", "patch", "delete"},
    )
    client = ClusterClient(name="t", server=str(kmock.url).rstrip("/"), ssl_context=False)
    labels = {"prfaas.io/plan": "p", "prfaas.io/plan-namespace": "ns", "prfaas.io/cluster": "c"}

    def cm(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "data": data,
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
        }

    try:
        first = await apply_children(
            client,
            [cm("a", {"k": "v", "gone": "x"}), cm("b", {})],
            selector=labels,
            mode="merge",
            kinds=["ConfigMap"],
        )
        assert sorted(first.created) == ["ConfigMap/ns/a", "ConfigMap/ns/b"]
        again = await apply_children(
            client,
            [cm("a", {"k": "v", "gone": "x"}), cm("b", {})],
            selector=labels,
            mode="merge",
            kinds=["ConfigMap"],
        )
        assert again.created == again.patched == again.pruned == []
        third = await apply_children(
            client, [cm("a", {"k": "w"})], selector=labels, mode="merge", kinds=["ConfigMap"]
        )
        assert third.patched == ["ConfigMap/ns/a"] and third.pruned == ["ConfigMap/ns/b"]
        live = await client.get(KINDS["ConfigMap"], "ns", "a")
        assert live is not None and live["data"] == {"k": "w"}
        # An object of the same name without our labels is never touched.
        foreign = cm("c", {})
        foreign["metadata"]["labels"] = {}
        await client.create(foreign)
        with pytest.raises(ApplyError, match="does not touch objects it does not own"):
            await apply_children(
                client, [cm("c", {"k": "v"})], selector=labels, mode="merge", kinds=["ConfigMap"]
            )
    finally:
        await client.close()


async def test_workload_namespaces_confine_children_and_list_each_namespace() -> None:
    paths: list[str] = []

    class Recording(ClusterClient):
        async def request(self, verb: str, kind: Any, method: str, path: str, **kw: Any) -> Any:
            paths.append(f"{method} {path}")
            return {"items": []}

    client = Recording(name="local", server="http://x", namespaces=frozenset({"a", "b"}))
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}
    with pytest.raises(ApiError, match="'other' is outside the operator's workloadNamespaces"):
        await client.create({**dep, "metadata": {"name": "d", "namespace": "other"}})
    with pytest.raises(ApiError, match="workloadNamespaces"):
        await client.delete(KINDS["Service"], "other", "s")
    assert paths == []
    await client.list_objects(KINDS["ConfigMap"], None, {"x": "1"})
    assert paths == ["GET /api/v1/namespaces/a/configmaps", "GET /api/v1/namespaces/b/configmaps"]
    await client.list_objects(KINDS["ServingPlan"])  # not a child: still cluster-wide
    assert paths[-1] == "GET /apis/prfaas.io/v1alpha1/servingplans"
