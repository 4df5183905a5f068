"""The machine workflow's steps with fake activities (tests/workflow/conftest.py): the lifecycle
in order, holding and release, failures that park a machine and its retry, stale results
after a reboot, and decommission. Each test takes a few seconds; nothing outside Temporal runs.

These are new runs, where every `workflow.patched(...)` is True: the newest branch of each
step is what is tested here (tests/workflow/test_replay.py keeps the older ones honest).
"""

from __future__ import annotations

import typing

from temporalio import activity
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities.domain.dns import NodeDns
from activities.domain.rules import RulesVerdict
from activities.sandbox import Sandbox
from api.worker import WORKFLOWS, activities_for
from tests.workflow.conftest import (
    ARGUMENTS, FakeSite, patch_markers, states_passed, step_result_taken, took_signal,
)

LIFECYCLE = ["new", "boot-1", "discover", "post-discover", "boot-2", "post-boot-2", "join-cluster", "ready"]


async def test_a_machine_goes_from_new_to_ready_through_an_ansible_join(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)

    status = await m.ansible_to_ready()

    assert states_passed(status) == LIFECYCLE
    assert (status.role, status.kube_node, status.user_data) == ("master-prime", True, f"user-data-of-{m.machine_id}")
    [render] = fakes.render_user_data.calls
    assert (render.role, render.hostname, render.is_new) == ("master-prime", status.node_name, True)
    [join] = fakes.kubeadm_join.calls
    assert (join.plan.action, join.plan.role) == ("init", "master-prime")
    assert (join.node_name, join.ip) == (status.node_name, m.ip)
    assert fakes.publish_node_dns.calls == [NodeDns(cluster=cluster, name=status.node_name, ip=m.ip)]
    assert status.reason == f"kubeadm init ran (fake); {status.node_name} published (fake)"
    assert await took_signal(fake_site.cluster_handle(cluster), "request_join_plan", m.machine_id)  # asked how

    # The cluster counts it as its initialiser, mints the first join token and names its API.
    ready = await fake_site.wait_cluster(
        cluster, lambda c: c.credentials.token_id is not None and c.dns != "", "a join token and the API name"
    )
    assert (ready.phase, ready.initialised_by, ready.master_joining) == ("ready", m.machine_id, None)
    assert [(member.machine_id, member.ready) for member in ready.members] == [(m.machine_id, True)]
    assert fakes.mint_join_credentials.calls[0].control_plane == [m.machine_id]
    assert fakes.publish_api_name.calls[-1].machine_ids == [m.machine_id]


async def test_an_external_join_waits_for_the_join_result_without_asking_how(fake_site: FakeSite):
    """The admission said the cluster's join_method is external, so the machine does not ask
    its cluster how to join (the answer could only be `external`): no Signal either way."""
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1, join_method="external")
    m = fake_site.machine(cluster)

    status = await m.to_ready()  # waits in join-cluster until `join_finished`, then reports ok

    assert states_passed(status) == LIFECYCLE
    assert fakes.join_plan.calls == [] and fakes.admit_machine.calls == []  # asked by Signal, not by activities
    assert await took_signal(fake_site.cluster_handle(cluster), "request_admission", m.machine_id)
    assert not await took_signal(fake_site.cluster_handle(cluster), "request_join_plan", m.machine_id)
    assert "join-method-with-admission" in await patch_markers(m.handle)
    await Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(
        await m.handle.fetch_history())
    assert fakes.kubeadm_join.calls == []
    assert not status.kube_node
    assert status.reason == f"joined the cluster; {status.node_name} published (fake)"


async def test_a_machine_held_by_its_cluster_asks_again_when_released(fake_site: FakeSite):
    """Held by its rules, then released (as a rules save does): it asks its cluster again."""
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    fakes.evaluate_rules.answer(RulesVerdict(has_rules=True, errors=["rule r: no"]))

    await m.discover()
    held = await m.wait_state("holding")
    assert (held.role, held.reason) == ("", "rules failed, fix them and the machine is re-evaluated: rule r: no")

    fakes.evaluate_rules.answer(RulesVerdict(has_rules=True, role="master-prime"))
    await m.handle.signal("release")
    admitted = await m.wait_state("post-discover", "holding")
    assert (admitted.state, admitted.role) == ("post-discover", "master-prime"), admitted.reason
    assert admitted.reason == "admitted as master-prime, user-data rendered: reboot into the runtime OS"
    assert [(a.machine_id, a.is_new) for a in fakes.evaluate_rules.calls] == [(m.machine_id, True)] * 2
    assert fakes.admit_machine.calls == []  # asked by Signal, not by an activity


async def test_a_machine_whose_cluster_is_not_running_parks_in_failed_admit(fake_site: FakeSite):
    """The reason the admit_machine path gave: the Signal to a cluster that is not running fails."""
    m = fake_site.machine("no-cluster-workflow")
    await m.discover()
    parked = await m.wait_state("failed:admit")
    assert parked.reason.startswith("cluster 'no-cluster-workflow' is not running: create it with"), parked.reason


