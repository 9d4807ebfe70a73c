"""Engines that take the time and move the bytes of planned ones (``FakeEngine(emulation=...)``).

A fake engine is instant; an emulated one behaves, in time and bytes, like an instance of the
plan, so that a dozen of them on a 2-core host reproduce a cluster's queueing:

* **prefill**: an FCFS queue; a batch takes queued prompts while their uncached tokens fit
  ``token_budget`` (at least one) and lasts the latency model's ``prefill_seconds`` of those
  lengths (as ``planner.sim.simulator``); a block-hash prefix cache (``planner.routing``'s
  ``block_hashes``/``PrefixCache``) removes cached blocks from the work, matched when the batch
  starts (as vLLM matches when it schedules) and filled when it ends;
* **decode**: continuous batching up to ``max_batch``; a request joins at the first step
  boundary after it is ready, and each step (``decode_step_seconds(batch, Σ context)``) gives
  every member one token — as vLLM's NIXL P/D decode, whose first step after the KV arrived
  emits the client's first token, so ``o`` output tokens take ``o`` steps;
* **KV**: a prefill answer for a remote decode registers the request's KV bytes
  (whole KV blocks: ``RoutingCore.kv_bytes``, as the router counts them) with the engine's
  KV server; the decode
  engine pulls exactly that many bytes over TCP from ``remote_host:remote_port`` (across the
  shaped inter-DC link when the prefill runs in the other namespace) and joins its batch only
  when the last byte arrived.

Time runs ``time_scale`` times faster than planned and bytes are multiplied by ``byte_scale``
(so the link is shaped at ``planned rate × time_scale × byte_scale``); ``EngineRecord``s hold wall
times and wire bytes, ``Scale`` converts them back to planned units.

Prefill batches and decode step boundaries are kept on a virtual timeline anchored to the wall
clock (a late wake-up of the event loop delays what is *written*, never the schedule), and
tokens are written to a stream at most every ``emit_interval_s`` (plus the first and the last
token at their exact times), so a streamed answer costs tens of events rather than one per
token.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prfaas.planner.latency.model import LatencyModel
from prfaas.planner.routing import PrefixCache, RoutingCore, block_hashes

__all__ = [
    "DecodeBatcher",
    "EmulatedTiming",
    "EngineEmulation",
    "EngineRecord",
    "KvPullError",
    "PrefillQueue",
    "Scale",
    "prompt_length",
    "prompt_tokens",
]

_LEN = struct.Struct("!Q")
_CHUNK = 1 << 20


class KvPullError(RuntimeError):
    """A decode engine could not pull a request's KV (unknown request id, short read)."""


@dataclass(frozen=True, slots=True)
class Scale:
    """Wall time = planned time / ``time_scale``; wire bytes = planned bytes × ``byte_scale``."""

    time_scale: float = 1.0
    byte_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.time_scale > 0 and self.byte_scale > 0):
            raise ValueError(
                f"time_scale and byte_scale must be > 0, got {self.time_scale} and "
                f"{self.byte_scale}"
            )

    def wall_s(self, planned_s: float) -> float:
        return planned_s / self.time_scale

    def planned_s(self, wall_s: float) -> float:
        return wall_s * self.time_scale

    def wire_bytes(self, planned_bytes: float) -> int:
        return max(0, round(planned_bytes * self.byte_scale))

    def planned_bytes(self, wire_bytes: float) -> float:
        return wire_bytes / self.byte_scale

    def wire_bps(self, planned_bps: float) -> float:
        """The rate a link must be shaped at so that it moves planned bytes in planned time."""
        return planned_bps * self.time_scale * self.byte_scale

    def planned_bps(self, wire_bps: float) -> float:
        return wire_bps / (self.time_scale * self.byte_scale)


