"""KV inside the decode datacenter takes time: the fabric NIC, or NVLink on a shared node."""

from __future__ import annotations

import numpy as np
import pytest
from prfaas.operator.api import models as api
from prfaas.planner.latency.catalog import gpu_spec
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.problem import ClusterInput
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.scenarios import local_kv_gbps
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, SimConfig, simulate

PREFILL = DistServeForm(0.02, 1e-5, 0.0, 0.0, 0.0, 0.0)
DECODE = DistServeForm(0.0, 0.0, 0.0, 0.01, 0.0, 0.0)
KV_PER_TOKEN = 800_000.0  # OPT-13B: 0.8 MB per token


def _run(kv_gbps: float) -> tuple[np.ndarray, np.ndarray]:
    stream = RequestStream(
        np.array([0.0, 0.0, 5.0]), np.array([2000, 1000, 500]), np.array([4, 4, 4]),
        np.full(3, -1),
    )
    config = SimConfig(
        "local",
        (PrefillPool("pd-p", "dc", 1, PREFILL, token_budget=4096, kv_gbps=kv_gbps),),
        DecodePool("pd-d", "dc", 1, DECODE, max_batch=8),
        kv_bytes_per_token=KV_PER_TOKEN,
    )
    res = simulate(config, stream)
    return res.kv_ready_s - res.prefill_end_s, res.first_token_s


def test_local_kv_moves_at_the_fabric_bandwidth_and_a_batch_lands_together() -> None:
    free, _ = _run(0.0)
    assert np.all(free == 0.0)
    moved, first = _run(200.0)
    batch_bytes = 3000 * KV_PER_TOKEN  # the first two share a prefill batch: 2.4 GB
    assert moved[:2] == pytest.approx([batch_bytes * 8 / 200e9] * 2)  # ≈ 96 ms
    assert moved[2] == pytest.approx(500 * KV_PER_TOKEN * 8 / 200e9)
    assert first[0] == first[1]  # one first decode step for the batch


def test_nvlink_when_prefill_and_decode_share_a_node_else_the_fabric() -> None:
    h20 = gpu_spec("H20")
    cluster = ClusterInput("pd", "dc-b", "decode", h20, 64, 8, fabric_gbps=400.0)
    assert local_kv_gbps(cluster, 4, 4) == pytest.approx(h20.interconnect_gbps * 8 * 4)
    assert local_kv_gbps(cluster, 8, 8) == 400.0
    assert api.DecodeClusterSpec.model_fields["fabric_gbps"].default == api.FABRIC_GBPS == 200.0


def test_negative_local_kv_bandwidth_is_refused() -> None:
    pool = PrefillPool("p", "dc", 1, PREFILL, kv_gbps=-1.0)
    config = SimConfig("bad", (pool,), DecodePool("d", "dc", 1, DECODE))
    stream = RequestStream(np.array([0.0]), np.array([10]), np.array([2]), np.full(1, -1))
    with pytest.raises(SimulatorError, match="kv_gbps"):
        simulate(config, stream)
