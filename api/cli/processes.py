"""The commands that run the control plane's processes: `up` (all of them), or one each."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional
from unittest import mock

import typer

from activities.storage import settings as settings_mod
from api.cli.client import err, load_settings, setup_logging


def _for_help() -> settings_mod.Settings:
    """The addresses this environment resolves to, for the help texts (read once, at import):
    what an operator reads in --help is where the processes will listen and what they will talk
    to. A wrong setting must not break the import of every command: the help then shows the
    defaults, and each command says which setting is wrong when it loads them (exit 2)."""
    try:
        return settings_mod.load()
    except ValueError:
        with mock.patch.dict(os.environ, clear=True):
            return settings_mod.load()


_NOW = _for_help()


def _with_addresses(command):
    """Fill a command's docstring (its --help) with the current addresses."""
    command.__doc__ = command.__doc__.format(
        temporal=_NOW.temporal_address, ui=_NOW.temporal_ui_url, api=_NOW.api_url,
        api_bind=f"{_NOW.api_host}:{_NOW.api_port}",
        worker_metrics=f"http://{_NOW.worker_metrics}/metrics" if _NOW.worker_metrics else "off",
        worker_sites=", ".join(_NOW.worker_sites) or "none",
    )
    return command


def _database_fits(settings: settings_mod.Settings) -> None:
    """Stop before serving when this process's database pool cannot fit PostgreSQL's
    max_connections (exit 2, naming both numbers); a warning when all processes together may not."""
    from activities.storage import db

    try:
        db.check_capacity(settings.database_url)
    except ValueError as bad:
        err.print(f"[red]error:[/red] {bad}")
        raise typer.Exit(2) from None


@_with_addresses
def up(
    no_temporal: bool = typer.Option(
        False, "--no-temporal",
        help=f"Use the Temporal at TEMPORAL_ADDRESS (now {_NOW.temporal_address}) instead of starting the dev server.",
    ),
) -> None:
    """Start Temporal (dev server on {temporal}, Web UI {ui}), the worker and the API ({api}); Ctrl-C stops all.

    Addresses come from TEMPORAL_ADDRESS, TEMPERED_TEMPORAL_UI, TEMPERED_API_HOST/PORT and TEMPERED_API.
    """
    from api.stack import up as run_stack

    raise typer.Exit(run_stack(load_settings(), with_temporal=not no_temporal))


@_with_addresses
def temporal() -> None:
    """Run only the Temporal dev server on {temporal} (Web UI {ui}), persisted in $TEMPERED_HOME/temporal.db."""
    from api.stack import temporal_command

    settings = load_settings()
    settings.private_home()  # temporal.db and its WAL files are created 0600
    command = temporal_command(settings)
    os.execv(command[0], command)


@_with_addresses
def worker(
    site: Optional[str] = typer.Option(
        None, "--site", metavar="NAME",
        help="Serve only this site's power commands (task queue tempered-site-NAME): run it on a host that "
        "reaches the site's BMCs. Machines name their site in their power settings.",
    ),
) -> None:
    """Run only the worker (workflows and activities) against TEMPORAL_ADDRESS ({temporal}) and DATABASE_URL.

    It also serves the power commands of the sites in TEMPERED_WORKER_SITES (now: {worker_sites}).
    With --site NAME it serves that site's power commands and nothing else (no workflows): the
    worker that sits next to a site's BMCs, on their management network. It needs the same
    TEMPORAL_ADDRESS, DATABASE_URL and TEMPERED_SECRET_KEY as the others.

    Its Prometheus metrics: {worker_metrics} (TEMPERED_WORKER_METRICS: host:port or 'off';
    default 127.0.0.1 and the API's port + 1). A --site worker serves none.
    """
    from activities.storage.settings import sites
    from api.worker import main as run_worker

    setup_logging()
    settings = load_settings()
    if site is not None:
        try:
            if sites("--site", site) != (site,):
                raise ValueError(f"--site: {site!r} is not one site name (e.g. rack-a)")
        except ValueError as bad:
            err.print(f"[red]error:[/red] {bad}")
            raise typer.Exit(2) from None
    _database_fits(settings)
    run_worker(settings, site=site)


@_with_addresses
def api(
    host: Optional[str] = typer.Option(
        None, help=f"Address to bind (default: $TEMPERED_API_HOST, now {_NOW.api_host})."
    ),
    port: Optional[int] = typer.Option(None, help=f"Port (default: $TEMPERED_API_PORT, now {_NOW.api_port})."),
    uds: Optional[Path] = typer.Option(None, help="Serve on this unix socket instead (for co-located edges)."),
) -> None:
    """Run only the REST API on {api_bind} (OpenAPI docs at /docs)."""
    import uvicorn

    from api.app import create_app

    setup_logging()
    settings = settings_mod.binding_api(load_settings(), host, port)  # its links follow --host/--port
    settings.private_home()
    _database_fits(settings)
    bind = {"uds": str(uds)} if uds else {"host": settings.api_host, "port": settings.api_port}
    app = create_app(settings)

    class Server(uvicorn.Server):
        """uvicorn waits for every request in flight before it stops: the held instruction polls
        (api/held_polls.py) are answered as soon as it is told to stop, not after their 20 s."""

        def handle_exit(self, sig, frame) -> None:
            app.state.held_polls.stop_soon()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="info", log_config=None, **bind))  # its lines go through ours
    server.run()
    if not server.started:
        raise typer.Exit(3)  # uvicorn said why (the port is taken, the database is away)


def bootedge(
    interface: str = typer.Option(..., "--interface", "-i", help="The machines' L2 interface, e.g. eth1."),
    control_plane: Optional[str] = typer.Option(
        None, envvar="TEMPERED_CONTROL_PLANE", show_default=False,
        help="The API: http(s)://host:port, or unix:/path/api.sock on the same host "
        f"(default: $TEMPERED_API, now {_NOW.api_url}).",
    ),
    token_file: Optional[Path] = typer.Option(
        None, help="File holding this edge's token (from 'tempered edge create'); or set TEMPERED_EDGE_TOKEN."
    ),
    http_port: int = typer.Option(8080, help="Port of the iPXE script and image server."),
    address: Optional[str] = typer.Option(None, help="The edge's IPv4 address on the interface (default: its first)."),
    state_dir: Optional[Path] = typer.Option(None, help="Policy cache and TFTP root (default $TEMPERED_HOME/edge)."),
    images_dir: Optional[Path] = typer.Option(None, help="Boot images to serve (default STATE_DIR/images)."),
    policy_refresh: float = typer.Option(10.0, help="Seconds between policy refreshes from the control plane."),
    metrics_address: Optional[str] = typer.Option(
        None, envvar="TEMPERED_EDGE_METRICS", help="host:port of /metrics (default 127.0.0.1:HTTP_PORT+1; 'off': none)."
    ),
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
    settings = load_settings()
    run_edge(
        EdgeOptions(
            interface=interface, control_plane=control_plane or settings.api_url, token=token,
            state_dir=state_dir or settings.home / "edge", http_port=http_port, address=address,
            images_dir=images_dir, refresh_s=policy_refresh, metrics_address=metrics_address,
        )
    )
