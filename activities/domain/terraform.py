"""Terraform tasks: what a cluster spec asks Terraform to do, at which stage, and what came of it.

A task names a module (a directory under the site's module root, `TEMPERED_TERRAFORM_MODULES`),
the cluster stage it runs at, its input variables (strings may be Jinja2 templates over the
cluster and its members, rendered by the runner) and which Terraform outputs become cluster
attributes. Its state lives in Tempered's own state store, one state per task:
`/v1/terraform/state/<cluster>/<task>`.

Pure types: the workflow, the runner and the API read them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from activities.domain.ids import DnsLabel

Stage = Literal["before-bootstrap", "after-ready", "on-delete"]
STAGES: tuple[Stage, ...] = ("before-bootstrap", "after-ready", "on-delete")
Action = Literal["apply", "plan", "destroy"]

# Cluster attributes a task's outputs may set (what the later steps read).
OUTPUT_TARGETS = ("control_plane_endpoint",)

MODULE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,3}$"  # no "..", no leading "/"


class TerraformTask(BaseModel):
    """One Terraform module the cluster runs at one stage of its life."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "vip", "module": "vip-pool", "stage": "before-bootstrap",
         "variables": {"cluster": "{{ cluster.name }}", "pool": ["192.0.2.10", "192.0.2.11"]},
         "outputs": {"control_plane_endpoint": "endpoint"}},
        {"name": "inventory", "module": "node-record", "stage": "after-ready",
         "variables": {"nodes": "{{ members | map(attribute='name') | join(',') }}"}},
    ]})

    name: DnsLabel = Field(description="the task's name, unique in the cluster; also its state's name")
    module: str = Field(
        pattern=MODULE_PATTERN,
        description="a directory under the module root (TEMPERED_TERRAFORM_MODULES), e.g. vip-pool",
    )
    stage: Stage = Field(
        description="before-bootstrap (before the master-prime's kubeadm init), after-ready (the control "
        "plane is up) or on-delete (when the cluster is deleted)",
    )
    variables: dict[str, Any] = Field(
        default_factory=dict, max_length=64,
        description="input variables; strings may be Jinja2 templates over `cluster`, `members` and `tasks`",
    )
    outputs: dict[str, str] = Field(
        default_factory=dict, max_length=8,
        description="cluster attribute <- Terraform output name; attributes: control_plane_endpoint",
    )


TaskState = Literal["pending", "running", "applied", "failed", "destroyed"]


class TaskStatus(BaseModel):
    """Where one task stands, as the cluster shows it (small: plan text is trimmed)."""

    name: str = Field(description="the task's name")
    stage: Stage = Field(description="the stage it runs at")
    state: TaskState = Field(default="pending", description="pending, running, applied, failed or destroyed")
    reason: str = Field(default="", description="why it failed (Terraform's own error lines), or what it is doing")
    outputs: dict[str, str] = Field(default_factory=dict, description="its non-sensitive outputs after the last apply")
    last_plan: str = Field(default="", description="the last plan's summary (a dry run or an apply's)")
    runs: int = Field(default=0, description="how many times it has run (apply, plan or destroy)")


class TerraformRun(BaseModel):
    """The runner's input: run one task's module against its state in Tempered's store."""

    cluster: str
    task: TerraformTask
    action: Action = "apply"


class TerraformResult(BaseModel):
    """The runner's output: what Terraform said (trimmed) and the outputs it left."""

    action: Action
    outputs: dict[str, str] = Field(default_factory=dict)  # non-sensitive outputs as strings
    summary: str = ""  # "Apply complete! Resources: 1 added, ..." or the plan's change lines
    changes: bool = False  # (plan) whether applying would change anything
