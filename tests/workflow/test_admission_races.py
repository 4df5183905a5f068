"""Admission by Signal when something happens while the cluster works on an ask
(workflows/admission_ask.py, workflows/admission_queue.py): the cluster becomes ready while a held
machine's role is recorded; asks withdrawn while the batch's rules are evaluated again; a cluster
that never answers. Real workflows, fake activities (tests/workflow/conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.domain.ids import machine_workflow_id
from activities.domain.machine import BootInstruction, BootRequest, MachineStatus
from activities.domain.rules import RulesRequest, RulesVerdict
from api.worker import WORKFLOWS
from tests.conftest import eventually
from tests.workflow.conftest import Fake, FakeMachine, FakeSite
from tests.workflow.test_admission_batches import prime_then_workers_except
from workflows.machine import MachineWorkflow


async def _blocked_at(fake: Fake, attempts: int) -> None:
    """The fake's `attempts`-th attempt is the one blocked by `hold` now."""

    async def there() -> bool:
        return len(fake.calls) >= attempts and fake.waiting == 1

    await eventually(there, 30.0, what=f"attempt {attempts} of {fake.name} held")


async def _took_release(handle: WorkflowHandle) -> bool:
    """The machine workflow took a `release` Signal (a workflow task completed after it)."""
    events = [event async for event in handle.fetch_history_events()]
    for i, event in enumerate(events):
        attributes = event.workflow_execution_signaled_event_attributes
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED and attributes.signal_name == "release":
            return any(later.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for later in events[i:])
    return False


async def test_a_machine_held_while_the_cluster_becomes_ready_is_admitted_not_left_holding(fake_site: FakeSite):
    cluster = await fake_site.cluster(quorum=1)
    prime, worker = fake_site.machine(cluster), fake_site.machine(cluster)
    await prime.discover()
    await prime.wait_state("post-discover")
    roles = fake_site.fakes.record_roles
    roles.hold()  # the worker's role is being recorded ...
    await worker.discover()
    await _blocked_at(roles, 2)
    await fake_site.wait_cluster(cluster, lambda s: worker.machine_id in s.held, "the worker decided held")

    await prime.pxe()  # ... while the master-prime joins and the cluster releases its held machines
    await prime.phone_home()
    await prime.wait_state("ready")
    await fake_site.wait_cluster(cluster, lambda s: s.phase == "ready" and not s.held, "ready, held released")

    async def took_release() -> bool:
        return await _took_release(worker.handle)

    await eventually(took_release, 30.0, what="the worker took its release while it asked")
    assert (await worker.status()).state == "discover"
    roles.release()

    admitted = await worker.wait_state("post-discover", "holding")
    assert admitted.state == "post-discover" and admitted.role == "worker", admitted.reason
    assert (await fake_site.cluster_status(cluster)).held == []


async def test_asks_withdrawn_while_the_rules_are_evaluated_again_are_not_committed(fake_site: FakeSite):
    cluster = await fake_site.cluster(quorum=1)
    first, a, b, c = (fake_site.machine(cluster) for _ in range(4))
    fake_site.fakes.evaluate_rules.answer(prime_then_workers_except("none"))
    batches = fake_site.fakes.evaluate_rules_batch
    handle = fake_site.cluster_handle(cluster)
    batches.hold()
    await first.discover()
    await _blocked_at(batches, 1)
    for machine in (a, b, c):  # (in this order: the batch's)
        await machine.discover()
    await fake_site.wait_cluster(cluster, lambda s: len(s.admission_queue) == 4, "every ask queued")
    batches.release()
    batches.hold()  # the batch of a, b, c is evaluated ...
    await _blocked_at(batches, 2)

    await handle.signal("member_left", c.machine_id)  # ... c leaves: evaluated again under the lock ...
    await fake_site.wait_cluster(cluster, lambda s: len(s.admission_queue) == 2, "c withdrawn")
    batches.release()
    batches.hold()
    await _blocked_at(batches, 3)
    await handle.signal("member_left", b.machine_id)  # ... and b leaves during that evaluation
    await fake_site.wait_cluster(cluster, lambda s: len(s.admission_queue) == 1, "b withdrawn")
    batches.release()

    assert (await a.wait_state("post-discover", "holding")).role == "worker"
    status = await fake_site.wait_cluster(cluster, lambda s: not s.admission_queue, "the queue emptied")
    assert sorted(m.machine_id for m in status.members) == sorted([first.machine_id, a.machine_id])
    recorded = {k for call in fake_site.fakes.record_roles.calls for k in call}
    assert recorded == {first.machine_id, a.machine_id}
    assert [[r.machine_id for r in call.candidates] for call in batches.calls[1:]] == [
        [a.machine_id, b.machine_id, c.machine_id], [a.machine_id, b.machine_id], [a.machine_id]]


