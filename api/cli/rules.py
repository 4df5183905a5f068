"""`tempered rules` and `tempered fragment`: what a cluster's machines become."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from api.cli.client import Exit, Format, OutputOption, call, emit, fail, out, plural, print_yaml, read_yaml, table

rules_app = typer.Typer(help="Set the JavaScript rules that decide what a cluster's machines become.", no_args_is_help=True)
fragment_app = typer.Typer(
    help="Manage the cloud-init fragments that rules add to machines with `include` attributes.", no_args_is_help=True
)


# ---- rules ---------------------------------------------------------------------------------
# The cluster is an argument, as in `cluster show NAME`: `rules show CLUSTER`, `rules set CLUSTER
# FILE`. The older `--cluster CLUSTER` (with `rules set FILE --cluster CLUSTER`) still works.

_Cluster = typer.Argument(None, metavar="CLUSTER", help="The cluster whose rules these are.", show_default=False)
_File = typer.Argument(None, metavar="FILE", help="YAML or JSON: a list of {name, expression, attributes, enabled}.", show_default=False)
_OldCluster = typer.Option(None, "--cluster", hidden=True)  # the form before CLUSTER became an argument


def _cluster(cluster: Optional[str], old: Optional[str]) -> str:
    if cluster and old and cluster != old:
        fail([f"two clusters given: {cluster} and --cluster {old}"], Exit.INVALID)
    if not (cluster or old):
        fail(["give the CLUSTER"], Exit.INVALID)
    return cluster or old  # type: ignore[return-value]


def _cluster_and_file(first: Optional[str], file: Optional[Path], old: Optional[str]) -> tuple[str, Path]:
    """CLUSTER FILE, or the older FILE --cluster CLUSTER; exit 2 when the file cannot be read."""
    if file is None and old is not None and first is not None:
        first, file = None, Path(first)
    cluster = _cluster(first, old)
    if file is None:
        fail(["give the CLUSTER and the rules FILE"], Exit.INVALID)
    if not file.is_file():
        fail([f"{file}: no such file"], Exit.INVALID)
    return cluster, file


@rules_app.command("set")
def rules_set(cluster: Optional[str] = _Cluster, file: Optional[Path] = _File, old: Optional[str] = _OldCluster) -> None:
    """Replace a cluster's rules (each checked first; held machines are re-evaluated)."""
    cluster, file = _cluster_and_file(cluster, file, old)
    rules = read_yaml(file)
    print_yaml(call("PUT", f"/v1/clusters/{cluster}/rules", json=rules, progress="checking the rules, re-evaluating held machines"))


@rules_app.command("show")
def rules_show(cluster: Optional[str] = _Cluster, output: OutputOption = Format.table, old: Optional[str] = _OldCluster) -> None:
    """Show a cluster's rules in order (-o yaml prints them in the form `rules set` reads)."""
    cluster = _cluster(cluster, old)
    rules = call("GET", f"/v1/clusters/{cluster}/rules")
    emit(rules, output, lambda: table(
        f"rules of {cluster}", ["#", "name", "enabled", "expression", "attributes"],
        [[i, r["name"], r["enabled"], r["expression"], ", ".join(f"{a['type']}={a['value']}" for a in r.get("attributes") or [])]
         for i, r in enumerate(rules, 1)],
    ))


@rules_app.command("dry-run")
def rules_dry_run(
    cluster: Optional[str] = _Cluster,
    file: Optional[Path] = typer.Argument(None, metavar="FILE", help="The candidate rules (YAML or JSON).", show_default=False),
    output: OutputOption = Format.table,
    old: Optional[str] = _OldCluster,
) -> None:
    """Show what candidate rules would give every machine of a cluster (nothing is stored)."""
    cluster, file = _cluster_and_file(cluster, file, old)
    candidate = read_yaml(file)
    rows = call("POST", f"/v1/clusters/{cluster}/rules/dry-run", json=candidate, progress=f"trying the rules on {cluster}'s machines")
    emit(rows, output, lambda: table(f"dry-run on {cluster}", ["machine", "now", "would be", "errors"], [
        [r["machine_id"], r["current"]["role"], (r["would_be"] or {}).get("role"), "; ".join(r["errors"])]
        for r in rows
    ]))


# ---- cloud-init fragments -------------------------------------------------------------------


@fragment_app.command("set")
def fragment_set(
    name: str = typer.Argument(..., help="The name `include` attributes use."),
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="cloud-config YAML (may set merge_how, use {{ var.NAME }})."),
) -> None:
    """Create or replace a fragment; it is checked against cloud-init's schema first."""
    view = call("PUT", f"/v1/cloud-init/fragments/{name}", json={"content": file.read_text()})
    out.print(f"fragment [bold]{name}[/bold] saved ({view['digest'][:12]}); included by {plural(view['included_by'], 'machine')}")


@fragment_app.command("list")
def fragment_list(output: OutputOption = Format.table) -> None:
    """List the fragments and how many machines include each."""
    fragments = call("GET", "/v1/cloud-init/fragments")
    emit(fragments, output, lambda: table("cloud-init fragments", ["name", "digest", "included by", "updated"], [
        [f["name"], f["digest"][:12], f["included_by"], f["updated_at"]] for f in fragments
    ]))


@fragment_app.command("show")
def fragment_show(name: str, output: OutputOption = Format.table) -> None:
    """Print a fragment's content as it was set (-o json/yaml: with its digest and users)."""
    view = call("GET", f"/v1/cloud-init/fragments/{name}")
    emit(view, output, lambda: out.print(view["content"], markup=False, highlight=False, end=""))


@fragment_app.command("delete")
def fragment_delete(
    name: str, force: bool = typer.Option(False, "--force", help="Delete even while machines include it.")
) -> None:
    """Delete a fragment (refused while machines include it, unless --force)."""
    call("DELETE", f"/v1/cloud-init/fragments/{name}", params={"force": "true" if force else None})
    out.print(f"fragment {name} deleted")
