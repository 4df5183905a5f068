"""The machine workflow's power step with fake activities (tests/workflow/conftest.py): reboot,
reprovision and decommission through a BMC that does as asked, refuses or is unreachable for a
while; manual power (a person); `failed:power` and its retry; a PXE contact while failed:power;
and a power result that arrives after the machine rebooted.

Here every fake machine has a BMC (`redfish`) that does as asked (the fakes' default is manual
power); a test answers `PowerTarget(driver="manual")` for a machine without one.
"""

from __future__ import annotations

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.worker import Worker

from activities.domain.ids import machine_workflow_id
from activities.domain.machine import MachineStatus
from activities.domain.power import PowerRequest, PowerResult, PowerTarget, site_queue
from tests.conftest import eventually
from tests.workflow.test_replay import replay_and_record
from tests.workflow.conftest import FakeMachine, FakeSite

CYCLED = "power cycled through redfish: waiting for it to PXE boot"
MANUAL = "power-cycle this machine now (manual power: no BMC set)"
REFUSED = "Redfish: 401 Unauthorized: check the BMC's user and password"


def _obeys(request: PowerRequest) -> PowerResult:
    """What a Redfish BMC that does as asked answers."""
    state = "off" if request.action == "off" else "on"
    return PowerResult(machine_id=request.machine_id, action=request.action, driver="redfish", state=state,
                       answer=f"{request.action}: done (fake)")


@pytest.fixture(autouse=True)
def _a_bmc_for_every_machine(fake_site: FakeSite) -> None:
    fake_site.fakes.power_target.answer(lambda machine_id: PowerTarget(machine_id=machine_id, driver="redfish"))
    fake_site.fakes.power_machine.answer(_obeys)


def _actions(fake_site: FakeSite, m: FakeMachine) -> list[str]:
    return [request.action for request in fake_site.fakes.power_machine.calls_for(m.machine_id)]


async def _reason(m: FakeMachine, reason: str) -> MachineStatus:
    async def said() -> bool:
        return (await m.status()).reason == reason

    try:
        await eventually(said, what=f"{m.machine_id} to say {reason!r}")
    except AssertionError as err:
        status = await m.status()
        raise AssertionError(f"{err}; it is {status.state}: {status.reason}") from None
    return await m.status()


async def _ready(fake_site: FakeSite) -> tuple[FakeMachine, MachineStatus]:
    m = fake_site.machine(await fake_site.cluster(quorum=1))
    return m, await m.ansible_to_ready()


async def _replays(m: FakeMachine, name: str, run_id: str | None = None) -> None:
    """The run's history replays on this code (its `machine-power` marker recorded); kept as
    `<version>-<name>.json` when histories are being recorded (tests/workflow/test_replay.py)."""
    history = await m.client.get_workflow_handle(m.handle.id, run_id=run_id).fetch_history()
    await replay_and_record([(name, history)])


async def _run_changed(m: FakeMachine, run_id: str) -> None:
    async def changed() -> bool:
        return (await m.handle.describe()).run_id != run_id

    await eventually(changed, what=f"{m.machine_id} to continue as new after its reboot")


async def test_reboot_from_ready_cycles_the_power_and_goes_round_again_as_a_reboot(fake_site: FakeSite):
    m, ready = await _ready(fake_site)

    answer = await m.update("reboot")  # answered at once, before the power step ran
    assert (answer.state, answer.boot, answer.power_from) == ("ready", ready.boot, "ready")
    waiting = await _reason(m, CYCLED)
    assert (waiting.state, waiting.boot) == ("ready", ready.boot)  # on the same boot until it PXE boots
    assert fake_site.fakes.power_target.calls == [m.machine_id]
    assert _actions(fake_site, m) == ["cycle"]

    contact = await m.pxe()
    assert (contact.action, contact.state, contact.is_new) == ("discovery", "boot-1", False)
    assert contact.boot == ready.boot + 1
    await m.report_facts(contact.boot)
    await m.wait_state("post-discover")
    await m.pxe()
    await m.phone_home()
    again = await m.wait_state("ready")
    assert (again.role, again.is_new, again.power_from, again.power_actions) == ("master-prime", False, None, [])
    assert again.boot == ready.boot + 2


async def test_manual_power_asks_a_person_and_the_pxe_contact_moves_it_on(fake_site: FakeSite):
    fakes = fake_site.fakes
    fakes.power_target.answer(lambda machine_id: PowerTarget(machine_id=machine_id, driver="manual"))
    m, ready = await _ready(fake_site)

    await m.update("reboot")
    waiting = await _reason(m, MANUAL)
    assert waiting.state == "ready"
    assert fakes.power_machine.calls == []  # nothing to send anywhere

    contact = await m.pxe()  # the person pressed the button
    assert (contact.action, contact.state, contact.is_new) == ("discovery", "boot-1", False)


