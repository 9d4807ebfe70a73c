"""Link busy time is the union of KV transfer intervals, so bytes / seconds is the throughput
the link achieved (concurrent transfers are not counted twice)."""

from __future__ import annotations

from prfaas.engine.router.metrics import RouterMetrics


def _value(m: RouterMetrics, name: str, link: str) -> float:
    return m.registry.get_sample_value(name, {"link": link}) or 0.0


def test_overlapping_transfers_count_their_union_once() -> None:
    m = RouterMetrics()
    m.transfer_started("l", 10.0)
    m.transfer_started("l", 11.0)
    m.transfer_ended("l", 12.0, 1000.0)
    m.transfer_ended("l", 14.0, 3000.0)
    assert _value(m, "prfaas_router_kv_transfer_seconds_total", "l") == 4.0
    assert _value(m, "prfaas_router_kv_bytes_total", "l") == 4000.0


def test_separate_busy_periods_add_up_and_links_are_independent() -> None:
    m = RouterMetrics()
    m.transfer_started("l", 0.0)
    m.transfer_ended("l", 1.0, 10.0)
    m.transfer_started("k", 0.5)
    m.transfer_started("l", 5.0)
    m.transfer_ended("l", 5.5, 0.0)  # abandoned: busy time, no bytes
    assert _value(m, "prfaas_router_kv_transfer_seconds_total", "l") == 1.5
    assert _value(m, "prfaas_router_kv_bytes_total", "l") == 10.0
    assert _value(m, "prfaas_router_kv_transfer_seconds_total", "k") == 0.0  # still under way


def test_an_end_without_a_start_is_ignored() -> None:
    m = RouterMetrics()
    m.transfer_ended("l", 3.0, 99.0)
    assert _value(m, "prfaas_router_kv_bytes_total", "l") == 0.0
