"""The spec's Terraform tasks as steps of the cluster workflow (workflows/terraform_steps.py), with
fake activities (tests/workflow/conftest.py) and a fake `run_terraform` on the real Temporal dev
server: before-bootstrap before the master-prime's init (its output the endpoint of every JoinPlan),
a failed task parked until `retry`, after-ready once, `plan` as a dry run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowUpdateFailedError

from activities.domain.terraform import TaskStatus, TerraformResult, TerraformRun, TerraformTask
from activities.storage.settings import Settings
from tests.conftest import eventually
from tests.workflow.test_replay import replay_and_record
from tests.workflow.conftest import Fake, Fakes, took_signal
from tests.workflow.test_cluster_delete import DeleteSite, current_details

ENDPOINT = "192.0.2.10:6443"
VIP = TerraformTask(name="vip", module="vip-pool", stage="before-bootstrap",
                    outputs={"control_plane_endpoint": "endpoint"})
REGISTER = TerraformTask(name="register", module="node-record", stage="after-ready")


def _terraform(run: TerraformRun) -> TerraformResult:
    outputs = {"endpoint": ENDPOINT} if run.action == "apply" and run.task.name == "vip" else {}
    summary = "Plan: 1 to add, 0 to change, 0 to destroy." if run.action == "plan" else f"{run.action} (fake)"
    return TerraformResult(action=run.action, outputs=outputs, summary=summary, changes=run.action == "plan")


@pytest_asyncio.fixture
async def site(client: Client, settings: Settings, unique) -> AsyncIterator[DeleteSite]:
    fakes = Fakes()
    site = DeleteSite(client, settings, unique("tf"), fakes, unique, run_terraform=Fake("run_terraform", _terraform))
    async with site.worker():
        yield site
        for fake in [*fakes.all(), site.run_terraform]:
            fake.release()


async def replays(site: DeleteSite, cluster: str, name: str) -> None:
    """Replay the cluster's history (kept as `<version>-<name>.json` when recording a set)."""
    await replay_and_record([(name, await site.cluster_handle(cluster).fetch_history())])


async def asking_how_to_join(site: DeleteSite, machine) -> None:
    """The machine asked how to join (its ask waits in the cluster)."""

    async def asked() -> bool:
        return await took_signal(site.cluster_handle(machine.cluster), "request_join_plan", machine.machine_id)

    await eventually(asked, what="the join plan asked")


async def test_before_bootstrap_runs_before_init_and_its_output_is_every_members_endpoint(site: DeleteSite):
    fakes, terraform = site.fakes, site.run_terraform
    terraform.hold()
    cluster = await site.cluster(quorum=1, terraform=[VIP])
    await terraform.wait_waiting(1)
    prime, worker = site.machine(cluster), site.machine(cluster)
    joining = asyncio.create_task(prime.ansible_to_ready())
    await asking_how_to_join(site, prime)
    shown = await site.cluster_status(cluster)
    assert [(t.name, t.state) for t in shown.tasks] == [("vip", "running")]
    assert "before-bootstrap" in (await prime.status()).reason
    assert fakes.kubeadm_join.calls == []  # the prime's init waits for the task

    terraform.release()
    await joining
    await worker.ansible_to_ready()

    plans = [call.plan for call in fakes.kubeadm_join.calls]
    assert [(p.action, p.endpoint) for p in plans] == [("init", ENDPOINT), ("join", ENDPOINT)]
    status = await site.cluster_status(cluster)
    assert (status.endpoint, status.spec.control_plane_endpoint) == (ENDPOINT, None)
    assert (status.tasks[0].state, status.tasks[0].outputs) == ("applied", {"endpoint": ENDPOINT})
    assert site.terraform_runs() == [("apply", "vip")]
    await replays(site, cluster, "cluster-terraform-endpoint")


