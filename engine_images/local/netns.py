"""Two emulated datacenters on one Linux host: network namespaces, veth pairs, ``tc tbf``.

``TwoDatacenterNet`` creates, for a run tagged ``<tag>``:

* one namespace per datacenter (``pf<tag>-<dc>``, loopback up);
* the *inter-DC link*: a veth pair joining the two namespaces (``10.77.<n>.1`` in the prefill
  datacenter, ``10.77.<n>.2`` in the decode one), rate-shaped on both ends with ``tc tbf`` at the
  InterDCLink's bandwidth — this kernel has no ``netem``, so no delay or loss is added;
* one *access* veth pair per namespace to the host (``10.<78+i>.<n>.1`` on the host,
  ``.2`` inside), unshaped, so the host reaches the router and the engines' metrics.

Everything needs root (``CAP_NET_ADMIN``). ``close()`` deletes the namespaces, which destroys
every veth end inside them and so their host-side peers too; ``leftovers(tag)`` lists whatever
still carries the tag (tests assert it is empty).
"""

from __future__ import annotations

import os
import random
import re
import secrets
import subprocess
from dataclasses import dataclass, field

__all__ = [
    "DatacenterNet",
    "NetnsError",
    "TwoDatacenterNet",
    "have_net_admin",
    "leftovers",
    "tbf_args",
]

_PREFIX = "pf"


class NetnsError(RuntimeError):
    """A namespace, veth or qdisc command failed; the message carries the command's stderr."""


def _run(*argv: str) -> str:
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise NetnsError(f"{argv[0]} not found: install iproute2") from exc
    except subprocess.CalledProcessError as exc:
        raise NetnsError(f"`{' '.join(argv)}` failed: {exc.stderr.strip()}") from exc
    return done.stdout


def have_net_admin() -> bool:
    """Whether this process may create namespaces (root, and ``ip netns`` works)."""
    if os.geteuid() != 0:
        return False
    try:
        _run("ip", "netns", "list")
    except NetnsError:
        return False
    return True


