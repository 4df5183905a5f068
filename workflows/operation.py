"""ClusterOperationWorkflow: one day-2 operation on a cluster, `operation:<cluster>:<n>`.

The cluster workflow starts it as a child (Update `start_operation`, workflows/cluster.py) with
the nodes already chosen and ordered (workflows/operation_plan.py), and ABANDON as the parent
close policy: the cluster continues-as-new every couple of thousand events, and the operation
must outlive each run of it. It is a workflow of its own so the Web UI lists it (its summary,
current details and the TemperedCluster search attribute), and so a worker killed mid-operation
costs nothing: Temporal replays it up to the activity in hand, which is tried again.

It acts wave by wave (each control-plane member alone, workers `batch` at a time). A node of a
rolling reboot or upgrade goes through drain_node (cordon + drain), reboot_member, await_machine
(back `ready` on a later boot), node_version (upgrade: the target version) and uncordon_node; a
node of a scale-down through decommission_member. Right before a control-plane member is
rebooted or decommissioned (its drain may go first) every other control-plane member must be
`ready` as Tempered sees it (await_machine on its current boot): never below quorum. Manual power:
the node's reason says to power-cycle it while the operation waits for it. The first failure stops it in `waiting` with the node and the reason; `resume` tries the
failed node again from the step that failed, `pause` stops before the next wave, `abort` cancels
the node in hand and uncordons every node it had cordoned, saying so on each. Each change is
signalled to the cluster (`operation_progress`, a compact copy without the nodes), which keeps the
latest in its status; a failed signal is tried again a few times, so the last one arrives.

Deterministic code only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

from workflows import calls, metadata, search
from workflows import operation_plan as plan
from workflows.operation_plan import ENDED, compact, same_version, waves

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import CONTROL_PLANE_ROLES, ClusterStatus
    from activities.domain.ids import cluster_workflow_id
    from activities.domain.operations import (
        MachineWait,
        NodeProgress,
        NodeRef,
        OperationRequest,
        OperationStart,
        OperationStatus,
    )

REBOOT_STEPS = ("draining", "rebooting", "waiting-ready", "checking-version", "uncordoning")
# A node in one of these was cordoned by the operation and is not uncordoned yet.
CORDONED = ("draining", "rebooting", "waiting-ready", "checking-version", "uncordoning")


SIGNAL_TRIES = 5  # a progress signal that fails is sent again this many times in all
SIGNAL_RETRY = timedelta(seconds=5)  # times the try's number: 5 s, 10 s, 15 s, 20 s
# An abort whose workflow task also brings the result of the activity in hand loses its
# cancellation (the activity's result wins): the node checks for it before each step and quorum wait.
ABORT_PATCH = "abort-between-steps"


class NodeFailed(Exception):
    """A node's step failed: the operation waits for the operator."""


