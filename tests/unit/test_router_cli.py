"""``prfaas router --config FILE``: the command line serves, reloads nothing broken, stops on
SIGTERM; a bad file exits 2 with the reason."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
from prfaas.engine.router.config import RouterConfig, dump_router_config
from prfaas.engine.router.fakes import FakeEngine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            assert proc.returncode is None, "router exited early"
            try:
                async with http.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("router never became healthy")


async def test_cli_serves_a_completion_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with FakeEngine("decode") as dec, FakeEngine("prefill") as pre:
        cfg = RouterConfig.model_validate(
            {
                "model": "tiny",
                "local_datacenter": "b",
                "datacenters": {"b": {"decode": [dec.url]}, "a": {"prefill": [pre.url]}},
                "links": {"a": {"capacity_gbps": 1.0}},
                "threshold_tokens": 8,
            }
        )
        path = tmp_path / "router.yaml"
        path.write_text(dump_router_config(cfg))
        port = _free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "prfaas",
            "router",
            "--config",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            await _wait_healthy(url, proc)
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    url + "/v1/completions",
                    json={"prompt": "a prompt longer than eight bytes", "max_tokens": 2},
                ) as resp,
            ):
                assert resp.status == 200
                assert (await resp.json())["choices"][0]["text"] == "t0 t1 "
            assert len(pre.received) == 1 and len(dec.received) == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        assert f"prfaas router: http://127.0.0.1:{port}" in out.decode()


def test_cli_rejects_a_bad_file_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("model: tiny\nlocalDatacenter: b\ndatacenters: {}\n")
    run = subprocess.run(
        [sys.executable, "-P", "-m", "prfaas", "router", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "localDatacenter 'b' has no entry under datacenters" in run.stderr
