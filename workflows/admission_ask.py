"""A machine asks its cluster for a role, and later how to join, by Signal: a base class of MachineWorkflow.

The admission step signals the cluster workflow `request_admission` (workflows/admission_queue.py)
and waits for its `admitted` Signal: no activity, no worker slot held and no Update against the
cluster's in-flight Update limit while the cluster works through a queue of machines (issue 18).
Each ask has its own id (a retry of the step asks afresh), and an answer to any other ask (one
from before a reboot, say) is ignored. A cluster that is not running, or that refuses the machine,
parks it in failed:admit with the reason the `admit_machine` path gave. The join step asks its
join plan the same way (`request_join_plan`, answered by `join_plan_answered`): the `join_plan`
Update, 100 machines of a cluster released together, hit the same limit. The admission carries
the cluster's join_method, so a machine of an `external` cluster skips that ask altogether.

Deterministic code only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import AdmissionAsk
    from activities.domain.ids import cluster_workflow_id
    from activities.domain.lifecycle import ADMIT, JOIN
    from activities.domain.machine import (
        Admission, AdmissionReply, AdmitRequest, JoinPlan, JoinPlanAsk, JoinPlanReply, JoinPlanRequest, MachineStatus,
    )

PATCH = "admission-by-signal"
JOIN_PATCH = "join-plan-by-signal"
KNOWN_JOIN_PATCH = "join-method-with-admission"  # an external cluster's machine does not ask how to join
RELEASE_PATCH = "release-during-ask"  # a `release` that came while the ask was out is remembered
TIMEOUT_PATCH = "ask-timeout"  # an ask the cluster never answers parks the machine (a timer: a new command)
ANSWER_TIMEOUT = timedelta(minutes=10)  # how long a machine waits for its cluster's admission answer
# A join plan may wait for another master's join (one at a time) or the before-bootstrap Terraform
# tasks: as long as the `join_plan` activity's start-to-close timeout allowed (policies.PLAN).
JOIN_ANSWER_TIMEOUT = timedelta(minutes=30)
Reply = AdmissionReply | JoinPlanReply


def not_running(cluster: str) -> str:
    return f"cluster {cluster!r} is not running: create it with 'tempered cluster create {cluster}', then retry this machine"


def no_answer(cluster: str, waited: timedelta) -> str:
    """(`_fail` adds how to retry.)"""
    minutes = int(waited.total_seconds() // 60)
    return f"cluster {cluster!r} did not answer within {minutes} minutes: is its workflow running, its worker up to date?"


class MachineAdmission:
    """MachineWorkflow's side (the attributes below are MachineWorkflow's)."""

    s: MachineStatus
    _epoch: int
    _asked: str | None = None  # the id of the ask waiting for its answer
    _answer: AdmissionReply | JoinPlanReply | None = None
    _released_while_asking = False  # a `release` came while the admission ask was out
    _join_method: str | None = None  # the cluster's join_method, as its admission said (None: not said)

    _fail: Callable[[str, str], None]

    @workflow.signal
    def admitted(self, reply: AdmissionReply) -> None:
        """The cluster's answer to an ask; only the one this machine waits for is taken."""
        self._take(reply)

    @workflow.signal
    def join_plan_answered(self, reply: JoinPlanReply) -> None:
        """The cluster's answer to a join plan ask; likewise."""
        self._take(reply)

    def _release_while_asking(self) -> bool:
        """(The `release` Signal.) A release that comes while the ask is out is the cluster's
        word that its control plane is up: an answer that holds for the control plane, decided
        before it, is stale, and the machine asks again instead of waiting for a second release."""
        if self._asked is None or not workflow.patched(RELEASE_PATCH):
            return False
        self._released_while_asking = True
        return True

    def _take(self, reply: AdmissionReply | JoinPlanReply) -> None:
        if self._asked is not None and reply.request_id == self._asked:
            self._answer = reply

    async def _ask_cluster(self, request: AdmitRequest, epoch: int) -> Admission | None:
        """The cluster's Admission, or None: the machine moved on (a new boot) or was parked."""
        ask = AdmissionAsk(request_id=str(workflow.uuid4()), **request.model_dump())
        self._released_while_asking = False
        answer = await self._ask(ADMIT, "request_admission", ask, epoch)
        if not isinstance(answer, AdmissionReply) or answer.admission is None:  # (`_ask` parked it)
            return None
        self._join_method = answer.admission.join_method
        return answer.admission

    def _joins_externally(self) -> bool:
        """The admission said the cluster's join_method is external: the join plan is known
        without asking (the cluster answers `external` to every ask; a Signal each way, a
        timer and a cluster workflow task saved per machine). Runs without the patch asked."""
        return self._join_method == "external" and workflow.patched(KNOWN_JOIN_PATCH)

    def _stale_hold(self, admission: Admission) -> bool:
        """A control-plane hold answered after the cluster released its held machines."""
        released, self._released_while_asking = self._released_while_asking, False
        return released and admission.hold and not admission.rule_errors

    async def _ask_join_plan(self, request: JoinPlanRequest, epoch: int) -> JoinPlan | None:
        """The cluster's JoinPlan, or None: the machine moved on (a new boot) or was parked."""
        ask = JoinPlanAsk(request_id=str(workflow.uuid4()), **request.model_dump())
        answer = await self._ask(JOIN, "request_join_plan", ask, epoch)
        return answer.plan if isinstance(answer, JoinPlanReply) else None

    async def _ask(self, step: str, signal: str, ask: AdmissionAsk | JoinPlanAsk, epoch: int) -> Reply | None:
        """Signal the cluster and wait for the answer with this ask's id; a cluster that is not
        running or that refused parks the machine in failed:<step> (None then, as for a new boot)."""
        self._asked, self._answer = ask.request_id, None
        handle = workflow.get_external_workflow_handle(cluster_workflow_id(ask.cluster))
        try:
            await handle.signal(signal, ask)
        except Exception as err:  # noqa: BLE001 (no such workflow, or it has ended)
            workflow.logger.info("cluster %s did not take %s: %s", ask.cluster, signal, err)
            self._asked = None
            if epoch == self._epoch:
                self._fail(step, not_running(ask.cluster))
            return None
        waited = self._answer_timeout if step == ADMIT else self._join_answer_timeout
        if not await self._wait_answer(epoch, waited):
            self._asked, self._answer = None, None
            if epoch == self._epoch:
                self._fail(step, no_answer(ask.cluster, ANSWER_TIMEOUT if step == ADMIT else JOIN_ANSWER_TIMEOUT))
            return None
        answer, self._asked, self._answer = self._answer, None, None
        if epoch != self._epoch or answer is None:
            return None
        if answer.error or (answer.admission if isinstance(answer, AdmissionReply) else answer.plan) is None:
            self._fail(step, answer.error or "the cluster gave no answer")
            return None
        return answer

    async def _wait_answer(self, epoch: int, waited: timedelta) -> bool:
        """False: no answer in `waited` (a cluster terminated, stuck, or on a worker without
        the handler), so the machine parks where `retry` can reach it instead of waiting forever."""
        answered = lambda: self._answer is not None or epoch != self._epoch  # noqa: E731
        if not workflow.patched(TIMEOUT_PATCH):
            await workflow.wait_condition(answered)
            return True
        try:
            await workflow.wait_condition(answered, timeout=waited)
        except asyncio.TimeoutError:
            return False
        return True

    _answer_timeout = ANSWER_TIMEOUT  # (a test's subclass waits less)
    _join_answer_timeout = JOIN_ANSWER_TIMEOUT
