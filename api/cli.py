"""The `tempered` command: run the control plane's processes, and operate clusters and machines.

Operator commands are thin clients of the REST API (so the CLI, scripts and the API see the
same errors); they find it through TEMPERED_API and authenticate with TEMPERED_TOKEN or the
admin token file under TEMPERED_HOME.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

from activities.storage import settings as settings_mod

app = typer.Typer(
    help="Tempered: turn racks of bare metal into Kubernetes clusters.\n\n"
    "Start everything on this machine with 'tempered up', then create a cluster with "
    "'tempered cluster create NAME' and PXE boot its machines.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
cluster_app = typer.Typer(help="Create, list, inspect and delete clusters.", no_args_is_help=True)
machine_app = typer.Typer(help="List, inspect, register and act on machines.", no_args_is_help=True)
edge_app = typer.Typer(help="Register boot edges and set which machines each one answers.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(machine_app, name="machine")
app.add_typer(edge_app, name="edge")
dns_app = typer.Typer(help="Set where Tempered publishes DNS records (RFC 2136, TSIG, split horizon).", no_args_is_help=True)
app.add_typer(dns_app, name="dns")
image_app = typer.Typer(help="Build the boot images the edges serve.", no_args_is_help=True)
app.add_typer(image_app, name="image")
rules_app = typer.Typer(help="Set the JavaScript rules that decide what a cluster's machines become.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
fragment_app = typer.Typer(
    help="Manage the cloud-init fragments that rules add to machines with `include` attributes.", no_args_is_help=True
)
app.add_typer(fragment_app, name="fragment")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---- processes -----------------------------------------------------------------------------


@app.command()
def up(
    no_temporal: bool = typer.Option(
        False, "--no-temporal", help="Use the Temporal at TEMPORAL_ADDRESS instead of starting the dev server."
    ),
) -> None:
    """Start Temporal (dev server, Web UI on :8233), the worker and the API (:8000); Ctrl-C stops all."""
    from api.stack import up as run_stack

    raise typer.Exit(run_stack(settings_mod.load(), with_temporal=not no_temporal))


@app.command()
def temporal() -> None:
    """Run only the Temporal dev server, persisted in $TEMPERED_HOME/temporal.db."""
    from api.stack import temporal_command

    settings = settings_mod.load()
    settings.private_home()  # temporal.db and its WAL files are created 0600
    port = int(settings.temporal_address.rsplit(":", 1)[1])
    command = temporal_command(settings, port=port, ui_port=port + 1000)
    os.execv(command[0], command)


@app.command()
def worker() -> None:
    """Run only the worker (workflows and activities) against TEMPORAL_ADDRESS and DATABASE_URL."""
    from api.worker import main as run_worker

    _logging()
    run_worker(settings_mod.load())


@app.command()
def api(
    host: Optional[str] = typer.Option(None, help="Address to bind (default TEMPERED_API_HOST or 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default TEMPERED_API_PORT or 8000)."),
    uds: Optional[Path] = typer.Option(None, help="Serve on this unix socket instead (for co-located edges)."),
) -> None:
    """Run only the REST API (OpenAPI docs at /docs)."""
    import uvicorn

    from api.app import create_app

    _logging()
    settings = settings_mod.load()
    settings.private_home()
    bind = {"uds": str(uds)} if uds else {"host": host or settings.api_host, "port": port or settings.api_port}
    uvicorn.run(create_app(settings), log_level="info", **bind)


@app.command()
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

    _logging()
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


# ---- API client ----------------------------------------------------------------------------


def _call(method: str, path: str, json: Any = None, params: dict | None = None) -> Any:
    """Call the API; print its error and exit non-zero when it refuses."""
    settings = settings_mod.load()
    token = os.environ.get("TEMPERED_TOKEN")
    if token is None and settings.admin_token_file.exists():
        token = settings.admin_token_file.read_text().strip()
    if not token:
        err.print(f"[red]no token[/red]: set TEMPERED_TOKEN or run 'tempered up' to create {settings.admin_token_file}")
        raise typer.Exit(2)
    try:
        response = httpx.request(
            method,
            settings.api_url + path,
            json=json,
            params={k: v for k, v in (params or {}).items() if v is not None},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    except httpx.HTTPError as e:
        err.print(f"[red]cannot reach the API at {settings.api_url}[/red]: {e}. Is 'tempered up' running?")
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        err.print(f"[red]{response.status_code}[/red] {detail}")
        raise typer.Exit(1)
    return response.json() if response.content else None


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    out.print(table)


# ---- clusters ------------------------------------------------------------------------------


@cluster_app.command("create")
def cluster_create(
    name: str = typer.Argument(..., help="DNS label, e.g. prod-a."),
    quorum: int = typer.Option(3, "--quorum", help="Control-plane machines the cluster needs (odd)."),
    kubernetes_version: str = typer.Option("1.31.0", help="Kubernetes version kubeadm installs."),
    endpoint: Optional[str] = typer.Option(None, help="Control-plane endpoint (VIP or DNS name:port)."),
    pod_cidr: str = typer.Option("10.244.0.0/16", help="Pod network CIDR."),
    service_cidr: str = typer.Option("10.96.0.0/12", help="Service network CIDR."),
    min_cores: int = typer.Option(2, help="Preflight: CPU cores a machine needs."),
    min_memory_gib: float = typer.Option(3.0, help="Preflight: memory a machine needs (GiB)."),
    min_disk_gb: float = typer.Option(10.0, help="Preflight: size of its largest disk (GB)."),
) -> None:
    """Create a cluster; its machines are admitted one at a time by its workflow."""
    view = _call(
        "POST",
        "/v1/clusters",
        json={
            "name": name,
            "quorum_count": quorum,
            "kubernetes_version": kubernetes_version,
            "control_plane_endpoint": endpoint,
            "pod_cidr": pod_cidr,
            "service_cidr": service_cidr,
            "preflight": {
                "min_cores": min_cores,
                "min_memory_bytes": int(min_memory_gib * (1 << 30)),
                "min_disk_bytes": int(min_disk_gb * 10**9),
            },
        },
    )
    out.print(f"cluster [bold]{name}[/bold] created ({view['phase']}); workflow: {view['temporal_url']}")


@cluster_app.command("list")
def cluster_list() -> None:
    """List clusters with their phase and member count."""
    views = _call("GET", "/v1/clusters")
    _table(
        "clusters",
        ["name", "phase", "members", "held", "quorum"],
        [[v["spec"]["name"], v["phase"], len(v["members"]), len(v["held"]), v["spec"]["quorum_count"]] for v in views],
    )


@cluster_app.command("show")
def cluster_show(name: str) -> None:
    """Show a cluster's spec, phase and members."""
    v = _call("GET", f"/v1/clusters/{name}")
    out.print(f"[bold]{name}[/bold]  phase {v['phase']}  quorum {v['spec']['quorum_count']}")
    out.print(f"workflow: {v['temporal_url']}")
    token = v["credentials"].get("token_expires_at")
    out.print(f"join token: {'expires ' + token if token else 'none yet (minted once the master-prime is ready)'}")
    if v.get("credentials_error"):
        out.print(f"[red]{v['credentials_error']}[/red]")
    _table("members", ["machine", "role", "ready", "held"], [
        [m["machine_id"], m["role"], m["ready"], m["machine_id"] in v["held"]] for m in v["members"]
    ])