async def test_the_specs_endpoint_wins_over_a_tasks_output(site: DeleteSite):
    cluster = await site.cluster(quorum=1, terraform=[VIP], control_plane_endpoint="api.example.test:6443")
    await site.machine(cluster).ansible_to_ready()
    assert [c.plan.endpoint for c in site.fakes.kubeadm_join.calls] == ["api.example.test:6443"]
    assert (await site.cluster_status(cluster)).endpoint == ENDPOINT  # kept, and shown


async def test_a_failed_task_parks_the_cluster_until_retry(site: DeleteSite):
    fakes, terraform = site.fakes, site.run_terraform
    terraform.fail(1, "Error: no free address in the pool", non_retryable=True)
    cluster = await site.cluster(quorum=1, terraform=[VIP])
    failed = await site.wait_cluster(cluster, lambda s: s.tasks and s.tasks[0].state == "failed", "vip failed")
    assert "no free address in the pool" in failed.tasks[0].reason
    details = await current_details(site.cluster_handle(cluster))
    assert "**failed:vip**" in details and f"tempered cluster retry {cluster}" in details

    prime = site.machine(cluster)
    joining = asyncio.create_task(prime.ansible_to_ready())
    await asking_how_to_join(site, prime)
    assert fakes.kubeadm_join.calls == [] and not joining.done()

    await site.cluster_handle(cluster).execute_update("retry")
    await joining
    assert [c.plan.endpoint for c in fakes.kubeadm_join.calls] == [ENDPOINT]
    status = await site.cluster_status(cluster)
    assert (status.tasks[0].state, status.tasks[0].runs) == ("applied", 2)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await site.cluster_handle(cluster).execute_update("retry")
    assert "nothing to retry" in str(refused.value.cause)
    await replays(site, cluster, "cluster-terraform-failed-retried")


async def test_after_ready_runs_once_when_the_cluster_is_first_ready(site: DeleteSite):
    cluster = await site.cluster(quorum=1, terraform=[REGISTER])
    prime, worker = site.machine(cluster), site.machine(cluster)
    await prime.ansible_to_ready()
    await site.wait_cluster(cluster, lambda s: s.tasks[0].state == "applied", "register applied")
    await worker.ansible_to_ready()
    await site.wait_cluster(cluster, lambda s: len(s.members) == 2 and all(m.ready for m in s.members), "both ready")
    assert site.terraform_runs() == [("apply", "register")]
    await replays(site, cluster, "cluster-terraform-after-ready")


async def test_plan_is_a_dry_run_kept_as_last_plan(site: DeleteSite):
    cluster = await site.cluster(quorum=1, terraform=[REGISTER])
    handle = site.cluster_handle(cluster)
    planned = await handle.execute_update("plan", "register", result_type=TaskStatus)
    assert (planned.state, planned.last_plan) == ("pending", "Plan: 1 to add, 0 to change, 0 to destroy.")
    assert (await site.cluster_status(cluster)).tasks[0].last_plan == planned.last_plan
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("plan", "nope", result_type=TaskStatus)
    assert "has no Terraform task nope" in str(refused.value.cause)
    assert site.terraform_runs() == [("plan", "register")]


async def test_a_task_failed_before_the_delete_stops_waiting_and_the_deletion_ends(site: DeleteSite):
    """A before-bootstrap task that can never apply (its spec is wrong) must not keep the cluster
    from being deleted: the deletion takes over, the failed apply stops waiting for a retry, and
    the destroy that follows is the deletion's (the runner runs nothing for an empty state)."""
    site.run_terraform.fail(1, "Error: no free address in the pool", non_retryable=True)
    cluster = await site.cluster(quorum=1, terraform=[VIP])
    await site.wait_cluster(cluster, lambda s: s.tasks and s.tasks[0].state == "failed", "vip failed")
    await site.delete(cluster)
    result = await site.result(cluster)
    assert result.deletion.step == "done" and result.closing
    assert site.terraform_runs() == [("apply", "vip"), ("destroy", "vip")]  # no second apply
    assert result.tasks[0].state == "destroyed"