async def test_a_bmc_that_refuses_parks_the_machine_in_failed_power_and_retry_cycles_again(fake_site: FakeSite):
    fakes = fake_site.fakes
    m, _ = await _ready(fake_site)
    fakes.power_machine.fail(message=REFUSED, non_retryable=True)

    await m.update("reboot")
    parked = await m.wait_state("failed:power")
    assert parked.reason == f"{REFUSED} (retry with: tempered machine retry {m.machine_id})"
    assert (parked.failed_step, parked.power_from, parked.power_actions) == ("power", "ready", ["cycle"])

    retried = await m.update("retry")
    assert retried.failed_step is None
    back = await m.wait_state("ready")
    assert (back.reason, back.failed_step) == (CYCLED, None)
    assert _actions(fake_site, m) == ["cycle", "cycle"]
    await _replays(m, "machine-power-retried")


async def test_a_pxe_contact_while_failed_power_after_a_reboot_is_a_reboot(fake_site: FakeSite):
    m, ready = await _ready(fake_site)
    fake_site.fakes.power_machine.fail(message=REFUSED, non_retryable=True)
    await m.update("reboot")
    await m.wait_state("failed:power")
    run_id = (await m.handle.describe()).run_id

    contact = await m.pxe()  # someone power-cycled it by hand
    assert (contact.action, contact.state, contact.is_new) == ("discovery", "boot-1", False)
    await _run_changed(m, run_id)
    status = await m.status()
    assert (status.state, status.role, status.failed_step, status.power_from) == ("boot-1", "master-prime", None, None)
    await _replays(m, "machine-pxe-in-failed-power", run_id)


async def test_an_unreachable_bmc_is_tried_again_by_the_power_policy(fake_site: FakeSite):
    m, _ = await _ready(fake_site)
    fake_site.fakes.power_machine.fail(times=1, message="BMC unreachable: connection refused")

    await m.update("reboot")
    waiting = await _reason(m, CYCLED)  # the second attempt, 5 s later (policies.POWER)
    assert waiting.state == "ready"
    assert _actions(fake_site, m) == ["cycle", "cycle"]


async def test_reprovision_sets_a_one_time_pxe_boot_then_cycles(fake_site: FakeSite):
    m, _ = await _ready(fake_site)

    answer = await m.update("reprovision")
    assert (answer.state, answer.is_new, answer.role) == ("new", True, "")
    waiting = await _reason(m, f"reprovision requested: {CYCLED}")
    assert waiting.state == "new"
    assert _actions(fake_site, m) == ["pxe-once", "cycle"]
    contact = await m.pxe()
    assert (contact.action, contact.state, contact.is_new) == ("discovery", "boot-1", True)


async def test_a_pxe_contact_while_failed_power_after_a_reprovision_stays_new(fake_site: FakeSite):
    fakes = fake_site.fakes
    m = fake_site.machine(await fake_site.cluster(quorum=1))
    await m.discover()
    await m.wait_state("post-discover")
    fakes.power_machine.fail(message=REFUSED, non_retryable=True)

    await m.update("reprovision")
    parked = await m.wait_state("failed:power")
    assert (parked.power_from, parked.power_actions, parked.is_new) == ("new", ["pxe-once", "cycle"], True)
    assert _actions(fake_site, m) == ["pxe-once"]  # refused at the first action

    contact = await m.pxe()
    assert (contact.action, contact.state, contact.is_new) == ("discovery", "boot-1", True)


async def test_manual_reprovision_asks_for_a_power_cycle(fake_site: FakeSite):
    fakes = fake_site.fakes
    fakes.power_target.answer(lambda machine_id: PowerTarget(machine_id=machine_id, driver="manual"))
    m = fake_site.machine(await fake_site.cluster(quorum=1))
    await m.discover()
    await m.wait_state("post-discover")

    await m.update("reprovision")
    waiting = await _reason(m, f"reprovision requested: {MANUAL}")
    assert waiting.state == "new" and fakes.power_machine.calls == []


async def test_decommission_ends_with_power_off(fake_site: FakeSite):
    m, ready = await _ready(fake_site)

    await m.update("decommission")
    final = await m.handle.result()

    assert (final.state, final.power_from) == ("decommissioned", None)
    assert final.reason == f"retired: node {ready.node_name} deleted (fake); powered off through redfish"
    assert _actions(fake_site, m) == ["off"]


