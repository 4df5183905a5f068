"""The kubeadm stand-in's day-2 commands (infra/lab/standin/kubeadm): `kubectl uncordon`, `kubeadm
upgrade apply` / `upgrade node`, each node's kubelet version, and the call records that name the node
a call acted on (what the cluster-operation tests read to check order and the quorum rule).

Same fake nodes as tests/unit/test_kubeadm_standin.py: a temp root per node, one shared state dir.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.nodelab import control_planes_out_at_once
from tests.unit.test_kubeadm_standin import (  # noqa: F401  (ca, cluster, cp1: fixtures)
    HOST,
    TRAILER,
    Cluster,
    Node,
    ca,
    cluster,
    cp1,
    failed,
    listed,
    ok,
)

OLD = "v1.30.2"  # the stand-in (kubeadm v1.31) inits 1.30 and 1.31 clusters


@pytest.fixture
def old(cluster: Cluster) -> tuple[Node, Node, Node]:
    """A v1.30.2 cluster: cp1 (init), cp2 (control-plane join), w1 (worker)."""
    cp1 = cluster.node("cp1")
    ok(cp1.init("--upload-certs", version=OLD))
    cp2, w1 = cluster.node("cp2"), cluster.node("w1")
    ok(cp2.join(control_plane=True, cert_key=cluster.read()["certificate_key"]["key"]))
    ok(w1.join())
    return cp1, cp2, w1


def versions(cluster: Cluster) -> dict[str, str]:
    state = cluster.read()
    return {"cluster": state["kubernetes_version"],
            **{name: node["kubelet_version"] for name, node in state["nodes"].items()}}


def test_nodes_show_their_kubelet_version_and_whether_they_are_cordoned(cluster: Cluster, old):
    cp1, _, _ = old
    shown = listed(cp1)
    assert {name: n["status"]["nodeInfo"]["kubeletVersion"] for name, n in shown.items()} == {
        "cp1": OLD, "cp2": OLD, "w1": OLD}
    assert "unschedulable" not in shown["w1"]["spec"]
    assert ok(cp1.kubectl("drain", "w1", "--ignore-daemonsets")).out == "node/w1 cordoned\nnode/w1 drained\n"
    one = json.loads(ok(cp1.kubectl("get", "node", "w1", "-o", "json")).out)  # one Node, not a List
    assert (one["kind"], one["metadata"]["name"], one["spec"]["unschedulable"]) == ("Node", "w1", True)
    assert one["status"]["nodeInfo"] == {"kubeletVersion": OLD}


def test_uncordon_makes_the_node_schedulable_again(cluster: Cluster, old):
    cp1, _, _ = old
    ok(cp1.kubectl("drain", "w1", "--ignore-daemonsets"))
    assert ok(cp1.kubectl("uncordon", "w1")).out == "node/w1 uncordoned\n"
    assert listed(cp1)["w1"]["spec"] == {} and cluster.read()["nodes"]["w1"]["unschedulable"] is False
    assert ok(cp1.kubectl("uncordon", "w1")).out == "node/w1 already uncordoned\n"


@pytest.mark.parametrize(("args", "message"), [
    (["uncordon", "ghost"], 'Error from server (NotFound): nodes "ghost" not found'),
    (["uncordon"], "error: USAGE: uncordon NODE [flags]"),
    (["get", "node", "ghost", "-o", "json"], 'Error from server (NotFound): nodes "ghost" not found'),
    (["get", "configmap", "other", "-n", "kube-system", "-o", "json"],
     'Error from server (NotFound): configmaps "other" not found'),
    (["get", "configmap", "kubeadm-config", "-o", "json"],  # the default namespace
     'Error from server (NotFound): configmaps "kubeadm-config" not found'),
], ids=["uncordon-unknown", "uncordon-nothing", "get-unknown-node", "other-configmap", "wrong-namespace"])
def test_kubectl_refusals(cluster: Cluster, cp1: Node, args: list[str], message: str):
    before = cluster.read()
    r = cp1.kubectl(*args)
    assert (r.rc, r.out, r.err) == (1, "", message + "\n")
    assert cluster.read() == before


def test_upgrade_apply_moves_the_cluster_and_upgrade_node_the_others(cluster: Cluster, old):
    cp1, cp2, w1 = old
    r = ok(cp1.kubeadm("upgrade", "apply", "v1.31.0", "-y"))
    assert 'SUCCESS! Your cluster was upgraded to "v1.31.0"' in r.out
    assert versions(cluster) == {"cluster": "v1.31.0", "cp1": "v1.31.0", "cp2": OLD, "w1": OLD}
    config = json.loads(ok(cp2.kubectl("get", "cm", "kubeadm-config", "-n", "kube-system", "-o", "json")).out)
    assert yaml.safe_load(config["data"]["ClusterConfiguration"])["kubernetesVersion"] == "v1.31.0"

    r = ok(cp2.kubeadm("upgrade", "node"))
    assert 'Upgrading your Static Pod-hosted control plane instance to version "v1.31.0"' in r.out
    r = ok(w1.kubeadm("upgrade", "node"))
    assert "control plane" not in r.out and "successfully updated" in r.out
    assert versions(cluster) == {"cluster": "v1.31.0", "cp1": "v1.31.0", "cp2": "v1.31.0", "w1": "v1.31.0"}
    assert {n: o["status"]["nodeInfo"]["kubeletVersion"] for n, o in listed(cp1).items()} == {
        "cp1": "v1.31.0", "cp2": "v1.31.0", "w1": "v1.31.0"}

    ok(cp1.kubeadm("upgrade", "apply", "1.31.0", "--yes"))  # the same version again: re-applied
    ok(cp1.kubeadm("upgrade", "apply", "v1.31.4", "-y"))  # a patch release: the stand-in plays every 1.31.x
    assert versions(cluster)["cluster"] == "v1.31.4"


def test_upgrade_node_before_the_apply_keeps_the_clusters_version(cluster: Cluster, old):
    """A worker rebooted before any control plane was upgraded stays on the cluster's version."""
    _, _, w1 = old
    ok(w1.kubeadm("upgrade", "node"))
    assert versions(cluster)["w1"] == OLD


