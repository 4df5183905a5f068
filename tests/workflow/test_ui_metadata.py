"""What the Temporal Web UI shows of machines and clusters: their user metadata, read back
through Temporal's API the way the Web UI reads it.

Machines and clusters are started with the real start options (api/temporal.py, on the fake
site's task queue): `describe()` gives the static summary and details fixed at start, the
built-in `__temporal_workflow_metadata` query the current details the workflow keeps. The
README's list queries (## The machine lifecycle, Tracking machines in the Web UI) are run
against the server's visibility too.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from activities.domain.cluster import ClusterSpec, ClusterStatus
from activities.domain.machine import BootInstruction, BootRequest, MachineStatus
from api import temporal
from tests.conftest import eventually
from tests.workflow.conftest import FakeMachine, FakeSite


@dataclass
class UiMachine(FakeMachine):
    """A machine whose workflow the PXE update-with-start creates with api/temporal.py's options."""

    api_url: str = ""

    async def pxe(self) -> BootInstruction:
        status = MachineStatus(machine_id=self.machine_id, cluster=self.cluster, mac=self.mac)
        options = temporal.machine_start(status, self.api_url) | {"task_queue": self.task_queue}
        start = WithStartWorkflowOperation(
            "MachineWorkflow", status, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            result_type=MachineStatus, **options,
        )
        return await self.client.execute_update_with_start_workflow(
            "pxe_boot", BootRequest(mac=self.mac, ip=self.ip), start_workflow_operation=start,
            result_type=BootInstruction,
        )


async def start_cluster(site: FakeSite, api_url: str) -> str:
    name = site.unique("c")
    status = ClusterStatus(spec=ClusterSpec(name=name, quorum_count=1))
    options = temporal.cluster_start(status, api_url) | {"task_queue": site.task_queue}
    await site.client.start_workflow("ClusterWorkflow", status, **options)
    return name


def machine(site: FakeSite, cluster: str) -> UiMachine:
    plain = site.machine(cluster)
    return UiMachine(plain.client, plain.settings, plain.machine_id, cluster, mac=plain.mac, ip=plain.ip,
                     task_queue=site.task_queue, api_url=site.settings.api_url)


async def details(handle: WorkflowHandle) -> str:
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


async def wait_details(handle: WorkflowHandle, *parts: str, timeout: float = 30.0) -> str:
    """Wait until the current details show every one of `parts`."""

    async def shown() -> bool:
        text = await details(handle)
        return all(part in text for part in parts)

    try:
        await eventually(shown, timeout, what=f"{handle.id}'s details to show {parts}")
    except AssertionError as err:
        raise AssertionError(f"{err}; they are:\n{await details(handle)}") from None
    return await details(handle)


async def listed(client: Client, query: str) -> set[str]:
    return {w.id async for w in client.list_workflows(query)}


