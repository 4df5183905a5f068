"""The cluster's admission by Signal: a base class of ClusterWorkflow.

A machine asks for its role with the `request_admission` Signal and waits for the `admitted`
Signal (workflows/admission_ask.py). Temporal allows 10 in-flight Updates per workflow and an
activity that waits on an Update holds a worker slot: one `admit` Update per machine deadlocked
at 1,000 machines (issue 18). A Signal has no such limit and costs the machine no slot.

The asks wait in `ClusterStatus.admission_queue` (carried across continue-as-new: nothing asked is
lost) and one loop admits them in batches, one batch at a time and under the admission lock, so
two machines can never both become master-prime. One `evaluate_rules_batch` activity evaluates a
batch's machines in order, each seeing the members plus the machines before it in the batch, so
rules see exactly what one-at-a-time admission showed them; the verdicts are committed in the same
order, the roles recorded (`record_roles`), and each machine is answered. The `admit` Update stays
for machine workflows that started before (their histories replay it).

Deterministic code only.
"""

from __future__ import annotations

import asyncio
from functools import partial
from collections.abc import Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import admission, calls

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import AdmissionAsk, ClusterStatus, Member
    from activities.domain.ids import machine_workflow_id
    from activities.domain.machine import (
        Admission, AdmissionReply, AdmitRequest, JoinPlan, JoinPlanAsk, JoinPlanReply, JoinPlanRequest,
    )
    from activities.domain.rules import RulesBatch, RulesRequest, RulesVerdict

PATCH = "admission-by-signal"
JOIN_PATCH = "join-plan-by-signal"
ONE_BY_ONE_PATCH = "admission-batch-falls-back"  # a failed batch's machines admitted one at a time
RECHECK_PATCH = "admission-rechecked"  # asks and holds looked at again after every await of a batch
NEW, AGAIN = "new", "again"  # the lanes: machines asking, machines whose rules failed before
BATCH_MAX = 100  # machines per evaluate_rules_batch (bounds its payload and its duration)


def refused(cluster: str, why: str) -> str:
    """What a refused machine parks with (the text the `admit` path gave)."""
    return f"cluster {cluster!r} refused the machine: {why}"


Committed = tuple[list[AdmissionAsk], list[RulesVerdict]] | None


