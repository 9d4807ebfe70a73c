"""Roles as a routing decision, on real engines: one prefill engine in dc-a and a convertible
pool of two ``kv_both`` engines in dc-b (one prefill, one decode at first), a steady load on
both paths (short prompts prefilled in dc-b, long ones in dc-a) while

(a) one dc-b engine moves from decode to prefill and back (the other covers decode meanwhile),
    each change by rewriting the router's file only: no engine restarts;
(b) then a dc-b engine is removed the way the operator removes one: out of the router first,
    then drained (``prfaas.engine.vllm.drain``), then stopped.

Every answer is complete (``MAX_TOKENS`` tokens, ``finish_reason: length``; streamed ones end
with ``[DONE]``), its greedy tokens equal the monolithic engine's, and as many requests complete
as were sent. One module-scoped deployment of three engines (≈ 9 GB).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prfaas.engine.local.runtime import LocalRuntime
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.cli.local_plan import local_plan
from prfaas.planner.plan import Plan

from .conftest import (
    MAX_TOKENS,
    ROLE_LONG,
    ROLE_SHORT,
    SAMPLE,
    completion_body,
    metric,
    running,
)

pytestmark = pytest.mark.e2e

_REQUESTS = "prfaas_router_requests_total"
A, B = "local-decode-both-0", "local-decode-both-1"
"""dc-b's kv_both engines: A prefills at first, B decodes."""


def convertible_plan() -> Plan:
    """The local sample plus a PD-P row in dc-b's decode cluster, alike in every flag: a
    convertible pool of two engines (one per role)."""
    plan = local_plan(load_manifests(SAMPLE))
    decode = next(c for c in plan.clusters if c.role == "decode")
    plan.clusters.append(replace(decode, role="prefill", max_num_seqs=None))
    assert [(p.prefill, p.decode) for p in plan.convertible()] == [(1, 1)]
    return plan


@pytest.fixture(scope="module")
def pool(reference: dict[str, list[int]], tiny_model: Path) -> Iterator[LocalRuntime]:
    with running(convertible_plan(), tiny_model) as runtime:
        yield runtime


@dataclass
class Load:
    """Clients that keep sending until ``stop``: per kind, one request at a time each."""

    router: str
    reference: dict[str, list[int]]
    sent: Counter[str] = field(default_factory=Counter)
    completed: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, kind: str, prompts: list[str], *, stream: bool) -> None:
        t = threading.Thread(target=self._run, args=(kind, prompts, stream), daemon=True)
        self.threads.append(t)
        t.start()

    def _one(self, client: httpx.Client, prompt: str, stream: bool) -> str | None:
        """``None`` when the answer is complete and equals the monolithic engine's."""
        url = self.router + "/v1/completions"
        if not stream:
            r = client.post(url, json=completion_body(prompt))
            if r.status_code != 200:
                return f"HTTP {r.status_code}: {r.text[:300]}"
            body = r.json()
            choice = body["choices"][0]
            ids, finish = choice.get("token_ids"), choice.get("finish_reason")
        else:
            ids, finish, done = [], None, False
            with client.stream("POST", url, json=completion_body(prompt, stream=True)) as r:
                if r.status_code != 200:
                    return f"HTTP {r.status_code}: {r.read()[:300]!r}"
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                        if "error" in event:
                            return f"in-band error: {event['error']}"
                        choice = event["choices"][0]
                        ids += choice.get("token_ids") or []
                        finish = choice.get("finish_reason") or finish
            if not done:
                return "stream ended without [DONE]"
        if finish != "length" or ids != self.reference[prompt]:
            same = ids == self.reference[prompt]
            return f"finish {finish!r}, {len(ids or [])} tokens, equal to monolithic: {same}"
        return None

    def _run(self, kind: str, prompts: list[str], stream: bool) -> None:
        i = 0
        with httpx.Client(timeout=300) as client:
            while not self.stop.is_set():
                prompt = prompts[i % len(prompts)]
                i += 1
                with self.lock:
                    self.sent[kind] += 1
                try:
                    problem = self._one(client, prompt, stream)
                except Exception as exc:  # a broken connection is a lost request
                    problem = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    if problem is None:
                        self.completed[kind] += 1
                    else:
                        self.failures.append(f"{kind} {prompt[:16]!r}: {problem}")

    def wait_for(self, more: int) -> None:
        """Until every kind completed ``more`` further requests (fails at once on a failure)."""
        with self.lock:
            goal = {k: self.completed[k] + more for k in self.sent}
        while True:
            with self.lock:
                assert not self.failures, self.failures
                if all(self.completed[k] >= n for k, n in goal.items()):
                    return
            assert all(t.is_alive() for t in self.threads), "a load thread ended"
            time.sleep(0.2)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def _status(runtime: LocalRuntime) -> dict[str, Any]:
    r = httpx.get(runtime.layout.router_url + "/status", timeout=30)
    r.raise_for_status()
    return dict(r.json())