@dataclass(frozen=True, slots=True)
class EmulatedTiming:
    """What an emulated instance knows of the planned one (the simulator's pool parameters)."""

    latency: LatencyModel
    scale: Scale = field(default_factory=Scale)
    kv_bytes_per_token: float = 0.0
    kv_fixed_bytes: float = 0.0
    token_budget: int = 8192
    """Most uncached tokens in one prefill batch (a longer prompt runs alone); 0: no batching."""
    max_batch: int = 256
    """Decode: most sequences stepped together."""
    block_tokens: int = 16
    cache_blocks: int = 0
    """Prefix-cache capacity in blocks; 0: no cache."""
    emit_interval_s: float = 0.1
    """Wall seconds between streamed chunks of tokens (first and last token: at once)."""

    def prefill_wall_s(self, lengths: Sequence[int]) -> float:
        return self.scale.wall_s(self.latency.prefill_seconds([float(n) for n in lengths]))

    def step_wall_s(self, batch: int, context: float) -> float:
        return self.scale.wall_s(self.latency.decode_step_seconds(batch, context))

    def kv_planned_bytes(self, tokens: int) -> float:
        """KV of a ``tokens``-token prompt in whole ``block_tokens`` KV blocks (the last one
        partial), as NIXL moves it and the router counts it: ``RoutingCore.kv_bytes``."""
        core: RoutingCore[Any, Any] = RoutingCore(
            kv_block_tokens=self.block_tokens,
            kv_bytes_per_token=self.kv_bytes_per_token,
            kv_fixed_bytes=self.kv_fixed_bytes,
        )
        return core.kv_bytes(tokens)

    def kv_wire_bytes(self, tokens: int) -> int:
        """Bytes a decode pulls for a request of ``tokens`` prompt tokens."""
        return self.scale.wire_bytes(self.kv_planned_bytes(tokens))


def prompt_tokens(prompt: Any) -> list[int]:
    """Token ids of a completions prompt: the ids themselves, or a text's UTF-8 bytes (the
    router's ``ByteTokenizer`` counts the same way); chat messages: their JSON text's bytes."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        return prompt_tokens(prompt[0])
    return list(str(prompt).encode())


def prompt_length(prompt: Any) -> int:
    """``len(prompt_tokens(prompt))`` without building the list (decode needs only the count)."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        return prompt_length(prompt[0])
    return len(str(prompt).encode())


# ---------------------------------------------------------------------- prefill
@dataclass(slots=True)
class _PrefillJob:
    tokens: int
    done: asyncio.Future[float]
    hashes: list[int]
    queued_at: float
    uncached: int = 0
    """Set when a batch considers it: the prompt minus the prefix cached at that moment."""


@dataclass(slots=True)
class PrefillQueue:
    """The FCFS batch choice of one prefill instance (pure: no clock)."""

    token_budget: int
    jobs: deque[Any] = field(default_factory=deque)

    def push(self, job: Any) -> None:
        self.jobs.append(job)

    def next_batch(
        self, uncached: Callable[[Any], int], queued_by: Callable[[Any], bool] | None = None
    ) -> list[Any]:
        """The next batch: the head, then followers while their uncached tokens fit (and, with
        ``queued_by``, only followers it accepts: those already queued when the batch starts)."""
        if not self.jobs:
            return []
        batch = [self.jobs.popleft()]
        tokens = uncached(batch[0])
        while self.jobs and tokens + uncached(self.jobs[0]) <= self.token_budget:
            if queued_by is not None and not queued_by(self.jobs[0]):
                break
            job = self.jobs.popleft()
            batch.append(job)
            tokens += uncached(job)
        return batch


# ---------------------------------------------------------------------- decode
@dataclass(slots=True, eq=False)
class _Seq:
    context: int
    remaining: int
    """Tokens (decode steps) still to produce."""
    ready_at: float
    out: asyncio.Queue[int] | None = None
    pending: int = 0
    """Produced but not yet written."""
    last_emit: float = 0.0
    stepped: int = 0
    """Steps this sequence took part in (its first token is at the end of the first)."""
    first_at: float = 0.0
    finish_at: float = 0.0


