"""The machine workflow against a real Temporal dev server: every state and every operator action."""

from __future__ import annotations

import pytest
from sqlmodel import select
from temporalio.client import WorkflowUpdateFailedError

from activities.domain.lifecycle import LIFECYCLE
from activities.domain.machine import MachineStatus
from activities.storage import db
from activities.storage.models import Attribute, Machine
from workflows import search
from tests.conftest import eventually
from tests.lifecycle import MachineDriver, admitted_machine, cluster_status, create_cluster

pytestmark = pytest.mark.usefixtures("worker")


async def test_every_lifecycle_state_in_order(client, settings, unique):
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    m = MachineDriver(client, settings, unique("m"), name)

    first = await m.pxe()
    assert (first.action, first.state, first.boot, first.is_new) == ("discovery", "boot-1", 1, True)
    await m.report_facts(first.boot)
    admitted = await m.wait_state("post-discover")
    assert admitted.role == "master-prime"
    second = await m.pxe()
    assert (second.action, second.state, second.boot) == ("runtime", "boot-2", 2)
    assert (await m.phone_home()).state == "post-boot-2"
    await m.wait_state("join-cluster")
    await m.join(ok=True)
    ready = await m.wait_state("ready")

    visited = [t.state for t in ready.history]
    assert [s for s in visited if s in LIFECYCLE] == [
        "new", "boot-1", "discover", "discover", "post-discover", "boot-2", "post-boot-2", "join-cluster", "ready"
    ]
    attrs = (await m.handle.describe()).typed_search_attributes
    assert attrs.get(search.STATE) == "ready"
    assert attrs.get(search.CLUSTER) == name
    assert attrs.get(search.ROLE) == "master-prime"
    assert attrs.get(search.MAC) == m.mac
    # the machine tells its cluster it is ready by a signal the cluster takes in its own time
    async def cluster_ready() -> bool:
        cluster = await cluster_status(client, name)
        return cluster.phase == "ready" and cluster.members[0].ready

    await eventually(cluster_ready, 30, what=f"cluster {name} ready with its member")
    with db.session(settings.database_url) as s:
        role = s.exec(select(Attribute).where(Attribute.machine_id == m.machine_id)).one()
    assert (role.type, role.value) == ("role", "master-prime")


async def test_pxe_while_ready_is_a_reboot_that_continues_as_new(client, settings, unique):
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    m = MachineDriver(client, settings, unique("m"), name)
    await m.to_ready()
    first_run = (await m.handle.describe()).run_id

    again = await m.pxe()
    assert (again.action, again.state, again.is_new) == ("discovery", "boot-1", False)

    async def new_run() -> bool:
        return (await m.handle.describe()).run_id != first_run

    from tests.conftest import eventually

    await eventually(new_run, what="continue-as-new after the reboot")
    status = await m.status()
    assert (status.state, status.role, status.is_new, status.boot) == ("boot-1", "master-prime", False, again.boot)
    # The rebooted machine is rediscovered and keeps its role.
    await m.report_facts(again.boot)
    assert (await m.wait_state("post-discover")).role == "master-prime"


async def test_machines_wait_in_holding_until_the_control_plane_is_up(client, settings, unique):
    name = unique("c")
    await create_cluster(client, settings, name, quorum=3)
    prime = MachineDriver(client, settings, unique("prime"), name)
    other = MachineDriver(client, settings, unique("other"), name, mac="52:54:00:00:00:02")
    await prime.discover()
    await prime.wait_state("post-discover")
    await other.discover()
    held = await other.wait_state("holding")
    assert held.role == "master"
    assert prime.machine_id in held.reason
    # A held machine that reboots is sent back to discovery and stays held.
    again = await other.pxe()
    assert (again.action, again.state) == ("discovery", "holding")
    assert (await cluster_status(client, name)).phase == "bootstrapping"

    await prime.boot_runtime()
    await prime.join(ok=True)
    await prime.wait_state("ready")
    released = await other.wait_state("post-discover")
    assert released.role == "master"
    cluster = await cluster_status(client, name)
    assert cluster.phase == "ready" and cluster.held == []


