"""Operator routes for a cluster's Terraform tasks (workflows/terraform_steps.py): retry a failed
task, plan one as a dry run. (A spec's tasks are checked when the cluster is created: api/clusters.py.)"""

from __future__ import annotations

import asyncio
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from activities.domain.cluster import ClusterStatus
from activities.domain.terraform import TaskStatus
from api import temporal
from api.auth import Operator
from api.clusters import ClusterView, _row_or_404, _view

router = APIRouter(prefix="/v1/clusters", tags=["clusters"])


class PlanView(BaseModel):
    """A dry run of one task: what `terraform plan` would change."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "task": "vip", "summary": "Plan: 1 to add, 0 to change, 0 to destroy.",
        "status": {"name": "vip", "stage": "before-bootstrap", "state": "applied", "reason": "", "outputs": {},
                   "last_plan": "Plan: 1 to add, 0 to change, 0 to destroy.", "runs": 2},
    }]})

    task: str = Field(description="the task's name")
    summary: str = Field(description="the plan's change lines (trimmed), also kept as the task's last_plan")
    status: TaskStatus = Field(description="the task as it stands now")


@router.post("/{name}/retry", summary="Retry the cluster's failed Terraform task (409: nothing failed)")
async def retry_cluster(name: str, request: Request, _: Operator) -> ClusterView:
    """The failed task runs again; its stage goes on once it is applied."""
    await asyncio.to_thread(_row_or_404, request.app.state.settings, name)
    handle = temporal.cluster(request.app.state.temporal, name)
    return _view(request.app.state.settings, await temporal.update(handle, "retry", result_type=ClusterStatus))


@router.post("/{name}/terraform/{task}/plan", summary="Plan one Terraform task of the cluster (a dry run)")
async def plan_task(name: str, task: str, request: Request, _: Operator) -> PlanView:
    """Runs `terraform plan` against the task's state; its summary becomes the task's last_plan."""
    row = await asyncio.to_thread(_row_or_404, request.app.state.settings, name)
    if task not in [t.get("name") for t in row.spec.get("terraform", [])]:
        raise HTTPException(404, f"cluster {name!r} has no Terraform task {task!r}")
    handle = temporal.cluster(request.app.state.temporal, name)
    status = await temporal.update(handle, "plan", task, result_type=TaskStatus)
    return PlanView(task=task, summary=status.last_plan, status=status)
