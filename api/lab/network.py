"""The lab's network: namespaces joined by a bridge, and the processes that run in them.

    tlab-lan   br0 (the machines' L2 segment; VMs' taps join it here)
    tlab-site  eth0 10.213.0.2/24 -- site-p on br0   the site's DHCP (dnsmasq)
    tlab-edge  eth0 10.213.0.3/24 -- edge-p on br0   tempered bootedge

Nothing is added to the root namespace: the control plane reaches the lab through a unix
socket (the edge's API) and `nsenter` (the worker's SSH proxy command). Every process is
started here, recorded by PID in the state file at once, and stopped by PID after its
/proc entry is checked to be ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from api.lab.state import MARKER, LabState, Proc

# One lab per host under this prefix; tests (and a second lab) choose their own.
PREFIX = os.environ.get("TEMPERED_LAB_PREFIX", "tlab") + "-"
LAN, SITE, EDGE = f"{PREFIX}lan", f"{PREFIX}site", f"{PREFIX}edge"
BRIDGE = "br0"
SUBNET = "10.213.0"
SITE_IP, EDGE_IP = f"{SUBNET}.2", f"{SUBNET}.3"
DHCP_RANGE = (f"{SUBNET}.100", f"{SUBNET}.199")


def ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def lab_namespaces() -> list[str]:
    """Every namespace carrying the lab's prefix, recorded or not."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]


def build(state: LabState) -> None:
    """The LAN namespace with its bridge, and the site and edge namespaces plugged into it."""
    for ns in (LAN, SITE, EDGE):
        ip("netns", "add", ns)
        state.add_namespace(ns)
        ip("link", "set", "lo", "up", netns=ns)
    ip("link", "add", BRIDGE, "type", "bridge", "stp_state", "0", netns=LAN)
    ip("link", "set", BRIDGE, "up", netns=LAN)
    state.bridge = f"{LAN}/{BRIDGE}"
    for ns, port, address in ((SITE, "site-p", SITE_IP), (EDGE, "edge-p", EDGE_IP)):
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", LAN)
        ip("link", "set", port, "master", BRIDGE, "up", netns=LAN)
        ip("addr", "add", f"{address}/24", "dev", "eth0", netns=ns)
        ip("link", "set", "eth0", "up", netns=ns)
        state.addresses[ns.removeprefix(PREFIX)] = address
    # An IPv6 prefix on the site, for its router advertisements: iPXE waits ~16 s without one.
    ip("addr", "add", "fd00:213::2/64", "dev", "eth0", "nodad", netns=SITE)
    state.save()


def spawn(
    state: LabState, name: str, argv: list[str], log: Path, netns: str | None = None, env: dict | None = None
) -> subprocess.Popen:
    """Start a lab process in its own session (so its group can be stopped), marked as the
    lab's in its environment, and record it before anything else can fail."""
    environment = {**(env if env is not None else os.environ), MARKER: str(state.dir)}
    log.parent.mkdir(parents=True, exist_ok=True)
    command = ["ip", "netns", "exec", netns, *argv] if netns else argv
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=environment)
    state.add_process(name, proc.pid, argv, netns)
    return proc


# ---- checking and stopping -----------------------------------------------------------------


def _read(pid: int, what: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return None


def is_ours(pid: int, lab: Path, argv: list[str] | None = None) -> bool:
    """Alive and the lab's: its command line ends with the argv we started (`ip netns exec`
    execs into it), or its environment carries the lab's marker. A PID reused by another
    program is neither."""
    cmdline = _read(pid, "cmdline")
    if not cmdline:
        return False
    if argv and cmdline.rstrip(b"\0").split(b"\0")[-len(argv):] == [a.encode() for a in argv]:
        return True
    environ = _read(pid, "environ") or b""
    return f"{MARKER}={lab}".encode() in environ.split(b"\0")


def marked_pids(lab: Path) -> list[int]:
    """Every live process whose environment names this lab (children included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and is_ours(int(entry.name), lab):
            found.append(int(entry.name))
    return found


def netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()] if out.returncode == 0 else []


def alive(pid: int) -> bool:
    state = _read(pid, "stat")
    return state is not None and b") Z" not in state  # a zombie has exited


def kill_all(pids: set[int], grace: float = 10.0) -> list[int]:
    """SIGTERM each (its whole group when it leads one), then SIGKILL what is left; returns
    the PIDs that would not die."""
    for sig, timeout in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in [p for p in pids if alive(p)]:
            try:
                os.killpg(pid, sig) if os.getpgid(pid) == pid else os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.1)
    return [p for p in pids if alive(p)]


def _reap() -> None:
    """Collect our own exited children, so they do not linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def stop_processes(state: LabState) -> list[int]:
    """Stop every process of the lab: recorded ones (checked first), marked ones, and whatever
    runs in the lab's namespaces. Returns those still alive."""
    pids = {p.pid for p in state.processes.values() if is_ours(p.pid, state.dir, p.argv)}
    pids |= set(marked_pids(state.dir))
    for ns in set(state.namespaces) | set(lab_namespaces()):
        pids |= set(netns_pids(ns))
    return kill_all(pids)


def delete_namespaces(state: LabState) -> list[str]:
    """Delete the lab's namespaces (their bridges, veths and taps go with them); returns any left."""
    for ns in set(state.namespaces) | set(lab_namespaces()):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return lab_namespaces()


def recorded_alive(state: LabState) -> dict[str, Proc]:
    return {name: p for name, p in state.processes.items() if is_ours(p.pid, state.dir, p.argv)}
