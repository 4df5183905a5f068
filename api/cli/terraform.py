"""`tempered terraform state`: the Terraform states Tempered keeps, their versions and locks,
and the credentials a site's own `terraform` uses to reach them (REST: /v1/terraform/...)."""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer

from api.cli.client import Exit, Format, OutputOption, call, emit, fail, out, table

terraform_app = typer.Typer(
    help="Terraform: the state store Tempered keeps for each cluster's Terraform tasks.", no_args_is_help=True,
)
state_app = typer.Typer(
    help="Terraform states kept by Tempered (its http backend, one state per cluster task): list them, "
    "their versions, show or roll back a version, release a stale lock, and the cluster's credentials.",
    no_args_is_help=True,
)
terraform_app.add_typer(state_app, name="state")

_CLUSTER = typer.Argument(..., help="The cluster the state belongs to.")
_NAME = typer.Argument(..., help="The state's name: the Terraform task's name in the cluster spec.")


def _base(cluster: str, name: str) -> str:
    return f"/v1/terraform/states/{cluster}/{name}"


def _holder(lock: dict[str, Any] | None) -> str:
    return f"{lock.get('Who') or '?'} ({lock['ID']})" if lock else "-"


@state_app.command("list")
def state_list(output: OutputOption = Format.table) -> None:
    """List every state: its versions, current serial and size, and who holds its lock."""
    rows = call("GET", "/v1/terraform/states")
    emit(rows, output, lambda: table("terraform states", ["cluster", "name", "versions", "serial", "size", "updated", "locked by"], [
        [s["cluster"], s["name"], s["versions"], "deleted" if s["current"]["deleted"] else s["current"]["serial"],
         s["current"]["size"], s["current"]["created_at"], _holder(s["lock"])]
        for s in rows
    ]))


@state_app.command("versions")
def state_versions(cluster: str = _CLUSTER, name: str = _NAME, output: OutputOption = Format.table) -> None:
    """List the versions of one state, oldest first: every write Terraform made, deletions and rollbacks."""
    rows = call("GET", f"{_base(cluster, name)}/versions")
    emit(rows, output, lambda: table(f"{cluster}/{name}", ["version", "serial", "size", "written", "by", "note"], [
        [v["version"], "deleted" if v["deleted"] else v["serial"], v["size"], v["created_at"], v["written_by"], v["note"]]
        for v in rows
    ]))


@state_app.command("show")
def state_show(
    cluster: str = _CLUSTER, name: str = _NAME,
    version: Optional[int] = typer.Option(None, "--version", "-v", help="Which version (see 'versions'); default: the current one."),
    output: OutputOption = Format.table,
) -> None:
    """Print a state's body as Terraform wrote it (admin: a state holds secrets).

    With -o json: the version's details, and the body as a string."""
    if version is None:
        version = call("GET", f"{_base(cluster, name)}/versions")[-1]["version"]
    shown = call("GET", f"{_base(cluster, name)}/versions/{version}")

    def render() -> None:
        if shown["deleted"]:
            fail([f"version {version} of {cluster}/{name} is its deletion: it has no body; "
                  f"see 'tempered terraform state versions {cluster} {name}'"], Exit.REFUSED)
        sys.stdout.write(shown["state"] if shown["state"].endswith("\n") else shown["state"] + "\n")

    emit(shown, output, render)


@state_app.command("rollback")
def state_rollback(
    cluster: str = _CLUSTER, name: str = _NAME,
    version: int = typer.Argument(..., help="The version to make current again (see 'versions')."),
) -> None:
    """Make an earlier version the current state again.

    It is added as a new version whose serial is above every earlier one (its lineage kept), so
    the next 'terraform apply' takes it as the newest state. Refused while a run holds the lock."""
    made = call("POST", f"{_base(cluster, name)}/versions/{version}/rollback")
    out.print(f"{cluster}/{name}: version {version} is current again as version {made['version']} (serial {made['serial']})")


@state_app.command("unlock")
def state_unlock(cluster: str = _CLUSTER, name: str = _NAME) -> None:
    """Force-unlock a state whose Terraform run is gone (crashed, its machine died).

    Whoever holds the lock loses it; the holder is recorded in the audit trail. Never while that
    run still works: two runs would then write one state."""
    released = call("POST", f"{_base(cluster, name)}/force-unlock")
    out.print(f"{cluster}/{name}: released the lock {released['ID']} held by {released.get('Who') or '(unknown)'} "
              f"since {released.get('Created') or '?'} ({released.get('Operation') or 'unknown operation'})")


@state_app.command("credentials")
def state_credentials(
    cluster: str = typer.Argument(..., help="The cluster whose states the credentials open."),
    rotate: bool = typer.Option(False, "--rotate", help="Make a new password first; the old one stops working at once "
                                "(refused while a run holds a lock on one of the cluster's states)."),
    output: OutputOption = Format.table,
) -> None:
    """Show (or --rotate) a cluster's state credentials (admin), for a site's own 'terraform'.

    The http backend's username and password (TF_HTTP_USERNAME / TF_HTTP_PASSWORD) and the
    address of the cluster's states: append the state's name."""
    creds = call("POST" if rotate else "GET", f"/v1/terraform/credentials/{cluster}" + ("/rotate" if rotate else ""))

    def render() -> None:
        out.print(f"cluster:  {creds['cluster']}" + ("  (password rotated)" if rotate else ""))
        out.print(f"address:  {creds['address']}<name>  (lock_address and unlock_address: the same)", highlight=False)
        out.print(f"username: {creds['username']}", highlight=False)
        out.print(f"password: {creds['password']}", highlight=False)
        out.print("use them as TF_HTTP_USERNAME / TF_HTTP_PASSWORD, never in a .tf file")

    emit(creds, output, render)