@dataclass(slots=True)
class DecodeBatcher:
    """Continuous batching on a virtual timeline (pure: callers give the times).

    ``admit(t)`` moves sequences ready by ``t`` into the batch; ``plan(t, horizon)`` lists the
    next step boundaries — stopping at the first one where a member emits its first token or
    finishes, or after ``horizon`` seconds — and ``advance(n, t)`` applies ``n`` of them.
    """

    step_s: Callable[[int, float], float]
    max_batch: int
    members: list[_Seq] = field(default_factory=list)
    waiting: deque[_Seq] = field(default_factory=deque)

    def add(self, seq: _Seq) -> None:
        self.waiting.append(seq)

    def admit(self, t: float) -> list[_Seq]:
        joined = []
        while self.waiting and len(self.members) < self.max_batch:
            if self.waiting[0].ready_at > t:
                break
            seq = self.waiting.popleft()
            self.members.append(seq)
            joined.append(seq)
        return joined

    def plan(self, t: float, horizon: float) -> list[float]:
        """Ends of the next steps from ``t`` (at least one while there are members)."""
        if not self.members:
            return []
        b = len(self.members)
        ctx = float(sum(s.context for s in self.members))
        fresh = any(s.stepped == 0 for s in self.members)
        until = 1 if fresh else min(s.remaining for s in self.members)
        bounds: list[float] = []
        end = t
        while len(bounds) < until:
            step = self.step_s(b, ctx)
            if not step > 0.0:
                raise ValueError(f"decode step time must be > 0 s, got {step} for batch {b}")
            end += step
            ctx += b
            bounds.append(end)
            if end - t >= horizon:
                break
        return bounds

    def advance(self, steps: int, t: float) -> list[_Seq]:
        """Apply ``steps`` steps ending at ``t``; returns the members that finished (a member's
        first token is at the end of its first step: ``first_at``)."""
        done = []
        keep = []
        for s in self.members:
            if s.stepped == 0:
                s.first_at = t  # ``plan`` stops after one step while a member has none
            s.stepped += steps
            s.context += steps
            s.remaining -= steps
            s.pending += steps
            if s.remaining <= 0:
                s.finish_at = t
                done.append(s)
            else:
                keep.append(s)
        self.members = keep
        return done


