"""Activities that touch the control plane's own records: the database and the cluster workflows.

Admission is an activity because a workflow cannot call another workflow's Update itself; the
activity is idempotent (the cluster returns the same role to the same machine), so retries are
safe. The role it gets is also written to the database, where later steps read attributes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from sqlmodel import delete, select

from activities.heartbeat import heartbeating
from activities.domain.ids import cluster_workflow_id, machine_workflow_id
from activities.domain.lifecycle import DECOMMISSIONED
from activities.domain.machine import Admission, AdmitRequest, JoinPlan, JoinPlanRequest, MachineStatus, StateRecord
from activities.storage import db, machinestate, tfcredentials
from activities.storage.models import Attribute, Cluster, Machine, Rule, Token, utcnow

DECOMMISSION_POLL_S = 1.0  # how often a member's decommission is looked at while it runs


T = TypeVar("T")


class Inventory:
    """Activities bound to one database; the worker creates one instance."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    @activity.defn(name="admit_machine")
    async def admit_machine(self, request: AdmitRequest) -> Admission:
        """Ask the machine's cluster for a role, then record the role on the machine."""
        admission = await _cluster_update(request.cluster, "admit", request, Admission)
        await asyncio.to_thread(self._record_role, request.machine_id, admission.role)
        return admission

    @activity.defn(name="record_roles")
    def record_roles(self, roles: dict[str, str]) -> None:
        """The roles a cluster's admission batch gave (machine id -> role), written where later
        steps read attributes; the admission by Signal's counterpart of admit_machine's record."""
        self._record_roles(roles)

    @activity.defn(name="record_state")
    def record_state(self, record: StateRecord) -> None:
        """A failed step, written to the copy lists read, so `tempered machine list --state
        failed:admit` finds the machines parked there without asking Temporal."""
        machinestate.save(self.database_url, record.machine_id, None, record.at, state=record.state)

    @activity.defn(name="join_plan")
    async def join_plan(self, request: JoinPlanRequest) -> JoinPlan:
        """Ask the machine's cluster how it joins: init, join or rejoin, and with which
        credentials (the cluster may first wait for its control plane, or for another master)."""
        return await _cluster_update(request.cluster, "join_plan", request, JoinPlan)

    @activity.defn(name="retire_machine")
    def retire_machine(self, machine_id: str) -> None:
        """Mark a machine decommissioned and revoke its boot tokens; its facts stay as history."""
        with db.session(self.database_url) as s:
            machine = s.get(Machine, machine_id)
            if machine is not None:
                machine.decommissioned_at = utcnow()
                s.add(machine)
                machinestate.record(s, machine_id, state=DECOMMISSIONED, role=None)
            s.exec(delete(Attribute).where(Attribute.machine_id == machine_id))
            s.exec(delete(Token).where(Token.machine_id == machine_id))
            s.commit()

    @activity.defn(name="cluster_machines")
    def cluster_machines(self, cluster: str) -> list[str]:
        """The machines registered into the cluster and not decommissioned (members or not)."""
        with db.session(self.database_url) as s:
            return list(s.exec(
                select(Machine.id).where(Machine.cluster == cluster, Machine.decommissioned_at.is_(None))
            ).all())

    @activity.defn(name="forget_cluster")
    def forget_cluster(self, cluster: str) -> None:
        """The last step of a cluster's deletion: its machines keep their facts but lose the
        cluster, its rules, its Terraform state credentials and its row go (a new cluster of the
        same name gets new credentials on first use). Idempotent (a retry finds nothing left).
        Its Terraform states stay: versions are history an operator may still need."""
        with db.session(self.database_url) as s:
            for machine in s.exec(select(Machine).where(Machine.cluster == cluster)):
                machine.cluster = None
                s.add(machine)
            s.exec(delete(Rule).where(Rule.cluster == cluster))
            tfcredentials.forget(s, cluster)
            if (row := s.get(Cluster, cluster)) is not None:
                s.delete(row)
            s.commit()

    def _record_role(self, machine_id: str, role: str) -> None:
        self._record_roles({machine_id: role})

    def _record_roles(self, roles: dict[str, str]) -> None:
        with db.session(self.database_url) as s:
            for machine_id, role in roles.items():
                if s.get(Machine, machine_id) is None:
                    s.add(Machine(id=machine_id))
                    s.flush()
                existing = s.exec(
                    select(Attribute).where(Attribute.machine_id == machine_id, Attribute.type == "role")
                ).first()
                if existing is None:
                    s.add(Attribute(machine_id=machine_id, type="role", value=role))
                else:
                    existing.value = role
                    s.add(existing)
                machinestate.record(s, machine_id, role=role)  # the role lists show
            s.commit()


@activity.defn(name="decommission_member")
async def decommission_member(machine_id: str) -> str:
    """Have a member's machine workflow decommission it (its `decommission` Update) and wait
    until it is retired. Idempotent: a machine already decommissioning is waited for, one that
    is gone or retired is done. A decommission that parks the machine in `failed:<step>` is
    final here: the cluster shows it and waits for an operator retry."""
    handle = activity.client().get_workflow_handle(machine_workflow_id(machine_id))
    try:
        await handle.execute_update("decommission", id=update_id("decommission"), result_type=MachineStatus)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # never started, or its workflow has ended
            return f"{machine_id}: no running workflow (already retired)"
        raise
    except WorkflowUpdateFailedError as err:
        if "already being decommissioned" not in str(err.cause):
            raise ApplicationError(f"{machine_id} refused: {err.cause}", non_retryable=True) from err
    return await heartbeating(_retired(handle, machine_id))


async def _retired(handle, machine_id: str) -> str:
    """Wait until the machine is decommissioned (or its workflow is gone)."""
    while True:
        try:
            status = await handle.query("status", result_type=MachineStatus)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return f"{machine_id}: retired"
            raise
        if status.state == DECOMMISSIONED:
            return f"{machine_id}: retired"
        if status.failed_step:
            raise ApplicationError(status.reason, type="DecommissionFailed", non_retryable=True)
        await asyncio.sleep(DECOMMISSION_POLL_S)


def update_id(update: str) -> str:
    """One Update id per activity, the same for all its attempts: an attempt that lost its
    answer (its worker died, it timed out) sends the same Update again, and Temporal answers it
    from the first one instead of running it twice (two admissions, two certificate keys)."""
    info = activity.info()
    return f"{update}:{info.workflow_run_id}:{info.activity_id}"


async def running(call: Awaitable[T], gone: str, kind: str) -> T:
    """`call` (a query or Update) on a workflow; one that is not running (never started, or
    ended) is final: `gone`, an error of type `kind`. Other RPC errors stay retryable."""
    try:
        return await call
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ApplicationError(gone, type=kind, non_retryable=True) from err
        raise


async def _cluster_update(cluster: str, update: str, request, result_type):
    """Run an Update on a cluster workflow; a missing cluster or a refusal is final."""
    handle = activity.client().get_workflow_handle(cluster_workflow_id(cluster))
    gone = f"cluster {cluster!r} is not running: create it with 'tempered cluster create {cluster}', then retry this machine"
    try:
        return await running(
            heartbeating(handle.execute_update(update, request, id=update_id(update), result_type=result_type)),
            gone, "ClusterNotFound",
        )
    except WorkflowUpdateFailedError as err:
        raise ApplicationError(
            f"cluster {cluster!r} refused the machine: {err.cause}", type="ClusterRefused", non_retryable=True
        ) from err