async def test_failed_step_parks_the_machine_until_an_operator_retries(client, settings, unique):
    name = unique("late")  # the cluster does not exist yet: admission fails for real
    m = MachineDriver(client, settings, unique("m"), name)
    await m.discover()
    parked = await m.wait_state("failed:admit")
    assert parked.failed_step == "admit"
    assert f"tempered cluster create {name}" in parked.reason
    assert (await m.handle.describe()).typed_search_attributes.get(search.STATE) == "failed:admit"

    await create_cluster(client, settings, name, quorum=1)
    retried = await m.handle.execute_update("retry", result_type=MachineStatus)
    assert retried.failed_step is None
    assert (await m.wait_state("post-discover")).role == "master-prime"


async def test_failed_join_retry_reaches_ready(client, settings, unique):
    m = await admitted_machine(client, settings, unique)
    await m.boot_runtime()
    await m.join(ok=False, reason="kubeadm join: connection refused")
    parked = await m.wait_state("failed:join-cluster")
    assert "connection refused" in parked.reason
    await m.handle.execute_update("retry", result_type=MachineStatus)
    await m.wait_state("join-cluster")
    await m.join(ok=True)
    await m.wait_state("ready")


async def test_transitions_not_allowed_are_refused_with_a_reason(client, settings, unique):
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    m = MachineDriver(client, settings, unique("m"), name)
    await m.pxe()
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await m.handle.execute_update("retry", result_type=MachineStatus)
    assert "nothing to retry" in str(refused.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await m.phone_home()
    assert "not expecting a phone home while boot-1" in str(refused.value.cause)
    with pytest.raises(WorkflowUpdateFailedError):
        await m.join(ok=True)
    assert (await m.status()).state == "boot-1"


async def test_pxe_during_join_restarts_the_runtime_boot(client, settings, unique):
    m = await admitted_machine(client, settings, unique)
    await m.boot_runtime()
    rebooted = await m.pxe()
    assert (rebooted.action, rebooted.state) == ("runtime", "boot-2")
    with pytest.raises(WorkflowUpdateFailedError):  # the stale join has nothing to finish
        await m.join(ok=True)
    await m.phone_home()
    await m.wait_state("join-cluster")
    await m.join(ok=True)
    await m.wait_state("ready")


async def test_reprovision_marks_the_machine_new_and_frees_its_role(client, settings, unique):
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    m = MachineDriver(client, settings, unique("m"), name)
    await m.to_ready()
    status = await m.handle.execute_update("reprovision", result_type=MachineStatus)
    assert (status.state, status.role, status.is_new) == ("new", "", True)

    async def left() -> bool:
        return not (await cluster_status(client, name)).members

    from tests.conftest import eventually

    await eventually(left, what="the cluster to drop the reprovisioned member")
    instruction = await m.pxe()
    assert (instruction.action, instruction.is_new) == ("discovery", True)
    await m.report_facts(instruction.boot)
    assert (await m.wait_state("post-discover")).role == "master-prime"


async def test_decommission_retires_the_machine(client, settings, unique):
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    m = MachineDriver(client, settings, unique("m"), name)
    await m.to_ready()
    await m.handle.execute_update("decommission", result_type=MachineStatus)
    final = await m.handle.result()
    assert final.state == "decommissioned"
    assert final.reason.endswith("power it off by hand (manual power: no BMC set)")  # no power settings
    assert (await cluster_status(client, name)).members == []
    with db.session(settings.database_url) as s:
        assert s.get(Machine, m.machine_id).decommissioned_at is not None
        assert s.exec(select(Attribute).where(Attribute.machine_id == m.machine_id)).all() == []


async def test_a_reboot_without_power_settings_asks_a_person_and_its_pxe_contact_is_a_reboot(client, settings, unique):
    """The real power activities: a machine nobody gave power settings has manual power."""
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    m = MachineDriver(client, settings, unique("m"), name)
    ready = await m.to_ready()
    await m.handle.execute_update("reboot", result_type=MachineStatus)

    from tests.conftest import eventually

    async def asks() -> bool:
        return (await m.status()).reason == "power-cycle this machine now (manual power: no BMC set)"

    await eventually(asks, what="the reason to ask a person for the power cycle")
    again = await m.pxe()
    assert (again.action, again.state, again.is_new, again.boot) == ("discovery", "boot-1", False, ready.boot + 1)


async def test_a_machine_without_a_cluster_holds_until_assigned(client, settings, unique):
    m = MachineDriver(client, settings, unique("m"), None)
    await m.discover()
    held = await m.wait_state("holding")
    assert "not in any cluster" in held.reason
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    await m.handle.execute_update("assign", name, result_type=MachineStatus)
    assert (await m.wait_state("post-discover")).role == "master-prime"
