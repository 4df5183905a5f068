"""`tempered bootedge`: proxyDHCP, TFTP and the iPXE HTTP server for one L2 segment.

Three loops that share nothing but the cached configuration: the proxyDHCP thread, the dnsmasq
TFTP child (supervised: restarted when it dies, the edge exits 1 if it keeps dying), and an asyncio loop with the HTTP server and a task that refreshes the policy from
the control plane every few seconds. The edge keeps no state of its own besides that cache, so
it can be restarted at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from bootedge import metrics, tftp
from bootedge.config import CachedConfig
from bootedge.control import ControlPlane, Refused, Unavailable
from bootedge.dhcp import Responder
from bootedge.http import create_app
from bootedge.packets import EdgeAddress

log = logging.getLogger("tempered.bootedge")


@dataclass(frozen=True)
class EdgeOptions:
    interface: str
    control_plane: str
    token: str
    state_dir: Path
    http_port: int = 8080
    address: str | None = None
    images_dir: Path | None = None
    refresh_s: float = 10.0
    metrics_address: str | None = None  # host:port of /metrics; None: 127.0.0.1:http_port+1; "off": none


def interface_ipv4(interface: str) -> str:
    """The first IPv4 address of `interface` (the edge's siaddr and HTTP address)."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", interface], capture_output=True, text=True)
    for link in json.loads(out.stdout or "[]"):
        for addr in link.get("addr_info", []):
            return addr["local"]
    raise SystemExit(f"{interface} has no IPv4 address: give one with --address or configure the interface")


async def _refresh(control: ControlPlane, config: CachedConfig, every: float) -> None:
    while True:
        try:
            config.update(await control.config())
        except Refused as err:
            log.error("the control plane refused this edge (%s): check its token with 'tempered edge list'", err)
        except Unavailable as err:
            log.warning("%s; serving the last policy meanwhile", err)
        await asyncio.sleep(every)


STOP_GRACE_S = 5


class _HttpServer(uvicorn.Server):
    """uvicorn, minus its signal capture: it re-raises SIGTERM after shutting down, which would
    skip the edge's own cleanup (the TFTP server, the proxyDHCP sockets)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve(options: EdgeOptions) -> None:
    address = options.address or interface_ipv4(options.interface)
    edge = EdgeAddress(ip=address, http_port=options.http_port)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    config = CachedConfig(options.state_dir / "config.json")
    control = ControlPlane(options.control_plane, options.token)
    responder = Responder(options.interface, edge, config)
    tftp_root, served = tftp.prepare_root()
    tftp_server = tftp.Supervised(options.interface, tftp_root, options.state_dir)
    supervisor: asyncio.Task | None = None
    stop_metrics = None
    try:
        tftp_server.start()
        tftp_log = metrics.TftpLog(options.state_dir / "tftp.log", served, tftp_root)  # counted at each scrape
        stop_metrics = metrics.serve(_metrics_address(options), tftp_log)
        app = create_app(edge, control, tftp_root, options.images_dir or options.state_dir / "images")
        # At a stop, requests still in flight after 5 s are cut: the agents' long polls the API
        # holds (20 s) would otherwise hold the edge, and every machine call is retried.
        server = _HttpServer(uvicorn.Config(app, host=address, port=options.http_port, log_level="warning",
                                            log_config=None, timeout_graceful_shutdown=STOP_GRACE_S))

        def shut_down(*_) -> None:
            tftp_server.stopping = True  # dnsmasq shares our process group: its exit is expected now
            server.should_exit = True

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shut_down)
        responder.start()
        refresher = asyncio.create_task(_refresh(control, config, options.refresh_s))
        supervisor = asyncio.create_task(tftp_server.supervise())
        supervisor.add_done_callback(lambda _: setattr(server, "should_exit", True))  # it gave up
        log.info(
            "boot edge on %s: proxyDHCP 67/4011, TFTP 69 (%s), HTTP %s; control plane %s",
            options.interface, ", ".join(served), edge.http, options.control_plane,
        )
        await server.serve()
        refresher.cancel()
    finally:
        responder.stop()
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
        tftp_server.stop()
        if stop_metrics is not None:
            stop_metrics()
        await control.close()
        shutil.rmtree(tftp_root, ignore_errors=True)
        log.info("boot edge stopped; answered %s", dict(responder.stats))
    if supervisor is not None and supervisor.done() and not supervisor.cancelled() and supervisor.exception():
        log.error("boot edge exits: %s", supervisor.exception())
        sys.exit(1)


def _metrics_address(options: EdgeOptions) -> str | None:
    if options.metrics_address is None:
        return f"127.0.0.1:{options.http_port + 1}"
    return None if options.metrics_address.strip().lower() in ("", "off") else options.metrics_address


def main(options: EdgeOptions) -> None:
    asyncio.run(serve(options))