@pytest.mark.parametrize(("target", "errors"), [
    ("v1.32.0", ['Specified version to upgrade to "v1.32.0" is too high; kubeadm can upgrade only 1 minor version '
                 "at a time", 'Kubeadm version "v1.31.0" can only be used to upgrade to Kubernetes version "v1.31"']),
    ("v1.30.1", ['Specified version to upgrade to "v1.30.1" is lower than the cluster version "v1.30.2": '
                 "[stand-in] downgrades are refused"]),
    ("1.31", ['Unable to parse normalized version "v1.31" as a semantic version']),
], ids=["two-minors-up", "downgrade", "not-a-version"])
def test_upgrade_apply_refuses_a_bad_version_step(cluster: Cluster, old, target: str, errors: list[str]):
    cp1, _, _ = old
    before = cluster.read()
    r = cp1.kubeadm("upgrade", "apply", target, "-y", "--force")  # --force skips none of these
    assert r.rc == 1 and r.err == ("[upgrade/version] FATAL: the --version argument is invalid due to these fatal "
                                   "errors:\n\n" + "".join(f"\t- {e}\n" for e in errors)
                                   + "\nPlease fix the misalignments highlighted above and try upgrading again\n"
                                   + TRAILER)
    assert cluster.read() == before


def test_upgrade_apply_refusals(cluster: Cluster, old):
    cp1, _, w1 = old
    before = cluster.read()
    failed(cp1.kubeadm("upgrade", "apply", "-y"), "missing version argument: kubeadm upgrade apply [version]")
    failed(cp1.kubeadm("upgrade", "apply", "v1.31.0", "v1.31.1"), "accepts at most 1 arg(s), received 2")
    r = cp1.kubeadm("upgrade", "apply", "v1.31.0")  # no -y, nobody answers the prompt
    assert r.out.endswith("Are you sure you want to proceed? [y/N]: ")
    failed(r, "won't proceed; the user didn't answer (Y|y) in order to continue")
    failed(w1.kubeadm("upgrade", "apply", "v1.31.0", "-y"),
           "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory")
    failed(cluster.node("stranger").kubeadm("upgrade", "node"),
           "couldn't create a Kubernetes client from file \"/etc/kubernetes/kubelet.conf\": failed to load admin "
           "kubeconfig: open /etc/kubernetes/kubelet.conf: no such file or directory")
    assert cluster.read() == before


