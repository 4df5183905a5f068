"""The proxyDHCP responder: two UDP sockets (67 and 4011) on one interface, in its own thread.

It answers from the edge's cached configuration only, so a DHCP answer never waits on the
control plane, Temporal or the network. A malformed or hostile packet is counted and dropped;
nothing a client sends can stop the loop.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections import Counter
from collections.abc import Callable

from activities.domain.edge import EdgeConfig
from bootedge import packets
from bootedge.metrics import DHCP_ANSWERS, DHCP_DROPS, DHCP_REFUSALS
from bootedge.packets import EdgeAddress

log = logging.getLogger("tempered.bootedge.dhcp")
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
RECEIVE_BUFFER = 4 << 20


def _socket(interface: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
    # A rack powering on at once is a burst: let the kernel queue it rather than drop it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind(("0.0.0.0", port))
    return sock


class Responder:
    """Answers PXE clients that the current `EdgeConfig` admits; silent for everyone else."""

    def __init__(self, interface: str, edge: EdgeAddress, config: Callable[[], EdgeConfig | None]) -> None:
        self.interface = interface
        self.edge = edge
        self.config = config
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._sockets: dict[socket.socket, int] = {}
        self._thread: threading.Thread | None = None
        self._logged: set[tuple[str, ...]] = set()

    def start(self) -> None:
        for port in (packets.DHCP_SERVER_PORT, packets.PXE_PORT):
            self._sockets[_socket(self.interface, port)] = port
        self._thread = threading.Thread(target=self._serve, name="proxydhcp", daemon=True)
        self._thread.start()
        log.info("proxyDHCP on %s (%s) ports 67 and 4011", self.interface, self.edge.ip)

    def stop(self) -> None:
        """Stop serving and close the sockets (safe to call if never started)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self._sockets), [], [], 0.5)
            for sock in ready:
                self._drain(sock, self._sockets[sock])

    def _drain(self, sock: socket.socket, port: int) -> None:
        """Answer everything queued on one socket (a burst is served in arrival order)."""
        while True:
            try:
                data, source = sock.recvfrom(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            try:
                answer = self.handle(data, source, port)
                if answer is not None:
                    sock.sendto(*answer)
            except Exception:  # one bad packet or send must never stop the responder
                self.stats["errors"] += 1
                DHCP_DROPS.labels("error").inc()
                log.exception("dropped a packet from %s", self.interface)

    def handle(self, data: bytes, source: tuple[str, int], port: int) -> tuple[bytes, tuple[str, int]] | None:
        """The answer to one datagram and where to send it, or None to stay silent."""
        request = packets.parse(data)
        if request is None:
            self.stats["not-pxe"] += 1
            DHCP_DROPS.labels("not-pxe").inc()
            return None
        if not packets.answers(request, port):
            self.stats["not-for-us"] += 1
            DHCP_DROPS.labels("not-for-us").inc()
            return None
        kind = packets.client_kind(request)
        config = self.config()
        if kind is None:
            self.stats["unsupported-client"] += 1
            DHCP_REFUSALS.labels("unsupported-client").inc()
            self._once(request.mac, "silent to %s: no iPXE build for arch %s (%s)", request.arch, request.vendor_class)
            return None
        if config is None or not config.admits(request.mac, request.uuid):
            self.stats["not-admitted"] += 1
            DHCP_REFUSALS.labels("not-admitted").inc()
            self._once(request.mac, "silent to %s: not admitted by this edge's policy")
            return None
        self.stats[f"answered-{kind.value}"] += 1
        DHCP_ANSWERS.labels(kind.value).inc()
        self._once(request.mac, "answered %s (%s) with %s", kind.value, packets.bootfile(kind, self.edge))
        return packets.reply(request, kind, self.edge), packets.destination(request, source, port)

    def _once(self, mac: str, message: str, *args) -> None:
        """Log each decision once per MAC (at INFO), then at DEBUG: a chatty or hostile client
        cannot flood the log."""
        key = (mac, message, *map(str, args))
        if key in self._logged:
            log.debug(message, mac, *args, extra={"mac": mac})
            return
        if len(self._logged) >= 10_000:
            self._logged.clear()
        self._logged.add(key)
        log.info(message, mac, *args, extra={"mac": mac})
