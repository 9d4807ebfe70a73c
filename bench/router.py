"""Router overhead: prfaas's router vs the Rust ``vllm-router`` (PyPI) in its PD mode.

Both routers run the same two-step disaggregated call (prefill with ``max_tokens=1`` and
``kv_transfer_params``, then decode) against the same *instant* fake engines, pinned to CPU 0;
the fakes and the load generator share CPU 1 (both are raw-asyncio + uvloop, so they are not
what saturates first unless said so). Printed, never asserted:

* latency p50 / p99 of one request at a time through each router, and the same two calls made
  by the client directly; "added" is router − direct;
* max requests/s with ``--concurrency`` connections in a closed loop for ``--seconds``;
* requests per CPU-second of the router (its CPU time in that loop, all threads, from
  ``/proc/PID/task/*/schedstat``): its requests/s per core, which other work on the machine
  barely moves (it slows the router's wall clock, not what each request costs). The ratio of
  the two routers' req/CPU-s is the like-for-like throughput comparison on a busy machine.

    python bench/router.py                 # both routers
    python bench/router.py --only prfaas   # without vllm-router (pip install 'prfaas[bench]')

The prfaas router offloads every *uncached* prompt to the remote datacenter (``t = 0``). Each
request runs the full policy (block hashes, prefix-cache lookups, threshold loop). With the
default ``--prompts same`` the decode instance's prefix cache holds the whole (block-aligned)
prompt after the first request, so the uncached length is 0 and prfaas serves it locally with
one upstream call (decode only) while vllm-router and the direct baseline make two; with
``--prompts unique`` every prompt is fresh, so prfaas also makes both calls (remote prefill,
then decode) and the comparison is like for like. Its tokenizer is the UTF-8 byte counter (no
tokenizer path in the bench config).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["main"]

ROUTER_CPU = 0
HELPER_CPU = 1

# ---------------------------------------------------------------------- instant fake engines
_KV = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_block_ids": [0, 1, 2],
    "remote_engine_id": "fake-prefill",
    "remote_request_id": "r",
    "remote_host": "127.0.0.1",
    "remote_port": 5600,
    "tp_size": 1,
    "dcp_size": 1,
    "pp_size": 1,
    "remote_num_tokens": 300,
    "remote_blocks_expiry_time": 0,
    "transfer_mode": "pull",
    "remote_prefill_cached_tokens": 0,
}


def _completion(text: str, kv: object) -> bytes:
    return json.dumps(
        {
            "id": "cmpl-bench",
            "object": "text_completion",
            "model": "tiny",
            "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 8, "total_tokens": 308},
            "kv_transfer_params": kv,
        }
    ).encode()


def _http(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + ctype
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_PREFILL_ANSWER = _http("200 OK", _completion("x", _KV))
_DECODE_ANSWER = _http("200 OK", _completion("t0 t1 t2 t3 t4 t5 t6 t7", None))
_HEALTH = _http("200 OK", b"{}")
_NOT_FOUND = _http("404 Not Found", b"{}")


class _FakeEngine(asyncio.Protocol):
    """HTTP/1.1 keep-alive, answers every POST at once with a canned body."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if head.startswith("POST"):
                self.transport.write(self.answer)
            elif head.startswith("GET /health"):
                self.transport.write(_HEALTH)
            else:
                self.transport.write(_NOT_FOUND)