async def test_machine_summary_and_details_follow_its_state(fake_site: FakeSite) -> None:
    api = fake_site.settings.api_url
    cluster = await start_cluster(fake_site, api)
    m = machine(fake_site, cluster)
    await m.pxe()

    description = await m.handle.describe()
    assert await description.static_summary() == f"MAC {m.mac} · cluster {cluster}"
    assert f"({api}/v1/machines/{m.machine_id})" in (await description.static_details() or "")
    text = await wait_details(m.handle, "**boot-1**", "`new` — first seen")
    assert f"[machine in the API]({api}/v1/machines/{m.machine_id})" in text
    assert f"[cluster {cluster}]({api}/v1/clusters/{cluster})" in text
    assert f"MAC `{m.mac}`" in text and f"IP `{m.ip}`" in text

    # The cluster is caught admitting it: its details name the operation, the machine's its state.
    fake_site.fakes.evaluate_rules.hold()
    await m.report_facts(1)
    await fake_site.fakes.evaluate_rules.wait_waiting(1)
    cluster_handle = fake_site.cluster_handle(cluster)
    await wait_details(cluster_handle, "now: admitting node-")
    await wait_details(m.handle, "**discover**", "asking the cluster for a role")
    fake_site.fakes.evaluate_rules.release()

    text = await wait_details(m.handle, "**post-discover** · role **master-prime**", "user-data rendered")
    assert "`discover` — facts received" in text and "`boot-1`" in text  # the transitions, newest first
    assert text.index("`post-discover`") < text.index("`discover` —") < text.index("`boot-1`")
    await wait_details(cluster_handle, "now: idle", "admitted, not ready yet (1): `node-")

    # Once the master-prime is ready the cluster mints a join token: caught while it does.
    fake_site.fakes.mint_join_credentials.hold()
    await m.pxe()
    await m.phone_home()
    await m.wait_state("ready")
    await wait_details(m.handle, "**ready** · role **master-prime**", "published (fake)")
    await fake_site.fakes.mint_join_credentials.wait_waiting(1)
    await wait_details(cluster_handle, "**ready** · now: minting a join token", "- ready (1): `node-")
    fake_site.fakes.mint_join_credentials.release()
    text = await wait_details(cluster_handle, "now: idle", "Join token #")
    assert f"[cluster {cluster} in the API]({api}/v1/clusters/{cluster})" in text
    description = await cluster_handle.describe()
    assert (await description.static_summary() or "").startswith(f"cluster {cluster} · quorum 1")

    # The README's queries: per cluster, per state.
    assert m.handle.id in await listed(fake_site.client, f'TemperedCluster = "{cluster}" AND TemperedState = "ready"')
    assert cluster_handle.id in await listed(fake_site.client, f'WorkflowType = "ClusterWorkflow" AND TemperedCluster = "{cluster}"')

    # A reboot from ready continues as new: the new run shows its details, links included (the memo).
    first_run = (await m.handle.describe()).run_id
    await m.pxe()

    async def continued() -> bool:
        return (await m.handle.describe()).run_id != first_run

    await eventually(continued, what="the reboot's continue-as-new")
    text = await wait_details(m.handle, "**boot-1** · role **master-prime**", "rebooted from ready")
    assert f"[machine in the API]({api}/v1/machines/{m.machine_id})" in text


async def test_a_failed_step_is_shown_until_retried(fake_site: FakeSite) -> None:
    cluster = await start_cluster(fake_site, fake_site.settings.api_url)
    m = machine(fake_site, cluster)
    fake_site.fakes.render_user_data.fail(message="template broken", non_retryable=True)
    await m.discover()
    await m.wait_state("failed:render")
    text = await wait_details(m.handle, "**failed:render** · role **master-prime**", "template broken")
    assert f"Failed step `render`: `tempered machine retry {m.machine_id}`" in text

    # The README's failed query finds it (visibility is eventually consistent: wait for it).
    async def found() -> bool:
        return m.handle.id in await listed(
            fake_site.client, f'TemperedCluster = "{cluster}" AND TemperedState STARTS_WITH "failed:"'
        )

    await eventually(found, what="the failed machine in the README's failed query")

    await m.update("retry")
    text = await wait_details(m.handle, "**post-discover**")
    assert "Failed step" not in text
    assert "`failed:render` — FakeFailure: template broken" in text  # still among the last transitions


async def test_a_machine_without_mac_or_links(fake_site: FakeSite) -> None:
    """Pre-registered without a MAC, started with no API URL (as runs from before the memo):
    the summary says so and the details carry no links."""
    cluster = await start_cluster(fake_site, "")
    status = MachineStatus(machine_id=fake_site.unique("m"), cluster=cluster)
    options = temporal.machine_start(status) | {"task_queue": fake_site.task_queue}
    handle = await fake_site.client.start_workflow("MachineWorkflow", status, **options)
    assert await (await handle.describe()).static_summary() == f"pre-registered (no MAC yet) · cluster {cluster}"
    text = await wait_details(handle, "**new**", "MAC `-`")
    assert "](" not in text