def test_upgrade_apply_needs_a_control_plane_node(cluster: Cluster, old):
    """admin.conf copied to a worker is not enough: apply upgrades this machine's control plane."""
    cp1, _, w1 = old
    w1.path("/etc/kubernetes/admin.conf").write_text(cp1.path("/etc/kubernetes/admin.conf").read_text())
    failed(w1.kubeadm("upgrade", "apply", "v1.31.0", "-y"),
           f"[upgrade/preflight] [stand-in] this machine ({HOST}) "
           'is not a control-plane node of the cluster: run "kubeadm upgrade apply" on one')
    assert versions(cluster)["cluster"] == OLD


@pytest.mark.parametrize(("sub", "args"), [
    ("uncordon", ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "uncordon", "cp1"]),
    ("upgrade-apply", ["kubeadm", "upgrade", "apply", "v1.31.0", "-y"]),
    ("upgrade-node", ["kubeadm", "upgrade", "node"]),
])
def test_injected_failure_of_a_day2_command_changes_nothing(cluster: Cluster, old, sub: str, args: list[str]):
    cp1, _, _ = old
    ok(cp1.kubectl("drain", "cp1", "--ignore-daemonsets"))
    cluster.inject("fail", sub, "no")
    before = cluster.read()
    r = cp1.run(*args)
    assert (r.rc, r.err) == (1, "no\n" + ("" if args[0] == "kubectl" else TRAILER))
    assert cluster.read() == before


def test_every_call_on_a_node_is_recorded_with_the_node_and_its_role(cluster: Cluster, old):
    """What a rolling upgrade's test reads: when each node was drained, upgraded, uncordoned or
    reset, and whether it is a control plane (at most one of those may be down at a time)."""
    cp1, cp2, w1 = old
    ok(cp1.kubectl("drain", "cp2", "--ignore-daemonsets"))
    ok(cp2.kubeadm("upgrade", "node"))
    ok(cp1.kubectl("uncordon", "cp2"))
    ok(cp1.kubeadm("upgrade", "apply", "v1.31.0", "-y"))
    ok(w1.kubeadm("reset", "-f"))
    ends = [c for c in cluster.calls() if c["phase"] == "end"]
    assert [(c["argv"][1] if c["argv"][0] == "kubeadm" else c["argv"][3], c.get("node"), c.get("control_plane"))
            for c in ends] == [
        ("init", "cp1", True), ("join", "cp2", True), ("join", "w1", False), ("drain", "cp2", True),
        ("upgrade", "cp2", True), ("uncordon", "cp2", True), ("upgrade", "cp1", True), ("reset", "w1", False)]
    assert (ends[4]["from_version"], ends[4]["kubelet_version"]) == (OLD, OLD)  # before the apply
    assert (ends[6]["from_version"], ends[6]["kubelet_version"]) == (OLD, "v1.31.0")
    times = [c["t"] for c in ends]
    assert times == sorted(times) and all(isinstance(t, float) for t in times)
    assert all(c["rc"] == 0 for c in ends)


def test_the_quorum_rule_is_read_from_the_records(cluster: Cluster, old):
    """Two control-plane nodes drained at once break it; one at a time, workers aside, does not."""
    cp1, cp2, _ = old
    for name in ("cp2", "w1", "cp1"):  # a worker may be out beside a control plane
        ok(cp1.kubectl("drain", name, "--ignore-daemonsets"))
        if name != "w1":
            ok(cp1.kubectl("uncordon", name))
    assert control_planes_out_at_once(cluster.calls()) == []
    assert cp1.kubectl("drain", "cp2").rc == 1  # refused on kube-proxy's pod after cordoning: out all the same
    ok(cp2.kubectl("drain", "cp1", "--ignore-daemonsets"))
    (broken,) = control_planes_out_at_once(cluster.calls())
    assert broken == ("cp2", "cp1", cluster.calls()[-1]["t"])
