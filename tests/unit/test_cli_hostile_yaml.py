"""Hostile or absurd manifests get exit 2 with a reason, never a traceback or a long run: YAML
bombs, language tags, huge numbers, deep nesting, values beyond physical ranges; and a bounded
Hypothesis fuzz of ``validate``/``plan`` on mutated samples (issue #11, item 13)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prfaas.operator.cli.app import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
CASE_STUDY = (ROOT / "crds" / "samples" / "case-study.yaml").read_text(encoding="utf-8")

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _run(tmp_path: Path, text: str, command: str = "validate") -> tuple[int, str]:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, [command, str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output[-2000:]}"
    )
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (BILLION_LAUGHS, "YAML alias"),
        ("!!python/object/apply:os.system ['true']\n", "YAML tag"),
        ("a: !!python/name:os.system\n", "YAML tag"),
        ("a: " + "9" * 100_000 + "\n", "characters"),
        ("a: " + "9" * 5_000 + "\n", "cannot construct"),
        ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", "nesting deeper"),
    ],
)
def test_hostile_yaml_is_refused_with_a_reason(tmp_path: Path, text: str, reason: str) -> None:
    code, out = _run(tmp_path, text)
    assert code == 2 and reason in out


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("bandwidthGbps: 100", "bandwidthGbps: 18446744073709551616", "bandwidthGbps"),
        ("mu: 9.90", "mu: 1e308", "mu"),
        ("sigma: 1.00", "sigma: 2147483648", "sigma"),
        ("max: 131072", "max: 1e66", "max"),
    ],
)
def test_values_beyond_physical_ranges_fail_validate_not_plan(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    assert CASE_STUDY.count(old) == 1
    text = CASE_STUDY.replace(old, new)
    code, out = _run(tmp_path, text)
    assert code == 2 and field in out
    code, _ = _run(tmp_path, text, "plan")
    assert code in (1, 2)


def test_the_summary_counts_files_that_exist(tmp_path: Path) -> None:
    code, out = _run(tmp_path, CASE_STUDY.replace("bandwidthGbps: 100", "bandwidthGbps: -1"))
    assert code == 2
    assert re.search(r"problem\(s\) in 1 of 1 file\(s\)", out)


_NUMBER = re.compile(r"(?m)^(\s+[A-Za-z]+: )(\d+(?:\.\d+)?)\s*$")
_SITES = list(_NUMBER.finditer(CASE_STUDY))
_VALUES = (
    st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.sampled_from(["0", "-0.0", "1e308", ".inf", ".nan", "1e-320", "'12'", "[]", "{}", "~"])
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(edits=st.lists(st.tuples(st.sampled_from(range(len(_SITES))), _VALUES), max_size=3))
def test_mutated_samples_exit_0_1_or_2_without_a_traceback(
    tmp_path: Path, edits: list[tuple[int, str]]
) -> None:
    text = CASE_STUDY
    for site, value in sorted(edits, key=lambda e: -_SITES[e[0]].start()):
        m = _SITES[site]
        text = text[: m.start(2)] + value + text[m.end(2) :]
    code, _ = _run(tmp_path, text)
    assert code in (0, 2)
    if code == 0:
        code, _ = _run(tmp_path, text, "plan")
        assert code in (0, 1, 2)