async def test_a_failing_power_off_parks_in_failed_power_and_retry_completes_the_decommission(fake_site: FakeSite):
    fakes = fake_site.fakes
    m, ready = await _ready(fake_site)
    fakes.power_machine.fail(message="IPMI: insufficient privilege level", non_retryable=True)

    await m.update("decommission")
    parked = await m.wait_state("failed:power")
    assert parked.reason.startswith("IPMI: insufficient privilege level (retry with: tempered machine retry")
    assert (parked.power_from, parked.power_actions, parked.role) == ("decommissioning", ["off"], "")
    assert (await m.pxe()).action == "refuse"  # still being decommissioned
    for refused in ("reboot", "reprovision", "decommission"):
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await m.update(refused)
        assert "decommissioned" in str(err.value.cause), refused

    await m.update("retry")
    final = await m.handle.result()
    assert (final.state, final.reason) == (
        "decommissioned", f"retired: node {ready.node_name} deleted (fake); powered off through redfish"
    )
    assert _actions(fake_site, m) == ["off", "off"]
    assert fakes.retire_machine.calls == [m.machine_id]  # the retire work is not done twice
    await _replays(m, "machine-power-off-retried")


async def test_manual_decommission_says_to_power_it_off_by_hand(fake_site: FakeSite):
    fake_site.fakes.power_target.answer(lambda machine_id: PowerTarget(machine_id=machine_id, driver="manual"))
    m = fake_site.machine(await fake_site.cluster(quorum=1))
    await m.discover()
    await m.wait_state("post-discover")

    await m.update("decommission")
    final = await m.handle.result()
    assert (final.state, final.reason) == ("decommissioned", "retired; power it off by hand (manual power: no BMC set)")


async def test_reboot_is_refused_while_new_in_discovery_or_decommissioning(fake_site: FakeSite):
    fakes = fake_site.fakes
    m = fake_site.machine(await fake_site.cluster(quorum=1))
    await fake_site.client.start_workflow(
        "MachineWorkflow", MachineStatus(machine_id=m.machine_id, cluster=m.cluster, mac=m.mac),
        id=machine_workflow_id(m.machine_id), task_queue=fake_site.task_queue,
    )
    expected = {
        "new": "the machine is new: nothing to reboot before its next PXE boot",
        "boot-1": "the machine is in boot-1, running discovery",
        "decommissioning": "the machine is being decommissioned (decommissioning)",
    }
    for state, message in expected.items():
        if state == "boot-1":
            await m.pxe()
        elif state == "decommissioning":
            fakes.retire_machine.hold()
            await m.update("decommission")
            await fakes.retire_machine.wait_waiting(1)
        assert (await m.status()).state == state
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await m.update("reboot")
        assert message in str(refused.value.cause)
    assert fakes.power_target.calls == []


async def test_a_power_result_after_the_machine_rebooted_is_dropped(fake_site: FakeSite):
    fakes = fake_site.fakes
    m, ready = await _ready(fake_site)
    fakes.power_machine.hold()

    await m.update("reboot")
    await fakes.power_machine.wait_waiting(1)
    run_id = (await m.handle.describe()).run_id
    contact = await m.pxe()  # it rebooted before its BMC answered
    assert (contact.state, contact.boot) == ("boot-1", ready.boot + 1)

    fakes.power_machine.release()
    await _run_changed(m, run_id)  # the reboot continues as new once the power step ended
    status = await m.status()
    assert (status.state, status.reason, status.boot) == ("boot-1", "rebooted from ready", ready.boot + 1)


async def test_a_held_machine_rebooted_is_held_as_before(fake_site: FakeSite):
    cluster = await fake_site.cluster(quorum=1)
    prime = fake_site.machine(cluster)
    await prime.discover()
    await prime.wait_state("post-discover")
    m = fake_site.machine(cluster)  # held until the master-prime has joined
    await m.discover()
    held = await m.wait_state("holding")
    assert held.reason == f"waiting for the control plane: master-prime {prime.machine_id} to join"

    await m.update("reboot")
    await _reason(m, CYCLED)
    contact = await m.pxe()
    assert (contact.action, contact.state, contact.reason) == ("discovery", "holding", held.reason)


async def test_power_runs_on_the_task_queue_of_the_machines_site(fake_site: FakeSite, unique):
    """A BMC on a management network is reached by its site's worker (`tempered worker --site`)."""
    fakes = fake_site.fakes
    site = unique("rack")
    fakes.power_target.answer(lambda machine_id: PowerTarget(machine_id=machine_id, driver="redfish", site=site))
    queues: list[str] = []
    does_as_asked = fakes.power_machine.behaviour
    fakes.power_machine.answer(lambda request: queues.append(activity.info().task_queue) or does_as_asked(request))
    [power] = [a for a in fakes.activities() if activity._Definition.must_from_callable(a).name == "power_machine"]
    m, _ = await _ready(fake_site)

    async with Worker(fake_site.client, task_queue=site_queue(site), activities=[power]):
        await m.update("reboot")
        await _reason(m, CYCLED)
    assert queues == [site_queue(site)]


