"""`tempered cluster reboot|upgrade|scale-down|operation`: a cluster's day-2 operations
(api/operations.py, workflows/operation.py), each one durable workflow shown in the Web UI."""

from __future__ import annotations

from enum import Enum
from typing import Optional

import typer

from api.cli.client import Format, OutputOption, call, emit, out, table

BatchOption = typer.Option(1, "--batch", min=1, max=100, help="Workers rebooted at a time (control-plane: always 1).")
MachinesOption = typer.Option(
    None, "--machine", "-m", help="Only this member (repeatable; default: every ready member)."
)


class Action(str, Enum):
    pause = "pause"
    resume = "resume"
    abort = "abort"


def _start(name: str, body: dict, what: str) -> None:
    op = call("POST", f"/v1/clusters/{name}/operations", json=body, progress=f"starting {what} of {name}",
              fields={"kubernetes_version": "--kubernetes-version", "batch": "--batch", "machines": "--machine"})
    out.print(f"{op['kind']} {op['workflow_id']} started; follow it with 'tempered cluster operation {name}'",
              markup=False)
    print_operation(op)


def cluster_reboot(
    name: str = typer.Argument(..., help="The cluster."),
    batch: int = BatchOption,
    machine: Optional[list[str]] = MachinesOption,
) -> None:
    """Rolling reboot: control-plane members first, one at a time and never below quorum, then
    workers --batch at a time; each node drained, rebooted, back ready, uncordoned."""
    _start(name, {"kind": "rolling-reboot", "batch": batch, "machines": machine or []}, "a rolling reboot")


def cluster_upgrade(
    name: str = typer.Argument(..., help="The cluster."),
    kubernetes_version: str = typer.Option(..., "--kubernetes-version", help="One minor step up, e.g. 1.32.0."),
    batch: int = BatchOption,
    machine: Optional[list[str]] = MachinesOption,
) -> None:
    """Upgrade: sets the cluster's Kubernetes version, then reboots node by node (as reboot) and
    checks each comes back on it."""
    body = {"kind": "upgrade", "kubernetes_version": kubernetes_version, "batch": batch, "machines": machine or []}
    _start(name, body, f"an upgrade to {kubernetes_version}")


def cluster_scale_down(
    name: str = typer.Argument(..., help="The cluster."),
    machines: list[str] = typer.Argument(..., help="The members to decommission."),
) -> None:
    """Scale down: decommission these members, workers first, the master-prime last; refused if
    the control plane left would lose quorum."""
    _start(name, {"kind": "scale-down", "machines": machines}, "a scale-down")


def cluster_operation(
    name: str = typer.Argument(..., help="The cluster."),
    action: Optional[Action] = typer.Argument(
        None, help="pause (after the node in hand), resume (the failed node again) or abort; none: show it."),
    output: OutputOption = Format.table,
) -> None:
    """Show the cluster's current (or last) operation, or pause, resume or abort it."""
    if action is None:
        op = call("GET", f"/v1/clusters/{name}/operations")
    else:
        op = call("POST", f"/v1/clusters/{name}/operations/{action.value}", progress=f"{action.value} on {name}")
    emit(op, output, lambda: print_operation(op))


def print_operation(op: dict) -> None:
    out.print(f"[bold]{op['workflow_id']}[/bold]  {op['kind']}  state {op['state']}")
    out.print(f"progress: {op['progress'] or '-'}", markup=False)
    if op.get("error"):
        out.print(f"error: {op['error']}", markup=False, style="red")
    if op["state"] == "waiting":
        out.print("resume (retry the failed node) or abort: tempered cluster operation "
                  f"{op['workflow_id'].split(':')[1]} resume|abort", markup=False)
    out.print(f"workflow: {op['temporal_url']}", markup=False)
    table("nodes", ["node", "machine", "role", "step", "reason"], [
        [n["node_name"], n["machine_id"], n["role"], n["step"], n["reason"]] for n in op["nodes"]
    ])
