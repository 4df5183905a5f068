"""proxyDHCP storm benchmark: Tempered's boot edge against dnsmasq in proxy mode.

What it measures
----------------
A storm of N distinct firmware PXE clients (default 1,000) booting at once on one L2 segment.
Each client does the two proxyDHCP steps of a PXE boot:

1. DISCOVER, broadcast to 255.255.255.255:67  ->  the proxy OFFER, broadcast to :68;
2. REQUEST (message type 3) unicast to the server's UDP 4011  ->  the ACK, unicast back.

Two load models. Closed loop (default) with a bounded window (32 clients in flight): a client
starts with its DISCOVER, sends its REQUEST as soon as its OFFER arrives, and a new client starts
when one finishes; this measures how fast a server turns packets around when saturated. Open
loop (`--arrival S`): the clients power on evenly over S seconds whatever is in flight, as a
rack switched on at once does; this measures the latency machines actually see in a storm. A step with no matching reply within the timeout (default 1 s) counts the client
as lost; nothing is retransmitted. Replies are matched by xid (and chaddr). For each server the
benchmark reports how many clients got both answers, how many were lost (and at which step),
p50/p99 latency of each step (send to matching reply, so queueing at the server is included),
the storm's wall time and the CPU time the server process used during the storm.

The same harness, in the same run and the same namespaces, is pointed first at
`tempered bootedge` (answering from its cached policy, control plane deliberately unreachable)
and then at dnsmasq in proxy mode (`--dhcp-range=NET,proxy` + `--pxe-service`), the anchor.
Each gets a short warm-up (20 clients by default, not counted) before the measured storm.

Clients are built with scapy from the captured firmware DISCOVER in shared/testdata/pxe-clients
(via `tests.pxeclient.make_request`; `--firmware bios` (default, option 93 = 0) or `efi` (93 = 7),
both without option 77 "iPXE", so both servers treat them as firmware PXE ROMs), each with its
own MAC (chaddr and option 61), SMBIOS UUID (option 97) and xid, and the broadcast flag set as
EDK2 does. All packets are built before the clock starts; the timed loop uses plain UDP sockets
(one bound to :68 on eth0 for the broadcasts, one bound to the client's address for 4011).
Because they are kernel UDP sockets, the DISCOVER leaves from the client's address
(10.213.X.50), not 0.0.0.0 as firmware sends it; neither server looks at the source address of
a DISCOVER. Latency is the kernel's receive timestamp of the reply (SO_TIMESTAMPNS) minus the
time taken just before the send, so the harness's own processing is not counted.

The 4011 REQUEST (ciaddr set, as after the site DHCP's ACK) is built from what the server's
OFFER asks for, as a PXE ROM does:
- the OFFER has a boot menu in option 43 (dnsmasq, BIOS clients: {6: 3, 8, 9, 10}): the REQUEST
  carries 43 = {71: first menu item, layer 0} (0x8000 with this benchmark's dnsmasq options);
- the OFFER has no option 43 but a siaddr (dnsmasq, UEFI clients, arch >= 6: its
  "redirect to 4011"): the REQUEST carries no option 43;
- the OFFER says "boot this file, no discovery" (Tempered, 43 = {6: 0x08}): a real client would
  not ask again; the benchmark sends the REQUEST the dnsmasq anchor leads the same client to
  (BIOS: 43 = {71: 0x8000}; EFI: no option 43), so both servers get the same packets. Tempered
  answers a 4011 REQUEST whatever its option 43 says. The run notes it if they differ.

Reading the figures: the load is closed-loop, so by Little's law the per-client latency is about
window / throughput, that is window x the server's time per packet; p50 and p99 mostly measure
how fast a server turns packets around once 32 clients are queued at it. With dnsmasq the Python
harness itself is a large part of the time (see "harness cpu" in the per-server line), so its
figures are an upper bound for dnsmasq. On a small or shared host, other work shows up in p99.

It prints figures and never asserts on timings.

Network safety: everything runs inside two network namespaces created here with
`tests.netlab.Lab` (edge 10.213.X.3, client 10.213.X.50, one veth pair); nothing touches the
root namespace. Every process started is stopped by its PID and the namespaces are deleted on
exit, also on errors and Ctrl-C.

Run (as root, from the repository root):

    .venv/bin/python -m tests.bench.bench_proxydhcp [--clients 1000] [--window 32 | --arrival 1]
        [--timeout 1.0] [--warmup 20] [--firmware bios|efi] [--keep-logs]

The client side of the harness is this same module run inside the client namespace with
`--client-side` (an internal mode).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # = SCM_TIMESTAMPNS on Linux
MAGIC = b"\x63\x82\x53\x63"
OFFER, ACK = 2, 5
# The 4011 REQUEST's boot item when the OFFER announces none (Tempered's {6: 0x08} OFFER): the
# one this benchmark's dnsmasq leads the same client to. BIOS: its menu's first item, 0x8000
# (x86PC is the first --pxe-service); EFI: 0 = no option 43, since dnsmasq's OFFER to UEFI
# clients (arch >= 6) carries no option 43 and only redirects them to 4011.
FIRMWARE_ITEM = {"bios": 0x8000, "efi": 0}
EDGE_CONFIG = {
    "name": "bench",
    "policy": {"mode": "catch-all", "cluster": "bench", "mac_prefixes": [], "segment": "bench"},
    "known_macs": [],
    "known_uuids": [],
}


class BenchError(Exception):
    """A server did not come up or did not answer: reported, never a timing assertion."""


# ---------------------------------------------------------------------------------------------
# Client side: runs inside the client namespace.
# ---------------------------------------------------------------------------------------------


def client_mac(run: int, index: int) -> bytes:
    """A locally administered MAC, distinct per run (warm-up, storm, server) and client."""
    return bytes([0x02, 0xB7, run & 0xFF]) + index.to_bytes(3, "big")


def build_packets(count: int, run: int, firmware: str, client_ip: str, boot_item: int, seed: int):
    """Per client: (xid, mac, DISCOVER bytes, 4011 REQUEST bytes), all built before timing."""
    from scapy.layers.dhcp import DHCP

    from tests.pxeclient import make_request

    template = make_request("02:b7:00:00:00:00", firmware, message_type=1)
    rng = random.Random(seed)
    xids = rng.sample(range(1, 2**32), count)
    # option 43 {71: PXE_BOOT_ITEM (type, layer 0)}, or no option 43 at all for item 0
    vendor = [("vendor_specific", b"\x47\x04" + boot_item.to_bytes(2, "big") + b"\x00\x00\xff")] if boot_item else []
    clients = []
    for index in range(count):
        mac = client_mac(run, index)
        uuid = bytes([0x00]) + rng.randbytes(16)
        base = [o for o in template[DHCP].options if isinstance(o, tuple)]
        options = []
        for key, value in base:
            if key == "client_id":
                value = b"\x01" + mac
            elif key == "pxe_client_machine_identifier":
                value = uuid
            options.append((key, value))
        discover = template.copy()
        discover.xid = xids[index]
        discover.chaddr = mac + b"\0" * 10
        discover.flags = 0x8000  # EDK2 firmware sets the broadcast flag
        discover[DHCP].options = [*options, "end"]
        request = discover.copy()
        request.ciaddr = client_ip  # the client has its address from the site DHCP by now
        request.flags = 0
        request[DHCP].options = [*[(k, 3 if k == "message-type" else v) for k, v in options], *vendor, "end"]
        clients.append((xids[index], mac, bytes(discover), bytes(request)))
    return clients


def reply_info(data: bytes) -> tuple[int, bytes, int | None] | None:
    """(xid, chaddr[:6], DHCP message type) of a BOOTREPLY, read straight from the bytes."""
    if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
        return None
    xid = int.from_bytes(data[4:8], "big")
    message_type, at = None, 240
    while at + 1 < len(data):
        code = data[at]
        if code == 255:
            break
        if code == 0:
            at += 1
            continue
        length = data[at + 1]
        if code == 53 and length >= 1 and at + 2 < len(data):
            message_type = data[at + 2]
            break
        at += 2 + length
    return xid, bytes(data[28:34]), message_type


def open_sockets(interface: str, client_ip: str) -> tuple[socket.socket, socket.socket]:
    """:68 on the interface for DISCOVER/OFFER broadcasts, and client_ip:ephemeral for 4011."""
    bcast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bcast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bcast.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    bcast.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
    bcast.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    bcast.bind(("0.0.0.0", 68))
    unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unicast.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    unicast.bind((client_ip, 0))
    for sock in (bcast, unicast):  # the kernel stamps each datagram as it arrives
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return bcast, unicast


def now_ns() -> int:
    """The send clock: CLOCK_REALTIME, the clock of the kernel's receive timestamps."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