@workflow.defn(name="MachineWorkflowAskingBriefly")
class MachineAskingBriefly(MachineWorkflow):
    """The machine workflow, waiting 3 seconds for its cluster's answer instead of 10 minutes."""

    _answer_timeout = timedelta(seconds=3)

    @workflow.run
    async def run(self, status: MachineStatus) -> MachineStatus:
        return await super().run(status)


@dataclass
class BriefMachine(FakeMachine):
    async def pxe(self) -> BootInstruction:
        status = MachineStatus(machine_id=self.machine_id, cluster=self.cluster, mac=self.mac)
        start = WithStartWorkflowOperation(
            "MachineWorkflowAskingBriefly", status, id=machine_workflow_id(self.machine_id),
            task_queue=self.task_queue, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE, result_type=MachineStatus,
        )
        return await self.client.execute_update_with_start_workflow(
            "pxe_boot", BootRequest(mac=self.mac, ip=self.ip), start_workflow_operation=start,
            result_type=BootInstruction,
        )


async def test_a_machine_its_cluster_never_answers_parks_in_failed_admit_and_retries(fake_site: FakeSite):
    cluster = await fake_site.cluster(quorum=1)
    queue = fake_site.unique("brief")
    brief = Worker(fake_site.client, task_queue=queue, workflows=[*WORKFLOWS, MachineAskingBriefly],
                   activities=fake_site.fakes.activities(), workflow_runner=UnsandboxedWorkflowRunner())
    async with brief:
        template = fake_site.machine(cluster)
        machine = BriefMachine(template.client, template.settings, template.machine_id, cluster,
                               mac=template.mac, ip=template.ip, task_queue=queue)
        fake_site.fakes.evaluate_rules_batch.hold()  # the cluster never gets to answer
        await machine.discover()

        parked = await machine.wait_state("failed:admit")
        assert parked.reason == (
            f"cluster {cluster!r} did not answer within 10 minutes: is its workflow running, its worker up to date?"
            f" (retry with: tempered machine retry {machine.machine_id})"
        )
        fake_site.fakes.evaluate_rules_batch.release()
        await fake_site.wait_cluster(cluster, lambda s: not s.admission_queue, "the late ask admitted")
        await machine.update("retry")
        admitted = await machine.wait_state("post-discover")
        assert admitted.role == "master-prime"
        assert (await fake_site.cluster_status(cluster)).members[0].machine_id == machine.machine_id


async def test_a_batch_whose_rules_activity_fails_is_admitted_one_at_a_time_and_only_the_bad_one_fails(
    fake_site: FakeSite,
):
    cluster = await fake_site.cluster(quorum=1)
    first, *batch = (fake_site.machine(cluster) for _ in range(4))
    bad = batch[1]

    def rules(request: RulesRequest) -> RulesVerdict:
        if request.machine_id == bad.machine_id:  # (its facts break the sandbox, say: no verdict at all)
            raise ApplicationError("rules sandbox crashed", non_retryable=True)
        return prime_then_workers_except("none")(request)

    fake_site.fakes.evaluate_rules.answer(rules)
    batches = fake_site.fakes.evaluate_rules_batch
    batches.hold()
    await first.discover()
    await _blocked_at(batches, 1)
    for machine in batch:  # (in this order: the batch's)
        await machine.discover()
    await fake_site.wait_cluster(cluster, lambda s: len(s.admission_queue) == 4, "every ask queued")
    batches.release()

    parked = await bad.wait_state("failed:admit")
    assert parked.reason.startswith(f"cluster {cluster!r} refused the machine: rules not evaluated"), parked.reason
    for machine in (batch[0], batch[2]):
        assert (await machine.wait_state("post-discover", "holding")).role == "worker"  # (held: no control plane)
    assert [[r.machine_id for r in call.candidates] for call in batches.calls[1:]] == [
        [m.machine_id for m in batch], *([m.machine_id] for m in batch)]
    status = await fake_site.wait_cluster(cluster, lambda s: not s.admission_queue, "the queue emptied")
    assert sorted(m.machine_id for m in status.members) == sorted([first.machine_id, batch[0].machine_id,
                                                                   batch[2].machine_id])
