"""A cluster operation's plan, checked before it starts: which nodes, in which order, and why not.

Pure functions of the cluster's status (no Temporal API), so the cluster workflow's
`start_operation` Update (workflows/cluster.py), the operation's workflow (workflows/operation.py)
and the unit tests share them. A refusal is an `OperationRefused` with a message that names the
node, the version or the quorum it would break; the API answers 409 for a busy cluster and 422
for the rest (api/operations.py reads the error's type).

Deterministic code only.
"""

from __future__ import annotations

import re

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.terraform_steps import endpoint

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import CONTROL_PLANE_ROLES, ClusterStatus, Member
    from activities.domain.operations import (
        NodeProgress,
        NodeRef,
        OperationRequest,
        OperationStart,
        OperationStatus,
        majority,
    )

PATCH = "cluster-operations"  # the patch that brought start_operation to the cluster workflow
BUSY = "OperationBusy"  # another operation runs, or the cluster is being deleted: 409
REFUSED = "OperationRefused"  # the request cannot be done as asked (quorum, version, members): 422
ENDED = ("aborted", "done")
# The order members go in: workers, then masters, the master-prime last (its etcd went first).
RANK = {"worker": 0, "master": 1, "master-prime": 2}
_VERSION = re.compile(r"^v?([0-9]+)\.([0-9]+)\.([0-9]+)")


def refused(message: str, kind: str = REFUSED) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def running(status: ClusterStatus) -> OperationStatus | None:
    """The cluster's operation if it has not ended."""
    op = status.operation
    return op if op is not None and op.state not in ENDED else None


def busy_message(cluster: str, op: OperationStatus, then: str = "resume, pause or abort it first") -> str:
    return f"cluster {cluster} is busy with {op.kind} {op.workflow_id} ({then})"


def workflow_id(cluster: str, number: int) -> str:
    return f"operation:{cluster}:{number}"


def check(status: ClusterStatus, request: OperationRequest) -> None:
    """Refuse a request the cluster cannot take now (raises `refused`)."""
    name = status.spec.name
    if status.closing or status.deletion is not None:
        raise refused(f"cluster {name} is being deleted", BUSY)
    if (op := running(status)) is not None:
        raise refused(busy_message(name, op), BUSY)
    members = {m.machine_id for m in status.members}
    if unknown := [i for i in request.machines if i not in members]:
        raise refused(f"not members of cluster {name}: {', '.join(unknown)} (a machine the cluster has not "
                      "admitted yet is no member: see tempered machine show ID; retire it with tempered machine "
                      "decommission ID)")
    if request.kind == "scale-down":
        _check_scale_down(status, request)
        return
    if request.kind == "upgrade":  # first: a wrong version is wrong whatever the cluster's phase
        check_version_step(status.spec.kubernetes_version, request.kubernetes_version)
    if status.phase != "ready":
        raise refused(f"cluster {name} is {status.phase}, not ready: nothing to {request.kind} until it is "
                      f"(see tempered cluster show {name})")
    if not_ready := [m.machine_id for m in status.members if m.machine_id in request.machines and not m.ready]:
        raise refused(f"not ready: {', '.join(not_ready)} (a {request.kind} takes ready members; retry the machine "
                      "first, or leave it out)")
    if not chosen(status, request):
        raise refused(f"cluster {name} has no ready member to {request.kind}")


def _check_scale_down(status: ClusterStatus, request: OperationRequest) -> None:
    """The control plane left after the scale down keeps a majority of its current size (and
    at least one member); the master-prime goes only behind a control-plane endpoint."""
    if not request.machines:
        raise refused("scale-down names the members to decommission (machines)")
    name = status.spec.name
    control = [m for m in status.members if m.role in CONTROL_PLANE_ROLES]
    leaving = [m for m in control if m.machine_id in request.machines]
    left = len(control) - len(leaving)
    if leaving and (left == 0 or left < majority(len(control))):
        hint = (": with 2 control-plane members neither can go (1 is not a majority of 2); add a member first "
                "(then scale down to 2), or keep both") if len(control) == 2 else ""
        raise refused(
            f"scale-down would break quorum of cluster {name}: {left} of {len(control)} control-plane "
            f"members would remain, etcd needs {majority(len(control))}{hint}"
        )
    prime = next((m for m in leaving if m.role == "master-prime"), None)
    if prime is not None and not endpoint(status):
        raise refused(
            f"scale-down of the master-prime {prime.machine_id} of cluster {name} refused: the cluster has no "
            "control-plane endpoint, so every node's kubelet and admin.conf point at the master-prime's own "
            "address and would lose the API with it; set spec.control_plane_endpoint (a VIP or load balancer "
            "in front of the control plane) first, or keep the master-prime"
        )