async def test_a_reboot_during_a_join_drops_the_joins_result_and_cycles_when_it_ends(fake_site: FakeSite):
    fakes = fake_site.fakes
    m = fake_site.machine(await fake_site.cluster(quorum=1))
    fakes.kubeadm_join.hold()
    await m.discover()
    await m.wait_state("post-discover")
    await m.pxe()
    await m.phone_home()
    await fakes.kubeadm_join.wait_waiting(1)

    await m.update("reboot")  # kubeadm still runs for the boot being left
    assert fakes.power_target.calls == []  # one step at a time: the cycle waits for the join to end
    fakes.kubeadm_join.release()
    waiting = await _reason(m, CYCLED)
    assert (waiting.state, waiting.kube_node) == ("join-cluster", False)  # the join's result was dropped
    assert fakes.publish_node_dns.calls == []
    contact = await m.pxe()
    assert (contact.action, contact.state) == ("runtime", "boot-2")


async def test_a_bmc_found_without_credentials_asks_a_person_and_names_them(fake_site: FakeSite):
    """A BMC address discovery reported (no credentials) is a manual target with its reason: the
    machine asks a person and says what to set, it is not parked in failed:power."""
    found = "machine M's ipmi BMC at 10.0.9.22 has no credentials: set them with 'tempered machine power M set …'"
    fake_site.fakes.power_target.answer(lambda machine_id: PowerTarget(machine_id=machine_id, driver="manual",
                                                                       reason=found))
    m, _ = await _ready(fake_site)

    await m.update("reboot")
    waiting = await _reason(m, f"power-cycle this machine now ({found})")
    assert waiting.state == "ready" and fake_site.fakes.power_machine.calls == []


async def test_a_reboot_while_a_power_step_runs_is_refused_and_taken_once_it_is_done(fake_site: FakeSite):
    fakes = fake_site.fakes
    m, _ = await _ready(fake_site)
    fakes.power_machine.hold()

    await m.update("reboot")
    await fakes.power_machine.wait_waiting(1)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await m.update("reboot")
    assert refused.value.cause.message == "a power action is already under way: power-cycling through redfish"

    fakes.power_machine.release()
    await _reason(m, CYCLED)
    await m.update("reboot")  # the step is done (power_actions stay until the PXE contact): taken again
    await eventually(lambda: _actions_async(fake_site, m, 2), what="the second cycle")
    assert _actions(fake_site, m) == ["cycle", "cycle"]


async def _actions_async(fake_site: FakeSite, m: FakeMachine, count: int) -> bool:
    return len(_actions(fake_site, m)) >= count


async def test_the_power_step_waits_two_minutes_for_a_site_worker_then_names_it(fake_site: FakeSite, unique):
    """A site worker that stopped after `power_target` saw it: the command is scheduled with a
    schedule-to-start timeout, whose expiry parks the machine naming the worker to start."""
    from datetime import timedelta

    from temporalio.api.enums.v1 import EventType
    from temporalio.exceptions import ActivityError, RetryState, TimeoutError as ActivityTimeout, TimeoutType

    from workflows import power_steps

    site = unique("rack")
    fake_site.fakes.power_target.answer(lambda machine_id: PowerTarget(machine_id=machine_id, driver="redfish",
                                                                       site=site))
    m, _ = await _ready(fake_site)
    await m.update("reboot")
    await _reason(m, f"power-cycling through redfish (on site {site}'s worker)")  # nobody serves its queue

    async def scheduled() -> bool:
        history = await m.handle.fetch_history()
        return any(e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                   and e.activity_task_scheduled_event_attributes.activity_type.name == "power_machine"
                   for e in history.events)

    await eventually(scheduled, what="power_machine scheduled on the site's queue")
    [event] = [e for e in (await m.handle.fetch_history()).events
               if e.activity_task_scheduled_event_attributes.activity_type.name == "power_machine"]
    attributes = event.activity_task_scheduled_event_attributes
    assert attributes.task_queue.name == site_queue(site)
    assert attributes.schedule_to_start_timeout.ToTimedelta() == timedelta(minutes=2)
    timeout = ActivityTimeout("activity ScheduleToStart timeout", type=TimeoutType.SCHEDULE_TO_START,
                              last_heartbeat_details=[])
    expired = ActivityError("activity timed out", scheduled_event_id=1, started_event_id=0, identity="",
                            activity_type="power_machine", activity_id="1", retry_state=RetryState.TIMEOUT)
    expired.__cause__ = timeout
    assert power_steps.failure(expired, site) == (
        f"no worker serves site {site}: start `tempered worker --site {site}` next to its BMCs")
