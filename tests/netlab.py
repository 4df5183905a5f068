"""Private networks for tests: network namespaces joined by veth pairs or a bridge.

Everything lives inside namespaces this module creates (names carry the test process's PID);
nothing is added to the root namespace. Every process started in them is stopped by its PID,
and the namespaces are deleted, when the `Lab` closes.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import stop

_counter = itertools.count()


def lab_available() -> str | None:
    """Why a namespace lab cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 is missing"
    return None


def ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(command, check=True, capture_output=True, text=True)


@dataclass
class Lab:
    """A set of namespaces and the processes running in them."""

    subnet: int = field(default_factory=lambda: 100 + next(_counter) % 100)
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def netns(self, role: str) -> str:
        name = f"tpd-{os.getpid()}-{self.subnet}-{role}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "set", "lo", "up", netns=name)
        return name

    def address(self, host: int) -> str:
        return f"10.213.{self.subnet}.{host}"

    def veth(self, a: str, b: str, a_host: int | None, b_host: int | None) -> None:
        """Join namespaces a and b with a veth pair named eth0 on both sides."""
        ip("link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, host in ((a, a_host), (b, b_host)):
            if host is not None:
                ip("addr", "add", f"{self.address(host)}/24", "dev", "eth0", netns=ns)
            ip("link", "set", "eth0", "up", netns=ns)

    def bridge(self, ns: str) -> None:
        ip("link", "add", "br0", "type", "bridge", "stp_state", "0", netns=ns)
        ip("link", "set", "br0", "up", netns=ns)

    def attach(self, lan: str, other: str, port: str, host: int | None) -> None:
        """A veth from `other` (eth0 there) to the bridge in `lan` (as `port`)."""
        ip("link", "add", "eth0", "netns", other, "type", "veth", "peer", "name", port, "netns", lan)
        ip("link", "set", port, "master", "br0", "up", netns=lan)
        if host is not None:
            ip("addr", "add", f"{self.address(host)}/24", "dev", "eth0", netns=other)
        ip("link", "set", "eth0", "up", netns=other)

    def run(self, ns: str, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
        self.processes.append(proc)
        return proc

    def exec(self, ns: str, args: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def close(self) -> None:
        for proc in reversed(self.processes):
            stop(proc)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.processes.clear()
        self.namespaces.clear()
