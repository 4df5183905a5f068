"""Day-2 cluster operations: a rolling reboot or upgrade, and a scale down.

Each operation is one durable workflow, a child of its cluster's (`operation:<cluster>:<n>`), that
acts on the cluster's nodes in order: control-plane members first and one at a time (never below
quorum), then workers `batch` at a time. It stops at the first failure and waits for the
operator, who resumes (the failed node is tried again) or aborts it. One operation at a time per
cluster: a second is refused, naming the first.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

OperationKind = Literal["rolling-reboot", "upgrade", "scale-down"]
# running: acting on nodes; paused: an operator paused it (the node in hand is finished first);
# waiting: a node failed, it waits for resume (retry that node) or abort; aborted, done: it ended.
OperationState = Literal["running", "paused", "waiting", "aborting", "aborted", "done"]
# A node's part in an operation, in the order it goes through them.
NodeStepName = Literal[
    "pending", "draining", "rebooting", "waiting-ready", "checking-version", "uncordoning",
    "decommissioning", "done", "failed", "skipped",
]


VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,64})?$")  # as kubeadm takes it


def majority(members: int) -> int:
    """How many control-plane members etcd needs up to keep quorum."""
    return members // 2 + 1


class OperationRequest(BaseModel):
    """What an operator asks for (POST /v1/clusters/{name}/operations)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"kind": "rolling-reboot", "batch": 2},
        {"kind": "upgrade", "kubernetes_version": "1.31.2"},
        {"kind": "scale-down", "machines": ["52:54:00:7e:00:03"]},
    ]})

    kind: OperationKind = Field(description="rolling-reboot, upgrade (to kubernetes_version) or scale-down")
    kubernetes_version: str | None = Field(
        default=None, json_schema_extra={"pattern": VERSION.pattern},
        description="upgrade: the version the cluster moves to (set on the cluster when the upgrade starts)",
    )
    machines: list[str] = Field(
        default_factory=list, max_length=1000,
        description="scale-down: the members to decommission; rolling-reboot/upgrade: only these (empty: all)",
    )
    batch: int = Field(default=1, ge=1, le=100, description="workers rebooted at a time (control-plane: always 1)")

    @field_validator("kubernetes_version")
    @classmethod
    def _a_version(cls, version: str | None) -> str | None:
        if version is not None and not VERSION.match(version):
            raise ValueError(f"{version[:80]!r} is not a Kubernetes version (e.g. 1.32.0 or v1.32.0)")
        return version


class NodeProgress(BaseModel):
    """One node of an operation: where it stands."""

    machine_id: str = Field(description="the member machine's id")
    node_name: str = Field(default="", description="its Kubernetes node name")
    role: str = Field(default="", description="master-prime, master or worker")
    step: NodeStepName = Field(default="pending", description="where it stands: pending, draining, rebooting, "
                               "waiting-ready, checking-version, uncordoning, decommissioning, done, failed, skipped")
    reason: str = Field(default="", description="why it failed, or what an abort did to it")


class OperationStatus(BaseModel):
    """Where an operation stands; the cluster's status carries the latest one (`ClusterStatus.operation`)."""

    workflow_id: str = Field(description="operation:<cluster>:<n>, its workflow in the Web UI")
    kind: OperationKind = Field(description="rolling-reboot, upgrade or scale-down")
    request: OperationRequest = Field(description="what the operator asked for")
    state: OperationState = Field(default="running", description="running, paused, waiting (a node failed: resume "
                                  "or abort), aborting, aborted or done")
    progress: str = Field(default="", description="what it is doing now, e.g. 'draining node-2 (2 of 5)'")
    nodes: list[NodeProgress] = Field(default_factory=list, description="in the order it acts on them")
    started_at: datetime | None = Field(default=None, description="when the cluster started it (UTC)")
    error: str = Field(default="", description="why it waits (a node failed) or why it was aborted")


class NodeRef(BaseModel):
    """A node of a cluster, as the kubectl activities (drain, uncordon, version) name it."""

    cluster: str
    machine_id: str
    node_name: str


class MachineWait(BaseModel):
    """Wait until a machine is back `ready` on a boot after `after_boot` (activity `await_machine`)."""

    machine_id: str
    after_boot: int = Field(description="the boot it was on when it was rebooted: a later boot must reach ready")


class OperationStart(BaseModel):
    """What the cluster workflow hands its operation's workflow (ClusterOperationWorkflow's input):
    the status it starts from (its nodes in order) and the control plane as it was, for the
    quorum rule (every other control-plane member ready before one is taken down)."""

    cluster: str
    status: OperationStatus
    control_plane: list[NodeRef] = Field(default_factory=list, description="the cluster's control-plane members")
    kubernetes_version: str = Field(default="", description="upgrade: the version every node must report")