def _serving(runtime: LocalRuntime) -> dict[str, tuple[str, ...]]:
    """dc-b's engines by URL → the roles the router serves them in now (draining ones not)."""
    out: dict[str, list[str]] = {}
    for inst in _status(runtime)["instances"]:
        if inst["datacenter"] == "dc-b" and inst["state"] == "serving":
            out.setdefault(inst["url"], []).append(inst["role"])
    return {url: tuple(sorted(roles)) for url, roles in out.items()}


def _wait_roles(runtime: LocalRuntime, want: dict[str, str]) -> float:
    """Until the router serves each engine (by name) in ``want``'s role and nothing drains;
    returns the seconds that took (printed, not asserted)."""
    t0 = time.monotonic()
    urls = {runtime.layout.named(n).router_url: (role,) for n, role in want.items()}
    while True:
        status = _status(runtime)
        draining = [i for i in status["instances"] if i["state"] != "serving"]
        if not draining and _serving(runtime) == urls:
            return time.monotonic() - t0
        assert runtime.processes["router"].alive(), runtime.processes["router"].log_tail()
        time.sleep(0.2)


def _engine_counts(runtime: LocalRuntime, name: str) -> tuple[float, float]:
    """(requests finished, tokens generated) by one engine, from its own metrics."""
    url = runtime.layout.named(name).url
    return (
        metric(url, "vllm:request_success_total"),
        metric(url, "vllm:generation_tokens_total"),
    )


def test_roles_change_and_an_engine_leaves_under_load_losing_nothing(
    pool: LocalRuntime, reference: dict[str, list[int]]
) -> None:
    router = pool.layout.router_url
    assert pool.roles == {A: "prefill", B: "decode"}
    _wait_roles(pool, {A: "prefill", B: "decode"})
    pids = {n: pool.processes[n].pid for n in (A, B)}
    before = {
        (path, outcome): metric(router, _REQUESTS, path=path, outcome=outcome)
        for path in ("local", "remote", "fallback") for outcome in ("ok", "error")
    }
    load = Load(router, reference)
    load.start("short", ROLE_SHORT, stream=False)
    load.start("short-stream", ROLE_SHORT[::-1], stream=True)
    load.start("long", ROLE_LONG, stream=False)
    load.start("long-stream", ROLE_LONG[::-1], stream=True)
    try:
        load.wait_for(2)

        # (a) B: decode → prefill → decode. A covers decode while B prefills.
        took: list[float] = []
        pool.assign({A: "decode"})
        took.append(_wait_roles(pool, {A: "decode", B: "decode"}))
        load.wait_for(2)
        pool.assign({B: "prefill"})
        took.append(_wait_roles(pool, {A: "decode", B: "prefill"}))
        load.wait_for(1)
        finished, generated = _engine_counts(pool, B)
        load.wait_for(3)
        finished2, generated2 = _engine_counts(pool, B)
        # B only prefilled now: about one token per request it finished, and it finished some
        # (every short prompt is prefilled in dc-b, on B alone). One decode on B would add
        # MAX_TOKENS - 1 tokens; vLLM's two counters are not updated at the same instant
        # (seen: +2 and -3 tokens apart), hence the margin.
        assert finished2 > finished
        assert abs((generated2 - generated) - (finished2 - finished)) < MAX_TOKENS // 4
        pool.assign({B: "decode"})
        took.append(_wait_roles(pool, {A: "decode", B: "decode"}))
        load.wait_for(2)
        assert {n: pool.processes[n].pid for n in (A, B)} == pids  # no engine restarted
        assert all(pool.processes[n].alive() for n in (A, B))

        # (b) A leaves: out of the router, drained, stopped; B serves alone.
        t0 = time.monotonic()
        outcome = pool.remove(A)
        removed_s = time.monotonic() - t0
        assert outcome == "idle"
        assert not pool.processes[A].alive()
        _wait_roles(pool, {B: "decode"})
        load.wait_for(2)
    finally:
        load.finish()
    assert not load.failures, load.failures
    assert load.sent == load.completed, (load.sent, load.completed)
    after = {key: metric(router, _REQUESTS, path=key[0], outcome=key[1]) for key in before}
    assert after[("remote", "ok")] > before[("remote", "ok")]  # both paths carried load
    assert after[("local", "ok")] > before[("local", "ok")]
    assert all(after[(p, "error")] == before[(p, "error")] for p in ("local", "remote", "fallback"))
    served = sum(after[(p, "ok")] - before[(p, "ok")] for p in ("local", "remote", "fallback"))
    assert served == sum(load.completed.values())
    paths = {p: after[(p, "ok")] - before[(p, "ok")] for p in ("local", "remote", "fallback")}
    print(f"\nroles e2e: sent {dict(load.sent)}, completed {dict(load.completed)}, by path "
          f"{paths}; role changes took {[round(t, 2) for t in took]} s to serve (file write to "
          f"drained), removing A {removed_s:.1f} s (drain + stop)")