# ---------------------------------------------------------------------- records
@dataclass(slots=True)
class EngineRecord:
    """One request at one emulated engine, wall clock (``time.monotonic``) and wire bytes."""

    request_id: str
    role: str
    prompt_tokens: int
    arrived: float
    uncached_tokens: int = 0
    prefill_start: float | None = None
    prefill_end: float | None = None
    engine: str = ""
    """The engine that kept the record (its KV server's ``host:port``): which instance the
    router placed the request on."""
    kv_from: str | None = None
    kv_bytes: int = 0
    kv_start: float | None = None
    kv_end: float | None = None
    first_token: float | None = None
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- the engine part
class EngineEmulation:
    """The timing, prefix cache, KV server and decode batch of one emulated engine.

    ``FakeEngine`` calls ``prefill`` (await the batch that holds the prompt), ``offer_kv``
    (register the KV for a remote decode; returns the host/port to pull from), ``pull`` (decode:
    fetch it) and ``decode`` (an async iterator of produced-token counts).
    """

    def __init__(
        self,
        timing: EmulatedTiming,
        *,
        kv_host: str = "127.0.0.1",
        kv_advertise: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timing = timing
        self.kv_host = kv_host
        self.kv_advertise = kv_advertise or kv_host
        self.kv_port = 0
        self.clock = clock
        self.cache = PrefixCache(timing.cache_blocks) if timing.cache_blocks > 0 else None
        self.records: dict[str, EngineRecord] = {}
        self._queue = PrefillQueue(timing.token_budget)
        self._prefill_wake = asyncio.Event()
        self._batcher = DecodeBatcher(timing.step_wall_s, timing.max_batch)
        self._decode_wake = asyncio.Event()
        self._offered: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve_kv, self.kv_host, 0)
        self.kv_port = int(self._server.sockets[0].getsockname()[1])
        self._tasks = [
            asyncio.create_task(self._prefill_loop()),
            asyncio.create_task(self._decode_loop()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def record(self, rid: str, role: str, n_prompt: int) -> EngineRecord:
        rec = EngineRecord(
            rid, role, n_prompt, self.clock(), engine=f"{self.kv_advertise}:{self.kv_port}"
        )
        self.records[f"{role}:{rid}"] = rec
        return rec

    # ---- prefill
    async def prefill(self, prompt: Any, rec: EngineRecord) -> None:
        """Queue the prompt (see ``prompt_tokens``) and wait until the batch holding it is
        done."""
        hashes: list[int] = []
        if self.cache is not None:
            hashes = block_hashes(prompt_tokens(prompt), self.timing.block_tokens)
        job = _PrefillJob(
            rec.prompt_tokens, asyncio.get_running_loop().create_future(), hashes, self.clock()
        )
        self._queue.push(job)
        self._prefill_wake.set()
        start = await asyncio.shield(job.done)
        rec.uncached_tokens = job.uncached
        rec.prefill_start, rec.prefill_end = start, self.clock()

    def _uncached(self, job: _PrefillJob) -> int:
        """The job's tokens to compute if it started now: its prompt minus the leading blocks
        the cache holds at this moment, as vLLM matches the prefix cache when it schedules a
        request, not when it queues it (a prompt queued behind another with the same prefix
        reuses it once that one is done)."""
        hit = self.cache.peek(job.hashes) if self.cache is not None and job.hashes else 0
        job.uncached = max(1, job.tokens - hit * self.timing.block_tokens)
        return job.uncached

    async def _prefill_loop(self) -> None:
        """Batches on a virtual timeline, as ``_decode_loop``: a batch starts when the engine
        is free and its head has arrived (``max(free_at, head.queued_at)``), not when this
        loop wakes up, and takes only followers queued by then. So the host's wake-up lag
        (milliseconds on a busy machine, × the time scale in planned units) is not lost
        prefill capacity, as long as the host keeps up; the planned engine has no such lag
        beyond what its latency model already holds."""
        free_at = -math.inf
        while True:
            if not self._queue.jobs:
                self._prefill_wake.clear()
                await self._prefill_wake.wait()
            start = max(free_at, self._queue.jobs[0].queued_at)

            def queued_by(job: _PrefillJob, at: float = start) -> bool:
                return job.queued_at <= at

            batch: list[_PrefillJob] = self._queue.next_batch(self._uncached, queued_by)
            if self.cache is not None:
                for job in batch:
                    self.cache.match(job.hashes)  # used now: most recent
            free_at = start + self.timing.prefill_wall_s([j.uncached for j in batch])
            await _sleep_until(free_at, self.clock)
            for job in batch:
                if self.cache is not None and job.hashes:
                    self.cache.insert(job.hashes)
                if not job.done.done():
                    job.done.set_result(start)

    # ---- KV
    def offer_kv(self, rid: str, n_prompt: int) -> tuple[str, int, int]:
        """Keep the request's KV for a pull: (host, port, wire bytes)."""
        nbytes = self.timing.kv_wire_bytes(n_prompt)
        self._offered[rid] = nbytes
        return self.kv_advertise, self.kv_port, nbytes

    async def _serve_kv(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            rid = (await reader.readline()).decode().strip()
            nbytes = self._offered.pop(rid, -1)
            if nbytes < 0:
                writer.write(_LEN.pack(2**64 - 1))
                await writer.drain()
                return
            writer.write(_LEN.pack(nbytes))
            zeros = bytes(min(nbytes, _CHUNK))
            left = nbytes
            while left > 0:
                n = min(left, _CHUNK)
                writer.write(zeros[:n] if n < len(zeros) else zeros)
                left -= n
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def pull(self, params: Mapping[str, Any], rid: str, rec: EngineRecord) -> int:
        """Fetch the KV a prefill engine offered under ``remote_request_id``; returns bytes."""
        host, port = str(params.get("remote_host")), int(params.get("remote_port") or 0)
        remote_rid = str(params.get("remote_request_id") or rid)
        rec.kv_from, rec.kv_start = host, self.clock()
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise KvPullError(f"cannot reach the KV server {host}:{port}: {exc}") from exc
        try:
            writer.write(remote_rid.encode() + b"\n")
            await writer.drain()
            (nbytes,) = _LEN.unpack(await reader.readexactly(_LEN.size))
            if nbytes == 2**64 - 1:
                raise KvPullError(f"{host}:{port} holds no KV for request {remote_rid!r}")
            got = 0
            while got < nbytes:
                chunk = await reader.read(min(_CHUNK, nbytes - got))
                if not chunk:
                    raise KvPullError(f"KV of {remote_rid!r} ended after {got}/{nbytes} bytes")
                got += len(chunk)
        except asyncio.IncompleteReadError as exc:
            raise KvPullError(f"{host}:{port} closed before the KV of {remote_rid!r}") from exc
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        rec.kv_bytes, rec.kv_end = got, self.clock()
        return got

    # ---- decode
    async def decode(self, n_prompt: int, n_out: int, rec: EngineRecord) -> AsyncIterator[int]:
        """Join the batch; yields counts of tokens as they are written (first: 1)."""
        seq = _Seq(n_prompt, max(1, n_out), self.clock(), asyncio.Queue())
        self._batcher.add(seq)
        self._decode_wake.set()
        assert seq.out is not None
        while True:
            n = await seq.out.get()
            if n == 0:
                rec.first_token, rec.finished = seq.first_at, seq.finish_at
                return
            yield n

    async def _decode_loop(self) -> None:
        b = self._batcher
        t = self.clock()
        horizon = self.timing.emit_interval_s
        while True:
            if not b.members and not b.waiting:
                self._decode_wake.clear()
                await self._decode_wake.wait()
                t = max(t, self.clock())
            elif not b.members:
                t = max(t, b.waiting[0].ready_at)
            b.admit(t)
            bounds = b.plan(t, horizon)
            if not bounds:
                continue
            self._decode_wake.clear()
            woke = await _sleep_until(bounds[-1], self.clock, self._decode_wake)
            steps = len(bounds)
            if woke:  # a request arrived: it joins at the first boundary after now
                now = self.clock()
                steps = next((i + 1 for i, x in enumerate(bounds) if x >= now), len(bounds))
                await _sleep_until(bounds[steps - 1], self.clock)
            t = bounds[steps - 1]
            done = b.advance(steps, t)
            for seq in b.members:
                if seq.pending and (seq.stepped == steps or t - seq.last_emit >= horizon):
                    self._emit(seq, t)
            for seq in done:
                self._emit(seq, t)
                assert seq.out is not None
                seq.out.put_nowait(0)

    @staticmethod
    def _emit(seq: _Seq, t: float) -> None:
        assert seq.out is not None
        if seq.pending:
            seq.out.put_nowait(seq.pending)
            seq.pending = 0
        seq.last_emit = t


async def _sleep_until(
    deadline: float, clock: Callable[[], float], wake: asyncio.Event | None = None
) -> bool:
    """Sleep until ``clock() >= deadline``; True if ``wake`` was set first."""
    delay = deadline - clock()
    if delay <= 0:
        return False
    if wake is None:
        await asyncio.sleep(delay)
        return False
    try:
        await asyncio.wait_for(wake.wait(), delay)
    except TimeoutError:
        return False
    return True
