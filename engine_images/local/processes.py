"""Child processes in their own process groups, so a whole vLLM tree (API server, EngineCore,
worker) is stopped with one signal; health polling that reports a dead child's log."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["LocalRuntimeError", "ManagedProcess", "free_port", "spawn", "wait_healthy"]


class LocalRuntimeError(RuntimeError):
    """The local deployment could not be planned, started or reached; the message says which
    part and where its log is."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class ManagedProcess:
    """A child started in its own process group (so its whole tree can be signalled)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (gone already: nothing to do)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; reap the leader."""
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            self.signal(sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(self.popen.pid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)
        if self._log is not None:
            self._log.close()
            self._log = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn(
    name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path
) -> ManagedProcess:
    """Start ``argv`` in a new session (its own process group), output to ``<name>.log``."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    log.write(f"$ {' '.join(argv)}\n".encode())
    log.flush()
    popen = subprocess.Popen(
        list(argv), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return ManagedProcess(name, popen, log_path, log)


def wait_healthy(
    url: str, procs: Sequence[ManagedProcess], *, timeout_s: float = 300.0, path: str = "/health"
) -> float:
    """Poll ``url + path`` until it answers 200; returns the seconds waited.

    Raises ``LocalRuntimeError`` with the log tail if a process in ``procs`` exits first, or
    after ``timeout_s``.
    """
    import httpx

    start = time.monotonic()
    while True:
        for p in procs:
            if not p.alive():
                raise LocalRuntimeError(
                    f"{p.name} exited with {p.popen.returncode} before {url} was healthy; "
                    f"log {p.log_path}:\n{p.log_tail()}"
                )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=2.0).status_code == 200:
                return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            tails = "\n".join(f"--- {p.name} ({p.log_path})\n{p.log_tail(10)}" for p in procs)
            raise LocalRuntimeError(f"{url} not healthy after {timeout_s:.0f}s\n{tails}")
        time.sleep(0.5)
