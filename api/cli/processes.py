"""The commands that run the control plane's processes: `up` (all of them), or one each."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer

from activities.storage import settings as settings_mod
from api.cli.client import err, setup_logging


def up(
    no_temporal: bool = typer.Option(
        False, "--no-temporal", help="Use the Temporal at TEMPORAL_ADDRESS instead of starting the dev server."
    ),
) -> None:
    """Start Temporal (dev server, Web UI on :8233), the worker and the API (:8000); Ctrl-C stops all."""
    from api.stack import up as run_stack

    raise typer.Exit(run_stack(settings_mod.load(), with_temporal=not no_temporal))


def temporal() -> None:
    """Run only the Temporal dev server, persisted in $TEMPERED_HOME/temporal.db."""
    from api.stack import temporal_command

    settings = settings_mod.load()
    settings.private_home()  # temporal.db and its WAL files are created 0600
    port = int(settings.temporal_address.rsplit(":", 1)[1])
    command = temporal_command(settings, port=port, ui_port=port + 1000)
    os.execv(command[0], command)


def worker() -> None:
    """Run only the worker (workflows and activities) against TEMPORAL_ADDRESS and DATABASE_URL."""
    from api.worker import main as run_worker

    setup_logging()
    run_worker(settings_mod.load())


def api(
    host: Optional[str] = typer.Option(None, help="Address to bind (default TEMPERED_API_HOST or 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default TEMPERED_API_PORT or 8000)."),
    uds: Optional[Path] = typer.Option(None, help="Serve on this unix socket instead (for co-located edges)."),
) -> None:
    """Run only the REST API (OpenAPI docs at /docs)."""
    import uvicorn

    from api.app import create_app

    setup_logging()
    settings = settings_mod.load()
    settings.private_home()
    bind = {"uds": str(uds)} if uds else {"host": host or settings.api_host, "port": port or settings.api_port}
    uvicorn.run(create_app(settings), log_level="info", log_config=None, **bind)  # its lines go through ours


def bootedge(
    interface: str = typer.Option(..., "--interface", "-i", help="The machines' L2 interface, e.g. eth1."),
    control_plane: str = typer.Option(
        "http://127.0.0.1:8000", envvar="TEMPERED_CONTROL_PLANE",
        help="The API: http(s)://host:port, or unix:/path/api.sock on the same host.",
    ),
    token_file: Optional[Path] = typer.Option(
        None, help="File holding this edge's token (from 'tempered edge create'); or set TEMPERED_EDGE_TOKEN."
    ),
    http_port: int = typer.Option(8080, help="Port of the iPXE script and image server."),
    address: Optional[str] = typer.Option(None, help="The edge's IPv4 address on the interface (default: its first)."),
    state_dir: Optional[Path] = typer.Option(None, help="Policy cache and TFTP root (default $TEMPERED_HOME/edge)."),
    images_dir: Optional[Path] = typer.Option(None, help="Boot images to serve (default STATE_DIR/images)."),
    policy_refresh: float = typer.Option(10.0, help="Seconds between policy refreshes from the control plane."),
) -> None:
    """Run a boot edge: proxyDHCP (67, 4011), TFTP (69) and iPXE scripts over HTTP on one segment.

    Needs root, or CAP_NET_BIND_SERVICE and CAP_NET_RAW. It never hands out addresses: the site's
    DHCP server keeps doing that.
    """
    from bootedge.edge import EdgeOptions, main as run_edge

    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per policy poll otherwise
    token = os.environ.get("TEMPERED_EDGE_TOKEN") or (token_file.read_text().strip() if token_file else "")
    if not token:
        err.print("[red]no edge token[/red]: create one with 'tempered edge create NAME' and pass --token-file")
        raise typer.Exit(2)
    settings = settings_mod.load()
    run_edge(
        EdgeOptions(
            interface=interface, control_plane=control_plane, token=token,
            state_dir=state_dir or settings.home / "edge", http_port=http_port, address=address,
            images_dir=images_dir, refresh_s=policy_refresh,
        )
    )
