"""A real Prometheus beside a local deployment (``prfaas up --prometheus``, the e2e tests).

It runs the ``prometheus`` binary (Debian's ``apt-get install prometheus``; no systemd needed)
with its own config, data folder and a free loopback port, scraping every target once a second.
Targets carry the labels the operator's PodMonitor copies from pods in a cluster
(``prfaas_io_plan``, ``prfaas_io_plan_namespace``, ``prfaas_io_cluster``, ``prfaas_io_role``),
so the autoscaler's queries, the dashboards and the alerts select the local series exactly as
they would in Kubernetes. The caller hands the process to ``LocalRuntime`` (``adopt``), whose
``stop`` ends it with the engines.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from prfaas.engine.local.processes import (
    LocalRuntimeError,
    ManagedProcess,
    free_port,
    spawn,
    wait_healthy,
)

__all__ = ["INSTALL_HINT", "LocalPrometheus", "ScrapeTarget", "find_prometheus"]

INSTALL_HINT = (
    "install Prometheus (Debian/Ubuntu: `sudo apt-get install prometheus`; `make run` and "
    "`make test` do it when run as root), or put a `prometheus` binary from "
    "https://prometheus.io/download/ on PATH"
)


def find_prometheus(binary: str = "prometheus") -> str:
    """The path of the ``prometheus`` binary, or ``LocalRuntimeError`` saying how to get it."""
    path = shutil.which(binary)
    if path is None:
        raise LocalRuntimeError(f"{binary!r} is not on PATH: {INSTALL_HINT}")
    return path


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One ``/metrics`` endpoint and the labels its series get."""

    job: str
    url: str
    """Base URL (``http://host:port``) reachable from this host."""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LocalPrometheus:
    """One Prometheus process: config and TSDB under ``workdir/prometheus``."""

    targets: Sequence[ScrapeTarget]
    workdir: Path
    port: int = 0
    """0: a free loopback port."""
    scrape_interval_s: float = 1.0
    binary: str = "prometheus"
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def folder(self) -> Path:
        return self.workdir / "prometheus"

    def config(self) -> dict[str, object]:
        """The ``prometheus.yml`` it runs with: one job per target kind, static targets."""
        interval = f"{max(1, round(self.scrape_interval_s * 1000))}ms"
        jobs: dict[str, list[dict[str, object]]] = {}
        for t in self.targets:
            parts = urlsplit(t.url)
            if parts.scheme != "http" or not parts.netloc:
                raise LocalRuntimeError(f"scrape target {t.url!r} of job {t.job!r} is not http")
            jobs.setdefault(t.job, []).append(
                {"targets": [parts.netloc], "labels": dict(t.labels)}
            )
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {"job_name": job, "metrics_path": "/metrics", "static_configs": static}
                for job, static in jobs.items()
            ],
        }

    def start(self, *, timeout_s: float = 60.0) -> ManagedProcess:
        """Write the config, spawn Prometheus and wait until it is ready."""
        binary = find_prometheus(self.binary)
        self.port = self.port or free_port()
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]
        self.process = spawn("prometheus", argv, {}, self.workdir)
        try:
            wait_healthy(self.url, [self.process], timeout_s=timeout_s, path="/-/ready")
        except BaseException:
            self.process.stop()
            raise
        return self.process

    def wait_scraped(self, *, timeout_s: float = 30.0) -> None:
        """Until every target has been scraped once (its ``up`` series exists)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        want = len(self.targets)
        while True:
            try:
                r = httpx.get(self.url + "/api/v1/query", params={"query": "up"}, timeout=5)
                if len(r.json()["data"]["result"]) >= want:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise LocalRuntimeError(
                    f"Prometheus at {self.url} scraped fewer than {want} targets within "
                    f"{timeout_s:.0f} s; see {self.folder / 'prometheus.yml'} and "
                    f"{self.workdir / 'prometheus.log'}"
                )
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
