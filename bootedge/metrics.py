"""The boot edge's Prometheus metrics (README, Metrics).

They are served on a loopback address of their own (`--metrics-address`, by default
127.0.0.1:HTTP_PORT+1), never on the HTTP server machines talk to: a scraper on the edge's host
(or a node exporter's textfile, or an SSH tunnel) reads them without any token, and a machine
on the segment cannot. Labels are bounded (client kinds, reasons, file kinds): never a MAC.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client import REGISTRY, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("tempered.bootedge.metrics")

DHCP_ANSWERS = Counter("tempered_edge_dhcp_answers_total", "proxyDHCP answers sent, by client kind", ["kind"])
DHCP_REFUSALS = Counter(
    "tempered_edge_dhcp_refusals_total",
    "PXE clients left unanswered: not-admitted (the edge's policy) or unsupported-client (no iPXE build for its arch)",
    ["reason"],
)
DHCP_DROPS = Counter(
    "tempered_edge_dhcp_drops_total",
    "Datagrams dropped: not-pxe (malformed, or ordinary DHCP), not-for-us (for another server), error (raised)",
    ["reason"],
)
HTTP_TRANSFERS = Counter(
    "tempered_edge_http_transfers_total",
    "HTTP answers of the edge by kind (script, ipxe, image, relay, other) and status code",
    ["kind", "code"],
)
HTTP_BYTES = Counter("tempered_edge_http_bytes_total", "Response body bytes the edge sent over HTTP, by kind", ["kind"])

# The edge's HTTP paths by kind: the iPXE scripts, the iPXE builds (UEFI HTTP Boot), the boot
# images, and the discovery agent's and cloud-init's calls relayed to the control plane.
HTTP_KINDS = (("/boot.ipxe", "script"), ("/ipxe/", "ipxe"), ("/images/", "image"), ("/machines/", "relay"))


def http_kind(path: str) -> str:
    return next((kind for prefix, kind in HTTP_KINDS if path.startswith(prefix)), "other")


class HttpTransfers:
    """ASGI middleware: counts every answer of the edge's HTTP server and its body bytes."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        kind, code, sent = http_kind(scope["path"]), 500, 0

        async def counted(message) -> None:
            nonlocal code, sent
            if message["type"] == "http.response.start":
                code = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            HTTP_TRANSFERS.labels(kind, str(code)).inc()
            HTTP_BYTES.labels(kind).inc(sent)


# dnsmasq logs each TFTP transfer it finished or refused (without --quiet-tftp):
#   dnsmasq-tftp[42]: sent /tmp/tempered-tftp-x/undionly.kpxe to 10.0.0.5
#   dnsmasq-tftp[42]: file /tmp/tempered-tftp-x/etc/passwd not found for 10.0.0.5
#   dnsmasq-tftp[42]: failed sending /tmp/tempered-tftp-x/ipxe.efi to 10.0.0.5
TFTP_LINE = re.compile(r"dnsmasq-tftp\[\d+\]: (sent|failed sending|file|cannot access|refusing) (\S+)")
TFTP_RESULTS = {"sent": "sent", "failed sending": "failed"}


class TftpLog(Collector):
    """TFTP transfers (by file and result) and bytes, read from dnsmasq's log at each scrape:
    dnsmasq serves TFTP in its own process and reports transfers only there. Only the lines
    written since this edge started count; a file outside the served builds is "other"."""

    def __init__(self, log_file: Path, served: list[str], root: Path) -> None:
        self.log_file, self.served, self.root = log_file, set(served), root
        self.offset = log_file.stat().st_size if log_file.exists() else 0
        self.transfers: dict[tuple[str, str], int] = {}
        self.bytes: dict[str, int] = {}
        self._lock = threading.Lock()  # two scrapers at once read the log once

    def describe(self):
        return []

    def collect(self):
        with self._lock:
            self._read_new_lines()
            transfers = CounterMetricFamily(
                "tempered_edge_tftp_transfers",
                "TFTP transfers by file and result (sent, failed, refused)",
                labels=["file", "result"],
            )
            for (name, result), count in sorted(self.transfers.items()):
                transfers.add_metric([name, result], count)
            sent = CounterMetricFamily(
                "tempered_edge_tftp_bytes", "Bytes of the TFTP transfers sent, by file", labels=["file"]
            )
            for name, count in sorted(self.bytes.items()):
                sent.add_metric([name], count)
        yield transfers
        yield sent

    def _read_new_lines(self) -> None:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line dnsmasq is still writing waits
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if found := TFTP_LINE.search(line):
                self._count(TFTP_RESULTS.get(found.group(1), "refused"), Path(found.group(2)).name)

    def _count(self, result: str, name: str) -> None:
        name = name if name in self.served else "other"
        self.transfers[(name, result)] = self.transfers.get((name, result), 0) + 1
        if result == "sent" and name != "other":
            self.bytes[name] = self.bytes.get(name, 0) + (self.root / name).stat().st_size


def serve(address: str | None, tftp: TftpLog) -> Callable[[], None]:
    """Serve the edge's metrics on `address` (host:port) from a thread (None: not served); returns
    what stops it. A port in use is logged, and the edge serves machines all the same."""
    REGISTRY.register(tftp)
    server = None
    if address is not None:
        host, _, port = address.rpartition(":")
        try:
            server, _ = start_http_server(int(port), addr=host.strip("[]"))
            log.info("edge metrics on http://%s/metrics", address)
        except OSError as err:
            log.error("edge metrics not served on %s (%s): pass a free --metrics-address", address, err)

    def stop() -> None:
        REGISTRY.unregister(tftp)
        if server is not None:
            server.shutdown()
            server.server_close()

    return stop
