"""Shared fixtures of the end-to-end tests: real vLLM CPU engines, NIXL over UCX/TCP, the router.

Engines are expensive (≈ 30-40 s to start, ≈ 3 GB each), so:

* ``reference`` (session): starts one monolithic engine, records its greedy answers to every
  prompt the tests use, and stops it before anything else starts;
* ``deployment`` (module): the sample plan (``crds/samples/local.yaml``) as processes — a prefill
  engine in dc-a, a decode engine in dc-b, the router — inside two network namespaces joined by
  a ``tc tbf``-shaped veth link when running as root, on loopback otherwise (or with
  ``PRFAAS_E2E_NETNS=0``); ``running(sample)`` starts any sample that way (``test_aggregated.py``
  runs ``crds/samples/aggregated.yaml`` with it).

At most three engines are alive at any time (``test_roles.py``, ≈ 9 GB; the others run two).
Every fixture stops what it started (process groups, namespaces), also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prfaas.engine.local.netns import TwoDatacenterNet, have_net_admin
from prfaas.engine.local.processes import free_port
from prfaas.engine.local.runtime import LocalRuntime, build_layout, monolithic_layout
from prfaas.engine.vllm.launch import EngineRole
from prfaas.engine.vllm.tinymodel import ensure_tiny_model
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.cli.local_plan import local_plan
from prfaas.planner.plan import Plan
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "crds" / "samples" / "local.yaml"
MODEL = "tiny-llama"
MAX_TOKENS = 32


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{i} is here" for i in range(n))


SHORT = words("word", 3)
"""24 tokens: under t = 256, prefilled by the decode engine itself."""
LONG = words("word", 150)
"""1372 tokens: over t, prefilled in dc-a and its KV pulled by dc-b."""
LOAD = [words(f"r{k}x", 60 + 8 * k) for k in range(8)]
"""Distinct long prompts (no shared prefix blocks) for the fallback test."""
AFTER_KILL = words("late", 120)
"""A long prompt nobody sent before: sent after dc-a's engine died."""
ROLE_SHORT = [words(f"s{k}q", 3) for k in range(12)]
"""Distinct short prompts (local path) for the role-change test (``test_roles.py``)."""
ROLE_LONG = [words(f"g{k}q", 120) for k in range(20)]
"""Distinct long prompts (remote path, ≈ 1100 tokens) for the role-change test."""
CHUNKED = words("chunk", 150)
"""A long prompt (≈ 1370 tokens) nobody sent before, prefilled in chunks by the aggregated
engine itself (``test_aggregated.py``: over its token budget)."""
AGG_SHORT = [words(f"a{k}s", 3) for k in range(4)]
AGG_LONG = [words(f"a{k}l", 100 + 10 * k) for k in range(3)]
"""Distinct short (local) and long (remote) prompts sent at once to the aggregated pool."""
PROMPTS = [SHORT, LONG, *LOAD, AFTER_KILL, *ROLE_SHORT, *ROLE_LONG, CHUNKED, *AGG_SHORT,
           *AGG_LONG]
CHATS = {"short-chat": "hello, how are you?", "long-chat": words("chat", 140)}
"""User messages of chat requests (the router applies the model's chat template to count)."""


def use_netns() -> bool:
    """Namespaces when root, unless ``PRFAAS_E2E_NETNS=0`` asks for the loopback layout."""
    return os.environ.get("PRFAAS_E2E_NETNS", "1") != "0" and have_net_admin()


def completion_body(prompt: str | list[int], **extra: Any) -> dict[str, Any]:
    """A greedy completion request of ``MAX_TOKENS`` tokens that returns token ids."""
    return {
        "model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
        "ignore_eos": True, "return_token_ids": True, **extra,
    }


def chat_body(content: str, **extra: Any) -> dict[str, Any]:
    """A greedy chat request of ``MAX_TOKENS`` tokens that returns token ids."""
    return {
        "model": MODEL, "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
        "return_token_ids": True, **extra,
    }


def token_ids(answer: dict[str, Any]) -> list[int]:
    ids = answer["choices"][0].get("token_ids")
    assert ids is not None, f"no token_ids in {answer}"
    return list(ids)


def metric(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when absent)."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _sigterm_stops_engines() -> Iterator[None]:
    """``timeout`` and CI runners stop pytest with SIGTERM, which would skip every finalizer and
    leave engines running; as a KeyboardInterrupt the finalizers stop them."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def reference(tiny_model: Path) -> dict[str, list[int]]:
    """Greedy token ids of the monolithic engine for every prompt in ``PROMPTS`` and every chat
    message in ``CHATS``."""
    runtime = LocalRuntime(monolithic_layout(tiny_model, MODEL, core=0))
    try:
        runtime.start(with_router=False)
        url = runtime.layout.engines[0].url
        out = {}
        with httpx.Client(timeout=120) as client:
            for prompt in PROMPTS:
                r = client.post(url + "/v1/completions", json=completion_body(prompt))
                r.raise_for_status()
                out[prompt] = token_ids(r.json())
            for content in CHATS.values():
                r = client.post(url + "/v1/chat/completions", json=chat_body(content))
                r.raise_for_status()
                out[content] = token_ids(r.json())
        return out
    finally:
        runtime.stop()


@dataclass(frozen=True, slots=True)
class Deployment:
    runtime: LocalRuntime

    @property
    def router(self) -> str:
        return self.runtime.layout.router_url

    @property
    def prefill(self) -> str:
        return self.runtime.layout.engine("prefill").url

    @property
    def decode(self) -> str:
        return self.runtime.layout.engine("decode").url

    @property
    def netns(self) -> bool:
        return self.runtime.net is not None

    def engine_log(self, role: EngineRole) -> Path:
        return self.runtime.processes[self.runtime.layout.engine(role).name].log_path


@contextlib.contextmanager
def running(sample: Path | Plan, tiny_model: Path) -> Iterator[LocalRuntime]:
    """``prfaas up`` of ``sample`` (a manifest, or a plan made from one; namespaces when
    ``use_netns``), stopped on the way out. ``PRFAAS_E2E_WORKDIR=folder`` keeps the engines'
    and the router's logs there."""
    plan = sample if isinstance(sample, Plan) else local_plan(load_manifests(sample))
    net = None
    if use_netns():
        link = plan.links[0]
        net = TwoDatacenterNet("dc-a", "dc-b", link.capacity_gbps * 1e9).open()
    try:
        layout = build_layout(
            plan, model_dir=tiny_model, net=net,
            router_port=8000 if net is not None else free_port(),
        )
    except BaseException:
        if net is not None:
            net.close()
        raise
    kept = os.environ.get("PRFAAS_E2E_WORKDIR")
    runtime = LocalRuntime(layout, net=net, workdir=Path(kept) if kept else None)
    try:
        runtime.start()
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(scope="module")
def deployment(reference: dict[str, list[int]], tiny_model: Path) -> Iterator[Deployment]:
    """The local sample plan running (after ``reference`` has stopped its engine)."""
    with running(SAMPLE, tiny_model) as runtime:
        yield Deployment(runtime)
