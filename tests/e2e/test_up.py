"""``prfaas up crds/samples/local.yaml``: the README's main job, as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prfaas.engine.local.netns import have_net_admin
from prfaas.engine.local.processes import free_port

from .conftest import MAX_TOKENS, SAMPLE, completion_body, use_netns

pytestmark = pytest.mark.e2e


def _session_members(sid: int) -> list[int]:
    """Pids whose session is ``sid`` (everything ``prfaas up`` started stays in its session
    or in process groups it created; both are checked by the caller)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: session id
            out.append(int(stat.parent.name))
    return out


def _children_of(pid: int) -> set[int]:
    kids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4: parent pid
            kids.add(int(stat.parent.name))
    return kids


def _namespaces() -> set[str]:
    if not have_net_admin():
        return set()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_prfaas_up_serves_a_completion_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    netns = use_netns()
    port = 8000 if netns else free_port()
    namespaces_before = _namespaces()
    argv = [sys.executable, "-m", "prfaas", "up", str(SAMPLE), "--port", str(port),
            "--workdir", str(tmp_path / "run")] + (["--netns"] if netns else [])
    out_path = tmp_path / "up.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    started: set[int] = set()
    try:
        endpoint = None
        for _ in range(600):
            text = out_path.read_text(errors="replace")
            match = re.search(r"endpoint: (http://[0-9.:]+)", text)
            if match:
                endpoint = match.group(1)
                break
            assert proc.poll() is None, f"prfaas up exited early:\n{text}"
            time.sleep(0.5)
        assert endpoint is not None, out_path.read_text()
        if netns:
            assert _namespaces() - namespaces_before, "no namespaces were created"
        # Every engine and the router run in their own process groups under prfaas up.
        started = _children_of(proc.pid)
        assert len(started) == 3
        r = httpx.post(endpoint + "/v1/completions",
                       json=completion_body("hello from the readme"), timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        assert "stopped" in out_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _session_members(proc.pid) == []
    for pid in started:
        assert _session_members(pid) == [], f"process group of {pid} left running"
    assert _namespaces() == namespaces_before
