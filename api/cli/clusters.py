"""`tempered cluster` and `tempered machine`: create and inspect clusters, act on machines."""

from __future__ import annotations

import contextlib
import re
import time
import uuid as uuidlib
from pathlib import Path
from enum import Enum
from typing import Any, Optional, get_args

import typer
from rich.markup import escape

from activities.domain.cluster import ClusterSpec
from activities.domain.ids import normalize_mac
from api.cli import cluster_operations, cluster_tasks
from api.cli.client import Exit, Format, OutputOption, call, call_all, emit, err, fail, out, plural, table, yes_no
from api.cli.watch import machine_watch, state_filter

cluster_app = typer.Typer(help="Create, list, inspect and delete clusters.", no_args_is_help=True)
machine_app = typer.Typer(help="List, inspect, register and act on machines.", no_args_is_help=True)


# ---- clusters ------------------------------------------------------------------------------


def choices(name: str, literal: Any) -> type[Enum]:
    """An Enum of a domain Literal's values: Typer shows them as choices, the domain stays the one list."""
    return Enum(name, {value: value for value in get_args(literal)}, type=str)  # type: ignore[return-value]


JoinMethod = choices("JoinMethod", ClusterSpec.model_fields["join_method"].annotation)
_SPEC = ClusterSpec(name="defaults")  # the API's defaults, shown in --help
# The spec's fields as `cluster create`'s flags name them: a 422 names the flag the user typed.
_CREATE_FLAGS = {
    "name": "NAME", "kubernetes_version": "--kubernetes-version", "pod_cidr": "--pod-cidr",
    "service_cidr": "--service-cidr", "join_method": "--join-method", "quorum_count": "--quorum", "control_plane_endpoint": "--endpoint", "ntp_servers": "--ntp-server",
    "join_token_ttl_s": "--join-token-ttl", "join_token_renew_before_s": "--join-token-renew-before",
    "preflight.architectures": "--architecture", "preflight.min_cores": "--min-cores",
    "preflight.min_memory_bytes": "--min-memory-gib", "preflight.min_disk_bytes": "--min-disk-gb",
    "terraform": "--terraform",
}


@cluster_app.command("create")
def cluster_create(
    name: str = typer.Argument(..., help="DNS label, e.g. prod-a."),
    quorum: int = typer.Option(_SPEC.quorum_count, "--quorum", help="Control-plane machines the cluster needs (odd)."),
    kubernetes_version: str = typer.Option(_SPEC.kubernetes_version, help="Kubernetes version kubeadm installs."),
    endpoint: Optional[str] = typer.Option(None, help="Control-plane endpoint (VIP or DNS name:port)."),
    pod_cidr: str = typer.Option(_SPEC.pod_cidr, help="Pod network CIDR."),
    service_cidr: str = typer.Option(_SPEC.service_cidr, help="Service network CIDR."),
    ntp_server: list[str] = typer.Option(
        [], "--ntp-server", help=f"NTP server of the nodes (repeatable; default {', '.join(_SPEC.ntp_servers)})."
    ),
    join_method: JoinMethod = typer.Option(  # type: ignore[valid-type]
        _SPEC.join_method, help="ansible: Tempered runs kubeadm over SSH; external: another tool joins the node "
        "and reports the outcome (POST /v1/machines/ID/join-result)."
    ),
    join_token_ttl: int = typer.Option(_SPEC.join_token_ttl_s, help="Seconds a kubeadm join token lives."),
    join_token_renew_before: int = typer.Option(
        _SPEC.join_token_renew_before_s, help="Mint the next join token this many seconds before the current one expires."
    ),
    architecture: list[str] = typer.Option(
        [], "--architecture", help=f"Preflight: an architecture machines may have (repeatable; default {', '.join(_SPEC.preflight.architectures)})."
    ),
    min_cores: int = typer.Option(_SPEC.preflight.min_cores, help="Preflight: CPU cores a machine needs."),
    min_memory_gib: float = typer.Option(_SPEC.preflight.min_memory_bytes / (1 << 30), help="Preflight: memory a machine needs (GiB)."),
    min_disk_gb: float = typer.Option(_SPEC.preflight.min_disk_bytes / 10**9, help="Preflight: size of its largest disk (GB)."),
    terraform: Optional[Path] = cluster_tasks.TerraformOption,
) -> None:
    """Create a cluster; its machines are admitted one at a time by its workflow."""
    view = call(
        "POST",
        "/v1/clusters",
        progress=f"starting cluster {name}'s workflow",
        fields=_CREATE_FLAGS,
        json={
            "name": name,
            "quorum_count": quorum,
            "kubernetes_version": kubernetes_version,
            "control_plane_endpoint": endpoint,
            "pod_cidr": pod_cidr,
            "service_cidr": service_cidr,
            "ntp_servers": ntp_server or _SPEC.ntp_servers,
            "join_method": JoinMethod(join_method).value,
            "join_token_ttl_s": join_token_ttl,
            "join_token_renew_before_s": join_token_renew_before,
            "preflight": {
                "architectures": architecture or _SPEC.preflight.architectures,
                "min_cores": min_cores,
                "min_memory_bytes": int(min_memory_gib * (1 << 30)),
                "min_disk_bytes": int(min_disk_gb * 10**9),
            },
            "terraform": cluster_tasks.load_tasks(terraform),
        },
    )
    out.print(f"cluster [bold]{name}[/bold] created ({view['phase']}); workflow: {view['temporal_url']}")