def drain(sock: socket.socket):
    """Every datagram waiting on `sock`, with its kernel arrival time in ns (so the harness's
    own processing does not count as server latency)."""
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, 64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        at = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                at = sec * 1_000_000_000 + nsec
        yield data, at if at is not None else now_ns()


def storm(args) -> dict:
    """The timed loop: DISCOVER -> OFFER -> 4011 REQUEST -> ACK, `window` clients in flight."""
    t0 = time.perf_counter()
    clients = build_packets(args.clients, args.run, args.firmware, args.client_ip, args.boot_item, args.seed)
    build_s = time.perf_counter() - t0
    by_xid = {xid: i for i, (xid, _, _, _) in enumerate(clients)}
    n = len(clients)
    WAIT_OFFER, WAIT_ACK, DONE, LOST_OFFER, LOST_ACK = range(5)
    state = [None] * n
    sent_at = [0] * n
    discover_ms: list[float] = []
    request_ms: list[float] = []
    counts = {"late": 0, "stray": 0, "wrong": 0, "duplicate": 0}
    timers: list[tuple[int, int, int]] = []
    timeout_ns = int(args.timeout * 1e9)
    bcast, unicast = open_sockets(args.interface, args.client_ip)
    discover_to = ("255.255.255.255", 67)
    request_to = (args.server_ip, 4011)
    in_flight, next_client = 0, 0
    # open loop (--arrival S): client i powers on at i * S / n, however many are in flight
    arrival_ns = int(args.arrival * 1e9 / n) if args.arrival else 0
    cpu_start = time.process_time()
    start = now_ns()
    last_event = start
    try:
        while next_client < n or in_flight:
            while next_client < n and (
                now_ns() >= start + next_client * arrival_ns if arrival_ns else in_flight < args.window
            ):
                i = next_client
                next_client += 1
                state[i] = WAIT_OFFER
                sent_at[i] = now_ns()
                bcast.sendto(clients[i][2], discover_to)
                heapq.heappush(timers, (sent_at[i] + timeout_ns, i, WAIT_OFFER))
                in_flight += 1
            now = now_ns()
            while timers and timers[0][0] <= now:
                _, i, waited = heapq.heappop(timers)
                if state[i] == waited:
                    state[i] = LOST_OFFER if waited == WAIT_OFFER else LOST_ACK
                    in_flight -= 1
                    last_event = now
            if not in_flight and next_client < n and not arrival_ns:
                continue
            if not in_flight and next_client >= n:
                break
            wait = max(0, timers[0][0] - now) / 1e9 if timers else args.timeout
            if arrival_ns and next_client < n:
                wait = min(wait, max(0, start + next_client * arrival_ns - now) / 1e9)
            ready, _, _ = select.select([bcast, unicast], [], [], wait)
            for sock in ready:
                expected = WAIT_OFFER if sock is bcast else WAIT_ACK
                for data, at in drain(sock):
                    info = reply_info(data)
                    i = by_xid.get(info[0]) if info else None
                    if i is None:
                        counts["stray"] += 1
                        continue
                    if info[1] != clients[i][1]:
                        counts["wrong"] += 1
                        continue
                    if state[i] != expected:
                        lost = LOST_OFFER if expected == WAIT_OFFER else LOST_ACK
                        counts["late" if state[i] == lost else "duplicate"] += 1
                        continue
                    if info[2] != (OFFER if expected == WAIT_OFFER else ACK):
                        counts["wrong"] += 1
                        continue
                    elapsed = (at - sent_at[i]) / 1e6
                    last_event = at
                    if expected == WAIT_OFFER:
                        discover_ms.append(elapsed)
                        state[i] = WAIT_ACK
                        sent_at[i] = now_ns()
                        unicast.sendto(clients[i][3], request_to)
                        heapq.heappush(timers, (sent_at[i] + timeout_ns, i, WAIT_ACK))
                    else:
                        request_ms.append(elapsed)
                        state[i] = DONE
                        in_flight -= 1
        harness_cpu_s = time.process_time() - cpu_start
        # a short grace period: count replies that arrive after their client was given up
        grace_end = time.perf_counter() + 0.2
        while (left := grace_end - time.perf_counter()) > 0:
            ready, _, _ = select.select([bcast, unicast], [], [], left)
            for sock in ready:
                for data, _ in drain(sock):
                    if reply_info(data):
                        counts["late"] += 1
    finally:
        bcast.close()
        unicast.close()
    return {
        "clients": n,
        "answered": state.count(DONE),
        "lost_offer": state.count(LOST_OFFER),
        "lost_ack": state.count(LOST_ACK),
        "discover_ms": discover_ms,
        "request_ms": request_ms,
        "wall_s": (last_event - start) / 1e9,
        "build_s": build_s,
        "harness_cpu_s": harness_cpu_s,
        **counts,
    }


