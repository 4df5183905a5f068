"""The cluster workflow's Terraform steps: the spec's tasks (`terraform:`) at their stages.

Each task is a step of the cluster workflow (activity `run_terraform`, policy TERRAFORM):
`before-bootstrap` tasks run when the workflow starts and the master-prime's `init` plan waits
for them; `after-ready` tasks run once the control plane is first up; `on-delete` tasks and
`destroy` run in the cluster's deletion (workflows/deletion.py). A task that fails is shown as
`failed` with Terraform's own error lines, the cluster as `failed:<task>`, and its stage waits
until an operator's `retry` (`tempered cluster retry NAME`) has re-run it successfully.

A task's `outputs` map Terraform outputs onto the cluster: `control_plane_endpoint` becomes
`ClusterStatus.endpoint`, which every JoinPlan from then on carries unless the spec sets its own
`control_plane_endpoint` (the operator's word wins, as in the templates: activities/tfvars.py).

Deterministic code only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import calls

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import ClusterStatus
    from activities.domain.terraform import Action, TaskStatus, TerraformRun, TerraformTask

PATCH = "terraform-tasks"  # the marker of runs that run the spec's tasks
PLAN_CHARS = 2_000  # a plan's text kept in the status (workflow payloads stay small)
REASON_CHARS = 1_500


def retry_command(cluster: str) -> str:
    return f"tempered cluster retry {cluster}"


def failed_task(status: ClusterStatus) -> TaskStatus | None:
    """The first failed task (the cluster shows `failed:<task>`), if any."""
    return next((t for t in status.tasks if t.state == "failed"), None)


def endpoint(status: ClusterStatus) -> str:
    """The control-plane endpoint every JoinPlan carries: the spec's, else a task's output."""
    return status.spec.control_plane_endpoint or status.endpoint or ""


class TerraformSteps:
    """Runs the spec's Terraform tasks and keeps `ClusterStatus.tasks` (one per task) up to date."""

    def __init__(self, status: ClusterStatus, show: Callable[[], None]) -> None:
        self.s = status
        self._show = show
        self._retry = False
        self._stages: dict[str, asyncio.Lock] = {}  # one run of a stage at a time

    def init_tasks(self) -> None:
        """One TaskStatus per spec task (kept across continue-as-new)."""
        for task in self.s.spec.terraform:
            self._status(task)

    def stage_done(self, stage: str) -> bool:
        """Every task of `stage` is applied (true when it has none)."""
        return all(self._status(t).state == "applied" for t in self._tasks(stage))

    async def run_stage(self, stage: str) -> None:
        """Apply every task of `stage`, in spec order, that is not applied yet; returns once all
        are (a failed one waits for an operator retry). A second caller waits for the first."""
        async with self._stages.setdefault(stage, asyncio.Lock()):
            for task in self._tasks(stage):
                if self._abandoned(task):
                    return
                if self._status(task).state != "applied":
                    await self._run(task, "apply", "applied")

    async def destroy_all(self) -> None:
        """Destroy every task's state, in reverse spec order (same failure handling)."""
        for task in reversed(self.s.spec.terraform):
            if self._status(task).state != "destroyed":
                await self._run(task, "destroy", "destroyed")

    def retry(self) -> bool:
        """An operator retry: the failed task runs again. False: nothing had failed."""
        if failed_task(self.s) is None:
            return False
        self._retry = True
        return True

    async def plan(self, name: str) -> TaskStatus:
        """A dry run (action=plan): its summary is kept as the task's `last_plan`."""
        task = self.task(name)
        status = self._status(task)
        try:
            result = await calls.run_terraform(TerraformRun(cluster=self.s.spec.name, task=task, action="plan"))
        except ActivityError as err:
            raise ApplicationError(f"terraform plan of {name} failed: {err.cause or err}", non_retryable=True) from err
        status.last_plan, status.runs = result.summary[:PLAN_CHARS], status.runs + 1
        self._show()
        return status

    def task(self, name: str) -> TerraformTask:
        found = next((t for t in self.s.spec.terraform if t.name == name), None)
        if found is None:
            raise ApplicationError(f"cluster {self.s.spec.name} has no Terraform task {name}",
                                   type="NotFound", non_retryable=True)
        return found

    async def _run(self, task: TerraformTask, action: Action, done: str) -> None:
        status = self._status(task)
        while True:
            status.state, status.reason = "running", f"terraform {action}"
            self._show()
            try:
                result = await calls.run_terraform(TerraformRun(cluster=self.s.spec.name, task=task, action=action))
            except ActivityError as err:
                status.state, status.reason = "failed", str(err.cause or err)[:REASON_CHARS]
                status.runs += 1
                self._show()
                await workflow.wait_condition(lambda: self._retry or self._abandoned(task))
                if self._abandoned(task):  # the retry that would apply it now belongs to the deletion
                    status.state, status.reason = "pending", f"not applied, the cluster is being deleted: {status.reason}"
                    self._show()
                    return
                self._retry = False
                continue
            status.state, status.reason, status.runs = done, result.summary[:REASON_CHARS], status.runs + 1
            if action == "apply":
                status.outputs = result.outputs
                status.last_plan = result.summary[:PLAN_CHARS]
                self._map_outputs(task, result.outputs)
            else:
                status.outputs = {}
            self._show()
            return

    def _map_outputs(self, task: TerraformTask, outputs: dict[str, str]) -> None:
        """Cluster attribute <- the task's Terraform output (only control_plane_endpoint now)."""
        name = task.outputs.get("control_plane_endpoint")
        if name and outputs.get(name):
            self.s.endpoint = outputs[name]

    def _abandoned(self, task: TerraformTask) -> bool:
        """Once the cluster is being deleted, its before-bootstrap and after-ready tasks are no
        longer applied (a failed one stops waiting for a retry); on-delete ones still are."""
        return self.s.deletion is not None and task.stage != "on-delete"

    def _tasks(self, stage: str) -> list[TerraformTask]:
        return [t for t in self.s.spec.terraform if t.stage == stage]

    def _status(self, task: TerraformTask) -> TaskStatus:
        found = next((t for t in self.s.tasks if t.name == task.name), None)
        if found is None:
            found = TaskStatus(name=task.name, stage=task.stage)
            self.s.tasks.append(found)
        return found
