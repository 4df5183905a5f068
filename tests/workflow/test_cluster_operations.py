"""Day-2 cluster operations (workflows/operation.py) with the fake activities of conftest.py:
the real cluster and machine workflows, the operation as the cluster's child, and fakes for
drain/reboot/await/version/uncordon that record every call in one shared, ordered log."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.worker import Worker

from activities.domain.cluster import ClusterStatus
from activities.domain.operations import OperationRequest, OperationStatus
from api.worker import WORKFLOWS
from tests.conftest import eventually
from tests.workflow.conftest import FakeMachine, Fakes, FakeSite
from tests.workflow.test_replay import replay_and_record
from tests.workflow.test_cluster_delete import current_details
from workflows import search


def record(site: FakeSite) -> list[tuple[str, str]]:
    """One ordered log of (action, machine id) over the node activities."""
    log: list[tuple[str, str]] = []
    fakes = site.fakes
    for fake, action in ((fakes.drain_node, "drain"), (fakes.uncordon_node, "uncordon"),
                         (fakes.reboot_member, "reboot"), (fakes.decommission_member, "decommission")):
        fake.behaviour = _logged(fake.behaviour, log, action)
    return log


def _logged(behaviour, log: list[tuple[str, str]], action: str):
    def run(arg: Any) -> Any:
        log.append((action, arg if isinstance(arg, str) else arg.machine_id))
        return behaviour(arg)

    return run


async def ready_cluster(site: FakeSite, masters: int, workers: int, **spec: Any) -> tuple[str, list[FakeMachine]]:
    """A ready cluster: the master-prime, the other masters one by one, then the workers."""
    name = await site.cluster(quorum=masters, **spec)
    machines = [site.machine(name) for _ in range(masters + workers)]
    for machine in machines[:masters]:
        await machine.ansible_to_ready()
    await asyncio.gather(*(m.ansible_to_ready() for m in machines[masters:]))
    await site.wait_cluster(name, lambda s: sum(m.ready for m in s.members) == masters + workers, "all ready")
    return name, machines


async def held(fake, calls: int, waiting: int) -> None:
    """`calls` attempts made so far, `waiting` of them held now."""
    async def there() -> bool:
        return len(fake.calls) == calls and fake.waiting == waiting

    await eventually(there, what=f"{calls} calls of {fake.name}, {waiting} held")


async def start(site: FakeSite, cluster: str, **request: Any) -> OperationStatus:
    return await site.cluster_handle(cluster).execute_update(
        "start_operation", OperationRequest(**request), result_type=OperationStatus)


async def act(site: FakeSite, op: OperationStatus, update: str) -> OperationStatus:
    return await site.client.get_workflow_handle(op.workflow_id).execute_update(update, result_type=OperationStatus)


async def op_status(site: FakeSite, op: OperationStatus) -> OperationStatus:
    return await site.client.get_workflow_handle(op.workflow_id).query("status", result_type=OperationStatus)


async def wait_op(site: FakeSite, op: OperationStatus, state: str, timeout: float = 60.0) -> OperationStatus:
    async def reached() -> bool:
        return (await op_status(site, op)).state == state

    await eventually(reached, timeout, what=f"{op.workflow_id} {state}")
    return await op_status(site, op)


async def refused(site: FakeSite, cluster: str, **request: Any) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await start(site, cluster, **request)
    return str(caught.value.cause)


async def _history(site: FakeSite, workflow_id: str):
    return await site.client.get_workflow_handle(workflow_id).fetch_history()


def roles(status: ClusterStatus) -> dict[str, str]:
    return {m.machine_id: m.role for m in status.members}


async def test_rolling_reboot_goes_control_plane_first_one_at_a_time_then_workers_in_batches(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=3, workers=3)
    log = record(fake_site)
    role = roles(await fake_site.cluster_status(cluster))
    fake_site.fakes.drain_node.hold()
    op = await start(fake_site, cluster, kind="rolling-reboot", batch=2)
    assert op.workflow_id == f"operation:{cluster}:1" and [n.role for n in op.nodes][:3] == [
        "master-prime", "master", "master"]
    drain = fake_site.fakes.drain_node
    for n in range(1, 4):  # each control-plane member alone: one drain held at a time
        await held(drain, calls=n, waiting=1)
        drain.release()
        drain.hold()
    await held(drain, calls=5, waiting=2)  # two workers drain side by side (batch 2)
    fake_site.fakes.drain_node.release()
    done = await wait_op(fake_site, op, "done")
    assert [n.step for n in done.nodes] == ["done"] * 6
    masters = [(a, i) for a, i in log if role[i] != "worker"]
    assert masters == [(a, m.machine_id) for m in machines[:3] for a in ("drain", "reboot", "uncordon")]
    first_worker_drain = log.index(next(e for e in log if e[0] == "drain" and role[e[1]] == "worker"))
    assert all(a == "uncordon" or role[i] != "worker" for a, i in log[:first_worker_drain]) and all(
        role[i] == "worker" for _, i in log[first_worker_drain:])
    waits = fake_site.fakes.await_machine.calls
    assert {(w.machine_id, w.after_boot) for w in waits if w.after_boot} == {(m.machine_id, 1) for m in machines}
    status = await fake_site.wait_cluster(cluster, lambda s: s.operation is not None and s.operation.state == "done",
                                          "the operation's last progress")
    assert status.operations_started == 1
    assert status.operation.nodes == [] and status.operation.request.machines == []  # the cluster's compact copy


def third_master_not_ready(site: FakeSite, blocker: str) -> asyncio.Event:
    """`await_machine` holds a quorum check of `blocker` (its current boot) until the event is set."""
    back = asyncio.Event()

    async def ready_when(wait):
        if wait.machine_id == blocker and wait.after_boot == 0:
            await back.wait()
        return "ready (fake)"

    site.fakes.await_machine.answer(ready_when)
    return back


async def reboot_held_by_quorum(site: FakeSite):
    """A rolling reboot of the first of three masters while the third is not ready: the operation,
    the call log, the blocker's and the target's ids, and the event that makes the blocker ready."""
    cluster, machines = await ready_cluster(site, masters=3, workers=0)
    log = record(site)
    blocker, target = machines[2].machine_id, machines[0].machine_id
    back = third_master_not_ready(site, blocker)
    op = await start(site, cluster, kind="rolling-reboot", machines=[target])
    return op, log, blocker, target, back


async def test_a_control_plane_member_not_ready_blocks_taking_another_down(fake_site):
    op, log, blocker, target, back = await reboot_held_by_quorum(fake_site)

    async def blocked() -> bool:
        status = await op_status(fake_site, op)
        asked = any(w.machine_id == blocker for w in fake_site.fakes.await_machine.calls)
        return asked and "ready before taking" in status.progress and "(quorum)" in status.progress
    await eventually(blocked, what="the operation to wait for the not-ready master")
    # Drained (it may go first), but not rebooted while a control-plane member is not ready.
    assert log == [("drain", target)]
    back.set()
    await wait_op(fake_site, op, "done")
    assert [a for a, _ in log] == ["drain", "reboot", "uncordon"]


async def test_upgrade_sets_the_version_checks_each_node_and_waits_for_resume_on_a_failure(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=1, workers=1, kubernetes_version="1.31.0")
    assert "skips a minor" in await refused(fake_site, cluster, kind="upgrade", kubernetes_version="1.33.0")
    assert "no downgrade" in await refused(fake_site, cluster, kind="upgrade", kubernetes_version="1.30.5")
    worker = machines[1].machine_id
    versions = {machines[0].machine_id: "v1.32.1", worker: "v1.31.0"}  # the worker did not upgrade
    fake_site.fakes.node_version.answer(lambda ref: versions[ref.machine_id])
    op = await start(fake_site, cluster, kind="upgrade", kubernetes_version="1.32.1")
    assert (await fake_site.cluster_status(cluster)).spec.kubernetes_version == "1.32.1"
    waiting = await wait_op(fake_site, op, "waiting")
    assert "runs v1.31.0, not 1.32.1" in waiting.error and waiting.nodes[1].step == "failed"
    assert waiting.nodes[0].step == "done"
    status = await fake_site.wait_cluster(cluster, lambda s: s.operation.state == "waiting", "waiting shown")
    assert "v1.31.0" in status.operation.progress
    reboots = len(fake_site.fakes.reboot_member.calls)
    versions[worker] = "v1.32.1"
    await act(fake_site, op, "resume")
    done = await wait_op(fake_site, op, "done")
    assert [n.step for n in done.nodes] == ["done", "done"]
    assert len(fake_site.fakes.reboot_member.calls) == reboots  # resumed at the check, not rebooted again
    await replay_and_record([("operation-upgrade-resumed", await _history(fake_site, op.workflow_id)),
                             ("cluster-upgraded", await fake_site.cluster_handle(cluster).fetch_history())])


async def test_pause_lets_the_node_in_hand_finish_and_resume_goes_on(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=1, workers=2)
    log = record(fake_site)
    workers = [m.machine_id for m in machines[1:]]
    fake_site.fakes.drain_node.hold()
    op = await start(fake_site, cluster, kind="rolling-reboot", machines=workers)
    await fake_site.fakes.drain_node.wait_waiting(1)
    await act(fake_site, op, "pause")
    fake_site.fakes.drain_node.release()
    paused = await wait_op(fake_site, op, "paused")
    assert [n.step for n in paused.nodes] == ["done", "pending"]
    assert [a for a, _ in log] == ["drain", "reboot", "uncordon"]
    await act(fake_site, op, "resume")
    await wait_op(fake_site, op, "done")
    assert [i for a, i in log if a == "drain"] == [n.machine_id for n in op.nodes]  # in the operation's order
    assert sorted(workers) == sorted(n.machine_id for n in op.nodes)


async def test_abort_mid_drain_uncordons_the_node_and_ends_aborted(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=1, workers=2)
    log = record(fake_site)
    fake_site.fakes.drain_node.hold()
    op = await start(fake_site, cluster, kind="rolling-reboot", machines=[m.machine_id for m in machines[1:]])
    await fake_site.fakes.drain_node.wait_waiting(1)
    await act(fake_site, op, "abort")
    aborted = await wait_op(fake_site, op, "aborted")
    first, second = aborted.nodes
    assert "aborted while draining: uncordoned again" in first.reason
    assert second.step == "skipped"
    assert ("uncordon", first.machine_id) in log and not any(a == "reboot" for a, _ in log)
    await fake_site.wait_cluster(cluster, lambda s: s.operation.state == "aborted", "aborted shown")
    await replay_and_record([("operation-aborted-mid-drain", await _history(fake_site, op.workflow_id))])


async def test_a_second_operation_and_a_delete_are_refused_naming_the_first(fake_site):
    cluster, _ = await ready_cluster(fake_site, masters=1, workers=1)
    fake_site.fakes.drain_node.hold()
    op = await start(fake_site, cluster, kind="rolling-reboot")
    message = await refused(fake_site, cluster, kind="rolling-reboot")
    assert f"cluster {cluster} is busy with rolling-reboot {op.workflow_id}" in message
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await fake_site.cluster_handle(cluster).execute_update("delete", result_type=ClusterStatus)
    assert op.workflow_id in str(caught.value.cause) and "abort it first" in str(caught.value.cause)
    await act(fake_site, op, "abort")
    fake_site.fakes.drain_node.release()
    await wait_op(fake_site, op, "aborted")
    await fake_site.wait_cluster(cluster, lambda s: s.operation.state == "aborted", "aborted shown")
    second = await start(fake_site, cluster, kind="rolling-reboot")  # the first ended: the next may go
    assert second.workflow_id.endswith(":2")
    await wait_op(fake_site, second, "done")


async def test_scale_down_refuses_a_quorum_breach_and_goes_workers_first(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=3, workers=1)
    log = record(fake_site)
    prime, master, other, worker = (m.machine_id for m in machines)
    assert "would break quorum" in await refused(fake_site, cluster, kind="scale-down", machines=[master, other])
    assert "not members" in await refused(fake_site, cluster, kind="scale-down", machines=["nobody"])
    op = await start(fake_site, cluster, kind="scale-down", machines=[master, worker])
    await wait_op(fake_site, op, "done")
    assert [(a, i) for a, i in log] == [("decommission", worker), ("decommission", master)]
    status = await fake_site.wait_cluster(cluster, lambda s: len(s.members) == 2, "two members left")
    assert {m.machine_id for m in status.members} == {prime, other}


async def test_deletion_decommissions_workers_first_then_the_master_prime(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=1, workers=2)
    log = record(fake_site)
    await fake_site.cluster_handle(cluster).execute_update("delete", result_type=ClusterStatus)
    await fake_site.client.get_workflow_handle(f"cluster:{cluster}").result()
    order = [i for a, i in log if a == "decommission"]
    assert sorted(order[:2]) == sorted(m.machine_id for m in machines[1:]) and order[2:] == [machines[0].machine_id]


async def test_a_worker_killed_mid_drain_resumes_the_operation(client, settings, unique):
    fakes, queue = Fakes(), unique("fakes")
    site = FakeSite(client, settings, queue, fakes, unique)
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=fakes.activities()):
        cluster, machines = await ready_cluster(site, masters=1, workers=1)
        fakes.drain_node.hold()
        op = await start(site, cluster, kind="rolling-reboot", machines=[machines[1].machine_id])
        await fakes.drain_node.wait_waiting(1)
    fakes.drain_node.release()  # the worker is gone, mid-drain; another one takes over
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=fakes.activities()):
        done = await wait_op(site, op, "done", timeout=120)
    assert done.nodes[0].step == "done" and len(fakes.drain_node.calls) >= 2  # the drain was tried again
    assert len(fakes.uncordon_node.calls) == 1


async def test_the_operation_is_its_own_workflow_in_the_web_ui_and_outlives_its_clusters_run(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=1, workers=1)
    fake_site.fakes.drain_node.hold()
    op = await start(fake_site, cluster, kind="rolling-reboot", machines=[machines[1].machine_id])
    await fake_site.fakes.drain_node.wait_waiting(1)
    handle = fake_site.client.get_workflow_handle(op.workflow_id)
    described = await handle.describe()
    assert await described.static_summary() == f"rolling-reboot of cluster {cluster} · 1 node · batch 1"
    assert described.typed_search_attributes.get(search.CLUSTER) == cluster
    assert described.raw_description.workflow_execution_info.parent_execution.workflow_id == f"cluster:{cluster}"
    assert "**running** · draining" in await current_details(handle)
    assert f"**Operation** rolling-reboot `{op.workflow_id}` (running)" in await current_details(
        fake_site.cluster_handle(cluster))
    # The cluster's run ends (as at each continue-as-new): the operation, abandoned, goes on.
    await fake_site.cluster_handle(cluster).terminate("the run ends")
    fake_site.fakes.drain_node.release()
    done = await wait_op(fake_site, op, "done")
    assert done.nodes[0].step == "done"
    assert "**done**" in await current_details(handle)


async def test_a_failed_drain_waits_and_a_lone_control_plane_says_the_api_is_down(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=1, workers=0)
    fakes = fake_site.fakes
    fakes.drain_node.fail(message="pod disruption budget (fake)", non_retryable=True)
    op = await start(fake_site, cluster, kind="rolling-reboot")
    waiting = await wait_op(fake_site, op, "waiting")
    assert "failed draining: pod disruption budget (fake)" in waiting.error and fakes.reboot_member.calls == []
    fakes.reboot_member.hold()
    await act(fake_site, op, "resume")
    await fakes.reboot_member.wait_waiting(1)
    rebooting = await op_status(fake_site, op)
    assert "the Kubernetes API is down until it is back" in rebooting.progress
    fakes.reboot_member.release()
    await wait_op(fake_site, op, "done")
    assert len(fakes.drain_node.calls) == 2 and len(fakes.uncordon_node.calls) == 1


async def test_a_resume_at_rebooting_checks_the_quorum_again(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=3, workers=0)
    log = record(fake_site)
    blocker, target = machines[2].machine_id, machines[0].machine_id
    fake_site.fakes.reboot_member.fail(message="machine busy (fake)", non_retryable=True)
    op = await start(fake_site, cluster, kind="rolling-reboot", machines=[target])
    assert "failed rebooting" in (await wait_op(fake_site, op, "waiting")).error
    back = third_master_not_ready(fake_site, blocker)
    asked = len(fake_site.fakes.await_machine.calls_for(blocker))
    await act(fake_site, op, "resume")

    async def blocked() -> bool:
        return len(fake_site.fakes.await_machine.calls_for(blocker)) > asked and "(quorum)" in (
            await op_status(fake_site, op)).progress
    await eventually(blocked, what="the resumed reboot to wait for quorum")
    assert len(fake_site.fakes.reboot_member.calls) == 1  # only the failed attempt: no reboot before quorum
    back.set()
    await wait_op(fake_site, op, "done")


async def test_an_abort_in_the_quorum_wait_uncordons_and_says_aborted_not_cancelled(fake_site):
    op, log, blocker, target, back = await reboot_held_by_quorum(fake_site)

    async def blocked() -> bool:
        return "(quorum)" in (await op_status(fake_site, op)).progress
    await eventually(blocked, what="the quorum wait")
    await act(fake_site, op, "abort")
    aborted = await wait_op(fake_site, op, "aborted")
    back.set()
    assert aborted.error == "aborted by an operator" and "Cancelled" not in aborted.nodes[0].reason
    assert aborted.nodes[0].step == "skipped" and aborted.nodes[0].reason == "aborted while rebooting: uncordoned again"
    assert [a for a, _ in log] == ["drain", "uncordon"]


async def test_an_abort_during_a_decommission_says_its_machine_workflow_finishes_it(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=1, workers=2)
    workers = [m.machine_id for m in machines[1:]]
    fake_site.fakes.decommission_member.hold()
    op = await start(fake_site, cluster, kind="scale-down", machines=workers)
    await fake_site.fakes.decommission_member.wait_waiting(1)
    await act(fake_site, op, "abort")
    aborted = await wait_op(fake_site, op, "aborted")
    fake_site.fakes.decommission_member.release()
    first, second = aborted.nodes
    assert first.step == "decommissioning" and first.reason == (
        f"aborted while decommissioning: its machine workflow finishes it (tempered machine show {first.machine_id})")
    assert second.step == "skipped" and second.reason == "not started: aborted"


async def test_manual_power_says_power_cycle_now_and_an_abort_from_waiting_says_aborted(fake_site):
    cluster, machines = await ready_cluster(fake_site, masters=1, workers=1)
    worker = machines[1]
    node_name = (await fake_site.cluster_status(cluster)).members[1].node_name or worker.machine_id
    back = asyncio.Event()

    async def ready_when(wait):
        if wait.after_boot > 0:
            await back.wait()
        return "ready (fake)"

    fake_site.fakes.await_machine.answer(ready_when)  # power_target's fake answers manual power
    op = await start(fake_site, cluster, kind="rolling-reboot", machines=[worker.machine_id])
    cycle = f"power-cycle {node_name} now (manual power: no BMC set)"

    async def told() -> bool:
        status = await op_status(fake_site, op)
        return status.nodes[0].step == "waiting-ready" and status.nodes[0].reason == cycle and cycle in status.progress
    await eventually(told, what="the operation to ask for a power-cycle")
    assert fake_site.fakes.power_target.calls_for(worker.machine_id)
    back.set()
    await wait_op(fake_site, op, "done")
    # The cluster learns of the end by the operation's last signal: a second one starts after that.
    await fake_site.wait_cluster(cluster, lambda s: s.operation.state == "done", "the cluster to see it done")
    fake_site.fakes.drain_node.fail(message="pod disruption budget (fake)", non_retryable=True)
    second = await start(fake_site, cluster, kind="rolling-reboot", machines=[worker.machine_id])
    await wait_op(fake_site, second, "waiting")
    await act(fake_site, second, "abort")
    aborted = await wait_op(fake_site, second, "aborted")
    assert aborted.error.startswith("aborted by an operator while it waited: ")
    assert "failed draining: pod disruption budget (fake)" in aborted.error


async def test_an_abort_that_comes_with_the_quorum_answer_stops_before_the_reboot(fake_site):
    """The race of ABORT_PATCH, forced: the abort and the last quorum check's result reach the
    operation in one workflow task (no workflow worker runs while both arrive). The activity's
    result wins over the abort's cancellation, so the node must stop on its own before rebooting."""
    op, log, blocker, target, back = await reboot_held_by_quorum(fake_site)
    handle = fake_site.client.get_workflow_handle(op.workflow_id)

    async def blocked() -> bool:
        return "(quorum)" in (await op_status(fake_site, op)).progress
    await eventually(blocked, what="the quorum wait")

    async def task_pending() -> bool:
        return (await handle.describe()).raw_description.HasField("pending_workflow_task")

    async def answered() -> bool:
        return any([event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                    and event.event_id > quorum_started async for event in handle.fetch_history_events()])

    quorum_started = max([e.event_id async for e in handle.fetch_history_events()])
    async with fake_site.workflows_paused():
        abort = asyncio.create_task(act(fake_site, op, "abort"))
        await eventually(task_pending, what="the abort to reach the server")
        back.set()
        await eventually(answered, what="the quorum check's result to reach the server")
    await abort
    aborted = await wait_op(fake_site, op, "aborted")
    assert aborted.nodes[0].reason == "aborted while rebooting: uncordoned again"
    assert [a for a, _ in log] == ["drain", "uncordon"]  # no reboot