def check_version_step(current: str, target: str | None) -> None:
    """An upgrade goes up by at most one minor version (kubeadm's rule); never down or sideways."""
    if not target:
        raise refused("upgrade needs kubernetes_version")
    have, want = _parts(current), _parts(target)
    if want <= have:
        raise refused(f"kubernetes_version {target} is not newer than the cluster's {current}: no downgrade")
    if want[0] != have[0] or want[1] > have[1] + 1:
        raise refused(f"kubernetes_version {target} skips a minor version: from {current} go one minor step up "
                      f"at a time ({have[0]}.{have[1] + 1}.x)")


def same_version(a: str, b: str) -> bool:
    return _parts(a) == _parts(b)


def _parts(version: str) -> tuple[int, int, int]:
    match = _VERSION.match(version.strip())
    if match is None:
        raise refused(f"not a Kubernetes version: {version!r}")
    return int(match[1]), int(match[2]), int(match[3])


def chosen(status: ClusterStatus, request: OperationRequest) -> list[Member]:
    """The members it acts on, in order. Reboot/upgrade: the ready ones (or those named),
    control plane first (master-prime first: it was the first up); scale-down: those named,
    workers first, the master-prime last."""
    if request.kind == "scale-down":
        picked = [m for m in status.members if m.machine_id in request.machines]
        return sorted(picked, key=lambda m: RANK.get(m.role, 0))
    picked = [m for m in status.members if m.ready and (not request.machines or m.machine_id in request.machines)]
    return sorted(picked, key=lambda m: -RANK.get(m.role, 0))


def start(status: ClusterStatus, request: OperationRequest, number: int, now) -> OperationStart:
    """The operation's input: its first status and the control plane as it is."""
    name = status.spec.name
    nodes = [NodeProgress(machine_id=m.machine_id, node_name=m.node_name or m.machine_id, role=m.role)
             for m in chosen(status, request)]
    op = OperationStatus(
        workflow_id=workflow_id(name, number), kind=request.kind, request=request, nodes=nodes, started_at=now,
        progress=f"starting: {len(nodes)} node{'s' if len(nodes) != 1 else ''}",
    )
    control = [NodeRef(cluster=name, machine_id=m.machine_id, node_name=m.node_name or m.machine_id)
               for m in status.members if m.role in CONTROL_PLANE_ROLES]
    return OperationStart(cluster=name, status=op, control_plane=control,
                          kubernetes_version=request.kubernetes_version or "")


def waves(nodes: list[NodeProgress], batch: int, kind: str) -> list[list[NodeProgress]]:
    """The groups it acts on at once: each control-plane member alone, workers `batch` at a
    time (scale-down: one at a time)."""
    groups: list[list[NodeProgress]] = []
    for node in nodes:
        alone = node.role in CONTROL_PLANE_ROLES or kind == "scale-down"
        last = groups[-1] if groups else None
        if alone or last is None or last[0].role in CONTROL_PLANE_ROLES or len(last) >= batch:
            groups.append([node])
        else:
            last.append(node)
    return groups


def compact(status: OperationStatus) -> OperationStatus:
    """What the cluster keeps of its operation: without the nodes and the request's machines (up
    to 1000 each), which would fill the cluster's history at every change. The API queries the
    operation's own workflow for the whole status (api/operations.py)."""
    copy = status.model_copy(deep=True)
    copy.nodes = []
    copy.request.machines = []
    return copy
