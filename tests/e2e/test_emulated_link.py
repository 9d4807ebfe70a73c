"""Emulated engines across the tc-shaped link: a remote prefill's KV crosses the link at its rate
and the decode joins its batch only after the last byte (root: two network namespaces).

Run under the e2e lock with the rest of the suite: ``flock /tmp/prfaas-e2e.lock pytest tests/e2e``.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prfaas.engine.local.netns import TwoDatacenterNet, have_net_admin, leftovers, tbf_args
from prfaas.engine.local.processes import ManagedProcess, spawn, wait_healthy
from prfaas.engine.router.request import decode_body, prefill_body

RATE_BPS = 40e6
KV_PER_TOKEN = 1000.0
PROMPT = 4000
"""4000 tokens × 1000 B = 4 MB of KV: ≈ 0.8 s at 40 Mbit/s, far above the tbf burst."""
PORT = 8190

_ENGINE = textwrap.dedent(
    """
    import asyncio, sys
    from prfaas.engine.router.emulation import EmulatedTiming, EngineEmulation
    from prfaas.engine.router.fakes import FakeEngine
    from prfaas.planner.latency.model import DistServeForm

    async def main(role, port, advertise, kv_per_token):
        timing = EmulatedTiming(DistServeForm(0.01, 1e-6, 0.0, 0.005, 0.0, 0.0),
                                kv_bytes_per_token=kv_per_token, max_batch=8)
        em = EngineEmulation(timing, kv_host="0.0.0.0", kv_advertise=advertise)
        async with FakeEngine(role, host="0.0.0.0", port=port, emulation=em):
            await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])))
    """
)

pytestmark = pytest.mark.netns


@pytest.fixture
def net() -> Iterator[TwoDatacenterNet]:
    if not have_net_admin():
        pytest.skip("needs root: the link is a tc-shaped veth between network namespaces")
    n = TwoDatacenterNet("dc-a", "dc-b", RATE_BPS).open()
    try:
        yield n
    finally:
        n.close()
    assert leftovers(n.tag) == []


def test_remote_kv_crosses_the_shaped_link_before_decode_starts(
    net: TwoDatacenterNet, tmp_path: Path
) -> None:
    procs: list[ManagedProcess] = []
    try:
        for role, dc in (("prefill", net.prefill), ("decode", net.decode)):
            argv = [*dc.exec_prefix(), sys.executable, "-P", "-c", _ENGINE, role, str(PORT),
                    dc.link_address, str(KV_PER_TOKEN)]
            procs.append(spawn(f"emulated-{role}", argv, dict(os.environ), tmp_path))
        pre_url = f"http://{net.prefill.access_address}:{PORT}"
        dec_url = f"http://{net.decode.access_address}:{PORT}"
        for url in (pre_url, dec_url):
            wait_healthy(url, procs, timeout_s=60)
        body = {"model": "m", "prompt": "k" * PROMPT, "max_tokens": 8}
        head = {"X-Request-Id": "over-the-link"}
        answer = httpx.post(pre_url + "/v1/completions", json=prefill_body(body), headers=head,
                            timeout=60).json()
        kv = answer["kv_transfer_params"]
        assert kv["remote_host"] == net.prefill.link_address  # decode pulls across the link
        done = httpx.post(dec_url + "/v1/completions", json=decode_body(body, kv), headers=head,
                          timeout=60)
        assert done.status_code == 200, done.text
        rec = httpx.get(dec_url + "/emulation/records").json()["records"][0]
    finally:
        for p in procs:
            p.stop()
    nbytes = int(KV_PER_TOKEN * PROMPT)
    assert rec["kv_bytes"] == nbytes and rec["kv_from"] == net.prefill.link_address
    burst = int(tbf_args(RATE_BPS)[tbf_args(RATE_BPS).index("burst") + 1])
    # The token bucket lets one burst through at once; the rest moves at the shaped rate.
    assert rec["kv_end"] - rec["kv_start"] >= 0.9 * (nbytes - burst) * 8 / RATE_BPS
    assert rec["first_token"] >= rec["kv_end"]
