"""Network partitions for the chaos suite: processes in a Linux network namespace, with nftables
rules inside it that drop packets to a chosen service port (a real partition: no reset, no refusal,
the packets vanish) and are flushed to heal.

The services (Kafka, PostgreSQL) listen on a service address of the host
(:data:`SERVICE_IP`, the host end of a veth pair of its own); each namespace reaches it through
its own veth pair. Everything is created
with ``ip`` and ``nft`` and deleted by :meth:`Network.close`. Needs root, ``ip`` (iproute2) and
``nft`` (nftables); :func:`unavailable` says why not, when not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

__all__ = ["SERVICE_IP", "Namespace", "Network", "unavailable"]

SERVICE_IP = "10.231.0.1"
_TABLE = "bridge_chaos"


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def unavailable() -> str | None:
    """Why network partitions cannot be made on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "not root: network namespaces and nftables need CAP_NET_ADMIN"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian: apt-get install {package})"
    probe = f"bcprobe{os.getpid() % 100000}"
    try:
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"ip netns add failed: {made.stderr.strip()}"
        table = _run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", _TABLE, check=False)
        if table.returncode != 0:
            return f"nft in a network namespace failed: {table.stderr.strip()}"
    finally:
        _run("ip", "netns", "delete", probe, check=False)
    return None


@dataclass
class Namespace:
    """One network namespace, linked to the host by a veth pair, with an nftables table of its own."""

    name: str
    host_ip: str
    ns_ip: str
    host_link: str
    rules: list[str] = field(default_factory=list)

    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def drop(self, ip: str, port: int) -> None:
        """Drop every packet between this namespace and ``ip:port``, both ways."""
        nft = ["ip", "netns", "exec", self.name, "nft"]
        _run(
            *nft, "add", "rule", "inet", _TABLE, "out", "ip", "daddr", ip, "tcp", "dport", str(port), "counter", "drop"
        )
        _run(*nft, "add", "rule", "inet", _TABLE, "in", "ip", "saddr", ip, "tcp", "sport", str(port), "counter", "drop")
        self.rules.append(f"{ip}:{port}")

    def heal(self) -> None:
        nft = ["ip", "netns", "exec", self.name, "nft"]
        _run(*nft, "flush", "chain", "inet", _TABLE, "out")
        _run(*nft, "flush", "chain", "inet", _TABLE, "in")
        self.rules.clear()

    def dropped_packets(self) -> int:
        """Packets dropped so far by the current rules (nft counters)."""
        listing = _run("ip", "netns", "exec", self.name, "nft", "list", "table", "inet", _TABLE).stdout
        total = 0
        words = listing.split()
        for i, word in enumerate(words[:-1]):
            if word == "packets":
                total += int(words[i + 1])
        return total


class Network:
    """The service address on the host and the namespaces that reach it."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or str(os.getpid() % 100000)
        self.namespaces: list[Namespace] = []
        # The service address sits on the host end of a veth pair of its own (containers often
        # lack the dummy interface type); its other end idles in a namespace of its own.
        self._service = self.namespace("svc", host_ip=SERVICE_IP, ns_ip="10.231.0.2")

    def namespace(self, label: str, *, host_ip: str | None = None, ns_ip: str | None = None) -> Namespace:
        index = len(self.namespaces)
        name = f"bc{label}{self.tag}"
        host_link, ns_link = f"bch{index}{self.tag}"[:15], f"bcn{index}{self.tag}"[:15]
        host_ip, ns_ip = host_ip or f"10.231.{index}.1", ns_ip or f"10.231.{index}.2"
        _run("ip", "netns", "add", name)
        namespace = Namespace(name, host_ip, ns_ip, host_link)
        self.namespaces.append(namespace)
        _run("ip", "link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        _run("ip", "link", "set", ns_link, "netns", name)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_link)
        _run("ip", "link", "set", host_link, "up")
        inside = ["ip", "netns", "exec", name]
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run(*inside, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_link)
        _run(*inside, "ip", "link", "set", ns_link, "up")
        _run(*inside, "ip", "route", "add", "default", "via", host_ip)
        _run(*inside, "nft", "add", "table", "inet", _TABLE)
        _run(*inside, "nft", "add", "chain", "inet", _TABLE, "out", "{ type filter hook output priority 0 ; }")
        _run(*inside, "nft", "add", "chain", "inet", _TABLE, "in", "{ type filter hook input priority 0 ; }")
        return namespace

    def close(self) -> None:
        for namespace in self.namespaces:
            _run("ip", "netns", "delete", namespace.name, check=False)  # takes its end of the veth pair
            _run("ip", "link", "delete", namespace.host_link, check=False)
        self.namespaces.clear()