class AdmissionQueue:
    """ClusterWorkflow's admission by Signal (the attributes below are ClusterWorkflow's)."""

    s: ClusterStatus
    _admission: asyncio.Lock
    _rules_failed: set[str]
    _steps: Any
    _running_lanes: frozenset[str] = frozenset()  # the batch loops that run (or are named): one per lane
    _batch_sizes: tuple[int, ...] = ()  # this run's batches, for the `admission_batches` query
    _deleting: Callable[[], bool]
    _should_stop: Callable[[], bool]
    _show: Callable[[], None]
    _known: Callable[[AdmitRequest], tuple[Member | None, str]]
    _commit: Callable[[AdmitRequest, Member | None, str], Admission]
    _held_by_rules: Callable[[str, str, RulesVerdict], Admission]
    _doing: Any  # metadata.Doing: what the steps are doing now, for the Web UI
    _member: Callable[[str], Member | None]
    _verdict: Callable[[Member], Admission]
    _plan: Callable[[JoinPlanRequest], Any]  # (async: the join_plan Update's answer)

    @workflow.signal
    async def request_admission(self, ask: AdmissionAsk) -> None:
        """A machine asks for its role: queued, answered with the `admitted` Signal. A newer ask
        from the same machine replaces its older one (the machine ignores the older's answer)."""
        workflow.patched(PATCH)
        if ask.cluster != self.s.spec.name:
            await _reply(ask, AdmissionReply(request_id=ask.request_id, error=refused(
                ask.cluster, f"machine asked cluster {ask.cluster}, this is {self.s.spec.name}")))
            return
        self.s.admission_queue = [a for a in self.s.admission_queue if a.machine_id != ask.machine_id] + [ask]
        await self._answer_queue()

    @workflow.signal
    async def request_join_plan(self, ask: JoinPlanAsk) -> None:
        """A machine asks how to join: answered with the `join_plan_answered` Signal (the same
        answer the `join_plan` Update gives, which the same limit of 10 in-flight Updates capped)."""
        workflow.patched(JOIN_PATCH)
        request = JoinPlanRequest(**ask.model_dump(exclude={"request_id"}))
        try:
            if ask.cluster != self.s.spec.name:
                raise ApplicationError(f"machine asked cluster {ask.cluster}, this is {self.s.spec.name}")
            plan: JoinPlan = await self._plan(request)
            reply = JoinPlanReply(request_id=ask.request_id, plan=plan)
        except ApplicationError as err:
            reply = JoinPlanReply(request_id=ask.request_id, error=refused(ask.cluster, err.message))
        await _signal(ask.machine_id, "join_plan_answered", reply)

    @workflow.query
    def admission_batches(self) -> list[int]:
        """The sizes of the batches this run admitted, in order (for tests and benchmarks)."""
        return list(self._batch_sizes)

    def _admit_queued_soon(self) -> None:
        """(A new run with asks carried over; `close` or `delete`, whose asks are refused) name the
        batch loops from code that cannot wait. (A run from before the step loop never has a queue.)"""
        if not self._steps.inline:
            for lane in self._idle_lanes():
                self._running_lanes = self._running_lanes | {lane}
                self._steps.name(partial(self._admit_queued, lane))

    async def _answer_queue(self) -> None:
        """Start the batch loops that have asks and do not run. While the run is about to continue
        as new, the next run starts them (the queue is carried); a closing or deleting cluster
        refuses at once."""
        if self._should_stop() and not (self.s.closing or self._deleting()):
            return
        for lane in self._idle_lanes():
            self._running_lanes = self._running_lanes | {lane}
            await self._steps.tell(partial(self._admit_queued, lane))

    def _lane(self, ask: AdmissionAsk) -> str:
        """Machines whose rules failed before are evaluated again one at a time, beside the
        batches of the others (a rules save releases them all at once, and a rule that times out
        for them must not hold up machines that are new)."""
        return AGAIN if ask.machine_id in self._rules_failed else NEW

    def _idle_lanes(self) -> list[str]:
        lanes = {self._lane(ask) for ask in self.s.admission_queue} - self._running_lanes
        return sorted(lanes)

    async def _admit_queued(self, lane: str) -> None:
        """A batch loop (a step): batches of this lane's asks until it has none."""
        try:
            while asks := [a for a in self.s.admission_queue if self._lane(a) == lane]:
                if self.s.closing or self._deleting():
                    await self._refuse(asks, f"cluster {self.s.spec.name} is being deleted")
                    break
                if self._should_stop():
                    break  # continue-as-new first: the next run's loop goes on with the queue
                batch = asks[:BATCH_MAX if lane == NEW else 1]
                workflow.logger.info("cluster %s: admitting a batch of %d", self.s.spec.name, len(batch))
                self._batch_sizes = (*self._batch_sizes, len(batch))
                with self._doing.busy(f"admitting {_names(batch)}"):
                    await self._admit_batch(batch)
                self.s.admission_queue = [a for a in self.s.admission_queue if a not in batch]
        finally:
            self._running_lanes = self._running_lanes - {lane}
            self._show()

    async def _admit_batch(self, batch: list[AdmissionAsk]) -> None:
        """Evaluate outside the lock, commit in order under it (evaluated again first if the
        members changed meanwhile: two machines can never both become master-prime), record the
        roles, answer each machine."""
        rechecked = workflow.patched(RECHECK_PATCH)
        seen = admission.roles(self.s.members)
        try:
            verdicts = await calls.evaluate_rules_batch(self._rules_batch(batch))
        except ActivityError as err:
            if len(batch) > 1 and workflow.patched(ONE_BY_ONE_PATCH):
                await self._admit_one_by_one(batch)
            else:
                await self._refuse(batch, f"rules not evaluated: {err.cause or err}")
            return
        async with self._admission:
            committed = await (self._settled(batch, seen, verdicts) if rechecked
                               else self._settled_once(batch, seen, verdicts))
            if committed is None:
                return
            batch, verdicts = committed
            answers = [self._decide(ask, verdict) for ask, verdict in zip(batch, verdicts)]
        try:  # (every answer's role, as admit_machine recorded it)
            await calls.record_roles({ask.machine_id: a.role for ask, a in zip(batch, answers)})
        except ActivityError as err:
            error = refused(self.s.spec.name, f"roles not recorded: {err.cause or err}")
            await _reply_all([(ask, AdmissionReply(request_id=ask.request_id, error=error)) for ask in batch])
            return
        if rechecked:  # a hold lifted while the roles were recorded: its `release` came too early
            answers = [self._answer_now(ask, a) for ask, a in zip(batch, answers)]
        method = {"join_method": self.s.spec.join_method}  # (a machine of an external cluster need not ask how to join)
        replies = [AdmissionReply(request_id=ask.request_id, admission=a.model_copy(update=method))
                   for ask, a in zip(batch, answers)]
        await _reply_all(list(zip(batch, replies)))

    async def _admit_one_by_one(self, batch: list[AdmissionAsk]) -> None:
        """The batch's rules activity failed (after its retries): most often because of one
        machine (facts that crash the sandbox, say). Each machine is admitted as a batch of its
        own, in order, so only that one parks in failed:admit and the others see the ones
        admitted before them, as in the batch."""
        for ask in batch:
            if ask in self.s.admission_queue:  # (not withdrawn meanwhile)
                await self._admit_batch([ask])

    def _answer_now(self, ask: AdmissionAsk, answer: Admission) -> Admission:
        """A control-plane hold decided before `record_roles`, asked again now: the cluster may
        have become ready (and released its held machines) meanwhile, and this machine, not yet
        holding, ignored that `release`; answered as held it would wait for a second one forever."""
        member = self._member(ask.machine_id)
        if not answer.hold or answer.rule_errors or member is None:
            return answer
        return self._verdict(member)

    async def _settled(self, batch: list[AdmissionAsk], seen: Any, verdicts: list[RulesVerdict]) -> Committed:
        """Under the lock: the asks still current and their verdicts, or None (nothing to commit).
        Every await lets signals in (member_left withdraws an ask, close or delete begins), so
        after each one which asks are current, and the members, are looked at again."""
        evaluated = batch
        while True:
            if self.s.closing or self._deleting():  # `close` or `delete` was accepted meanwhile
                await self._refuse([a for a in batch if a in self.s.admission_queue],
                                   f"cluster {self.s.spec.name} is being deleted")
                return None
            asked = [a for a in evaluated if a in self.s.admission_queue]  # (one left meanwhile: member_left)
            if not asked:
                return None
            rules = any(v.has_rules for v in verdicts)
            if not (rules and (admission.roles(self.s.members) != seen or asked != evaluated)):
                return asked, [v for a, v in zip(evaluated, verdicts) if a in asked]
            seen, evaluated = admission.roles(self.s.members), asked
            try:
                verdicts = await calls.evaluate_rules_batch(self._rules_batch(asked))
            except ActivityError as err:
                await self._refuse([a for a in asked if a in self.s.admission_queue],
                                   f"rules not evaluated: {err.cause or err}")
                return None

    async def _settled_once(self, batch: list[AdmissionAsk], seen: Any, verdicts: list[RulesVerdict]) -> Committed:
        """(Runs from before `admission-rechecked`: looked at once, before evaluating again.)"""
        if self.s.closing or self._deleting():
            await self._refuse(batch, f"cluster {self.s.spec.name} is being deleted")
            return None
        asked = [a for a in batch if a in self.s.admission_queue]
        rules = any(v.has_rules for v in verdicts)
        if rules and (admission.roles(self.s.members) != seen or asked != batch):
            try:
                verdicts = await calls.evaluate_rules_batch(self._rules_batch(asked))
            except ActivityError as err:
                await self._refuse(asked, f"rules not evaluated: {err.cause or err}")
                return None
        elif asked != batch:
            verdicts = [v for a, v in zip(batch, verdicts) if a in asked]
        return (asked, verdicts) if asked else None

    def _rules_batch(self, batch: list[AdmissionAsk]) -> RulesBatch:
        candidates = []
        for ask in batch:
            member, role = self._known(_request(ask))
            candidates.append(RulesRequest(cluster=self.s.spec.name, machine_id=ask.machine_id, role=role,
                                           is_new=ask.is_new and member is None, node_name=ask.node_name))
        return RulesBatch(cluster=self.s.spec.name, members=self.s.members, candidates=candidates)

    def _decide(self, ask: AdmissionAsk, verdict: RulesVerdict) -> Admission:
        """Commit one verdict, as `_admit_outside_the_lock` does for one machine."""
        request = _request(ask)
        member, role = self._known(request)
        if verdict.errors:
            return self._held_by_rules(ask.machine_id, role, verdict)
        self._rules_failed.discard(ask.machine_id)
        return self._commit(request, member, role or verdict.role)

    async def _refuse(self, asks: list[AdmissionAsk], why: str) -> None:
        error = refused(self.s.spec.name, why)
        self.s.admission_queue = [a for a in self.s.admission_queue if a not in asks]
        await _reply_all([(ask, AdmissionReply(request_id=ask.request_id, error=error)) for ask in asks])