@workflow.defn
class ClusterOperationWorkflow:
    @workflow.init
    def __init__(self, start: OperationStart) -> None:
        self.start = start
        self.s = start.status
        self._pausing = False
        self._resumed = False
        self._aborting = False
        self._in_hand: list[asyncio.Task[None]] = []
        self._at: dict[str, str] = {}  # machine id -> the step it is in (or failed in): a resume starts there
        self._boots: dict[str, int] = {}  # machine id -> the boot it was on when rebooted
        self._cordoned: set[str] = set()  # drained by us, not uncordoned yet
        self._decommissioned: set[str] = set()  # decommission_member started: its machine workflow finishes it
        self._manual: set[str] = set()  # rebooted with manual power: someone must power-cycle it
        self._dirty = False  # the cluster has not seen the latest status yet
        self._sending = False

    @workflow.run
    async def run(self, start: OperationStart) -> OperationStatus:
        workflow.upsert_search_attributes(search.updates(cluster=start.cluster))
        reporter = asyncio.create_task(self._report_loop())
        self._changed()
        for wave in waves(self.s.nodes, self.s.request.batch, self.s.kind):
            if not await self._may_go_on():
                break
            await self._wave(wave)
            if self._aborting:
                break
        if self._aborting:
            await self._clean_up_abort()
        else:
            self.s.state, self.s.progress = "done", f"done: {self._count('done')} of {len(self.s.nodes)} nodes"
            self._changed()
        await workflow.wait_condition(lambda: not self._dirty and not self._sending)
        reporter.cancel()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.s

    # ---- queries and operator Updates -------------------------------------------------------

    @workflow.query
    def status(self) -> OperationStatus:
        return self.s

    @workflow.update
    def pause(self) -> OperationStatus:
        """Stop before the next wave; the node in hand finishes first."""
        self._pausing = True
        self.s.progress = f"pausing: {self.s.progress} (the node in hand finishes first)"
        self._changed()
        return self.s

    @pause.validator
    def _pause_allowed(self) -> None:
        if self.s.state != "running" or self._pausing:
            raise self._not_now("pause")

    @workflow.update
    def resume(self) -> OperationStatus:
        """Go on after a pause, or try the failed node again (from the step that failed)."""
        self._pausing, self._resumed = False, True
        self.s.state, self.s.error = "running", ""
        self.s.progress = "resuming"
        self._changed()
        return self.s

    @resume.validator
    def _resume_allowed(self) -> None:
        if self.s.state not in ("paused", "waiting") and not self._pausing:
            raise self._not_now("resume")

    @workflow.update
    def abort(self) -> OperationStatus:
        """Cancel the node in hand and end `aborted`; every node it cordoned is uncordoned again."""
        self._aborting = True
        self.s.state, self.s.progress = "aborting", "aborting: cancelling the node in hand"
        for task in self._in_hand:
            task.cancel()
        self._changed()
        return self.s

    @abort.validator
    def _abort_allowed(self) -> None:
        if self.s.state in (*ENDED, "aborting"):
            raise self._not_now("abort")

    def _not_now(self, what: str) -> ApplicationError:
        state = "pausing" if self._pausing and self.s.state == "running" else self.s.state
        return ApplicationError(f"{self.s.workflow_id} is {state}: cannot {what} it now", type="TransitionNotAllowed",
                                non_retryable=True)

    # ---- waves --------------------------------------------------------------------------------

    async def _may_go_on(self) -> bool:
        """Between waves: stop here while paused; False once aborted."""
        if self._pausing and not self._aborting:
            self.s.state, self.s.progress = "paused", f"paused before {self._next_name()} (resume or abort)"
            self._resumed = False
            self._changed()
            await workflow.wait_condition(lambda: self._resumed or self._aborting)
        return not self._aborting

    async def _wave(self, wave: list[NodeProgress]) -> None:
        """Act on the wave's nodes side by side; on a failure wait for resume (the failed ones
        again) or abort."""
        todo = wave
        while todo:
            self._in_hand = [asyncio.create_task(self._node(n)) for n in todo]
            await asyncio.gather(*self._in_hand, return_exceptions=True)
            self._in_hand = []
            todo = [n for n in todo if n.step == "failed"]
            if not todo or self._aborting:
                return
            self.s.state = "waiting"
            self.s.error = "; ".join(f"{n.node_name} failed {self._at[n.machine_id]}: {n.reason}" for n in todo)
            self.s.progress = f"waiting: {self.s.error} (resume tries it again, abort ends the operation)"
            self._resumed = False
            self._changed()
            await workflow.wait_condition(lambda: self._resumed or self._aborting)
            if self._aborting:
                return

    async def _node(self, node: NodeProgress) -> None:
        steps = self._steps(node)
        first = self._at.get(node.machine_id, steps[0])
        try:
            for step in steps[steps.index(first):]:
                self._stop_if_aborted()
                self._at[node.machine_id] = step
                self._step(node, step)
                await self._run(node, step)
        except NodeFailed as failed:
            if self._aborting:  # the abort cancelled it: not a failure, _clean_up_abort says what it did
                return
            node.step, node.reason = "failed", str(failed)
            self._changed()
            return
        node.step, node.reason = "done", ""
        self._changed()

    def _steps(self, node: NodeProgress) -> list[str]:
        if self.s.kind == "scale-down":
            return ["decommissioning"]
        return [s for s in REBOOT_STEPS if s != "checking-version" or self.s.kind == "upgrade"]

    def _step(self, node: NodeProgress, step: str) -> None:
        node.step, node.reason = step, ""  # type: ignore[assignment]
        position = f"{self.s.nodes.index(node) + 1} of {len(self.s.nodes)}"
        text = f"{step} {node.node_name} ({node.role}, {position})"
        if step == "rebooting" and node.role in CONTROL_PLANE_ROLES and len(self.start.control_plane) == 1:
            text += ": the cluster's only control-plane member, the Kubernetes API is down until it is back"
        if step == "waiting-ready" and node.machine_id in self._manual:
            node.reason = f"power-cycle {node.node_name} now (manual power: no BMC set)"
            text += f": {node.reason}"
        if self._pausing:
            text += " (pausing after this wave)"
        self.s.state, self.s.progress = "running", text
        self._changed()

    async def _run(self, node: NodeProgress, step: str) -> None:
        """One step of one node; an activity's failure is the node's (NodeFailed)."""
        ref = NodeRef(cluster=self.start.cluster, machine_id=node.machine_id, node_name=node.node_name)
        try:
            if step in ("rebooting", "decommissioning") and node.role in CONTROL_PLANE_ROLES:
                await self._quorum_holds(node)  # here (not before the drain): a resume at rebooting checks it too
            if step == "draining":
                self._cordoned.add(node.machine_id)
                # Waits for the drain to stop on an abort, so that the uncordon comes after it.
                await calls.drain_node(ref, cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED)
            elif step == "rebooting":
                self._boots[node.machine_id] = await calls.reboot_member(node.machine_id)
                await self._note_power(node)
            elif step == "waiting-ready":
                boot = self._boots.get(node.machine_id, 0)
                await calls.await_machine(MachineWait(machine_id=node.machine_id, after_boot=boot))
            elif step == "checking-version":
                await self._check_version(ref)
            elif step == "uncordoning":
                await calls.uncordon_node(ref)
                self._cordoned.discard(node.machine_id)
            elif step == "decommissioning":
                self._decommissioned.add(node.machine_id)
                await calls.decommission_member(node.machine_id)
        except ActivityError as err:
            if step == "decommissioning" and not self._aborting:
                self._decommissioned.discard(node.machine_id)  # it failed: nothing goes on behind our back
            raise NodeFailed(_reason(err)) from err

    async def _note_power(self, node: NodeProgress) -> None:
        """Manual power (no BMC): the machine workflow waits for someone to power-cycle it, so the
        operation says so while it waits. Not knowing is no failure: the reboot was sent."""
        try:
            target = await calls.power_target(node.machine_id)
        except ActivityError as err:
            workflow.logger.warning("power target of %s unknown: %s", node.machine_id, _reason(err))
            return
        if target.manual:
            self._manual.add(node.machine_id)

    async def _quorum_holds(self, node: NodeProgress) -> None:
        """Every other control-plane member (not decommissioned by this operation) is ready now."""
        gone = {n.machine_id for n in self.s.nodes if n.step == "done" and self.s.kind == "scale-down"}
        for other in self.start.control_plane:
            if other.machine_id in (node.machine_id, *gone):
                continue
            self._stop_if_aborted()
            self.s.progress = f"waiting for {other.node_name} to be ready before taking {node.node_name} down (quorum)"
            self._changed()
            try:
                await calls.await_machine(MachineWait(machine_id=other.machine_id, after_boot=0))
            except ActivityError as err:
                raise NodeFailed(f"not taking it down: control-plane member {other.node_name} is not ready "
                                 f"({_reason(err)})") from err
        self._stop_if_aborted()  # (the last member's answer may have come with the abort: no reboot then)

    def _stop_if_aborted(self) -> None:
        """The abort's cancellation can be lost (see ABORT_PATCH): stop the node here instead."""
        if self._aborting and workflow.patched(ABORT_PATCH):
            raise NodeFailed("aborted")

    async def _check_version(self, ref: NodeRef) -> None:
        version = await calls.node_version(ref)
        want = self.start.kubernetes_version
        try:
            same = same_version(version, want)
        except ApplicationError:  # not a version at all: the node's answer is the reason
            same = False
        if not same:
            raise NodeFailed(f"node {ref.node_name} runs {version or 'no version'}, not {want}")

    # ---- abort ----------------------------------------------------------------------------------

    async def _clean_up_abort(self) -> None:
        """Nothing half-done left unexplained: each node cordoned by us is uncordoned again (or
        says why not), a decommission started is said to go on, the rest are skipped."""
        waited = self.s.error
        for node in self.s.nodes:
            step = self._at.get(node.machine_id, "pending")
            if node.machine_id in self._cordoned:
                node.reason = await self._uncordon_after_abort(node, step)
                node.step = "skipped"
            elif node.step == "done":
                continue
            elif node.machine_id in self._decommissioned:
                node.step = "decommissioning"
                node.reason = ("aborted while decommissioning: its machine workflow finishes it "
                               f"(tempered machine show {node.machine_id})")
            else:
                failure = f" ({node.reason})" if node.step == "failed" and node.reason else ""
                node.step = "skipped"
                node.reason = ("not started: aborted" if step == "pending"
                               else f"aborted while {step}, before it was taken down{failure}")
        self.s.state = "aborted"
        done = self._count("done")
        self.s.progress = f"aborted after {done} of {len(self.s.nodes)} nodes"
        self.s.error = "aborted by an operator" + (f" while it waited: {waited}" if waited else "")
        if self.s.kind == "upgrade":
            self.s.error += (f"; the cluster's kubernetes_version stays {self.start.kubernetes_version}: nodes not "
                             "upgraded yet get it when they next rejoin, or start the upgrade again")
        self._changed()

    async def _uncordon_after_abort(self, node: NodeProgress, step: str) -> str:
        ref = NodeRef(cluster=self.start.cluster, machine_id=node.machine_id, node_name=node.node_name)
        try:
            await calls.uncordon_node(ref)
        except ActivityError as err:
            return (f"aborted while {step}; uncordoning it again failed ({_reason(err)}): "
                    f"run kubectl uncordon {node.node_name}")
        self._cordoned.discard(node.machine_id)
        return f"aborted while {step}: uncordoned again"

    # ---- progress to the cluster and the Web UI --------------------------------------------------

    def _changed(self) -> None:
        workflow.set_current_details(metadata.operation_details(self.s, metadata.api_url(workflow.memo())))
        self._dirty = True

    async def _report_loop(self) -> None:
        """Send the cluster the latest status whenever it changed (one signal at a time, in order).
        A failed signal is tried again (a timer between tries) unless a newer status is due: the
        last one must arrive, or the cluster keeps the operation `running` and refuses the next."""
        cluster = workflow.get_external_workflow_handle(cluster_workflow_id(self.start.cluster))
        while True:
            await workflow.wait_condition(lambda: self._dirty)
            self._dirty, self._sending = False, True
            for attempt in range(1, SIGNAL_TRIES + 1):
                if await _quietly(lambda: cluster.signal("operation_progress", compact(self.s))) or self._dirty:
                    break
                if attempt < SIGNAL_TRIES:
                    await workflow.sleep(SIGNAL_RETRY * attempt)
            self._sending = False

    def _count(self, step: str) -> int:
        return sum(1 for n in self.s.nodes if n.step == step)

    def _next_name(self) -> str:
        return next((n.node_name for n in self.s.nodes if n.step in ("pending", "failed")), "the end")