def boot_items(option43: bytes) -> list[int]:
    """The boot server types a proxy OFFER announces in option 43 (PXE sub-options 9 and 8)."""
    menu, servers, at = [], [], 0
    while at + 1 < len(option43):
        code, length = option43[at], option43[at + 1]
        if code == 255:
            break
        if code == 0:
            at += 1
            continue
        value = option43[at + 2 : at + 2 + length]
        if code == 9:  # PXE_BOOT_MENU: type(2) desc_len(1) desc
            pos = 0
            while pos + 3 <= len(value):
                menu.append(int.from_bytes(value[pos : pos + 2], "big"))
                pos += 3 + value[pos + 2]
        elif code == 8:  # PXE_BOOT_SERVERS: type(2) count(1) count*IPv4
            pos = 0
            while pos + 3 <= len(value):
                servers.append(int.from_bytes(value[pos : pos + 2], "big"))
                pos += 3 + 4 * value[pos + 2]
        at += 2 + length
    return [t for t in menu + servers if t != 0]


def describe_item(item: int) -> str:
    return f"43={{71: {item:#06x}}}" if item else "no option 43"


def _exchange(sock: socket.socket, packet: bytes, to: tuple[str, int], xid: int, mac: bytes, args) -> "BOOTP | None":
    """Send `packet` (up to --attempts times) and return this client's answer, if any."""
    from scapy.layers.dhcp import BOOTP

    for _attempt in range(args.attempts):
        sock.sendto(packet, to)
        deadline = time.monotonic() + args.timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([sock], [], [], left)[0]:
                data = sock.recv(4096)
                info = reply_info(data)
                if info and info[0] == xid and info[1] == mac:
                    return BOOTP(data)
    return None