def _names(batch: list[AdmissionAsk], shown: int = 3) -> str:
    """The batch for the Web UI: its first machines by name, and how many more."""
    names = ", ".join(ask.node_name or ask.machine_id for ask in batch[:shown])
    return names if len(batch) <= shown else f"{names} and {len(batch) - shown} more"


def _request(ask: AdmissionAsk) -> AdmitRequest:
    return AdmitRequest(**ask.model_dump(exclude={"request_id"}))


async def _reply_all(replies: list[tuple[AdmissionAsk, AdmissionReply]]) -> None:
    await asyncio.gather(*(_reply(ask, reply) for ask, reply in replies))


async def _reply(ask: AdmissionAsk, reply: AdmissionReply) -> None:
    await _signal(ask.machine_id, "admitted", reply)


async def _signal(machine_id: str, name: str, reply: AdmissionReply | JoinPlanReply) -> None:
    """Signal the machine its answer; a machine that is gone (decommissioned) needs none."""
    handle = workflow.get_external_workflow_handle(machine_workflow_id(machine_id))
    try:
        await handle.signal(name, reply)
    except Exception as err:  # noqa: BLE001 (the signal's failure, whatever its type, is only logged)
        workflow.logger.warning("could not send %s to %s: %s", name, machine_id, err)

