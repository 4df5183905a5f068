"""`tempered dns`: where Tempered publishes DNS records.

`dns set` takes the common fields as flags (zone, servers, the TSIG key, reverse zone, TTL) and
the rest (split-horizon views, batching) from a YAML/JSON file; flags override the file's fields.
A TSIG secret is read from a file, never from the command line (where `ps` would show it).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional, get_args

import typer

from activities.domain.dns import TsigAlgorithm
from api.cli.client import Exit, Format, OutputOption, call, emit, fail, out, print_yaml, read_yaml, table

dns_app = typer.Typer(help="Set where Tempered publishes DNS records (RFC 2136, TSIG, split horizon).", no_args_is_help=True)

Algorithm = Enum("Algorithm", {a: a for a in get_args(TsigAlgorithm)}, type=str)  # type: ignore[misc]
_ClusterOption = typer.Option(None, help="A cluster's own settings (default: the global default).")


def _dns_path(cluster: Optional[str]) -> str:
    return f"/v1/clusters/{cluster}/dns" if cluster else "/v1/dns"


def parse_server(text: str) -> dict[str, Any]:
    """`ns1`, `10.0.0.53:5353`, `[fd00::53]:53`, `fd00::53` -> {host, port?}."""
    host, port = text, None
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is not None and not port.isdigit():
        fail([f"--server {text}: the port must be a number"], Exit.INVALID)
    return {"host": host} | ({"port": int(port)} if port else {})


def _key(body: dict[str, Any], name: Optional[str], secret_file: Optional[Path], algorithm: Optional[Enum]) -> None:
    """Set the default view's TSIG key from the flags, over what the file said."""
    if name is None and secret_file is None and algorithm is None:
        return
    key = dict(body.get("key") or {})
    if name is not None:
        key["name"] = name
    if secret_file is not None:
        key["secret"] = secret_file.read_text().strip()
    if algorithm is not None:
        key["algorithm"] = algorithm.value
    body["key"] = key


@dns_app.command("set")
def dns_set(
    file: Optional[Path] = typer.Argument(
        None, exists=True, dir_okay=False, help="YAML or JSON with any field (views, batch_size ...); flags override it."
    ),
    cluster: Optional[str] = _ClusterOption,
    zone: Optional[str] = typer.Option(None, help="The zone records go into, e.g. lab.example."),
    server: list[str] = typer.Option([], "--server", help="A primary to send updates to: HOST or HOST:PORT (repeatable)."),
    key_name: Optional[str] = typer.Option(None, help="TSIG key name."),
    key_secret_file: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False, help="File holding the TSIG secret (base64, as tsig-keygen prints it)."
    ),
    key_algorithm: Optional[Algorithm] = typer.Option(None, help="TSIG algorithm (default hmac-sha256)."),  # type: ignore[valid-type]
    reverse_zone: Optional[str] = typer.Option(None, help="Reverse zone for PTR records, e.g. 0.213.10.in-addr.arpa."),
    ttl: Optional[int] = typer.Option(None, help="TTL of the records (seconds; default 300)."),
) -> None:
    """Store DNS settings; TSIG secrets are sealed at rest and never shown again."""
    body = (read_yaml(file) or {}) if file else {}
    if not isinstance(body, dict):
        fail([f"{file}: expected a mapping of DNS settings (zone, servers, key ...)"], Exit.INVALID)
    flags = {"zone": zone, "reverse_zone": reverse_zone, "ttl": ttl, "servers": [parse_server(s) for s in server] or None}
    body |= {k: v for k, v in flags.items() if v is not None}
    _key(body, key_name, key_secret_file, key_algorithm)
    if not body:
        fail(["give a FILE or at least --zone and --server"], Exit.INVALID)
    print_yaml(call("PUT", _dns_path(cluster), json=body))


@dns_app.command("show")
def dns_show(cluster: Optional[str] = _ClusterOption, output: OutputOption = Format.table) -> None:
    """Show DNS settings (secrets redacted)."""
    settings = call("GET", _dns_path(cluster))
    emit(settings, output, lambda: _print_dns(settings, cluster))


def _print_dns(settings: dict[str, Any], cluster: Optional[str]) -> None:
    servers = ", ".join(f"{s['host']}:{s['port']}" for s in settings.get("servers") or [])
    key = settings.get("key") or {}
    rows = [
        ["zone", settings.get("zone")], ["servers", servers],
        ["key", f"{key['name']} ({key.get('algorithm')})" if key else "none"],
        ["reverse zone", settings.get("reverse_zone") or "none"], ["ttl", settings.get("ttl")],
        ["views", ", ".join(v["name"] for v in settings.get("views") or []) or "none"],
        ["update default view", settings.get("update_default_view")],
    ]
    table(f"DNS settings of {cluster or 'the global default'}", ["setting", "value"], rows)


@dns_app.command("delete")
def dns_delete(cluster: Optional[str] = _ClusterOption) -> None:
    """Remove DNS settings (a cluster then falls back to the global default)."""
    call("DELETE", _dns_path(cluster))
    out.print("DNS settings removed")