def probe(args) -> dict:
    """One client, step by step, with every answer decoded: does this server answer both steps?"""
    from scapy.layers.dhcp import BOOTP, DHCP

    from tests.pxeclient import describe

    result: dict = {"offer": None, "ack": None, "boot_item": None, "errors": []}
    bcast, unicast = open_sockets(args.interface, args.client_ip)
    try:
        xid, mac, discover, _ = build_packets(1, args.run, args.firmware, args.client_ip, 0, args.seed)[0]
        offer = _exchange(bcast, discover, ("255.255.255.255", 67), xid, mac, args)
        if offer is None:
            result["errors"].append("no OFFER to the DISCOVER")
            return result
        result["offer"] = describe(offer)
        option43 = next(
            (o[1] for o in offer[DHCP].options if isinstance(o, tuple) and o[0] == "vendor_specific"), b""
        )
        result["offer_43"] = option43.hex() if isinstance(option43, bytes) else None
        items = boot_items(option43 if isinstance(option43, bytes) else b"")
        if items:  # a boot menu: ask for its first item, as a PXE ROM does with no prompt
            result["boot_item"], result["boot_item_from"] = items[0], "the OFFER's boot menu"
        elif not option43 and offer.siaddr != "0.0.0.0":  # dnsmasq's UEFI answer: ask again on 4011
            result["boot_item"], result["boot_item_from"] = 0, "OFFER without option 43: redirect to 4011"
        else:
            result["boot_item"], result["boot_item_from"] = args.boot_item, f"no menu in the OFFER: {args.firmware} default"
        _, _, _, request = build_packets(1, args.run, args.firmware, args.client_ip, result["boot_item"], args.seed)[0]
        ack = _exchange(unicast, request, (args.server_ip, 4011), xid, mac, args)
        if ack is None:
            result["errors"].append(f"no ACK to the 4011 REQUEST ({describe_item(result['boot_item'])})")
            return result
        result["ack"] = describe(ack)
        if result["offer"]["options"].get("message-type") != OFFER:
            result["errors"].append("the answer to the DISCOVER is not an OFFER")
        if result["ack"]["options"].get("message-type") != ACK:
            result["errors"].append("the answer to the REQUEST is not an ACK")
        if not result["ack"]["file"] or result["ack"]["siaddr"] == "0.0.0.0":
            result["errors"].append("the ACK names no boot file or no server (siaddr)")
    finally:
        bcast.close()
        unicast.close()
    return result


