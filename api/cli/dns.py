"""`tempered dns`: where Tempered publishes DNS records."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from api.cli.client import call, out, print_yaml, read_yaml

dns_app = typer.Typer(help="Set where Tempered publishes DNS records (RFC 2136, TSIG, split horizon).", no_args_is_help=True)


def _dns_path(cluster: Optional[str]) -> str:
    return f"/v1/clusters/{cluster}/dns" if cluster else "/v1/dns"


@dns_app.command("set")
def dns_set(
    file: Path = typer.Argument(..., exists=True, help="YAML or JSON: zone, servers, key, views, reverse_zone ..."),
    cluster: Optional[str] = typer.Option(None, help="Only this cluster (default: the global default)."),
) -> None:
    """Store DNS settings; TSIG secrets are sealed at rest and never shown again."""
    print_yaml(call("PUT", _dns_path(cluster), json=read_yaml(file)))


@dns_app.command("show")
def dns_show(cluster: Optional[str] = typer.Option(None, help="A cluster's own settings.")) -> None:
    """Show DNS settings (secrets redacted)."""
    print_yaml(call("GET", _dns_path(cluster)))


@dns_app.command("delete")
def dns_delete(cluster: Optional[str] = typer.Option(None, help="A cluster's own settings.")) -> None:
    """Remove DNS settings (a cluster then falls back to the global default)."""
    call("DELETE", _dns_path(cluster))
    out.print("DNS settings removed")
