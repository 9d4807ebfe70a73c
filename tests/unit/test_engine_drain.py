"""The engine's preStop drain against a fake vLLM metrics page on loopback.

Time is a fake clock advanced by the fake sleep, so the tests say how long the drain waited
without waiting it; the HTTP polling is real.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prfaas.engine.vllm.drain import (
    drain,
    drain_bound_seconds,
    prestop_command,
    queued_requests,
)

PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
vllm:num_requests_running{{engine="1",model_name="m"}} 0.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}
vllm:num_requests_waiting_by_reason{{reason="capacity"}} 7.0
"""


class FakeEngine:
    """Serves ``/metrics``; ``busy`` is a list of (running, waiting) answered in turn, the last
    repeated; ``fail`` answers 500 that many times first."""

    def __init__(self, busy: list[tuple[int, int]], fail: int = 0) -> None:
        self.busy, self.fail, self.polls = list(busy), fail, 0
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                engine.polls += 1
                if engine.fail > 0:
                    engine.fail -= 1
                    self.send_error(500)
                    return
                running, waiting = engine.busy[0] if len(engine.busy) == 1 else engine.busy.pop(0)
                body = PAGE.format(running=float(running), waiting=float(waiting)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def engine_factory() -> Iterator[list[FakeEngine]]:
    made: list[FakeEngine] = []
    yield made
    for engine in made:
        engine.close()


def _engine(made: list[FakeEngine], busy: list[tuple[int, int]], fail: int = 0) -> FakeEngine:
    engine = FakeEngine(busy, fail)
    made.append(engine)
    return engine


def _drain(url: str, t: FakeTime, **kw: float) -> str:
    logs: list[str] = []
    return drain(url, clock=t.clock, sleep=t.sleep, log=logs.append, **kw)  # type: ignore[arg-type]


def test_an_idle_engine_is_left_at_once(engine_factory: list[FakeEngine]) -> None:
    engine, t = _engine(engine_factory, [(0, 0)]), FakeTime()
    assert _drain(engine.url, t, max_wait_s=60) == "idle"
    assert engine.polls == 1 and t.sleeps == []


def test_the_drain_waits_while_requests_run_or_wait(engine_factory: list[FakeEngine]) -> None:
    engine = _engine(engine_factory, [(2, 1), (1, 0), (0, 3), (0, 0)])
    t = FakeTime()
    assert _drain(engine.url, t, max_wait_s=60, interval_s=2) == "idle"
    assert engine.polls == 4 and t.now == 6.0


def test_the_settle_time_passes_before_the_first_poll(engine_factory: list[FakeEngine]) -> None:
    engine, t = _engine(engine_factory, [(0, 0)]), FakeTime()
    assert _drain(engine.url, t, max_wait_s=60, settle_s=10) == "idle"
    assert t.sleeps == [10] and engine.polls == 1


def test_the_drain_gives_up_at_the_bound(engine_factory: list[FakeEngine]) -> None:
    engine, t = _engine(engine_factory, [(1, 0)]), FakeTime()
    assert _drain(engine.url, t, max_wait_s=9.5, settle_s=2, interval_s=2) == "bound"
    assert t.now == 9.5  # never sleeps past the bound
    assert engine.polls == 5  # at 2, 4, 6, 8 and 9.5 s


def test_failed_pages_are_retried_until_the_engine_answers(
    engine_factory: list[FakeEngine],
) -> None:
    engine, t = _engine(engine_factory, [(0, 0)], fail=2), FakeTime()
    assert _drain(engine.url, t, max_wait_s=60) == "idle"
    assert engine.polls == 3


def test_nothing_listening_means_nothing_to_drain() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the drain polls it
    t = FakeTime()
    assert _drain(f"http://127.0.0.1:{port}/metrics", t, max_wait_s=60) == "no-engine"


def test_queued_requests_sums_every_series_of_both_gauges_only() -> None:
    assert queued_requests(PAGE.format(running=2.0, waiting=3.0)) == 5.0
    assert queued_requests('vllm:num_requests_running{a="x} 9"} 1\n') == 1.0
    assert queued_requests("vllm:num_requests_waiting 4 1700000000\n") == 4.0
    with pytest.raises(ValueError, match="vllm:num_requests_running"):
        queued_requests("vllm:num_requests_waiting_by_reason 3\n")


def test_the_bound_follows_the_slo_and_the_output_length() -> None:
    # The case study: TTFT 10 s, TPOT 25 ms, 1024 output tokens, 25 % margin.
    assert drain_bound_seconds(10.0, 0.025, 1024) == 45
    assert drain_bound_seconds(10.0, 0.1, 2048) > drain_bound_seconds(10.0, 0.1, 1024)
    assert drain_bound_seconds(1.0, 0.1, 100, margin=0.0) == 11
    with pytest.raises(ValueError, match="tpot"):
        drain_bound_seconds(10.0, float("nan"), 1024)


def test_the_prestop_command_runs_the_source_under_python_c(
    engine_factory: list[FakeEngine],
) -> None:
    engine = _engine(engine_factory, [(1, 0), (0, 0)])
    port = int(engine.url.split(":")[2].split("/")[0])
    argv = prestop_command(30, settle_s=0, port=port)
    assert argv[:2] == ["python3", "-c"]
    done = subprocess.run(
        [sys.executable, *argv[1:], "--interval=0.05"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "idle" in done.stderr and engine.polls == 2


def test_the_hook_fails_at_the_bound_so_the_kubelet_records_it(
    engine_factory: list[FakeEngine],
) -> None:
    from prfaas.engine.vllm.drain import main

    busy = _engine(engine_factory, [(3, 0)])
    assert main([f"--url={busy.url}", "--max-wait=0"]) == 1
    idle = _engine(engine_factory, [(0, 0)])
    assert main([f"--url={idle.url}", "--max-wait=0"]) == 0