async def _serve_fakes(prefill_port: int, decode_port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(
        lambda: _FakeEngine(_PREFILL_ANSWER), "127.0.0.1", prefill_port, backlog=4096
    )
    await loop.create_server(
        lambda: _FakeEngine(_DECODE_ANSWER), "127.0.0.1", decode_port, backlog=4096
    )
    print("fakes ready", flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------------- load generator
class _Conn:
    """One keep-alive HTTP/1.1 client connection (raw streams: cheap on the helper core)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
        assert self.reader is not None
        self.writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head[9:12]
        length, chunked = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        else:
            data = await self.reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"HTTP {status.decode()}: {data[:200]!r}")
        return data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _bodies(prompt_bytes: int) -> tuple[bytes, bytes, bytes]:
    """(client body, prefill body, decode body) — the latter two for the direct baseline,
    built as the router builds its legs."""
    from prfaas.engine.router.request import decode_body, prefill_body

    body = {
        "model": "tiny",
        "prompt": "lorem ipsum dolor " * (prompt_bytes // 18 + 1),
        "max_tokens": 8,
        "temperature": 0.0,
    }
    body["prompt"] = str(body["prompt"])[:prompt_bytes]
    prefill = prefill_body(body)
    decode = decode_body(body, _KV)
    return (json.dumps(body).encode(), json.dumps(prefill).encode(), json.dumps(decode).encode())


async def _latencies(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()  # type: ignore[misc]
        out.append(time.perf_counter() - t0)
    return out


async def _direct_latencies(
    ports: tuple[int, int], bodies: tuple[bytes, bytes, bytes], n: int
) -> list[float]:
    p, d = _Conn(ports[0]), _Conn(ports[1])

    async def both() -> None:
        json.loads(await p.post("/v1/completions", bodies[1]))["kv_transfer_params"]
        await d.post("/v1/completions", bodies[2])

    try:
        await _latencies(both, 200)
        return await _latencies(both, n)
    finally:
        p.close()
        d.close()


def _client_body_source(body: bytes, unique: bool) -> Callable[[], bytes]:
    """The client body of each request: always ``body``, or (``unique``) ``body`` with a fresh
    counter in front of its prompt, so no prefix cache holds any of it (every request is
    uncached, hence routed remote by the prfaas router's ``t = 0``: prefill then decode)."""
    if not unique:
        return lambda: body
    head, sep, tail = body.partition(b'"prompt": "')
    counter = iter(range(1 << 62))
    return lambda: head + sep + b"%012d " % next(counter) + tail


async def _router_latencies(port: int, body: Callable[[], bytes], n: int) -> list[float]:
    c = _Conn(port)
    try:
        await _latencies(lambda: c.post("/v1/completions", body()), 200)
        return await _latencies(lambda: c.post("/v1/completions", body()), n)
    finally:
        c.close()


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (ns precision; 0.0 where there is no
    ``/proc``, which the caller reports as unknown)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except OSError:
        return 0.0
    return total / 1e9


async def _throughput(
    port: int, body: Callable[[], bytes], concurrency: int, seconds: float, pid: int
) -> tuple[float, float, int]:
    """(requests/s, requests per CPU-second of process ``pid``, errors)."""
    done = errors = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done, errors
        c = _Conn(port)
        try:
            while time.perf_counter() < stop_at:
                try:
                    await c.post("/v1/completions", body())
                    done += 1
                except (RuntimeError, OSError, asyncio.IncompleteReadError):
                    errors += 1
                    c.close()
                    c = _Conn(port)
        finally:
            c.close()

    stop_at = time.perf_counter() + 1.0  # warm-up
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = errors = 0
    cpu0 = _cpu_seconds(pid)
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(pid) - cpu0
    return done / wall, (done / cpu if cpu > 0 else math.nan), errors


# ---------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned(cpu: int) -> Callable[[], None]:
    """Child setup: run on ``cpu`` only, and get SIGTERM when the bench dies (Linux prctl
    PR_SET_PDEATHSIG), so an interrupted bench leaves no servers behind."""

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)

    return pin


def _spawn(argv: Sequence[str], cpu: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=_pinned(cpu),
        start_new_session=True,
    )


async def _wait_ready(
    port: int, proc: subprocess.Popen[bytes], path: str, timeout_s: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}); log:\n{log.read_text()}")
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            line = await r.readline()
            w.close()
            if b" 200 " in line:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"port {port} not ready after {timeout_s} s; log:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Result:
    name: str
    p50_ms: float
    p99_ms: float
    rps: float
    rps_per_cpu: float
    """Requests per CPU-second of the router (NaN: unknown)."""
    errors: int


def _pct(xs: list[float], q: float) -> float:
    return 1000.0 * statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]