@cluster_app.command("list")
def cluster_list(output: OutputOption = Format.table) -> None:
    """List clusters with their phase and member count."""
    views = call_all("/v1/clusters")
    emit(views, output, lambda: table(
        "clusters",
        ["name", "phase", "members", "held", "quorum"],
        [[v["spec"]["name"], v["phase"], len(v["members"]), len(v["held"]), v["spec"]["quorum_count"]] for v in views],
    ))


@cluster_app.command("show")
def cluster_show(name: str, output: OutputOption = Format.table) -> None:
    """Show a cluster's spec, phase and members."""
    v = call("GET", f"/v1/clusters/{name}")
    emit(v, output, lambda: _print_cluster(v))


def _print_cluster(v: dict) -> None:
    name, spec = v["spec"]["name"], v["spec"]
    out.print(
        f"[bold]{name}[/bold]  phase {v['phase']}  quorum {spec['quorum_count']}  Kubernetes {spec['kubernetes_version']}  "
        f"join {spec['join_method']}  {plural(len(v['members']), 'member')}"
    )
    out.print(f"workflow: {v['temporal_url']}")
    token = v["credentials"].get("token_expires_at")
    out.print(f"join token: {'expires ' + token if token else 'none yet (minted once the master-prime is ready)'}")
    if v.get("credentials_error"):
        out.print(f"[red]{v['credentials_error']}[/red]")
    if v.get("deletion"):
        out.print(f"deleting: {_deletion_progress(v)}", markup=False)
    if op := v.get("operation"):
        out.print(f"operation: {op['kind']} {op['workflow_id']} {op['state']}: {op['progress']}", markup=False)
    table("members", ["machine", "role", "ready", "held"], [
        [m["machine_id"], m["role"], m["ready"], m["machine_id"] in v["held"]] for m in v["members"]
    ])
    cluster_tasks.print_tasks(v)


cluster_app.command("retry")(cluster_tasks.cluster_retry)
cluster_app.command("plan")(cluster_tasks.cluster_plan)
cluster_app.command("reboot")(cluster_operations.cluster_reboot)
cluster_app.command("upgrade")(cluster_operations.cluster_upgrade)
cluster_app.command("scale-down")(cluster_operations.cluster_scale_down)
cluster_app.command("operation")(cluster_operations.cluster_operation)


@cluster_app.command("delete")
def cluster_delete(
    name: str,
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the deletion has started."),
) -> None:
    """Delete a cluster: decommission every member, run its on-delete Terraform tasks, destroy
    their states, remove api.NAME from DNS, forget it. Shows the progress until it is gone."""
    view = call("DELETE", f"/v1/clusters/{name}", progress=f"starting cluster {name}'s deletion")
    if no_wait:
        out.print(f"cluster {name} is being deleted: {_deletion_progress(view)}; "
                  f"follow with 'tempered cluster show {name}'", markup=False)
        return
    shown = ""
    with err.status(f"deleting cluster {name}") as spinner:
        while view is not None:
            progress = _deletion_progress(view)
            if progress != shown:
                out.print(f"{name}: {progress}", markup=False)
                spinner.update(escape(f"deleting cluster {name}: {progress}"))
                shown = progress
            deletion = view.get("deletion") or {}
            if deletion.get("failed") or (view.get("failed") and deletion.get("step") in ("on-delete", "destroying")):
                fail([f"cluster {name}'s deletion waits for a retry: {_deletion_progress(view)}"], Exit.REFUSED)
            time.sleep(DELETE_POLL_S)
            view = call("GET", f"/v1/clusters/{name}", missing_ok=True)
    out.print(f"cluster {name} deleted")


DELETE_POLL_S = 1.0  # how often `cluster delete` looks at the progress


def _deletion_progress(view: dict) -> str:
    """The step and what it does; a failed Terraform task (failed:<task>) with its reason."""
    deletion = view.get("deletion") or {}
    text = f"{deletion.get('step', '')}: {deletion.get('progress', '')}".strip(": ") or view["phase"]
    if failed := view.get("failed"):
        task = next((t for t in view.get("tasks", []) if f"failed:{t['name']}" == failed), {})
        text += f"; {failed}: {task.get('reason', '')} (retry with: tempered cluster retry {view['spec']['name']})"
    return text


# ---- machines ------------------------------------------------------------------------------


