"""ClusterWorkflow: one durable workflow per cluster, `cluster:<name>`.

It owns the member list and serialises admission: machines that finish discovery at the same
moment are admitted one at a time under a workflow lock, so two of them can never both become
master-prime. It also sequences the cluster's phases (forming -> bootstrapping -> ready): the
master-prime goes first, every other machine waits in holding until the control plane is up,
and is released then.

Deterministic code only: no I/O, clock, randomness or database here.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        Admission,
        AdmitRequest,
        ApiNameDns,
        RulesRequest,
        ClusterStatus,
        Member,
        machine_workflow_id,
    )
    from activities.dns import DnsActivities
    from activities.rules import RulesActivities
    from workflows import search

CONTROL_PLANE = ("master-prime", "master")


def assign_role(members: list[Member], quorum_count: int) -> str:
    """The built-in policy, used until a cluster has rules: one master-prime, then masters up to
    the quorum, then workers."""
    if not any(m.role == "master-prime" for m in members):
        return "master-prime"
    if sum(m.role in CONTROL_PLANE for m in members) < quorum_count:
        return "master"
    return "worker"


@workflow.defn
class ClusterWorkflow:
    @workflow.init
    def __init__(self, status: ClusterStatus) -> None:
        self.s = status
        self._admission = asyncio.Lock()

    @workflow.run
    async def run(self, status: ClusterStatus) -> ClusterStatus:
        workflow.upsert_search_attributes(search.updates(cluster=self.s.spec.name))
        await workflow.wait_condition(
            lambda: self.s.closing
            or workflow.info().is_continue_as_new_suggested()
            or workflow.info().get_current_history_length() > self.s.continue_after_events
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self.s.closing:
            return self.s
        workflow.continue_as_new(self.s)

    @workflow.query
    def status(self) -> ClusterStatus:
        return self.s

    @workflow.update
    async def admit(self, request: AdmitRequest) -> Admission:
        """Give a machine its role (idempotent) and say whether it must wait in holding. One
        machine at a time: the rules of the next one see this one's role."""
        async with self._admission:
            member = self._member(request.machine_id)
            role = member.role if member else (request.role if (request.role and not request.is_new) else "")
            if workflow.patched("rules"):
                verdict = await workflow.execute_activity_method(
                    RulesActivities.evaluate,
                    RulesRequest(
                        cluster=self.s.spec.name, machine_id=request.machine_id, is_new=request.is_new and member is None,
                        role=role, members=self.s.members,
                    ),
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=RetryPolicy(maximum_attempts=5),
                )
                if verdict.errors:
                    return Admission(
                        role=role, hold=True, rule_errors=verdict.errors,
                        reason="rules failed, fix them and the machine is re-evaluated: " + "; ".join(verdict.errors),
                    )
                role = role or verdict.role
            if member is None:
                member = Member(machine_id=request.machine_id, role=role or assign_role(self.s.members, self.s.spec.quorum_count))
                self.s.members.append(member)
                self._update_phase()
            return self._verdict(member)

    @admit.validator
    def _admit_allowed(self, request: AdmitRequest) -> None:
        if self.s.closing:
            raise ApplicationError(f"cluster {self.s.spec.name} is being deleted", non_retryable=True)
        if request.cluster != self.s.spec.name:
            raise ApplicationError(f"machine asked cluster {request.cluster}, this is {self.s.spec.name}")

    @workflow.signal
    async def member_ready(self, machine_id: str) -> None:
        member = self._member(machine_id)
        if member is None:
            return
        member.ready = True
        if self._update_phase() == "ready":
            await self._release_held()
        if member.role in CONTROL_PLANE:
            await self._publish_api_name()

    @workflow.signal
    async def member_left(self, machine_id: str) -> None:
        leaving = self._member(machine_id)
        self.s.members = [m for m in self.s.members if m.machine_id != machine_id]
        self.s.held = [h for h in self.s.held if h != machine_id]
        self._update_phase()
        if leaving is not None and leaving.ready and leaving.role in CONTROL_PLANE:
            await self._publish_api_name()

    @workflow.update
    def close(self) -> ClusterStatus:
        """End the cluster workflow (the API deletes the cluster only when it has no members)."""
        self.s.closing = True
        return self.s

    @close.validator
    def _close_allowed(self) -> None:
        if self.s.members:
            names = ", ".join(m.machine_id for m in self.s.members[:5])
            raise ApplicationError(
                f"cluster {self.s.spec.name} still has {len(self.s.members)} members ({names}): "
                "decommission them first",
                type="TransitionNotAllowed",
                non_retryable=True,
            )

    # ---- helpers -------------------------------------------------------------------------

    def _member(self, machine_id: str) -> Member | None:
        return next((m for m in self.s.members if m.machine_id == machine_id), None)

    def _verdict(self, member: Member) -> Admission:
        if member.role == "master-prime" or self.s.phase == "ready":
            self.s.held = [h for h in self.s.held if h != member.machine_id]
            return Admission(role=member.role)
        if member.machine_id not in self.s.held:
            self.s.held.append(member.machine_id)
        prime = next((m.machine_id for m in self.s.members if m.role == "master-prime"), None)
        waiting_for = f"master-prime {prime} to join" if prime else "a master-prime"
        return Admission(
            role=member.role, hold=True, reason=f"waiting for the control plane: {waiting_for}"
        )

    def _update_phase(self) -> str:
        """forming: no master-prime yet; bootstrapping: it is joining; ready: the control plane is
        up (and stays so while any control-plane member is ready)."""
        if any(m.ready and m.role in CONTROL_PLANE for m in self.s.members):
            self.s.phase = "ready"
        elif any(m.role == "master-prime" for m in self.s.members):
            self.s.phase = "bootstrapping"
        else:
            self.s.phase = "forming"
        return self.s.phase

    async def _publish_api_name(self) -> None:
        """api.<cluster> follows the ready control plane; a DNS failure is shown, not fatal."""
        if not workflow.patched("dns-api-name"):
            return
        ready = [m.machine_id for m in self.s.members if m.ready and m.role in CONTROL_PLANE]
        try:
            self.s.dns = await workflow.execute_activity_method(
                DnsActivities.publish_api_name,
                ApiNameDns(cluster=self.s.spec.name, machine_ids=ready),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60), maximum_attempts=12),
            )
        except ActivityError as err:
            self.s.dns = f"API name not published: {err.cause or err}"
            workflow.logger.warning("cluster %s: %s", self.s.spec.name, self.s.dns)

    async def _release_held(self) -> None:
        held, self.s.held = self.s.held, []
        for machine_id in held:
            handle = workflow.get_external_workflow_handle(machine_workflow_id(machine_id))
            try:
                await handle.signal("release")
            except Exception as err:  # a machine decommissioned meanwhile
                workflow.logger.warning("could not release %s: %s", machine_id, err)
