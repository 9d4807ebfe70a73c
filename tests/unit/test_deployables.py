"""Narrow deployables: the router runs with only the ``router`` extra, and the packaging says so.

The router's modules and ``prfaas router --help`` are run in a fresh interpreter where kopf,
kubernetes, scipy, networkx and matplotlib cannot be imported (a meta-path finder refuses them),
as in the router image. ``simulate --plot`` without matplotlib says how to get it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
NOT_IN_ROUTER = ("kopf", "kubernetes", "scipy", "networkx", "matplotlib")
ROUTER_MODULES = (
    "app",
    "config",
    "errors",
    "metrics",
    "policy",
    "proxy",
    "request",
    "service",
    "serving",
    "tokenizer",
)

_BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed in this image (blocked by the test)")
        return None
sys.meta_path.insert(0, _Refuse())
"""


def _run_blocked(
    blocked: tuple[str, ...], body: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    code = _BLOCKER.format(blocked=set(blocked)) + textwrap.dedent(body)
    # -P: the working folder is not put on sys.path (operator/ would shadow the stdlib); the
    # environment (PYTHONPATH of a worktree, or the editable install) finds prfaas.
    return subprocess.run(
        [sys.executable, "-P", "-c", code],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_router_modules_and_cli_run_without_the_operator_planner_or_plot_libraries(
    tmp_path: Path,
) -> None:
    body = f"""
    import importlib, sys
    for m in {ROUTER_MODULES!r}:
        importlib.import_module("prfaas.engine.router." + m)
    from prfaas.operator.cli.app import main
    sys.argv = ["prfaas", "router", "--help"]
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in {set(NOT_IN_ROUTER)!r})
    print("LOADED", loaded)
    """
    result = _run_blocked(NOT_IN_ROUTER, body, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: prfaas router" in result.stdout and "--config" in result.stdout
    assert "LOADED []" in result.stdout


def test_the_blocker_really_blocks(tmp_path: Path) -> None:
    """The check above means something: with the blocker, the solver cannot be imported."""
    result = _run_blocked(NOT_IN_ROUTER, "import prfaas.planner.solver", tmp_path)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_simulate_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path) -> None:
    sample = ROOT / "crds" / "samples" / "local.yaml"
    body = f"""
    import sys
    from prfaas.operator.cli.app import main
    sys.argv = ["prfaas", "simulate", {str(sample)!r}, "--plot", "out.png"]
    main()
    """
    result = _run_blocked(("matplotlib",), body, tmp_path)
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "--plot needs matplotlib" in message and "prfaas[plot]" in message
    assert not (tmp_path / "out.png").exists()


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_router_extra_and_the_base_leave_out_the_heavy_libraries() -> None:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    router_install = _names(project["dependencies"]) | _names(extras["router"])
    assert router_install.isdisjoint(NOT_IN_ROUTER)
    assert {"aiohttp", "httptools", "uvloop", "orjson", "tokenizers", "jinja2"} <= router_install
    assert "matplotlib" in _names(extras["plot"])
    assert {"kopf", "kubernetes"} <= _names(extras["operator"])
    assert {"scipy", "networkx"} <= _names(extras["planner"])


@pytest.mark.parametrize("extra", ["operator", "router", "planner", "plot"])
def test_make_install_brings_every_extra_the_tests_need(extra: str) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    installed = re.search(r"pip install --quiet -e '\.\[([a-z,]+)\]'", makefile)
    assert installed is not None
    assert extra in installed.group(1).split(",")


@pytest.mark.parametrize(("dockerfile", "extra"), [("router", "router"), ("operator", "operator")])
def test_each_image_installs_its_extra(dockerfile: str, extra: str) -> None:
    text = (ROOT / "engine_images" / "docker" / f"Dockerfile.{dockerfile}").read_text()
    assert f'".[{extra}]"' in text
