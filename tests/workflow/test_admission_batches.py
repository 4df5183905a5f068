"""Admission by Signal, in batches (workflows/admission_ask.py, workflows/admission_queue.py): many
machines asking at once make one master-prime and no Update; a rule that fails for one machine of
a batch holds only that one; asks survive the cluster's continue-as-new; a machine waiting while
its cluster is deleted is answered. Real workflows, fake activities (tests/workflow/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from activities.domain.cluster import ClusterSpec, ClusterStatus
from activities.domain.ids import cluster_workflow_id
from activities.domain.rules import RulesRequest, RulesVerdict
from tests.workflow.conftest import FakeMachine, FakeSite


async def _event_types(site: FakeSite, handle: WorkflowHandle, run_id: str | None = None) -> Counter:
    history = site.client.get_workflow_handle(handle.id, run_id=run_id)
    return Counter([event.event_type async for event in history.fetch_history_events()])


async def _ask_together(site: FakeSite, cluster: str, machines: list[FakeMachine]) -> None:
    """The first ask's batch is held in its rules while all the others queue behind it."""
    site.fakes.evaluate_rules.hold()
    await asyncio.gather(*(m.discover() for m in machines))
    await site.fakes.evaluate_rules.wait_waiting(1)
    await site.wait_cluster(cluster, lambda s: len(s.admission_queue) == len(machines), "every ask queued")
    site.fakes.evaluate_rules.release()


def prime_then_workers_except(bad: str):
    """Rules: master-prime while the cluster has none, worker otherwise; they fail for `bad`."""

    def rules(request: RulesRequest) -> RulesVerdict:
        if request.machine_id == bad:
            return RulesVerdict(has_rules=True, errors=["rule gpu: TypeError: facts.gpus is undefined"])
        has_prime = any(m.role == "master-prime" for m in request.members)
        return RulesVerdict(has_rules=True, role="worker" if has_prime else "master-prime")

    return rules


async def test_sixty_machines_asking_at_once_make_one_master_prime_in_batches_and_no_update(fake_site: FakeSite):
    cluster = await fake_site.cluster(quorum=3)
    machines = [fake_site.machine(cluster) for _ in range(60)]

    await _ask_together(fake_site, cluster, machines)
    settled = await asyncio.gather(*(m.wait_state("post-discover", "holding", timeout=120) for m in machines))

    assert Counter(s.role for s in settled) == {"master-prime": 1, "master": 2, "worker": 57}
    status = await fake_site.wait_cluster(cluster, lambda s: not s.admission_queue, "the queue emptied")
    assert sorted(m.machine_id for m in status.members) == sorted(m.machine_id for m in machines)
    batches = await fake_site.cluster_handle(cluster).query("admission_batches", result_type=list[int])
    print(f"admission batches for 60 machines: {batches}")
    # the held first batch (the asks one workflow task took), then every ask that queued behind it
    assert len(batches) == 2 and sum(batches) == 60
    assert len(fake_site.fakes.evaluate_rules_batch.calls) == 2
    assert fake_site.fakes.admit_machine.calls == []
    events = await _event_types(fake_site, fake_site.cluster_handle(cluster))
    assert events[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED] == 0  # no Update for admission
    assert events[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED] == 60
    recorded = {k: v for call in fake_site.fakes.record_roles.calls for k, v in call.items()}
    assert recorded == {s.machine_id: s.role for s in settled}


async def test_a_rules_failure_in_a_batch_holds_only_that_machine(fake_site: FakeSite):
    cluster = await fake_site.cluster(quorum=1)
    machines = [fake_site.machine(cluster) for _ in range(6)]
    bad = machines[3]
    fake_site.fakes.evaluate_rules.answer(prime_then_workers_except(bad.machine_id))

    await _ask_together(fake_site, cluster, machines)
    settled = {s.machine_id: s for s in await asyncio.gather(*(m.wait_state("holding", "post-discover") for m in machines))}

    assert settled[bad.machine_id].reason.startswith("rules failed, fix them and the machine is re-evaluated: rule gpu")
    others = [settled[m.machine_id] for m in machines if m is not bad]
    assert Counter(s.role for s in others) == {"master-prime": 1, "worker": 4}
    status = await fake_site.cluster_status(cluster)
    assert bad.machine_id not in {m.machine_id for m in status.members} and len(status.members) == 5
    # In the batch, each machine's rules saw the ones before it that were admitted (not the failed one).
    admitted_before: list[str] = []
    for call in fake_site.fakes.evaluate_rules.calls:
        assert [m.machine_id for m in call.members] == admitted_before, call.machine_id
        if call.machine_id != bad.machine_id:
            admitted_before.append(call.machine_id)
    assert len(fake_site.fakes.evaluate_rules.calls) == 6


async def test_asks_queued_when_the_cluster_continues_as_new_are_admitted_by_the_next_run(fake_site: FakeSite):
    name = fake_site.unique("c")
    status = ClusterStatus(spec=ClusterSpec(name=name, quorum_count=1), continue_after_events=20)
    handle = await fake_site.client.start_workflow(
        "ClusterWorkflow", status, id=cluster_workflow_id(name), task_queue=fake_site.task_queue
    )
    machines = [fake_site.machine(name) for _ in range(4)]

    await _ask_together(fake_site, name, machines)
    settled = await asyncio.gather(*(m.wait_state("post-discover", "holding") for m in machines))

    assert Counter(s.role for s in settled) == {"master-prime": 1, "worker": 3}
    latest = await fake_site.cluster_handle(name).describe()
    assert latest.run_id != handle.first_execution_run_id  # it continued as new with asks still queued
    first_run = await _event_types(fake_site, handle, handle.first_execution_run_id)
    assert first_run[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED] == 4  # every ask went to the first run
    assert first_run[EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED] == 2  # one batch (rules, roles): the rest carried
    final = await fake_site.cluster_status(name)
    assert len(final.members) == 4 and final.admission_queue == []


async def test_a_machine_waiting_while_its_cluster_is_deleted_parks_in_failed_admit(fake_site: FakeSite):
    cluster = await fake_site.cluster(quorum=1)
    first, second = fake_site.machine(cluster), fake_site.machine(cluster)
    fake_site.fakes.evaluate_rules.hold()
    await first.discover()
    await fake_site.fakes.evaluate_rules.wait_waiting(1)
    await second.discover()
    await fake_site.wait_cluster(cluster, lambda s: len(s.admission_queue) == 2, "both asks queued")

    await fake_site.cluster_handle(cluster).execute_update("delete", result_type=ClusterStatus)
    fake_site.fakes.evaluate_rules.release()

    for m in (first, second):
        parked = await m.wait_state("failed:admit")
        assert parked.reason.startswith(f"cluster {cluster!r} refused the machine: cluster {cluster} is being deleted")
    late = fake_site.machine(cluster)  # a machine asking once the cluster workflow has ended
    await fake_site.cluster_handle(cluster).result()
    await late.discover()
    assert (await late.wait_state("failed:admit")).reason.startswith(f"cluster {cluster!r} is not running")
