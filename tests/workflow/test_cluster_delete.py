"""Cluster delete (the cluster workflow's `delete` Update, workflows/deletion.py) with fake
activities (tests/workflow/conftest.py) and a fake `run_terraform`: members decommissioned
through their own machine workflows (the real `decommission_member` activity), then the
on-delete tasks, destroy, api.<cluster> removed, the database told to forget, the workflow ends.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.worker import Worker

from activities.domain.cluster import ClusterStatus
from activities.domain.ids import cluster_workflow_id
from activities.domain.machine import AdmitRequest
from activities.domain.terraform import TerraformResult, TerraformRun, TerraformTask
from activities.storage import db
from activities.storage.models import Cluster, Machine
from activities.storage.settings import Settings
from api import temporal
from api.worker import WORKFLOWS
from tests.lifecycle import admitted_machine
from tests.workflow.test_durability import private_stack  # noqa: F401 (a fixture)
from tests.workflow.test_replay import replay_and_record
from tests.workflow.conftest import Fake, FakeMachine, Fakes, FakeSite

TASKS = [
    TerraformTask(name="first", module="node-record", stage="on-delete"),
    TerraformTask(name="second", module="node-record", stage="on-delete"),
]


@dataclass
class DeleteSite(FakeSite):
    run_terraform: Fake | None = None

    def worker(self) -> Worker:
        assert self.run_terraform is not None
        self.fakes.run_terraform = self.run_terraform  # this test's fake, under the activity's name
        return Worker(self.client, task_queue=self.task_queue, workflows=WORKFLOWS, activities=self.fakes.activities())

    def terraform_runs(self) -> list[tuple[str, str]]:
        assert self.run_terraform is not None
        return [(run.action, run.task.name) for run in self.run_terraform.calls]

    async def ready_cluster(self, machines: int = 2) -> tuple[str, list[FakeMachine]]:
        """A ready cluster of `machines` members (a master-prime and workers), joined with Ansible."""
        cluster = await self.cluster(quorum=1, terraform=TASKS)
        members = [self.machine(cluster) for _ in range(machines)]
        await members[0].ansible_to_ready()
        await asyncio.gather(*(m.ansible_to_ready() for m in members[1:]))
        await self.wait_cluster(cluster, lambda s: len(s.members) == machines and s.phase == "ready", "ready")
        return cluster, members

    async def result(self, cluster: str) -> ClusterStatus:
        """What the cluster workflow returned when it ended."""
        handle = self.client.get_workflow_handle(cluster_workflow_id(cluster), result_type=ClusterStatus)
        return await handle.result()

    async def delete(self, cluster: str) -> ClusterStatus:
        return await self.cluster_handle(cluster).execute_update("delete", result_type=ClusterStatus)


async def current_details(handle) -> str:
    """The Web UI's current details of a workflow (the built-in metadata query)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


def _terraform(run: TerraformRun) -> TerraformResult:
    return TerraformResult(action=run.action, summary=f"{run.action} {run.task.name} (fake)")


@pytest_asyncio.fixture
async def site(client: Client, settings: Settings, unique) -> AsyncIterator[DeleteSite]:
    fakes = Fakes()
    site = DeleteSite(client, settings, unique("delete"), fakes, unique, run_terraform=Fake("run_terraform", _terraform))
    worker = site.worker()
    async with worker:
        yield site
        for fake in [*fakes.all(), site.run_terraform]:
            fake.release()


async def test_delete_decommissions_every_member_then_runs_terraform_removes_dns_and_forgets(site: DeleteSite):
    fakes = site.fakes
    cluster, members = await site.ready_cluster(2)
    fakes.kubeadm_decommission.hold()

    started = await site.delete(cluster)
    assert (started.phase, started.deletion.step, started.deletion.members_at_start) == ("deleting", "decommissioning", 2)
    await fakes.kubeadm_decommission.wait_waiting(1)  # the worker first: the master-prime waits for it
    shown = await site.wait_cluster(cluster, lambda s: s.deletion.progress.startswith("decommissioning 2 of 2"), "progress")
    names = [m.node_name or m.machine_id for m in shown.members]
    assert shown.deletion.progress == f"decommissioning 2 of 2 members: {', '.join(names)}"
    again = await site.delete(cluster)  # answers the progress; starts nothing
    assert again.deletion.step == "decommissioning" and fakes.decommission_member.calls == [members[1].machine_id]
    assert site.terraform_runs() == []  # nothing else before the members have left

    fakes.kubeadm_decommission.release()
    result = await site.result(cluster)

    assert (result.members, result.deletion.step, result.closing) == ([], "done", True)
    assert sorted(fakes.decommission_member.calls) == sorted(m.machine_id for m in members)
    for m in members:
        assert (await m.status()).state == "decommissioned"
    assert site.terraform_runs() == [("apply", "first"), ("apply", "second"), ("destroy", "second"), ("destroy", "first")]
    assert fakes.publish_api_name.calls[-1].machine_ids == []  # api.<cluster> removed
    assert result.deletion.dns == f"api.{cluster} -> 0 (fake)"
    assert fakes.forget_cluster.calls == [cluster]
    await replay_and_record([("cluster-deleted", await site.cluster_handle(cluster).fetch_history())])


