"""Cluster operations' node activities: drain, uncordon and read the version of a node through kubectl
on a ready control-plane machine, reboot a member through its machine workflow, and wait until a
rebooted machine is ready again.

The kubectl steps run `infra/ansible/node.yml` on one control-plane machine, reached as every join
reaches its machines (through a `JoinActivities`: address from the machine workflow, pinned host key, the
control plane's SSH key, heartbeats with the task Ansible is on). They try the cluster's other
ready control-plane members first and the node itself last (a single-master cluster drains
itself); a machine that does not answer is skipped for the next one, and when none answers the
attempt fails retryably. kubectl's own refusal (an eviction that timed out, a node that is gone)
is final: the operation stops on that node and waits for the operator.

The machine steps only talk to the machine workflows: `reboot_member` sends the `reboot` Update,
`await_machine` polls the `status` query. Both survive a worker killed meanwhile: their retry asks
again (the same Update id; the boot the first attempt saw, kept in its heartbeat) or polls again.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities import ansible
from activities.domain.ids import machine_workflow_id
from activities.domain.lifecycle import DECOMMISSIONED, READY
from activities.domain.machine import MachineStatus
from activities.domain.operations import MachineWait, NodeRef
from activities.heartbeat import heartbeating
from activities.inventory import running, update_id
from activities.join import JoinActivities, playbook_failure
from activities.storage.settings import Settings

AWAIT_POLL_S = 2.0  # how often await_machine asks a machine workflow where it stands
DONE = {"drain": "drained", "uncordon": "uncordoned", "version": "read"}


class NodeActivities:
    """The kubectl steps of an operation. They reach control-plane machines the way joins do,
    through a JoinActivities (`host`, `machine_status`, `run_playbook`, `ready_control_plane`)."""

    def __init__(self, settings: Settings) -> None:
        self.join = JoinActivities(settings)

    @activity.defn(name="drain_node")
    async def drain(self, ref: NodeRef) -> str:
        """Cordon the node and evict its pods (kubectl drain, up to 5 minutes)."""
        return await self._kubectl(ref, "drain")

    @activity.defn(name="uncordon_node")
    async def uncordon(self, ref: NodeRef) -> str:
        """Make the node schedulable again. A drain of the same node still running here (left by
        an attempt whose worker task was lost) is stopped first, so it cannot cordon it again after."""
        drain_run = f"node-drain-{ref.machine_id}"
        await asyncio.to_thread(ansible.stop_runs, lambda marker: marker.rsplit(".", 1)[0] == drain_run)
        return await self._kubectl(ref, "uncordon")

    @activity.defn(name="node_version")
    async def version(self, ref: NodeRef) -> str:
        """The node's kubelet version as the API server reports it (`status.nodeInfo.kubeletVersion`)."""
        stats = await self._playbook(ref, "version")
        version = str(stats.get("kubelet_version") or "")
        if not version:
            raise ApplicationError(f"node {ref.node_name} reports no kubelet version", type="NoVersion",
                                   non_retryable=True)
        return version

    # ---- helpers -------------------------------------------------------------------------

    async def _kubectl(self, ref: NodeRef, action: str) -> str:
        stats = await self._playbook(ref, action)
        return str(stats.get("node") or DONE[action])

    async def _playbook(self, ref: NodeRef, action: str) -> dict:
        """Run node.yml on the first control-plane machine that answers; its set_stats."""
        notes: list[str] = []
        for machine_id in await self._control_plane(ref):
            host = await self._reachable_host(machine_id, notes)
            if host is None:
                continue
            outcome = await self.join.run_playbook("node.yml", [host], {"node_name": ref.node_name, "action": action},
                                      f"node-{action}-{ref.machine_id}")
            if outcome.ok:
                return outcome.stats
            if outcome.failures and all(f.unreachable for f in outcome.failures):
                notes.append(outcome.summary())
                continue
            raise playbook_failure(f"kubectl {action} {ref.node_name}", outcome)
        raise ApplicationError(
            f"no control-plane machine of cluster {ref.cluster} could {action} {ref.node_name}: "
            + ("; ".join(notes) or "none is ready"),
            type="NoControlPlane",
        )

    async def _reachable_host(self, machine_id: str, notes: list[str]) -> ansible.Host | None:
        """The machine as Ansible reaches it if it is `ready` now, else None (and why, in notes)."""
        try:
            status = await self.join.machine_status(machine_id)
        except RPCError as err:
            notes.append(f"{machine_id}: {err.message}")
            return None
        if status.state != READY:
            notes.append(f"{status.node_name} is {status.state}")
            return None
        try:
            return await self.join.host(machine_id, ["control_plane"], ip=status.ip, name=status.node_name)
        except ApplicationError as err:
            notes.append(str(err))
            return None

    async def _control_plane(self, ref: NodeRef) -> list[str]:
        """The cluster's ready control-plane members: the others first, the node itself last."""
        members = await self.join.ready_control_plane(ref.cluster)
        return sorted(members, key=lambda machine_id: machine_id == ref.machine_id)


