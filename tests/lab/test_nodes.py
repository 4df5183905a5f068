"""A cluster operation's node steps for real: the `drain_node`, `uncordon_node` and `node_version`
activities run infra/ansible/node.yml over SSH on a ready control-plane machine of a node lab
cluster (1 master + 2 workers, joined by the product as in tests/lab/test_join.py), and a node
rebooted into a cluster whose Kubernetes version moved is upgraded by its rejoin (`kubeadm upgrade
apply` on the control plane, `kubeadm upgrade node` on the workers), all of it in the kubeadm
stand-in's records.
"""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import replace

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.domain.operations import NodeRef, OperationRequest, OperationStatus
from activities.domain.power import MANUAL_CYCLE
from activities.nodes import NodeActivities
from api import temporal
from tests.conftest import eventually
from tests.lab.test_join import RULES, Site, _name, discover, join, site  # noqa: F401  (site: the fixture)
from tests.lifecycle import MachineDriver, cluster_status, create_cluster
from tests.nodelab import control_planes_out_at_once, nodelab_available

pytestmark = pytest.mark.skipif(nodelab_available() is not None, reason=str(nodelab_available()))

OLD, NEW = "1.30.2", "1.31.0"


async def _cluster(site: Site, api_server) -> tuple[MachineDriver, MachineDriver, MachineDriver]:
    """One master and two workers, ready, on Kubernetes OLD."""
    await create_cluster(site.client, site.settings, site.cluster, quorum=1, join_method="ansible",
                         kubernetes_version=OLD)
    with api_server.client() as http:
        http.put(f"/v1/clusters/{site.cluster}/rules", json=RULES).raise_for_status()
    prime, w1, w2 = site.machine("m1", 1), site.machine("w1", 2), site.machine("w2", 3)
    assert (await discover(prime, "post-discover")).role == "master-prime"
    await asyncio.gather(discover(w1, "holding"), discover(w2, "holding"))
    assert (await join(prime)).state == "ready"
    await asyncio.gather(*(m.wait_state("post-discover", timeout=120) for m in (w1, w2)))
    joined = await asyncio.gather(join(w1, timeout=240), join(w2, timeout=240))
    assert [j.state for j in joined] == ["ready", "ready"], [j.reason for j in joined]
    return prime, w1, w2


async def _move_version(site: Site, version: str) -> None:
    """What an upgrade operation does first: the cluster's workflow takes the new version (the
    rejoins read it there). This test takes each node through its steps itself, so it aborts the
    operation at once; the master it may have drained meanwhile is uncordoned again by the abort."""
    cluster = temporal.cluster(site.client, site.cluster)
    op = await cluster.execute_update("start_operation", OperationRequest(kind="upgrade", kubernetes_version=version),
                                      result_type=OperationStatus)
    await site.client.get_workflow_handle(op.workflow_id).execute_update("abort", result_type=OperationStatus)

    async def aborted() -> bool:
        return (await cluster_status(site.client, site.cluster)).operation.state == "aborted"

    await eventually(aborted, 120, what=f"{op.workflow_id} to be aborted")
    assert (await cluster_status(site.client, site.cluster)).spec.kubernetes_version == version
    assert not any(node["unschedulable"] for node in site.cluster_state()["nodes"].values())


async def _reboot(site: Site, m: MachineDriver) -> str:
    """Power-cycle the node (same data disk, new host key) and let it rejoin; its reason."""
    m.node.reboot()
    m.host_key = m.node.host_key
    await discover(m, "post-discover")
    again = await join(m, timeout=240)
    assert again.state == "ready", again.reason
    return again.reason


def _ref(site: Site, m: MachineDriver) -> NodeRef:
    return NodeRef(cluster=site.cluster, machine_id=m.machine_id, node_name=m.node.name)


async def test_drain_reboot_upgrade_and_uncordon_through_the_playbook(site: Site, api_server):
    prime, w1, w2 = await _cluster(site, api_server)
    acts = NodeActivities(replace(site.settings, ssh_proxy_command=site.lab.proxy_command))
    env = ActivityEnvironment(client=site.client)
    nodes = {m.node.name: m for m in (prime, w1, w2)}
    assert {name: await env.run(acts.version, _ref(site, m)) for name, m in nodes.items()} == {
        name: f"v{OLD}" for name in nodes}

    # The upgrade: the cluster's version moves (in its workflow); the control plane goes first, then
    # each worker: drain, reboot (its rejoin upgrades it), version, uncordon.
    await _move_version(site, NEW)
    before = len(site.records("end"))
    for m, upgrade in ((prime, f"kubeadm upgrade apply v{NEW} ran"), (w1, f"kubeadm upgrade node ran (v{NEW})")):
        ref = _ref(site, m)
        assert await env.run(acts.drain, ref) == f"drained on {prime.node.name}"
        assert site.cluster_state()["nodes"][m.node.name]["unschedulable"] is True
        reason = await _reboot(site, m)
        assert reason.startswith(f"already a node: rejoined without init or join; {upgrade}"), reason
        assert await env.run(acts.version, ref) == f"v{NEW}"
        assert await env.run(acts.uncordon, ref) == f"uncordoned on {prime.node.name}"
        assert site.cluster_state()["nodes"][m.node.name]["unschedulable"] is False
    assert await env.run(acts.version, _ref(site, w2)) == f"v{OLD}"  # not rebooted yet

    state = site.cluster_state()
    assert state["kubernetes_version"] == f"v{NEW}"
    assert {name: node["kubelet_version"] for name, node in state["nodes"].items()} == {
        prime.node.name: f"v{NEW}", w1.node.name: f"v{NEW}", w2.node.name: f"v{OLD}"}
    # The stand-in's records, in order: each node drained, upgraded on its rejoin, uncordoned.
    steps = ("kubectl drain", "kubectl uncordon", "kubeadm upgrade-apply", "kubeadm upgrade-node")
    acted = [(_name(c["argv"]), c["node"], c["host"]) for c in site.records("end")[before:] if _name(c["argv"]) in steps]
    p, w = prime.node.name, w1.node.name
    assert acted == [("kubectl drain", p, p), ("kubeadm upgrade-apply", p, p), ("kubectl uncordon", p, p),
                     ("kubectl drain", w, p), ("kubeadm upgrade-node", w, w), ("kubectl uncordon", w, p)]
    assert all(c["rc"] == 0 for c in site.calls("kubeadm upgrade-apply", "kubeadm upgrade-node"))
    assert control_planes_out_at_once(site.records("end")) == []
    apply = site.calls("kubeadm upgrade-apply")[0]
    assert (apply["from_version"], apply["kubelet_version"], apply["control_plane"]) == (f"v{OLD}", f"v{NEW}", True)
    assert len(site.calls("kubeadm init")) == 1 and len(site.calls("kubeadm join")) == 2
    assert not site.calls("kubeadm reset")

    # A rejoin on the version the node already runs upgrades nothing.
    reason = await _reboot(site, w1)
    assert reason.split(";")[0] == "already a node: rejoined without init or join" and "upgrade" not in reason, reason
    assert len(site.calls("kubeadm upgrade-node")) == 1