async def test_a_failing_step_parks_the_machine_and_retry_runs_it_again(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    fakes.render_user_data.fail(message="include base-os is missing", non_retryable=True)

    await m.discover()
    parked = await m.wait_state("failed:render")
    assert parked.failed_step == "render"
    assert "include base-os is missing" in parked.reason

    await m.update("retry")
    status = await m.wait_state("post-discover")
    # A failed render goes back through admission: rules fixed since are evaluated again.
    assert len(fakes.evaluate_rules.calls_for(m.machine_id)) == 2
    assert len(fakes.render_user_data.calls) == 2
    assert (status.failed_step, status.user_data) == (None, f"user-data-of-{m.machine_id}")


async def test_a_failed_kubeadm_join_parks_in_failed_join_cluster_until_retried(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    fakes.kubeadm_join.fail(message="kubeadm init: preflight errors", non_retryable=True)

    await m.discover()
    await m.wait_state("post-discover")
    await m.pxe()
    await m.phone_home()
    parked = await m.wait_state("failed:join-cluster")
    assert "kubeadm init: preflight errors" in parked.reason
    assert not parked.kube_node

    await m.update("retry")
    status = await m.wait_state("ready")
    assert [join.plan.action for join in fakes.kubeadm_join.calls] == ["init", "init"]  # never initialised before
    assert status.kube_node


async def test_a_step_that_fails_retryably_is_retried_by_its_policy(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    fakes.publish_node_dns.fail(times=1, message="DNS server refused the connection")

    status = await m.ansible_to_ready()

    assert len(fakes.publish_node_dns.calls) == 2  # the second attempt, a second later
    assert "failed" not in " ".join(states_passed(status))


async def test_a_step_result_from_before_a_reboot_is_dropped(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    fakes.render_user_data.hold()

    await m.discover()
    await fakes.render_user_data.wait_waiting(1)
    rebooted = await m.pxe()  # the machine reboots while its user-data is being rendered
    assert (rebooted.action, rebooted.state, rebooted.boot) == ("discovery", "boot-1", 2)

    fakes.render_user_data.release()
    await step_result_taken(m.handle, "render_user_data")
    status = await m.status()
    assert (status.state, status.boot, status.user_data) == ("boot-1", 2, None)

    # This boot's own facts run the steps again, and their result is taken.
    await m.report_facts(2)
    status = await m.wait_state("post-discover")
    assert len(fakes.render_user_data.calls) == 2
    assert status.user_data == f"user-data-of-{m.machine_id}"


async def test_a_step_failure_from_before_a_reboot_parks_nothing(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    fakes.render_user_data.hold()
    fakes.render_user_data.fail(message="stale failure", non_retryable=True)

    await m.discover()
    await fakes.render_user_data.wait_waiting(1)
    await m.pxe()
    fakes.render_user_data.release()
    await step_result_taken(m.handle, "render_user_data")

    status = await m.status()
    assert (status.state, status.failed_step) == ("boot-1", None)


async def test_decommission_resets_the_node_removes_its_name_and_retires_it(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    ready = await m.ansible_to_ready()

    await m.update("decommission")
    final = await m.handle.result()

    assert (final.state, final.role, final.kube_node) == ("decommissioned", "", False)
    manual = "power it off by hand (manual power: no BMC set)"  # the fakes' machines have no BMC
    assert final.reason == f"retired: node {ready.node_name} deleted (fake); {manual}"
    [reset] = fakes.kubeadm_decommission.calls
    assert (reset.machine_id, reset.node_name, reset.ip) == (m.machine_id, ready.node_name, m.ip)
    assert fakes.remove_node_dns.calls == [NodeDns(cluster=cluster, name=ready.node_name, ip=m.ip)]
    assert fakes.retire_machine.calls == [m.machine_id]
    await fake_site.wait_cluster(cluster, lambda c: c.members == [], "no members left")


async def test_a_new_run_records_every_patch_on_its_path_and_replays(fake_site: FakeSite):
    """A new run takes each patched branch and records its marker, which is what lets the
    histories of older runs (without the marker) replay down the old branch. The Ansible join's
    history replays here without the join lab."""
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    await m.ansible_to_ready()
    await m.update("decommission")
    await m.handle.result()

    machine = await patch_markers(m.handle)
    assert {"admission-by-signal", "join-plan-by-signal", "render", "ansible-join", "dns-publish", "ansible-decommission", "dns-remove",
            "machine-power"} <= machine
    cluster_markers = await patch_markers(fake_site.cluster_handle(cluster))
    assert {"join-credentials", "admission-by-signal", "join-plan-by-signal", "dns-api-name"} <= cluster_markers

    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    for handle in (m.handle, fake_site.cluster_handle(cluster)):
        await replayer.replay_workflow(await handle.fetch_history())


def test_the_fakes_take_the_arguments_the_real_activities_take(settings):
    """The worker decodes an activity's argument by its annotation: a fake annotated with
    another type than the real activity would test messages the workflows never send."""
    sandbox = Sandbox(workers=1)
    try:
        real = activities_for(settings, sandbox)
    finally:
        sandbox.close()
    taken = {}
    for fn in real:
        hints = typing.get_type_hints(fn)
        [argument] = [hint for name, hint in hints.items() if name != "return"]
        taken[activity._Definition.must_from_callable(fn).name] = argument
    assert taken == ARGUMENTS
