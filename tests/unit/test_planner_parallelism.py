"""DistServe §2.2 closed forms and Algorithm 1 (papers.md §2.2-2.3)."""

from __future__ import annotations

import math

import pytest
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.latency.model import InstanceLatency
from prfaas.planner.latency.profiles import FittedDecode, FittedPrefill
from prfaas.planner.parallelism import (
    candidates,
    choose_for_rate,
    decode_batch,
    max_rate_for_ttft,
    mdl_ttft,
    search,
    ttft_inter_2way,
    ttft_intra_2way,
)
from prfaas.planner.problem import Candidate, PlannerSettings, RoleLoad

D = 0.072  # OPT-13B, 512-token prefill on an A100 (papers.md §2.4)
K = 1.6  # 2-way TP speed-up


def _const(latency: float, tp: int, pp: int) -> Candidate:
    pre = FittedPrefill(latency, 0.0, 0.0, "fit", "constant")
    dec = FittedDecode(0.01, 0.0, 0.0, "fit", "constant")
    return Candidate(tp, pp, InstanceLatency(pre, dec, tp, pp), 1e12)


@pytest.mark.parametrize("rate", [0.0, 1.0, 5.0, 10.0])
def test_md1_closed_forms(rate: float) -> None:
    # Eq. 1
    assert mdl_ttft(rate, D) == pytest.approx(D + rate * D**2 / (2 * (1 - rate * D)))
    # Eq. 2 is the general form with D_s = D and D_m = D/2
    assert ttft_inter_2way(rate, D) == pytest.approx(mdl_ttft(rate, D, D / 2))
    # Eq. 3 is Eq. 1 with execution time D/K
    assert ttft_intra_2way(rate, D, K) == pytest.approx(mdl_ttft(rate, D / K))


def test_saturation_is_infinite_and_max_rate_inverts_ttft() -> None:
    assert mdl_ttft(1 / D, D) == math.inf
    slo = 0.2
    r = max_rate_for_ttft(slo, D)
    assert mdl_ttft(r, D) == pytest.approx(slo)
    assert max_rate_for_ttft(D / 2, D) == 0.0


def test_section_2_2_intra_op_at_low_rate_inter_op_at_high_rate() -> None:
    intra, inter = _const(D / K, 2, 1), _const(D, 1, 2)
    load = RoleLoad("prefill", 512, 0.0, 100, 1.0, 0.1)
    assert choose_for_rate([intra, inter], load, rate=1.0, gpu_budget=2) is intra
    assert choose_for_rate([intra, inter], load, rate=24.0, gpu_budget=2) is inter


def test_algorithm1_goodput_per_gpu_prefers_replicas_when_slo_is_loose() -> None:
    single, tp2 = _const(D, 1, 1), _const(D / K, 2, 1)
    loose = RoleLoad("prefill", 512, 0.0, 100, ttft_s=2.0, tpot_s=0.1)
    assert search([single, tp2], loose) is single  # K < 2: TP wastes GPUs
    tight = RoleLoad("prefill", 512, 0.0, 100, ttft_s=0.06, tpot_s=0.1)
    assert search([single, tp2], tight) is tp2  # only TP meets a TTFT below D


def test_candidates_respect_memory_and_divisibility() -> None:
    s = PlannerSettings()
    h20 = candidates(MODELS["hybrid-1t"], GPUS["H20"], 64, 8, 1e9, s)
    assert [(c.tp, c.pp) for c in h20] == [(8, 1)]  # 560 GB needs 8 GPUs; 61 layers: PP 1
    small = candidates(MODELS["llama-3-8b"], GPUS["H100"], 8, 8, 1e9, s)
    assert (1, 1) in [(c.tp, c.pp) for c in small]
    assert all(32 % c.tp == 0 and 32 % c.pp == 0 for c in small)
    assert candidates(MODELS["llama-3-70b"], GPUS["L40S"], 1, 1, 0, s) == []


def test_decode_batch_is_limited_by_tpot_and_max_batch() -> None:
    c = candidates(MODELS["llama-3-8b"], GPUS["H100"], 1, 8, 0, PlannerSettings())[0]
    load = RoleLoad("decode", 2048, MODELS["llama-3-8b"].kv_bytes(2048), 256, 1.0, 0.02, 512)
    batch, step = decode_batch(c, load)
    assert 1 <= batch <= 512 and step <= 0.02
    assert (
        c.latency.decode_step_seconds(batch + 1, (batch + 1) * 2048) > 0.02
        or batch == 512
        or (batch + 1) * load.kv_bytes_per_sequence > c.kv_capacity_bytes
    )
    capped = RoleLoad("decode", 2048, load.kv_bytes_per_sequence, 256, 1.0, 0.02, 4)
    assert decode_batch(c, capped)[0] == 4