def client_main(args) -> None:
    from scapy.all import conf

    conf.verb = 0
    print(json.dumps(probe(args) if args.probe else storm(args)))


# ---------------------------------------------------------------------------------------------
# Orchestrator: runs in the root namespace, starts everything inside the lab's namespaces.
# ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def udp_errors(lab, ns: str) -> dict:
    """The namespace's UDP drop counters (receive buffer overflows show up here)."""
    out = lab.exec(ns, ["cat", "/proc/net/snmp"], timeout=10).stdout.splitlines()
    rows = [line.split()[1:] for line in out if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    counters = dict(zip(rows[0], (int(v) for v in rows[1])))
    return {k: counters.get(k, 0) for k in ("InErrors", "RcvbufErrors", "NoPorts", "SndbufErrors")}


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def listening(lab, ns: str, ports: tuple[int, ...]) -> bool:
    out = lab.exec(ns, ["ss", "-Hlun"], timeout=10).stdout
    local = {line.split()[3].rsplit(":", 1)[-1] for line in out.splitlines() if len(line.split()) > 3}
    return all(str(p) in local for p in ports)


class Bench:
    def __init__(self, args) -> None:
        from tests.netlab import Lab

        self.args = args
        self.lab = Lab()
        self.work = Path(tempfile.mkdtemp(prefix="tempered-bench-"))
        self.strays: list[int] = []  # PIDs of grandchildren we must make sure are gone
        self.notes: list[str] = []
        self.items: dict[str, int] = {}  # the 4011 REQUEST's boot item each server was sent
        self.edge_ns = self.client_ns = ""

    # -- lab --------------------------------------------------------------------------------
    def setup(self) -> None:
        self.edge_ns = self.lab.netns("edge")
        self.client_ns = self.lab.netns("client")
        self.lab.veth(self.edge_ns, self.client_ns, 3, 50)

    @property
    def server_ip(self) -> str:
        return self.lab.address(3)

    @property
    def client_ip(self) -> str:
        return self.lab.address(50)

    def client(self, run: int, clients: int, boot_item: int, probe: bool = False) -> dict:
        a = self.args
        command = [
            sys.executable, "-m", "tests.bench.bench_proxydhcp", "--client-side",
            "--server-ip", self.server_ip, "--client-ip", self.client_ip, "--interface", "eth0",
            "--clients", str(clients), "--window", str(a.window), "--timeout", str(a.timeout),
            "--arrival", str(a.arrival if not probe else 0),
            "--firmware", a.firmware, "--run", str(run), "--boot-item", str(boot_item),
            "--seed", str(random.getrandbits(32)),
        ]
        if probe:
            command += ["--probe", "--attempts", "5"]
        # worst case: every client loses both steps, window by window, plus packet building
        limit = 60 + a.arrival + 2 * a.timeout * math.ceil(clients / a.window) + (10 if probe else 0)
        try:
            result = self.lab.exec(self.client_ns, command, timeout=limit, cwd=ROOT)
        except subprocess.TimeoutExpired as err:
            raise BenchError(f"the client side did not finish within {limit:.0f} s") from err
        if result.returncode != 0:
            raise BenchError(f"the client side failed:\n{result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    # -- servers ----------------------------------------------------------------------------
    def start_edge(self) -> subprocess.Popen:
        state = self.work / "edge-state"
        state.mkdir()
        (state / "config.json").write_text(json.dumps(EDGE_CONFIG))
        token = self.work / "edge-token"
        token.write_text("bench-token\n")
        log = self.work / "edge.log"
        proc = self.lab.run(
            self.edge_ns,
            [str(VENV_BIN / "tempered"), "bootedge", "--interface", "eth0",
             "--control-plane", "unix:/nonexistent/api.sock", "--token-file", str(token),
             "--state-dir", str(state), "--policy-refresh", "60"],
            log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"tempered bootedge exited with {proc.returncode}:\n{tail(log)}")
            self.strays += [p for p in children(proc.pid) if p not in self.strays]
            if "boot edge on" in log.read_text(errors="replace") and listening(self.lab, self.edge_ns, (67, 4011)):
                http = self.lab.exec(
                    self.client_ns,
                    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                     f"http://{self.server_ip}:8080/boot.ipxe"],
                    timeout=15,
                )
                if http.returncode == 0:
                    self.strays += [p for p in children(proc.pid) if p not in self.strays]
                    return proc
            time.sleep(0.2)
        raise BenchError(f"tempered bootedge did not come up within 60 s:\n{tail(log)}")

    def stop_edge(self, proc: subprocess.Popen) -> None:
        from tests.servers import stop

        kids = [p for p in children(proc.pid) if p not in self.strays]
        self.strays += kids
        stop(proc)
        time.sleep(0.3)
        for pid in self.strays:
            if Path(f"/proc/{pid}").exists():
                self.notes.append(f"tempered's child PID {pid} outlived the edge; stopped it by PID")
        self.stop_strays()

    def stop_strays(self) -> None:
        """Stop, by PID, children of processes we started that outlived their parent
        (the edge starts its TFTP dnsmasq in a session of its own)."""
        for pid in self.strays:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    break
                if b"dnsmasq" not in cmdline and b"tempered" not in cmdline:
                    break  # the PID is not ours any more
                os.kill(pid, sig)
                for _ in range(50):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)
        self.strays = [p for p in self.strays if Path(f"/proc/{p}").exists()]

    def start_dnsmasq(self) -> subprocess.Popen:
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not Path(dnsmasq).exists():
            raise BenchError("dnsmasq is missing: apt-get install dnsmasq-base")
        log = self.work / "dnsmasq.log"
        network = self.lab.address(0)
        proc = self.lab.run(
            self.edge_ns,
            [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
             "--interface=eth0", "--bind-interfaces", f"--dhcp-range={network},proxy",
             # x86-64_EFI is CSA 7 in dnsmasq, what EDK2 sends (BC_EFI, 9, would leave the ACK empty);
             # a basename with a dot is used as is (without one, dnsmasq appends ".<layer>")
             "--pxe-service=x86PC,Tempered,undionly.kpxe", "--pxe-service=X86-64_EFI,Tempered,snponly.efi",
             f"--dhcp-leasefile={self.work / 'dnsmasq.leases'}", "--pid-file=", "--log-facility=-",
             "--quiet-dhcp"],  # no per-packet log lines
            log,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"dnsmasq exited with {proc.returncode}:\n{tail(log)}")
            if listening(self.lab, self.edge_ns, (67, 4011)):
                return proc
            time.sleep(0.2)
        raise BenchError(f"dnsmasq did not bind 67 and 4011 within 20 s:\n{tail(log)}")

    # -- one server -------------------------------------------------------------------------
    def measure(self, name: str, index: int, proc: subprocess.Popen, log: Path) -> dict:
        a = self.args
        found = self.client(0xF0 + index, 1, FIRMWARE_ITEM[a.firmware], probe=True)
        if found["errors"]:
            raise BenchError(
                f"{name} does not answer the PXE exchange: {'; '.join(found['errors'])}\n"
                f"offer: {json.dumps(found['offer'])}\n--- {log.name} (tail) ---\n{tail(log)}"
            )
        offer, ack = found["offer"], found["ack"]
        self.items[name] = found["boot_item"]
        print(
            f"{name}: probe ok: OFFER file={offer['file'] or '-'!r} 43={offer['options'].get('vendor_specific', '-')}"
            f" | 4011 REQUEST with {describe_item(found['boot_item'])} ({found['boot_item_from']})"
            f" -> ACK file={ack['file'] or '-'!r} siaddr={ack['siaddr']}",
            flush=True,
        )
        if a.warmup:
            warm = self.client(2 * index, a.warmup, found["boot_item"])
            print(f"{name}: warm-up {warm['answered']}/{warm['clients']} answered", flush=True)
        before_udp = udp_errors(self.lab, self.edge_ns)
        before_cpu = cpu_seconds(proc.pid)
        result = self.client(2 * index + 1, a.clients, found["boot_item"])
        after_cpu = cpu_seconds(proc.pid)
        after_udp = udp_errors(self.lab, self.edge_ns)
        result["server_cpu_s"] = after_cpu - before_cpu if None not in (before_cpu, after_cpu) else None
        result["udp_errors"] = {k: after_udp.get(k, 0) - before_udp.get(k, 0) for k in after_udp}
        result["name"] = name
        print(f"{name}: storm done: {summary_row(result)}", flush=True)
        return result

    def run(self) -> int:
        a = self.args
        results: list[dict] = []
        failed = False
        self.setup()
        print(
            f"lab: edge ns {self.edge_ns} ({self.server_ip}), client ns {self.client_ns} ({self.client_ip}); "
            f"logs in {self.work}",
            flush=True,
        )
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"host: {os.cpu_count()} CPUs, load average {load} (other work on the host shows up in the figures)", flush=True)
        edge = dnsmasq = None
        try:
            edge = self.start_edge()
            results.append(self.measure("tempered", 0, edge, self.work / "edge.log"))
        except BenchError as err:
            failed = True
            print(f"ERROR (tempered): {err}", flush=True)
        finally:
            if edge is not None:
                self.stop_edge(edge)
        stats = [line for line in tail(self.work / "edge.log", 400).splitlines() if "boot edge stopped" in line]
        if stats:
            print(f"tempered: {stats[-1].split(': ', 1)[-1]}", flush=True)
        try:
            dnsmasq = self.start_dnsmasq()
            results.append(self.measure("dnsmasq", 1, dnsmasq, self.work / "dnsmasq.log"))
        except BenchError as err:
            failed = True
            print(f"ERROR (dnsmasq): {err}", flush=True)
        finally:
            if dnsmasq is not None:
                from tests.servers import stop

                stop(dnsmasq)
        if len(set(self.items.values())) > 1:
            self.notes.append(f"the servers were sent different 4011 REQUESTs: {self.items}")
        print_table(a, results)
        for note in self.notes:
            print(f"note: {note}")
        return 1 if failed else 0

    def close(self) -> None:
        self.lab.close()
        self.stop_strays()
        if self.args.keep_logs:
            print(f"logs kept in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 10 else f"{value:.1f}")


def summary_row(r: dict) -> str:
    return (
        f"answered {r['answered']}/{r['clients']}, lost {r['lost_offer']} at DISCOVER + {r['lost_ack']} at REQUEST, "
        f"late {r['late']}, stray {r['stray']}, wrong {r['wrong']}, dup {r['duplicate']}, "
        f"udp drops {r.get('udp_errors', {})}, wall {r['wall_s']:.3f} s, harness cpu {r['harness_cpu_s']:.3f} s"
    )


def print_table(a, results: list[dict]) -> None:
    print()
    load = f"arriving over {a.arrival:g} s (open loop)" if a.arrival else f"window {a.window} (closed loop)"
    print(f"proxyDHCP storm: {a.clients} clients, {load}, timeout {a.timeout:g} s, "
          f"firmware {a.firmware}, warm-up {a.warmup}")
    print(f"{'server':<10} {'answered':>8} {'lost':>5} {'discover p50/p99 ms':>20} {'request p50/p99 ms':>19}"
          f" {'wall s':>7} {'cpu s':>6}")
    p99 = {}
    for r in results:
        d50, d99 = percentile(r["discover_ms"], 50), percentile(r["discover_ms"], 99)
        q50, q99 = percentile(r["request_ms"], 50), percentile(r["request_ms"], 99)
        p99[r["name"]] = (d99, q99)
        cpu = "-" if r.get("server_cpu_s") is None else f"{r['server_cpu_s']:.2f}"
        print(f"{r['name']:<10} {r['answered']:>8} {r['lost_offer'] + r['lost_ack']:>5}"
              f" {ms(d50) + ' / ' + ms(d99):>20} {ms(q50) + ' / ' + ms(q99):>19} {r['wall_s']:>7.3f} {cpu:>6}")
    if "tempered" in p99 and "dnsmasq" in p99:
        (td, tr), (dd, dr) = p99["tempered"], p99["dnsmasq"]

        def ratio(x, y):
            return "-" if x is None or not y else f"{x / y:.1f}"

        print(f"p99 ratio tempered/dnsmasq: discover {ratio(td, dd)}, request {ratio(tr, dr)} (target <= 2.0)")
    else:
        print("p99 ratio tempered/dnsmasq: - (a server was not measured, see the errors above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--window", type=int, default=32, help="clients in flight at once")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds before a step counts as lost")
    parser.add_argument(
        "--arrival", type=float, default=0.0,
        help="open loop: the clients power on evenly over this many seconds (0: closed loop with --window)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="clients before the measured storm")
    parser.add_argument("--firmware", choices=["bios", "efi"], default="bios")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and state")
    # internal: the client side, run inside the client namespace
    parser.add_argument("--client-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attempts", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--server-ip", help=argparse.SUPPRESS)
    parser.add_argument("--client-ip", help=argparse.SUPPRESS)
    parser.add_argument("--interface", default="eth0", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--boot-item", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.clients <= 2**24 or args.window < 1 or args.timeout <= 0:
        parser.error("--clients must be 1..16M, --window >= 1, --timeout > 0")
    if args.client_side:
        client_main(args)
        return

    from tests.netlab import lab_available

    why = lab_available()
    if why:
        sys.exit(f"cannot run: {why}")
    bench = Bench(args)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below always cleans up
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    code = 1
    try:
        code = bench.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        bench.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