@cluster_app.command("delete")
def cluster_delete(name: str) -> None:
    """Delete an empty cluster (decommission its machines first)."""
    _call("DELETE", f"/v1/clusters/{name}")
    out.print(f"cluster {name} deleted")


# ---- machines ------------------------------------------------------------------------------


@machine_app.command("list")
def machine_list(
    cluster: Optional[str] = typer.Option(None, help="Only this cluster's machines."),
    state: Optional[str] = typer.Option(None, help="Only machines in this state (e.g. ready, holding, failed:admit)."),
) -> None:
    """List machines with state, role and MAC."""
    rows = _call("GET", "/v1/machines", params={"cluster": cluster, "state": state})
    _table("machines", ["id", "cluster", "state", "role", "mac"], [
        [m["id"], m["cluster"], m["state"], m["role"], m["mac"]] for m in rows
    ])


def _print_machine(v: dict) -> None:
    out.print(f"[bold]{v['id']}[/bold]  {v['state']}  role {v['role'] or '-'}  cluster {v['cluster'] or '-'}")
    if v["reason"]:
        out.print(f"  reason: {v['reason']}")
    out.print(f"  name: {v['node_name']}  new: {v['is_new']}  boots: {v['boot']}  macs: {', '.join(v['macs']) or '-'}")
    if v["attributes"]:
        out.print("  attributes: " + ", ".join(f"{a['type']}={a['value']}" for a in v["attributes"]))
    if v["facts"]:
        out.print(f"  facts: {v['facts']}")
    out.print(f"  Temporal: {v['temporal_url']}")


@machine_app.command("show")
def machine_show(machine_id: str) -> None:
    """Show one machine: state and why, role, attributes, facts summary, Web UI link."""
    v = _call("GET", f"/v1/machines/{machine_id}")
    _print_machine(v)
    _table("recent transitions", ["at", "state", "reason"], [[t["at"], t["state"], t["reason"]] for t in v["history"]])


