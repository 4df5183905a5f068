"""`tempered rules` and `tempered fragment`: what a cluster's machines become."""

from __future__ import annotations

from pathlib import Path

import typer

from api.cli.client import Format, OutputOption, call, emit, out, plural, print_yaml, read_yaml, table

rules_app = typer.Typer(help="Set the JavaScript rules that decide what a cluster's machines become.", no_args_is_help=True)
fragment_app = typer.Typer(
    help="Manage the cloud-init fragments that rules add to machines with `include` attributes.", no_args_is_help=True
)


# ---- rules ---------------------------------------------------------------------------------


@rules_app.command("set")
def rules_set(
    file: Path = typer.Argument(..., exists=True, help="YAML or JSON: a list of {name, expression, attributes, enabled}."),
    cluster: str = typer.Option(..., help="The cluster whose rules these are."),
) -> None:
    """Replace a cluster's rules (each checked first; held machines are re-evaluated)."""
    rules = read_yaml(file)
    print_yaml(call("PUT", f"/v1/clusters/{cluster}/rules", json=rules, progress="checking the rules, re-evaluating held machines"))


@rules_app.command("show")
def rules_show(cluster: str = typer.Option(..., help="The cluster."), output: OutputOption = Format.table) -> None:
    """Show a cluster's rules in order (-o yaml prints them in the form `rules set` reads)."""
    rules = call("GET", f"/v1/clusters/{cluster}/rules")
    emit(rules, output, lambda: table(
        f"rules of {cluster}", ["#", "name", "enabled", "expression", "attributes"],
        [[i, r["name"], r["enabled"], r["expression"], ", ".join(f"{a['type']}={a['value']}" for a in r.get("attributes") or [])]
         for i, r in enumerate(rules, 1)],
    ))


@rules_app.command("dry-run")
def rules_dry_run(
    file: Path = typer.Argument(..., exists=True, help="The candidate rules (YAML or JSON)."),
    cluster: str = typer.Option(..., help="The cluster to try them on."),
    output: OutputOption = Format.table,
) -> None:
    """Show what candidate rules would give every machine of a cluster (nothing is stored)."""
    candidate = read_yaml(file)
    rows = call("POST", f"/v1/clusters/{cluster}/rules/dry-run", json=candidate, progress=f"trying the rules on {cluster}'s machines")
    emit(rows, output, lambda: table(f"dry-run on {cluster}", ["machine", "now", "would be", "errors"], [
        [r["machine_id"], r["current"]["role"] or "-", (r["would_be"] or {}).get("role", "-"), "; ".join(r["errors"])]
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
