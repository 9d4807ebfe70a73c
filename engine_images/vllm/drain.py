"""An engine pod's preStop: wait until vLLM holds no request, at most a bounded time.

Kubernetes runs the preStop hook before it sends SIGTERM, and marks the endpoint terminating at
the same moment, so routers stop choosing the pod while the hook runs. The hook first waits
``--settle`` seconds (the endpoint change reaches every router and kube-proxy), then polls the
engine's own ``/metrics`` until ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``
(summed over every series) are both zero, and exits. It gives up at ``--max-wait`` seconds from
its start: the operator derives that bound from the SLO and the output lengths
(``drain_bound_seconds``), and the pod's ``terminationGracePeriodSeconds`` leaves room for it.
Past the bound the hook gives up with exit status 1, so the kubelet records a
``FailedPreStopHook`` event on the pod (with this hook's last line: how many requests were still
held), and goes on as it would anyway: SIGTERM, and SIGKILL at the end of the grace period. vLLM
aborts what it still holds: those requests are cut off (a stream broken mid-way gets the
router's in-band error event), not lost silently.

A connection refused means no engine is listening (it crashed or never started): there is
nothing to drain and the hook exits. Any other failure (a 500, a page without the gauges) is
retried until the bound, since an engine that is up may still hold requests.

Stdlib only and self-contained: the stock vLLM image does not carry prfaas, so the operator's
builders run this file's source with ``python3 -c``; ``python -m prfaas.engine.vllm.drain`` runs
the same code where prfaas is installed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

__all__ = [
    "BUSY_GAUGES",
    "drain",
    "drain_bound_seconds",
    "main",
    "prestop_command",
    "queued_requests",
]

BUSY_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
"""The gauges vLLM exports for requests it holds; the sum of both must reach zero."""


def drain_bound_seconds(
    ttft_s: float, tpot_s: float, output_tokens_p99: float, *, margin: float = 0.25
) -> int:
    """How long a draining engine may take: the longest request it may still hold is one that
    arrived just before the endpoint left, met its TTFT SLO and generates a P99-long output at
    the TPOT SLO; ``margin`` (a fraction) covers requests slower than the SLO. Whole seconds,
    rounded up."""
    for name, value in (("ttft", ttft_s), ("tpot", tpot_s), ("output P99", output_tokens_p99)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"drain bound: {name} must be a finite number >= 0, got {value!r}")
    if margin < 0:
        raise ValueError(f"drain bound: margin must be >= 0, got {margin!r}")
    return math.ceil((ttft_s + output_tokens_p99 * tpot_s) * (1.0 + margin))


def queued_requests(text: str) -> float:
    """The sum of ``BUSY_GAUGES`` over all their series in a Prometheus text page.

    Raises ``ValueError`` when neither gauge appears (not a vLLM page, or not ready yet)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line.startswith(BUSY_GAUGES):
            continue
        name_end = len(line) - len(line.lstrip("abcdefghijklmnopqrstuvwxyz_:"))
        if line[:name_end] not in BUSY_GAUGES:
            continue  # a longer name sharing the prefix
        rest = line[name_end:]
        if rest.startswith("{"):
            rest = rest[rest.rindex("}") + 1 :]
        total += float(rest.split()[0])
        seen = True
    if not seen:
        raise ValueError(f"no {' or '.join(BUSY_GAUGES)} in the metrics page")
    return total


def drain(
    url: str,
    *,
    max_wait_s: float,
    settle_s: float = 0.0,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> str:
    """Wait as the module says; return why it stopped: ``idle``, ``no-engine`` or ``bound``."""
    start = clock()
    deadline = start + max_wait_s
    if settle_s > 0:
        sleep(min(settle_s, max_wait_s))
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(1.0, interval_s)) as response:
                busy = queued_requests(response.read().decode("utf-8", "replace"))
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                log(f"drain: nothing listens at {url}; nothing to drain")
                return "no-engine"
            log(f"drain: {url}: {exc}; retrying")
            busy = None
        except (OSError, ValueError) as exc:
            log(f"drain: {url}: {exc}; retrying")
            busy = None
        if busy == 0:
            log(f"drain: idle after {clock() - start:.1f} s")
            return "idle"
        left = deadline - clock()
        if left <= 0:
            log(f"drain: {busy} requests still held after {max_wait_s:.0f} s; giving up")
            return "bound"
        sleep(min(interval_s, left))


def prestop_command(max_wait_s: int, *, settle_s: int, port: int = 8000) -> list[str]:
    """The preStop ``exec`` command: this file's source under ``python3 -c`` (the stock vLLM image
    has python3 but not prfaas), polling the engine's metrics on loopback."""
    from pathlib import Path

    source = Path(__file__).read_text(encoding="utf-8")
    return [
        "python3",
        "-c",
        source,
        f"--url=http://127.0.0.1:{port}/metrics",
        f"--max-wait={max_wait_s}",
        f"--settle={settle_s}",
    ]


def main(argv: list[str] | None = None) -> int:
    """The preStop entry point: 0 when the engine is idle (or gone), 1 when the bound ran out."""
    parser = argparse.ArgumentParser(
        prog="prfaas-drain", description="Wait until vLLM holds no request, at most --max-wait s."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/metrics")
    parser.add_argument("--max-wait", type=float, required=True, help="seconds, from the start")
    parser.add_argument("--settle", type=float, default=0.0, help="seconds before polling")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    args = parser.parse_args(argv)
    why = drain(args.url, max_wait_s=args.max_wait, settle_s=args.settle, interval_s=args.interval)
    return 1 if why == "bound" else 0


if __name__ == "__main__":
    sys.exit(main())