@machine_app.command("register")
def machine_register(
    cluster: str = typer.Option(..., help="Cluster the machine joins."),
    mac: Optional[str] = typer.Option(None, help="MAC of its PXE NIC."),
    uuid: Optional[str] = typer.Option(None, help="SMBIOS system UUID."),
    serial: Optional[str] = typer.Option(None, help="System serial number."),
) -> None:
    """Pre-register a machine into a cluster before it first boots."""
    v = _call("POST", "/v1/machines", json={"cluster": cluster, "mac": mac, "uuid": uuid, "serial": serial})
    _print_machine(v)


def _action(machine_id: str, action: str) -> None:
    v = _call("POST", f"/v1/machines/{machine_id}/{action}")
    _print_machine(v)


@machine_app.command("retry")
def machine_retry(machine_id: str) -> None:
    """Run a failed machine's failed step again."""
    _action(machine_id, "retry")


@machine_app.command("reprovision")
def machine_reprovision(machine_id: str) -> None:
    """Mark a machine new: its next PXE boot rediscovers it, reassigns it and wipes its disk."""
    _action(machine_id, "reprovision")


@machine_app.command("decommission")
def machine_decommission(machine_id: str) -> None:
    """Take a machine out of its cluster and retire it."""
    _action(machine_id, "decommission")


# ---- edges ---------------------------------------------------------------------------------

_MODE_HELP = (
    "preregistered: only registered machines; catch-all: unknown machines join --cluster; "
    "discovery-pool: unknown machines wait until placed."
)


def _policy(mode: str, cluster: Optional[str], mac_prefix: list[str], segment: str) -> dict:
    return {"mode": mode, "cluster": cluster, "mac_prefixes": mac_prefix, "segment": segment}


def _print_edge(v: dict) -> None:
    p = v["policy"]
    out.print(
        f"[bold]{v['name']}[/bold]  {p['mode']}  cluster {p['cluster'] or '-'}  segment {p['segment']}  "
        f"MACs {', '.join(p['mac_prefixes']) or 'any'}  last seen {v.get('last_seen_at') or 'never'}"
    )


@edge_app.command("create")
def edge_create(
    name: str = typer.Argument(..., help="DNS label naming the edge, e.g. rack-a."),
    mode: str = typer.Option("preregistered", help=_MODE_HELP),
    cluster: Optional[str] = typer.Option(None, help="Cluster for unknown machines (catch-all)."),
    mac_prefix: list[str] = typer.Option([], "--mac-prefix", help="Answer only these OUIs/MACs (repeatable)."),
    segment: str = typer.Option("default", help="The L2 segment; edges on one segment may not overlap."),
    token_file: Optional[Path] = typer.Option(None, help="Write the edge's token here (mode 0600)."),
) -> None:
    """Register an edge and print its token (shown only once)."""
    v = _call("POST", "/v1/edges", json={"name": name, "policy": _policy(mode, cluster, mac_prefix, segment)})
    _print_edge(v)
    if token_file:
        token_file.touch(mode=0o600)
        token_file.write_text(v["token"] + "\n")
        out.print(f"token written to {token_file}; run: tempered bootedge --interface IF --token-file {token_file}")
    else:
        out.print(f"token (shown once): {v['token']}")


@edge_app.command("list")
def edge_list() -> None:
    """List edges with their policies."""
    for v in _call("GET", "/v1/edges"):
        _print_edge(v)


@edge_app.command("show")
def edge_show(name: str) -> None:
    """Show one edge."""
    _print_edge(_call("GET", f"/v1/edges/{name}"))


@edge_app.command("set-policy")
def edge_set_policy(
    name: str,
    mode: str = typer.Option("preregistered", help=_MODE_HELP),
    cluster: Optional[str] = typer.Option(None, help="Cluster for unknown machines (catch-all)."),
    mac_prefix: list[str] = typer.Option([], "--mac-prefix", help="Answer only these OUIs/MACs (repeatable)."),
    segment: str = typer.Option("default", help="The L2 segment."),
) -> None:
    """Replace an edge's policy; the edge applies it within seconds."""
    _print_edge(_call("PUT", f"/v1/edges/{name}/policy", json=_policy(mode, cluster, mac_prefix, segment)))


@edge_app.command("delete")
def edge_delete(name: str) -> None:
    """Remove an edge and revoke its token."""
    _call("DELETE", f"/v1/edges/{name}")
    out.print(f"edge {name} deleted")


# ---- rules ---------------------------------------------------------------------------------


