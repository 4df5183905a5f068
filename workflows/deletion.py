"""A cluster's deletion, run by its cluster workflow as one step: the whole decommissioning.

In order, each step shown in `ClusterStatus.deletion` (and the Web UI's current details):
1. decommissioning: every member's machine workflow (and every machine registered into the
   cluster but never admitted: activity `cluster_machines`) gets its `decommission` Update
   (activity `decommission_member`) until every one is retired: the workers (and machines never
   admitted) side by side first, then the masters, the master-prime last (its etcd was first:
   the control plane stays up while the workers drain; runs before the `deletion-order` patch
   took them all at once). A
   member whose decommission fails is shown with the reason; the deletion waits until an
   operator retries it (`retry()`, or the machine's own retry, after which it leaves).
2. on-delete: the spec's `on-delete` Terraform tasks are applied.
3. destroying: every task's Terraform state is destroyed.
4. removing-dns: api.<cluster> is removed (a failure is shown, not fatal: as publishing).
5. forgetting: the database forgets the cluster (activity `forget_cluster`).
6. done: the workflow ends.

The step reached is kept in the status, so a continue-as-new resumes where it was; a crashed
worker needs nothing of this (Temporal replays the step up to where it was).

Deterministic code only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows import calls
from workflows.terraform_steps import TerraformSteps

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import ClusterStatus, DeletionStatus
    from activities.domain.dns import ApiNameDns
    from activities.domain.ids import plural

PATCH = "cluster-delete"  # the patch that brought the `delete` Update
ORDER_PATCH = "deletion-order"  # workers first, then masters, the master-prime last
RANK = {"master": 1, "master-prime": 2}  # anything else (worker, never admitted) goes first


def begin(status: ClusterStatus) -> DeletionStatus:
    """Mark the cluster deleting (the caller checked it is not already)."""
    status.deletion = DeletionStatus(members_at_start=len(status.members))
    status.phase = "deleting"
    return status.deletion


class Deletion:
    def __init__(self, status: ClusterStatus, terraform: TerraformSteps, show: Callable[[], None]) -> None:
        self.s = status
        self._terraform = terraform
        self._show = show

    @property
    def d(self) -> DeletionStatus:
        assert self.s.deletion is not None
        return self.s.deletion

    async def run(self) -> None:
        """The sequence, from the step it was in."""
        if self.d.step == "decommissioning":
            await self._decommission_members()
            self._next("on-delete", "running the on-delete Terraform tasks")
        if self.d.step == "on-delete":
            await self._terraform.run_stage("on-delete")
            self._next("destroying", "destroying the Terraform states")
        if self.d.step == "destroying":
            await self._terraform.destroy_all()
            self._next("removing-dns", f"removing api.{self.s.spec.name}")
        if self.d.step == "removing-dns":
            await self._remove_api_name()
            self._next("forgetting", "forgetting the cluster in the database")
        if self.d.step == "forgetting":
            await calls.forget_cluster(self.s.spec.name)
            self._next("done", "deleted")
        self.s.closing = True  # the main loop ends, and with it the workflow
        self._show()

    def retry(self) -> bool:
        """An operator retry: the members whose decommission failed are tried again (and a failed
        Terraform task runs again). False: nothing had failed."""
        terraform = self._terraform.retry()
        if not self.d.failed:
            return terraform
        self.d.failed.clear()  # the decommission loop sends them their Update again
        self._progress()
        return True

    def member_left(self, machine_id: str) -> None:
        """A member left (its own retry may have fixed a failed decommission)."""
        self.d.failed.pop(machine_id, None)
        self._progress()

    # ---- steps -----------------------------------------------------------------------------

    async def _decommission_members(self) -> None:
        if not self.d.machines:  # the members, and machines registered into it but never admitted
            registered = await calls.cluster_machines(self.s.spec.name)
            members = [m.machine_id for m in self.s.members]
            self.d.machines = members + [i for i in registered if i not in members]
        ordered = workflow.patched(ORDER_PATCH)
        while remaining := self._remaining():
            self._progress()
            wave = self._first_rank(remaining) if ordered else remaining
            await asyncio.gather(*(self._decommission(i) for i in wave if i not in self.d.failed))
            await workflow.wait_condition(lambda: not self.d.failed)  # an operator retry, or they left

    async def _decommission(self, machine_id: str) -> None:
        try:
            await calls.decommission_member(machine_id)
        except ActivityError as err:
            self.d.failed[machine_id] = getattr(err.cause, "message", None) or str(err)
            self._progress()
            return
        # Retired: a member signalled `member_left` already, unless its workflow was gone.
        self.d.retired.append(machine_id)
        self.s.members = [m for m in self.s.members if m.machine_id != machine_id]
        self.s.held = [h for h in self.s.held if h != machine_id]
        self._progress()

    def _first_rank(self, remaining: list[str]) -> list[str]:
        """The remaining machines of the lowest rank: workers, then masters, then the master-prime."""
        roles = {m.machine_id: m.role for m in self.s.members}
        rank = {i: RANK.get(roles.get(i, ""), 0) for i in remaining}
        lowest = min(rank.values())
        return [i for i in remaining if rank[i] == lowest]

    def _remaining(self) -> list[str]:
        """Machines not retired yet (a member admitted while the list was read counts too)."""
        ids = self.d.machines + [m.machine_id for m in self.s.members if m.machine_id not in self.d.machines]
        return [i for i in ids if i not in self.d.retired]

    async def _remove_api_name(self) -> None:
        """No ready control plane: publishing api.<cluster> with no address deletes it."""
        try:
            self.d.dns = await calls.publish_api_name(ApiNameDns(cluster=self.s.spec.name, machine_ids=[]))
        except ActivityError as err:
            self.d.dns = f"api.{self.s.spec.name} not removed: {err.cause or err}"
            workflow.logger.warning("cluster %s: %s", self.s.spec.name, self.d.dns)

    # ---- progress --------------------------------------------------------------------------

    def _next(self, step: str, progress: str) -> None:
        self.d.step, self.d.progress = step, progress
        self._show()

    def _progress(self) -> None:
        if self.d.step != "decommissioning":
            return
        remaining = self._remaining()
        names = ", ".join(self._name(i) for i in remaining)
        total = len(self.d.machines) or len(remaining)
        text = f"decommissioning {len(remaining)} of {plural(total, 'member')}: {names}" if names else (
            "every member has left")
        if self.d.failed:
            failures = "; ".join(f"{self._name(i)}: {why}" for i, why in self.d.failed.items())
            text += (f". Decommission failed for {failures} (retry with: tempered cluster retry {self.s.spec.name},"
                     " or the machine's own retry)")
        self.d.progress = text
        self._show()

    def _name(self, machine_id: str) -> str:
        return next((m.node_name or m.machine_id for m in self.s.members if m.machine_id == machine_id), machine_id)
