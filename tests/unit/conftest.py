"""Shared fixtures of the unit tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prfaas.operator.api.manifests import parse_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.problem import Problem

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="session")
def bench_script() -> Callable[[str], ModuleType]:
    """Loads ``bench/<name>.py`` as module ``bench_<name>`` (once per session): the benches are
    scripts, not part of the package, but their scenario builders are tested."""

    def load(name: str) -> ModuleType:
        key = f"bench_{name}"
        if key not in sys.modules:
            spec = importlib.util.spec_from_file_location(key, BENCH_DIR / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            spec.loader.exec_module(module)
        return sys.modules[key]

    return load


SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "local.yaml"


def sample_with(**inline: Any) -> list[dict[str, Any]]:
    """``crds/samples/local.yaml``'s manifests, these fields of its inline measured profile
    replaced (``None``: removed)."""
    docs = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    for d in docs:
        if d["kind"] == "ServingPlan":
            profile = d["spec"]["model"]["measuredProfile"]["inline"]
            for key, value in inline.items():
                profile.pop(key, None)
                if value is not None:
                    profile[key] = value
    return docs


def sample_problem(docs: list[dict[str, Any]]) -> Problem:
    """The one planner problem of these manifests."""
    (problem,) = problems_from_manifests(parse_manifests(yaml.safe_dump_all(docs)).resources)
    return problem