def _read_rules(file: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        err.print(f"[red]{file} is not valid YAML[/red]: {e}")
        raise typer.Exit(2) from None


@rules_app.command("set")
def rules_set(
    file: Path = typer.Argument(..., exists=True, help="YAML or JSON: a list of {name, expression, attributes, enabled}."),
    cluster: str = typer.Option(..., help="The cluster whose rules these are."),
) -> None:
    """Replace a cluster's rules (each checked first; held machines are re-evaluated)."""
    _print_yaml(_call("PUT", f"/v1/clusters/{cluster}/rules", json=_read_rules(file)))


@rules_app.command("show")
def rules_show(cluster: str = typer.Option(..., help="The cluster.")) -> None:
    """Show a cluster's rules in order."""
    _print_yaml(_call("GET", f"/v1/clusters/{cluster}/rules"))


@rules_app.command("dry-run")
def rules_dry_run(
    file: Path = typer.Argument(..., exists=True, help="The candidate rules (YAML or JSON)."),
    cluster: str = typer.Option(..., help="The cluster to try them on."),
) -> None:
    """Show what candidate rules would give every machine of a cluster (nothing is stored)."""
    rows = _call("POST", f"/v1/clusters/{cluster}/rules/dry-run", json=_read_rules(file))
    _table(f"dry-run on {cluster}", ["machine", "now", "would be", "errors"], [
        [r["machine_id"], r["current"]["role"] or "-", (r["would_be"] or {}).get("role", "-"), "; ".join(r["errors"])]
        for r in rows
    ])


# ---- cloud-init fragments -------------------------------------------------------------------


@fragment_app.command("set")
def fragment_set(
    name: str = typer.Argument(..., help="The name `include` attributes use."),
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="cloud-config YAML (may set merge_how, use {{ var.NAME }})."),
) -> None:
    """Create or replace a fragment; it is checked against cloud-init's schema first."""
    view = _call("PUT", f"/v1/cloud-init/fragments/{name}", json={"content": file.read_text()})
    out.print(f"fragment [bold]{name}[/bold] saved ({view['digest'][:12]}); included by {view['included_by']} machine(s)")


@fragment_app.command("list")
def fragment_list() -> None:
    """List the fragments and how many machines include each."""
    rows = [[f["name"], f["digest"][:12], f["included_by"], f["updated_at"]] for f in _call("GET", "/v1/cloud-init/fragments")]
    _table("cloud-init fragments", ["name", "digest", "included by", "updated"], rows)


@fragment_app.command("show")
def fragment_show(name: str) -> None:
    """Print a fragment's content."""
    out.print(_call("GET", f"/v1/cloud-init/fragments/{name}")["content"], markup=False, highlight=False, end="")


@fragment_app.command("delete")
def fragment_delete(
    name: str, force: bool = typer.Option(False, "--force", help="Delete even while machines include it.")
) -> None:
    """Delete a fragment (refused while machines include it, unless --force)."""
    _call("DELETE", f"/v1/cloud-init/fragments/{name}", params={"force": "true" if force else None})
    out.print(f"fragment {name} deleted")


# ---- images --------------------------------------------------------------------------------


@image_app.command("build")
def image_build(
    kind: str = typer.Argument(..., help="Which image: discovery or runtime."),
    output: Optional[Path] = typer.Option(None, "--output", help="Default $TEMPERED_HOME/edge/images/KIND (what edges serve)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the inputs did not change."),
) -> None:
    """Build a boot image from Debian packages (cached by content hash: a no-op when nothing changed)."""
    from bootedge.images.discovery import build_command

    build_command(kind, output, force=force)


# ---- DNS -----------------------------------------------------------------------------------


def _dns_path(cluster: Optional[str]) -> str:
    return f"/v1/clusters/{cluster}/dns" if cluster else "/v1/dns"


@dns_app.command("set")
def dns_set(
    file: Path = typer.Argument(..., exists=True, help="YAML or JSON: zone, servers, key, views, reverse_zone ..."),
    cluster: Optional[str] = typer.Option(None, help="Only this cluster (default: the global default)."),
) -> None:
    """Store DNS settings; TSIG secrets are sealed at rest and never shown again."""
    import yaml

    try:
        body = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        err.print(f"[red]{file} is not valid YAML[/red]: {e}")
        raise typer.Exit(2) from None
    _print_yaml(_call("PUT", _dns_path(cluster), json=body))


@dns_app.command("show")
def dns_show(cluster: Optional[str] = typer.Option(None, help="A cluster's own settings.")) -> None:
    """Show DNS settings (secrets redacted)."""
    _print_yaml(_call("GET", _dns_path(cluster)))


@dns_app.command("delete")
def dns_delete(cluster: Optional[str] = typer.Option(None, help="A cluster's own settings.")) -> None:
    """Remove DNS settings (a cluster then falls back to the global default)."""
    _call("DELETE", _dns_path(cluster))
    out.print("DNS settings removed")


def _print_yaml(value: Any) -> None:
    import yaml

    out.print(yaml.safe_dump(value, sort_keys=False).rstrip())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