async def _quietly(send: Callable[[], Awaitable[None]]) -> bool:
    """A cluster that is gone cannot be told; the operation goes on (its own status says all)."""
    try:
        await send()
    except Exception as err:  # noqa: BLE001 (the signal's failure is logged, never the operation's)
        workflow.logger.warning("operation progress not signalled: %s", err)
        return False
    return True


def _reason(err: ActivityError) -> str:
    cause = err.cause
    return getattr(cause, "message", None) or str(cause or err)


# ---- started by the cluster workflow (its `start_operation` Update) -------------------------------


async def begin(status: ClusterStatus, request: OperationRequest) -> OperationStatus:
    """Number the operation, set an upgrade's version on the cluster (so that rejoins get it),
    record it as the cluster's operation (a second request is refused from here on, before any
    await) and start its workflow as an abandoned child: it outlives the cluster's runs."""
    plan.check(status, request)  # again: another Update may have been accepted since the validator ran
    status.operations_started += 1
    start = plan.start(status, request, status.operations_started, workflow.now())
    previous = status.spec.kubernetes_version
    if request.kind == "upgrade" and request.kubernetes_version:
        status.spec.kubernetes_version = request.kubernetes_version
    status.operation = start.status
    api = metadata.api_url(workflow.memo())
    try:
        await workflow.start_child_workflow(
            ClusterOperationWorkflow.run, start, id=start.status.workflow_id,
            parent_close_policy=ParentClosePolicy.ABANDON,
            search_attributes=TypedSearchAttributes([SearchAttributePair(search.CLUSTER, start.cluster)]),
            static_summary=metadata.operation_summary(start),
            static_details=metadata.operation_static_details(start, api),
            memo=metadata.memo(api) if api else None,
        )
    except Exception as err:  # (an id taken by a running workflow): nothing was done, say so
        status.spec.kubernetes_version = previous
        status.operation.state, status.operation.error = "aborted", f"not started: {err}"
        raise ApplicationError(f"{start.status.workflow_id} not started: {err}", type=plan.REFUSED,
                               non_retryable=True) from err
    return status.operation