@machine_app.command("list")
def machine_list(
    cluster: Optional[str] = typer.Option(None, help="Only this cluster's machines."),
    state: Optional[str] = typer.Option(None, help="Only machines in this state (e.g. ready, holding, failed:admit)."),
    output: OutputOption = Format.table,
) -> None:
    """List machines with state, role and MAC."""
    rows = call_all("/v1/machines", params={"cluster": cluster, "state": state_filter(state)})
    emit(rows, output, lambda: table(plural(len(rows), "machine"), ["id", "cluster", "state", "role", "mac"], [
        [m["id"], m["cluster"], m["state"], m["role"], m["mac"]] for m in rows
    ]))


def _print_machine(v: dict, history: bool = False) -> None:
    out.print(f"[bold]{v['id']}[/bold]  {v['state']}  role {v['role'] or '-'}  cluster {v['cluster'] or '-'}")
    if v["reason"]:
        out.print(f"  reason: {v['reason']}")
    out.print(f"  name: {v['node_name']}  new: {yes_no(v['is_new'])}  boots: {v['boot']}  macs: {', '.join(v['macs']) or '-'}")
    if v["attributes"]:
        out.print("  attributes: " + ", ".join(f"{a['type']}={a['value']}" for a in v["attributes"]))
    if v["facts"]:
        out.print(f"  facts: {v['facts']}")
    out.print(f"  Temporal: {v['temporal_url']}")
    if history:
        newest_first = reversed(v["history"])  # as the Web UI's current details show them
        table("recent transitions", ["at", "state", "reason"], [[t["at"], t["state"], t["reason"]] for t in newest_first])


_ID_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # what a path segment may safely carry


def machine_id_of(text: str) -> str:
    """A machine id as the API keys it (api/identity.py `machine_id`): a UUID or a MAC is written
    the way the API writes it (`52-54-00-AB-CD-EF` finds `52:54:00:ab:cd:ef`); any other word is
    asked as it is (`serial-…`, or an id from elsewhere), and the API's 404 says what exists.
    Only what cannot be an id (empty, a path) is refused here, exit 2."""
    with contextlib.suppress(ValueError):
        return str(uuidlib.UUID(text.strip()))
    with contextlib.suppress(ValueError):
        return normalize_mac(text)
    if _ID_WORD.fullmatch(text):
        return text
    fail([f"{text!r} is not a machine id (a UUID, a MAC or serial-SERIAL; see 'tempered machine list')"], Exit.INVALID)


_MachineId = typer.Argument(..., metavar="MACHINE", help="Its id (as 'tempered machine list' shows it): a UUID, a MAC or serial-SERIAL.")


@machine_app.command("show")
def machine_show(machine_id: str = _MachineId, output: OutputOption = Format.table) -> None:
    """Show one machine: state and why, role, attributes, facts summary, Web UI link."""
    v = call("GET", f"/v1/machines/{machine_id_of(machine_id)}")
    emit(v, output, lambda: _print_machine(v, history=True))


@machine_app.command("register")
def machine_register(
    cluster: str = typer.Option(..., help="Cluster the machine joins."),
    mac: Optional[str] = typer.Option(None, help="MAC of its PXE NIC."),
    uuid: Optional[str] = typer.Option(None, help="SMBIOS system UUID."),
    serial: Optional[str] = typer.Option(None, help="System serial number."),
) -> None:
    """Pre-register a machine into a cluster before it first boots."""
    body = {"cluster": cluster, "mac": mac, "uuid": uuid, "serial": serial}
    flags = {"cluster": "--cluster", "mac": "--mac", "uuid": "--uuid", "serial": "--serial"}
    v = call("POST", "/v1/machines", json=body, progress="starting the machine's workflow", fields=flags)
    _print_machine(v)


def _action(machine_id: str, action: str) -> None:
    machine_id = machine_id_of(machine_id)
    v = call("POST", f"/v1/machines/{machine_id}/{action}", progress=f"asking machine {machine_id}'s workflow to {action}")
    _print_machine(v)


@machine_app.command("retry")
def machine_retry(machine_id: str = _MachineId) -> None:
    """Run a failed machine's failed step again."""
    _action(machine_id, "retry")


@machine_app.command("reboot")
def machine_reboot(machine_id: str = _MachineId) -> None:
    """Power-cycle a machine through its BMC (or say to do it by hand): it PXE boots and goes round again."""
    _action(machine_id, "reboot")


@machine_app.command("reprovision")
def machine_reprovision(machine_id: str = _MachineId) -> None:
    """Mark a machine new and power-cycle it into PXE: that boot rediscovers it, reassigns it and wipes its disk."""
    _action(machine_id, "reprovision")


@machine_app.command("decommission")
def machine_decommission(machine_id: str = _MachineId) -> None:
    """Take a machine out of its cluster, retire it and power it off."""
    _action(machine_id, "decommission")


machine_app.command("watch")(machine_watch)