def _prfaas_argv(tmp: Path, port: int, ports: tuple[int, int]) -> list[str]:
    from prfaas.engine.router.config import RouterConfig, dump_router_config

    cfg = RouterConfig.model_validate(
        {
            "model": "tiny",
            "local_datacenter": "dc-b",
            "datacenters": {
                "dc-b": {"decode": [f"http://127.0.0.1:{ports[1]}"]},
                "dc-a": {"prefill": [f"http://127.0.0.1:{ports[0]}"]},
            },
            "links": {"dc-a": {"name": "a-to-b", "capacity_gbps": 1e6}},
            "threshold_tokens": 0,
            "kv_bytes_per_token": 4096.0,
            "block_size": 16,
        }
    )
    path = tmp / "router.yaml"
    path.write_text(dump_router_config(cfg))
    return [
        sys.executable,
        "-P",  # not the repository root first on sys.path: its prfaas/ holds only __init__
        "-m",
        "prfaas",
        "router",
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _vllm_router_argv(port: int, ports: tuple[int, int], policy: str) -> list[str] | None:
    exe = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
    if not Path(exe).exists():
        return None
    return [
        exe,
        "--vllm-pd-disaggregation",
        "--prefill",
        f"http://127.0.0.1:{ports[0]}",
        "--decode",
        f"http://127.0.0.1:{ports[1]}",
        "--policy",
        policy,
        "--kv-connector",
        "nixl",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--prometheus-port",
        str(_free_port()),
        "--max-concurrent-requests",
        "4096",
        "--queue-size",
        "4096",
        "--log-level",
        "warning",
        "--disable-retries",
    ]


async def _measure(
    name: str, argv: list[str], body: Callable[[], bytes], args: argparse.Namespace, tmp: Path
) -> Result:
    """Start one router on ``ROUTER_CPU``, measure it, stop it."""
    port = int(argv[argv.index("--port") + 1])
    log = tmp / f"{name}.log"
    proc = _spawn(argv, ROUTER_CPU, log)
    try:
        await _wait_ready(port, proc, "/health", 60, log)
        lat = await _router_latencies(port, body, args.requests)
        rps, per_cpu, errors = await _throughput(
            port, body, args.concurrency, args.seconds, proc.pid
        )
    finally:
        _stop(proc)
    return Result(name, _pct(lat, 50), _pct(lat, 99), rps, per_cpu, errors)


def _median(results: list[Result]) -> Result:
    return Result(
        results[0].name,
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        statistics.median(r.rps for r in results),
        statistics.median(r.rps_per_cpu for r in results),
        sum(r.errors for r in results),
    )


async def _bench(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {HELPER_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="prfaas-bench-"))
    ports = (_free_port(), _free_port())
    fakes = _spawn(
        [sys.executable, __file__, "--serve-fakes", str(ports[0]), str(ports[1])],
        HELPER_CPU,
        tmp / "fakes.log",
    )
    bodies = _bodies(args.prompt_bytes)
    routers: list[tuple[str, list[str]]] = []
    if args.only in (None, "prfaas"):
        routers.append(("prfaas-router", _prfaas_argv(tmp, _free_port(), ports)))
    if args.only in (None, "vllm-router"):
        peer = _vllm_router_argv(_free_port(), ports, args.peer_policy)
        if peer is None:
            print("vllm-router: not installed (pip install 'prfaas[bench]'); skipped")
        else:
            routers.append(("vllm-router", peer))
    rounds: dict[str, list[Result]] = {name: [] for name, _ in routers}
    try:
        await _wait_ready(ports[0], fakes, "/health", 30, tmp / "fakes.log")
        direct = await _direct_latencies(ports, bodies, args.requests)
        d50, d99 = _pct(direct, 50), _pct(direct, 99)
        print(
            f"direct (client calls prefill then decode itself): p50 {d50:.3f} ms  p99 {d99:.3f} ms",
            flush=True,
        )
        for k in range(args.rounds):  # alternate, so both see the same background load
            for name, argv in routers:
                source = _client_body_source(bodies[0], args.prompts == "unique")
                r = await _measure(name, argv, source, args, tmp)
                rounds[name].append(r)
                print(
                    f"  round {k + 1} {name}: p50 {r.p50_ms:.3f} ms  p99 {r.p99_ms:.3f} ms  "
                    f"{r.rps:.0f} req/s  {r.rps_per_cpu:.0f} req/CPU-s"
                    f"{f' ({r.errors} errors)' if r.errors else ''}",
                    flush=True,
                )
    finally:
        _stop(fakes)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"median of {args.rounds} rounds ({args.prompt_bytes}-byte {args.prompts} prompts, "
        "non-streaming, "
        f"max req/s at concurrency {args.concurrency}; vllm-router --policy {args.peer_policy}):"
    )
    by = {name: _median(rs) for name, rs in rounds.items() if rs}
    for r in by.values():
        print(
            f"{r.name}: p50 {r.p50_ms:.3f} ms (+{r.p50_ms - d50:.3f} added)  "
            f"p99 {r.p99_ms:.3f} ms (+{r.p99_ms - d99:.3f} added)  max {r.rps:.0f} req/s  "
            f"{r.rps_per_cpu:.0f} req/CPU-s"
            f"{f' ({r.errors} errors)' if r.errors else ''}"
        )
    if "prfaas-router" in by and "vllm-router" in by:
        ours, peer_r = by["prfaas-router"], by["vllm-router"]
        r50 = (ours.p50_ms - d50) / max(peer_r.p50_ms - d50, 1e-9)
        r99 = (ours.p99_ms - d99) / max(peer_r.p99_ms - d99, 1e-9)
        print(
            f"ratio prfaas/vllm-router: added p50 {r50:.2f}x  added p99 {r99:.2f}x  "
            f"max req/s {ours.rps / max(peer_r.rps, 1e-9):.2f}x  "
            f"req/CPU-s {ours.rps_per_cpu / max(peer_r.rps_per_cpu, 1e-9):.2f}x"
        )
    print(
        f"(router on CPU {ROUTER_CPU}; fakes + load generator on CPU {HELPER_CPU}; "
        f"{os.cpu_count()} CPUs shared with other work: numbers are indicative)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=["prfaas", "vllm-router"])
    ap.add_argument("--requests", type=int, default=2000, help="sequential latency samples")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--prompt-bytes", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per router")
    ap.add_argument(
        "--prompts",
        choices=["same", "unique"],
        default="same",
        help="same: one prompt for every request (after the first, the decode instance's prefix "
        "cache holds all of it, so prfaas serves it locally: decode only); unique: a fresh "
        "prompt per request (uncached: remote prefill, then decode, like vllm-router's PD)",
    )
    ap.add_argument(
        "--peer-policy",
        default="cache_aware",
        help="vllm-router --policy (its default, cache_aware, like ours keeps a prefix index)",
    )
    ap.add_argument(
        "--serve-fakes", nargs=2, type=int, metavar=("PREFILL", "DECODE"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    if args.serve_fakes:
        run(_serve_fakes(*args.serve_fakes))
        return
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: the router on one, fakes and load generator on the other")
    run(_bench(args))


if __name__ == "__main__":
    main()