# ---- the machine workflows -------------------------------------------------------------------


def _machine(machine_id: str) -> WorkflowHandle:
    return activity.client().get_workflow_handle(machine_workflow_id(machine_id))


def _gone(machine_id: str) -> tuple[str, str]:
    """What a call on a machine whose workflow is not running fails with (final)."""
    return f"machine {machine_id} has no running workflow", "MachineNotFound"


async def _machine_status(handle: WorkflowHandle, machine_id: str) -> MachineStatus:
    return await running(handle.query("status", result_type=MachineStatus), *_gone(machine_id))


@activity.defn(name="reboot_member")
async def reboot_member(machine_id: str) -> int:
    """Have the machine workflow reboot the machine (its `reboot` Update); returns the boot it was
    on, after which `await_machine` waits for a later one.

    Idempotent: the first attempt heartbeats the boot it saw before asking; a retry that finds the
    machine on a later boot already is done, else it sends the same Update again (the same id:
    Temporal answers it from the first). A refusal (the machine is not a node, it is being
    decommissioned) is final, with the workflow's words."""
    handle = _machine(machine_id)
    status = await _machine_status(handle, machine_id)
    earlier = activity.info().heartbeat_details
    boot = int(earlier[0]) if earlier else status.boot
    if earlier and status.boot > boot:
        return boot  # an earlier attempt's reboot happened
    activity.heartbeat(boot)
    try:
        await running(handle.execute_update("reboot", id=update_id("reboot"), result_type=MachineStatus),
                      *_gone(machine_id))
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        raise ApplicationError(f"machine {machine_id} refused the reboot: {getattr(cause, 'message', cause)}",
                               type="RebootRefused", non_retryable=True) from err
    return boot


@activity.defn(name="await_machine")
async def await_machine(wait: MachineWait) -> str:
    """Wait until the machine is `ready` on a boot after `after_boot` (0: ready now, on any boot),
    heartbeating where it stands. A machine parked in `failed:<step>` ends the wait with its reason
    (an operator must act); one decommissioned will never come back."""
    handle = _machine(wait.machine_id)
    while True:
        # (a query waits while the machine's workflow has no worker: heartbeat meanwhile)
        status = await heartbeating(_machine_status(handle, wait.machine_id))
        if status.state == READY and status.boot > wait.after_boot:
            return f"{status.node_name} is ready on boot {status.boot}"
        if status.state.startswith("failed:"):
            raise ApplicationError(f"{status.node_name} is {status.state}: {status.reason}", type="MachineFailed",
                                   non_retryable=True)
        if status.state == DECOMMISSIONED:
            raise ApplicationError(f"{status.node_name} was decommissioned", type="MachineDecommissioned",
                                   non_retryable=True)
        activity.heartbeat(f"{status.state} on boot {status.boot}: {status.reason}")
        await asyncio.sleep(AWAIT_POLL_S)
