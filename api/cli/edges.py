"""`tempered edge` and `tempered image`: the boot edges, what they answer and the images they serve."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional, get_args

import typer

from activities.domain.edge import EdgeMode
from api.cli.client import Format, OutputOption, call, call_all, emit, out

edge_app = typer.Typer(help="Register boot edges and set which machines each one answers.", no_args_is_help=True)
image_app = typer.Typer(help="Build the boot images the edges serve.", no_args_is_help=True)


# ---- edges ---------------------------------------------------------------------------------

Mode = Enum("Mode", {m: m for m in get_args(EdgeMode)}, type=str)  # type: ignore[misc]
_MODE_HELP = (
    "preregistered: only registered machines; catch-all: unknown machines join --cluster; "
    "discovery-pool: unknown machines wait until placed."
)


# The policy's fields as the flags name them: a 422 names the flag the user typed.
_POLICY_FLAGS = {"mode": "--mode", "cluster": "--cluster", "mac_prefixes": "--mac-prefix", "segment": "--segment"}
_CREATE_FLAGS = {"name": "NAME"} | {f"policy.{field}": flag for field, flag in _POLICY_FLAGS.items()}


def _policy(mode: Enum, cluster: Optional[str], mac_prefix: list[str], segment: str) -> dict:
    return {"mode": mode.value, "cluster": cluster, "mac_prefixes": mac_prefix, "segment": segment}


def _print_edge(v: dict) -> None:
    p = v["policy"]
    out.print(
        f"[bold]{v['name']}[/bold]  {p['mode']}  cluster {p['cluster'] or '-'}  segment {p['segment']}  "
        f"MACs {', '.join(p['mac_prefixes']) or 'any'}  last seen {v.get('last_seen_at') or 'never'}"
    )


@edge_app.command("create")
def edge_create(
    name: str = typer.Argument(..., help="DNS label naming the edge, e.g. rack-a."),
    mode: Mode = typer.Option("preregistered", help=_MODE_HELP),  # type: ignore[valid-type]
    cluster: Optional[str] = typer.Option(None, help="Cluster for unknown machines (catch-all)."),
    mac_prefix: list[str] = typer.Option([], "--mac-prefix", help="Answer only these OUIs/MACs (repeatable)."),
    segment: str = typer.Option("default", help="The L2 segment; edges on one segment may not overlap."),
    token_file: Optional[Path] = typer.Option(None, help="Write the edge's token here (mode 0600)."),
) -> None:
    """Register an edge and print its token (shown only once)."""
    v = call("POST", "/v1/edges", json={"name": name, "policy": _policy(mode, cluster, mac_prefix, segment)}, fields=_CREATE_FLAGS)
    _print_edge(v)
    if token_file:
        token_file.touch(mode=0o600)
        token_file.write_text(v["token"] + "\n")
        out.print(f"token written to {token_file}; run: tempered bootedge --interface IF --token-file {token_file}")
    else:
        out.print(f"token (shown once): {v['token']}")


@edge_app.command("list")
def edge_list(output: OutputOption = Format.table) -> None:
    """List edges with their policies."""
    edges = call_all("/v1/edges")
    emit(edges, output, lambda: _print_edges(edges))


def _print_edges(edges: list[dict]) -> None:
    for v in edges:
        _print_edge(v)


@edge_app.command("show")
def edge_show(name: str, output: OutputOption = Format.table) -> None:
    """Show one edge."""
    edge = call("GET", f"/v1/edges/{name}")
    emit(edge, output, lambda: _print_edge(edge))


@edge_app.command("set-policy")
def edge_set_policy(
    name: str,
    mode: Mode = typer.Option("preregistered", help=_MODE_HELP),  # type: ignore[valid-type]
    cluster: Optional[str] = typer.Option(None, help="Cluster for unknown machines (catch-all)."),
    mac_prefix: list[str] = typer.Option([], "--mac-prefix", help="Answer only these OUIs/MACs (repeatable)."),
    segment: str = typer.Option("default", help="The L2 segment."),
) -> None:
    """Replace an edge's policy; the edge applies it within seconds."""
    _print_edge(call("PUT", f"/v1/edges/{name}/policy", json=_policy(mode, cluster, mac_prefix, segment), fields=_POLICY_FLAGS))


@edge_app.command("delete")
def edge_delete(name: str) -> None:
    """Remove an edge and revoke its token."""
    call("DELETE", f"/v1/edges/{name}")
    out.print(f"edge {name} deleted")


# ---- images --------------------------------------------------------------------------------


@image_app.command("build")
def image_build(
    kind: str = typer.Argument(..., help="Which image: discovery or runtime."),
    output: Optional[Path] = typer.Option(None, "--output", help="Default $TEMPERED_HOME/edge/images/KIND (what edges serve)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the inputs did not change."),
) -> None:
    """Build a boot image from Debian packages (cached by content hash: a no-op when nothing changed)."""
    from bootedge.images.build import build_command

    build_command(kind, output, force=force)