async def test_admissions_are_refused_while_deleting(site: DeleteSite):
    cluster, members = await site.ready_cluster(1)
    retired = site.machine(None)  # registered into the cluster (say the database), retired since
    await retired.pxe()
    await retired.update("decommission")
    await site.client.get_workflow_handle(retired.handle.id).result()
    ghost = site.unique("m")  # registered, its workflow never started
    site.fakes.cluster_machines.answer([retired.machine_id, ghost])
    site.fakes.kubeadm_decommission.hold()
    await site.delete(cluster)
    await site.fakes.kubeadm_decommission.wait_waiting(1)
    details = await current_details(site.cluster_handle(cluster))
    assert "**Deleting** (decommissioning): decommissioning" in details

    newcomer = AdmitRequest(machine_id=site.unique("m"), cluster=cluster, is_new=True)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await site.cluster_handle(cluster).execute_update("admit", newcomer)
    assert f"cluster {cluster} is being deleted" in str(refused.value.cause)
    site.fakes.kubeadm_decommission.release()
    result = await site.result(cluster)
    assert result.deletion.machines == [members[0].machine_id, retired.machine_id, ghost]
    assert sorted(result.deletion.retired) == sorted(result.deletion.machines)  # gone or retired: done


async def test_a_failed_member_decommission_waits_for_an_operator_retry(site: DeleteSite):
    fakes = site.fakes
    cluster, members = await site.ready_cluster(2)
    fakes.kubeadm_decommission.answer(
        lambda r: _fail_once(r, members[1].machine_id, fakes.kubeadm_decommission)
    )
    with pytest.raises(WorkflowUpdateFailedError) as nothing:
        await site.cluster_handle(cluster).execute_update("retry", result_type=ClusterStatus)
    assert "nothing to retry" in str(nothing.value.cause)

    await site.delete(cluster)
    shown = await site.wait_cluster(cluster, lambda s: bool(s.deletion.failed), "a failure")
    assert shown.deletion.retired == []  # the master-prime waits for the worker that failed
    assert list(shown.deletion.failed) == [members[1].machine_id]
    assert "drain refused (fake)" in shown.deletion.failed[members[1].machine_id]
    assert "Decommission failed for" in shown.deletion.progress
    assert f"tempered cluster retry {cluster}" in shown.deletion.progress
    assert shown.deletion.progress.startswith("decommissioning 2 of 2 members")
    assert site.terraform_runs() == []  # it waits

    retried = await site.cluster_handle(cluster).execute_update("retry", result_type=ClusterStatus)
    assert retried.deletion.failed == {}
    result = await site.result(cluster)
    assert (result.members, result.deletion.step) == ([], "done")
    assert fakes.decommission_member.calls.count(members[1].machine_id) == 2
    assert (await members[1].status()).state == "decommissioned"
    assert fakes.forget_cluster.calls == [cluster]


def _fail_once(request, machine_id: str, fake: Fake) -> str:
    """kubeadm_decommission that refuses `machine_id`'s first drain (non-retryable), as a node
    whose drain is blocked would."""
    from temporalio.exceptions import ApplicationError

    if request.machine_id == machine_id and [c.machine_id for c in fake.calls].count(machine_id) == 1:
        raise ApplicationError("drain refused (fake)", non_retryable=True)
    return f"node {request.node_name} deleted (fake)"


async def test_a_worker_restarted_mid_deletion_resumes_where_it_was(client: Client, settings: Settings, unique):
    fakes = Fakes()
    site = DeleteSite(client, settings, unique("delete"), fakes, unique, run_terraform=Fake("run_terraform", _terraform))
    first = site.worker()
    async with first:
        cluster, members = await site.ready_cluster(1)
        site.run_terraform.hold()
        await site.delete(cluster)
        await site.run_terraform.wait_waiting(1)  # the members are gone; on-delete's first apply runs
    # The worker is gone (its held attempt cancelled); a new worker, with no cache, takes over.
    site.run_terraform.release()
    async with site.worker():
        result = await site.result(cluster)
    assert (result.members, result.deletion.step) == ([], "done")
    assert fakes.decommission_member.calls == [members[0].machine_id]  # not decommissioned twice
    runs = site.terraform_runs()
    assert runs[0] == runs[1] == ("apply", "first")  # the interrupted attempt, then its retry
    assert runs[2:] == [("apply", "second"), ("destroy", "second"), ("destroy", "first")]
    assert fakes.forget_cluster.calls == [cluster]


async def test_a_killed_worker_mid_deletion_loses_nothing(private_stack, unique):
    """The real worker process and activities (database, Temporal client): killed (SIGKILL) just
    after the deletion started, started again, the deletion completes."""
    worker, client, settings = private_stack.worker, private_stack.client, private_stack.settings
    m = await admitted_machine(client, settings, unique)
    with db.session(settings.database_url) as s:
        s.merge(Machine(id=m.machine_id, cluster=m.cluster))
        s.commit()
    started = await temporal.cluster(client, m.cluster).execute_update("delete", result_type=ClusterStatus)
    assert started.phase == "deleting"
    worker.stop(signal.SIGKILL)
    worker.start()

    handle = client.get_workflow_handle(cluster_workflow_id(m.cluster), result_type=ClusterStatus)
    result = await asyncio.wait_for(handle.result(), 120)  # an activity the killed worker held: 30 s
    assert (result.deletion.step, result.deletion.retired, result.members) == ("done", [m.machine_id], [])
    assert (await m.status()).state == "decommissioned"
    with db.session(settings.database_url) as s:
        assert s.get(Cluster, m.cluster) is None
        machine = s.get(Machine, m.machine_id)
        assert machine.cluster is None and machine.decommissioned_at is not None  # its facts stay
