"""STAND-IN (branch tf-delete): the cluster workflow's Terraform steps.

The tasks helper owns this module (issue 16 item 3); this minimal version has the same class
and the two methods cluster delete calls, so the deletion sequence runs and is tested before
that branch is merged. At merge the tasks helper's version replaces this file.

Deterministic code only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import ClusterStatus
    from activities.domain.terraform import Action, TaskStatus, TerraformResult, TerraformRun, TerraformTask


class TerraformSteps:
    """Runs the spec's Terraform tasks (activity `run_terraform`); a failed task is shown as
    `failed` with Terraform's reason and waits until `retry()` is called."""

    def __init__(self, status: ClusterStatus, show: Callable[[], None]) -> None:
        self.s = status
        self._show = show
        self._retry = False

    async def run_stage(self, stage: str) -> None:
        """Apply every task of `stage`, in spec order, that is not applied yet."""
        for task in [t for t in self.s.spec.terraform if t.stage == stage]:
            if self._status(task).state != "applied":
                await self._run(task, "apply", "applied")

    async def destroy_all(self) -> None:
        """Destroy every task's state, in reverse spec order."""
        for task in reversed(self.s.spec.terraform):
            if self._status(task).state != "destroyed":
                await self._run(task, "destroy", "destroyed")

    def retry(self) -> bool:
        """An operator retry: a failed task runs again. False: nothing had failed."""
        if not any(t.state == "failed" for t in self.s.tasks):
            return False
        self._retry = True
        return True

    async def _run(self, task: TerraformTask, action: Action, done: str) -> None:
        status = self._status(task)
        while True:
            status.state, status.reason = "running", f"terraform {action}"
            self._show()
            try:
                result = await workflow.execute_activity(
                    "run_terraform", TerraformRun(cluster=self.s.spec.name, task=task, action=action),
                    result_type=TerraformResult, start_to_close_timeout=timedelta(minutes=30),
                    heartbeat_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=3),
                )
            except ActivityError as err:
                status.state, status.reason = "failed", f"{err.cause or err} (retry with: tempered cluster retry {self.s.spec.name})"
                self._show()
                await workflow.wait_condition(lambda: self._retry)
                self._retry = False
                continue
            status.state, status.reason, status.runs = done, result.summary, status.runs + 1
            status.outputs = result.outputs if action == "apply" else {}
            self._show()
            return

    def _status(self, task: TerraformTask) -> TaskStatus:
        found = next((t for t in self.s.tasks if t.name == task.name), None)
        if found is None:
            found = TaskStatus(name=task.name, stage=task.stage)
            self.s.tasks.append(found)
        return found
