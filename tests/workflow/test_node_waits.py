"""The machine activities of a cluster operation (activities/nodes.py: `await_machine`,
`reboot_member`) against the real machine workflow on the fake site: they only talk to it (its
`status` query, its `reboot` Update), so they run as they are, in an ActivityEnvironment with the
session's client, while the test drives the machine as the outside world does.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.domain.machine import MachineStatus
from activities.domain.operations import MachineWait
from activities.nodes import await_machine, reboot_member
from tests.conftest import eventually
from tests.workflow.conftest import FakeSite
from workflows.machine import MachineWorkflow


async def _called(fake, machine_id: str) -> bool:
    return bool(fake.calls_for(machine_id))


def _env(site: FakeSite) -> tuple[ActivityEnvironment, list[tuple]]:
    env, beats = ActivityEnvironment(client=site.client), []
    env.on_heartbeat = lambda *details: beats.append(details)
    return env, beats


async def test_await_machine_returns_once_a_later_boot_is_ready(fake_site: FakeSite):
    m = fake_site.machine(await fake_site.cluster())
    ready = await m.ansible_to_ready()
    env, beats = _env(fake_site)
    now = await env.run(await_machine, MachineWait(machine_id=m.machine_id, after_boot=0))
    assert now == f"{ready.node_name} is ready on boot {ready.boot}"  # ready now, on any boot

    wait = MachineWait(machine_id=m.machine_id, after_boot=ready.boot)
    first = asyncio.ensure_future(env.run(await_machine, wait))

    async def waiting() -> bool:
        return sum(1 for beat in beats if beat) >= 2  # two polls (the bare beats: while a query waits)

    await eventually(waiting, 30, what="await_machine to heartbeat while the machine stays on its boot")
    assert not first.done() and (f"ready on boot {ready.boot}: {ready.reason}",) in beats
    env.cancel()  # as a worker killed mid-wait ends the attempt: the retry starts afresh
    with pytest.raises(asyncio.CancelledError):
        await first

    retry_env, _ = _env(fake_site)
    retry = asyncio.ensure_future(retry_env.run(await_machine, wait))
    await m.discover()  # the machine rebooted: discovery, then the runtime OS and the rejoin
    await m.wait_state("post-discover")
    await asyncio.sleep(0)
    assert not retry.done()
    await m.pxe()
    await m.phone_home()
    again = await m.wait_state("ready")
    assert again.boot > ready.boot
    assert await asyncio.wait_for(retry, 30) == f"{again.node_name} is ready on boot {again.boot}"


async def test_await_machine_ends_with_the_reason_of_a_failed_machine(fake_site: FakeSite):
    m = fake_site.machine(await fake_site.cluster())
    ready = await m.ansible_to_ready()
    fake_site.fakes.kubeadm_join.fail(message="kubeadm join: the API server said no", non_retryable=True)
    env, _ = _env(fake_site)
    waiter = asyncio.ensure_future(env.run(await_machine, MachineWait(machine_id=m.machine_id, after_boot=ready.boot)))
    await m.discover()
    await m.wait_state("post-discover")
    await m.pxe()
    await m.phone_home()
    failed = await m.wait_state("failed:join-cluster")
    with pytest.raises(ApplicationError) as ended:
        await asyncio.wait_for(waiter, 30)
    assert ended.value.non_retryable and ended.value.type == "MachineFailed"
    assert ended.value.message == f"{failed.node_name} is failed:join-cluster: {failed.reason}"
    assert "the API server said no" in ended.value.message


async def test_await_machine_and_reboot_member_of_a_machine_without_a_workflow(fake_site: FakeSite):
    env, _ = _env(fake_site)
    for run in (env.run(await_machine, MachineWait(machine_id="no-such-machine", after_boot=0)),
                env.run(reboot_member, "no-such-machine")):
        with pytest.raises(ApplicationError) as gone:
            await run
        assert gone.value.non_retryable and gone.value.type == "MachineNotFound"
        assert gone.value.message == "machine no-such-machine has no running workflow"


async def test_a_refused_reboot_is_final_with_the_workflows_words(fake_site: FakeSite):
    m = fake_site.machine(await fake_site.cluster())
    await m.pxe()  # in discovery: not a node, nothing to reboot
    with pytest.raises(WorkflowUpdateFailedError) as direct:  # what the workflow answers anyone
        await m.handle.execute_update("reboot", result_type=MachineStatus)
    env, _ = _env(fake_site)
    with pytest.raises(ApplicationError) as refused:
        await env.run(reboot_member, m.machine_id)
    assert refused.value.non_retryable and refused.value.type == "RebootRefused"
    assert refused.value.message == f"machine {m.machine_id} refused the reboot: {direct.value.cause.message}"


@pytest.mark.skipif(not hasattr(MachineWorkflow, "reboot"),
                    reason="the machine workflow's reboot Update (branch p17-machine) is not merged yet")
async def test_reboot_member_reboots_once_and_answers_the_boot_it_left(fake_site: FakeSite):
    m = fake_site.machine(await fake_site.cluster())
    ready = await m.ansible_to_ready()
    env, _ = _env(fake_site)
    assert await env.run(reboot_member, m.machine_id) == ready.boot
    assert await env.run(reboot_member, m.machine_id) == ready.boot  # a retry: the same Update id, answered once
    power = fake_site.fakes.power_target  # the reboot's power step: once per reboot asked
    await eventually(lambda: _called(power, m.machine_id), 30, what="the reboot's power step")

    await m.discover()  # the power cycle brought it back through discovery
    await m.wait_state("post-discover")
    await m.pxe()
    await m.phone_home()
    await env.run(await_machine, MachineWait(machine_id=m.machine_id, after_boot=ready.boot))
    # A retry of an attempt whose reboot happened (its heartbeat kept the boot) asks for no other.
    retry = ActivityEnvironment(client=fake_site.client)
    retry.info = replace(retry.info, heartbeat_details=[ready.boot], attempt=2)
    assert await retry.run(reboot_member, m.machine_id) == ready.boot
    after = await m.status()
    assert after.state == "ready" and after.boot > ready.boot
    assert power.calls_for(m.machine_id) == [m.machine_id]  # one reboot in all


def test_reboot_member_runs_with_a_heartbeat_timeout_so_its_boot_reaches_a_retry():
    """The boot the first attempt saw is kept in its heartbeat: without a heartbeat timeout the
    heartbeat may never be sent to the server before a retry (policies.REBOOT)."""
    from workflows import calls, policies

    policy = calls.reboot_member.policy
    assert policy is policies.REBOOT
    assert policy.heartbeat is not None and policy.heartbeat < policy.timeout
    assert policy.retry.maximum_attempts > 1