async def test_kubectl_refusals_and_an_unreachable_control_plane(site: Site, api_server):
    prime, w1, _ = await _cluster(site, api_server)
    acts = NodeActivities(replace(site.settings, ssh_proxy_command=site.lab.proxy_command))
    env = ActivityEnvironment(client=site.client)

    ghost = NodeRef(cluster=site.cluster, machine_id="no-such-machine", node_name="ghost")
    with pytest.raises(ApplicationError) as refused:
        await env.run(acts.drain, ghost)
    assert refused.value.non_retryable and refused.value.type == "PlaybookFailed", refused.value
    assert 'nodes "ghost" not found' in str(refused.value) and "kubectl drain ghost" in str(refused.value)

    # The only control-plane machine is off: nothing can run kubectl; the attempt may be retried.
    prime.node.stop()
    with pytest.raises(ApplicationError) as down:
        await env.run(acts.uncordon, _ref(site, w1))
    assert down.value.type == "NoControlPlane" and not down.value.non_retryable, down.value
    assert f"no control-plane machine of cluster {site.cluster} could uncordon {w1.node.name}" in str(down.value)
    assert prime.node.name in str(down.value) and "unreachable" in str(down.value)

    with pytest.raises(ApplicationError) as gone:
        await env.run(acts.version, NodeRef(cluster="no-such-cluster", machine_id="m", node_name="n"))
    assert gone.value.type == "ClusterNotFound" and gone.value.non_retryable


async def _power_cycle_when_asked(site: Site, machines: list[MachineDriver], done: asyncio.Event) -> list[str]:
    """The person at the rack: a machine without a BMC whose reason asks for a power cycle is
    cycled (same disk) and rejoins. Returns the nodes in the order they were cycled."""
    cycled: dict[str, int] = {}
    order = []
    while not done.is_set():
        for m in machines:
            status = await m.status()
            if MANUAL_CYCLE in status.reason and cycled.get(m.machine_id) != status.boot:
                cycled[m.machine_id] = status.boot
                order.append(m.node.name)
                await _reboot(site, m)
        await asyncio.sleep(0.5)
    return order


@pytest.mark.skipif(importlib.util.find_spec("activities.power.activity") is None,
                    reason="the power activities (branch p17-settings) are not merged yet")
async def test_a_rolling_upgrade_by_the_operation_with_manual_power(site: Site, api_server):
    """The whole operation on the worker, with the real node activities: each node drained,
    power-cycled by a person when its reason asks, upgraded by its rejoin, checked and uncordoned,
    one at a time, the master first; the stand-in's records show the order and the quorum rule."""
    machines = list(await _cluster(site, api_server))
    done = asyncio.Event()
    person = asyncio.ensure_future(_power_cycle_when_asked(site, machines, done))
    try:
        with api_server.client() as http:
            started = http.post(f"/v1/clusters/{site.cluster}/operations",
                                json={"kind": "upgrade", "kubernetes_version": NEW})
            assert started.status_code == 202, started.text

            async def ended() -> bool:
                assert not person.done() or person.exception() is None
                op = (await cluster_status(site.client, site.cluster)).operation
                return op.state in ("done", "aborted", "waiting")

            await eventually(ended, 600, what="the upgrade to end")
            op = http.get(f"/v1/clusters/{site.cluster}/operations").json()
    finally:
        done.set()
    cycled = await person
    assert op["state"] == "done", op
    order = [n["node_name"] for n in op["nodes"]]
    assert order[0] == machines[0].node.name and cycled == order
    state = site.cluster_state()
    assert state["kubernetes_version"] == f"v{NEW}"
    assert {node["kubelet_version"] for node in state["nodes"].values()} == {f"v{NEW}"}
    steps = ("kubectl drain", "kubeadm upgrade-apply", "kubeadm upgrade-node", "kubectl uncordon")
    acted = [(_name(c["argv"]), c["node"]) for c in site.records("end") if _name(c["argv"]) in steps]
    expected = []
    for name in order:
        upgrade = "kubeadm upgrade-apply" if name == machines[0].node.name else "kubeadm upgrade-node"
        expected += [("kubectl drain", name), (upgrade, name), ("kubectl uncordon", name)]
    assert acted == expected
    assert control_planes_out_at_once(site.records("end")) == []
