"""A ServingPlan naming a measured profile by ConfigMap: the operator reads it, the plan uses
latency source ``measured`` for that GPU and TP; a missing ConfigMap stalls with the fix."""

from __future__ import annotations

import json
from typing import Any

from .conftest import World, case_study

CM = "hybrid-1t-h20-profile"


def _profile() -> dict[str, Any]:
    """An instance-scope profile of hybrid-1t prefill on 8×H20 (as `prfaas profile` writes)."""
    return {
        "format": "prfaas-profile/1",
        "scope": "instance",
        "accelerator": "H20",
        "tensorParallel": 8,
        "device": "8×H20 (test)",
        "model": {
            "layers": 61,
            "hidden": 7168,
            "heads": 64,
            "kvHeads": 64,
            "headDim": 128,
            "ffn": 18432,
        },
        "prefill": [
            {"tokens": t, "median_ms": ms}
            for t, ms in ((1024, 600.0), (8192, 1500.0), (32768, 5200.0))
        ],
    }


def _plan_row(world: World, role: str) -> dict[str, Any]:
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
    for c in ((sp.get("status") or {}).get("plan") or {}).get("clusters") or []:
        if (c["name"], c["role"]) == ("pd-h20", role):
            return dict(c)
    return {}


async def test_profile_by_configmap_reference(world: World) -> None:
    await world.start_operator()
    docs = case_study()
    docs["ServingPlan"]["spec"]["model"]["measuredProfile"] = {
        "configMapKeyRef": {"name": CM, "key": "profile.json"}
    }
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(docs[kind])
    stalled = await world.until(
        lambda: (c := world.condition("hybrid-1t", "Stalled")).get("status") == "True" and c,
        what="Stalled without the ConfigMap",
    )
    assert f"ConfigMap default/{CM} has no key 'profile.json'" in stalled["message"]
    assert "kubectl create configmap" in stalled["message"]

    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CM, "namespace": "default"},
        "data": {"profile.json": json.dumps(_profile())},
    }
    resp = await world.local.post("/api/v1/namespaces/default/configmaps", json=cm)
    assert resp.status < 300, await resp.text()
    await world.edit_spec(docs["ServingPlan"], {"slo": {"ttft": "11s"}})  # wake the plan
    row = await world.until(
        lambda: (
            _plan_row(world, "prefill").get("latencySource") == "measured"
            and _plan_row(world, "prefill")
        ),
        what="pd-h20 prefill planned from the measured profile",
    )
    assert row["accelerator"] == "H20" and row["tensorParallel"] == 8
    notes = (world.get_cr("ServingPlan", "hybrid-1t", "default") or {})["status"]["plan"]["notes"]
    assert any("measured profile H20 TP8" in n for n in notes), "\n".join(notes)