def tbf_args(rate_bps: float) -> list[str]:
    """``tc`` arguments of a token bucket at ``rate_bps``: burst ≥ 4 ms of traffic and ≥ 64 KiB
    (GSO frames are up to 64 KiB), queue ≤ 50 ms."""
    rate = max(int(rate_bps), 8_000)
    burst = max(rate // 8 // 250, 65_536)
    return ["tbf", "rate", f"{rate}bit", "burst", str(burst), "latency", "50ms"]


@dataclass(frozen=True, slots=True)
class DatacenterNet:
    """One datacenter's namespace and addresses."""

    datacenter: str
    namespace: str
    link_device: str
    """The inter-DC veth end inside the namespace (``UCX_NET_DEVICES``)."""
    link_address: str
    """This side's address on the inter-DC link (NIXL side channel, engine URLs)."""
    access_address: str
    """This namespace's address on its access pair (reachable from the host)."""

    def exec_prefix(self) -> list[str]:
        """Prepend to a command line to run it inside the namespace (``ip netns exec`` execs,
        so the process keeps its pid and process group)."""
        return ["ip", "netns", "exec", self.namespace]


@dataclass(slots=True)
class TwoDatacenterNet:
    """A prefill datacenter and a decode datacenter joined by a shaped veth link."""

    prefill_dc: str
    decode_dc: str
    rate_bps: float
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: int = field(default_factory=lambda: random.randint(1, 254))
    created: list[str] = field(default_factory=list)
    """Namespaces created so far (what ``close`` deletes)."""
    prefill: DatacenterNet = field(init=False)
    decode: DatacenterNet = field(init=False)

    def __post_init__(self) -> None:
        self.prefill = self._dc(self.prefill_dc, 0)
        self.decode = self._dc(self.decode_dc, 1)

    def _dc(self, name: str, i: int) -> DatacenterNet:
        side = "ab"[i]
        return DatacenterNet(
            datacenter=name,
            namespace=f"{_PREFIX}{self.tag}-{name}"[:40],
            link_device=f"{_PREFIX}{self.tag}l{side}",
            link_address=f"10.77.{self.subnet}.{i + 1}",
            access_address=f"10.{78 + i}.{self.subnet}.2",
        )

    def access_host_address(self, dc: DatacenterNet) -> str:
        return dc.access_address.rsplit(".", 1)[0] + ".1"

    def open(self) -> TwoDatacenterNet:
        """Create namespaces, link and access pairs; on failure remove what was made."""
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self) -> None:
        for dc in (self.prefill, self.decode):
            _run("ip", "netns", "add", dc.namespace)
            self.created.append(dc.namespace)
            _run("ip", "-n", dc.namespace, "link", "set", "lo", "up")
        a, b = self.prefill, self.decode
        _run("ip", "link", "add", a.link_device, "type", "veth", "peer", "name", b.link_device)
        _run("ip", "link", "set", a.link_device, "netns", a.namespace)
        _run("ip", "link", "set", b.link_device, "netns", b.namespace)
        for i, dc in enumerate((a, b)):
            _run("ip", "-n", dc.namespace, "addr", "add", f"{dc.link_address}/24",
                 "dev", dc.link_device)
            _run("ip", "-n", dc.namespace, "link", "set", dc.link_device, "up")
            host_end, ns_end = f"{_PREFIX}{self.tag}h{'ab'[i]}", f"{_PREFIX}{self.tag}n{'ab'[i]}"
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _run("ip", "link", "set", ns_end, "netns", dc.namespace)
            _run("ip", "addr", "add", f"{self.access_host_address(dc)}/24", "dev", host_end)
            _run("ip", "link", "set", host_end, "up")
            _run("ip", "-n", dc.namespace, "addr", "add", f"{dc.access_address}/24",
                 "dev", ns_end)
            _run("ip", "-n", dc.namespace, "link", "set", ns_end, "up")
        self.shape(self.rate_bps)

    def shape(self, rate_bps: float) -> None:
        """Set the link's rate on both ends (``tc qdisc replace ... tbf``)."""
        for dc in (self.prefill, self.decode):
            _run("tc", "-n", dc.namespace, "qdisc", "replace", "dev", dc.link_device, "root",
                 *tbf_args(rate_bps))
        self.rate_bps = rate_bps

    def sent_bytes(self, dc: DatacenterNet) -> int:
        """Bytes ``dc``'s end of the link has sent so far (its ``tbf`` qdisc's ``Sent`` counter:
        what crossed the shaped link, headers included)."""
        shown = _run("tc", "-s", "-n", dc.namespace, "qdisc", "show", "dev", dc.link_device)
        match = re.search(r"Sent (\d+) bytes", shown)
        if match is None:
            raise NetnsError(f"no 'Sent N bytes' in tc -s qdisc of {dc.link_device}: {shown!r}")
        return int(match.group(1))

    def close(self) -> None:
        """Delete the namespaces (and with them every veth this run made). Idempotent."""
        while self.created:
            ns = self.created.pop()
            try:
                _run("ip", "netns", "delete", ns)
            except NetnsError:
                if ns in _namespaces():
                    raise
        for name in _links(f"{_PREFIX}{self.tag}"):
            try:  # a host end normally vanishes with its peer, perhaps only just now
                _run("ip", "link", "delete", name)
            except NetnsError:
                if name in _links(name):
                    raise


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()]


def _links(prefix: str) -> list[str]:
    out = []
    for line in _run("ip", "-o", "link", "show").splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                out.append(name)
    return out


def leftovers(tag: str) -> list[str]:
    """Namespaces and host links that still carry ``tag`` (empty after a clean ``close``)."""
    prefix = f"{_PREFIX}{tag}"
    return [n for n in _namespaces() if n.startswith(prefix)] + _links(prefix)
