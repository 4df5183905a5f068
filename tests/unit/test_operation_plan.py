"""The checks and order of a cluster operation (workflows/operation_plan.py), pure functions of
the cluster's status: version steps, quorum, members, waves."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from activities.domain.cluster import ClusterSpec, ClusterStatus, Member
from activities.domain.operations import OperationRequest, OperationStatus
from workflows import operation_plan as plan


def cluster(masters: int = 3, workers: int = 2) -> ClusterStatus:
    members = [Member(machine_id=f"m{i}", role="master-prime" if i == 0 else "master", ready=True)
               for i in range(masters)]
    members += [Member(machine_id=f"w{i}", role="worker", ready=True) for i in range(workers)]
    return ClusterStatus(spec=ClusterSpec(name="prod", quorum_count=3, kubernetes_version="1.31.2"),
                         phase="ready", members=members)


def refusal(status: ClusterStatus, **request) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        plan.check(status, OperationRequest(**request))
    return caught.value


@pytest.mark.parametrize("target, fine", [
    ("1.32.0", True), ("v1.32.5", True), ("1.31.3", True), ("1.33.0", False), ("1.31.2", False),
    ("1.30.9", False), ("2.0.0", False),
])
def test_an_upgrade_goes_up_one_minor_step_at_most(target, fine) -> None:
    if fine:
        plan.check(cluster(), OperationRequest(kind="upgrade", kubernetes_version=target))
    else:
        assert refusal(cluster(), kind="upgrade", kubernetes_version=target).type == plan.REFUSED


def test_a_scale_down_keeps_a_majority_of_the_control_plane() -> None:
    plan.check(cluster(), OperationRequest(kind="scale-down", machines=["m1", "w0"]))  # 2 of 3 stay
    breach = refusal(cluster(), kind="scale-down", machines=["m1", "m2"])
    assert "1 of 3 control-plane members would remain, etcd needs 2" in breach.message
    assert "would break quorum" in refusal(cluster(masters=1), kind="scale-down", machines=["m0"]).message
    assert "not members of cluster prod: x" in refusal(cluster(), kind="scale-down", machines=["x"]).message


def test_a_running_operation_or_a_deletion_makes_the_cluster_busy() -> None:
    status = cluster()
    status.operation = OperationStatus(workflow_id="operation:prod:2", kind="rolling-reboot",
                                       request=OperationRequest(kind="rolling-reboot"), state="waiting")
    busy = refusal(status, kind="rolling-reboot")
    assert busy.type == plan.BUSY
    assert busy.message == ("cluster prod is busy with rolling-reboot operation:prod:2 "
                            "(resume, pause or abort it first)")
    status.operation.state = "done"
    plan.check(status, OperationRequest(kind="rolling-reboot"))


def test_the_order_and_the_waves() -> None:
    start = plan.start(cluster(), OperationRequest(kind="rolling-reboot", batch=2), 4, None)
    assert start.status.workflow_id == "operation:prod:4"
    assert [n.machine_id for n in start.status.nodes] == ["m0", "m1", "m2", "w0", "w1"]
    waves = plan.waves(start.status.nodes, 2, "rolling-reboot")
    assert [[n.machine_id for n in w] for w in waves] == [["m0"], ["m1"], ["m2"], ["w0", "w1"]]
    down = plan.start(cluster(), OperationRequest(kind="scale-down", machines=["m0", "w1", "m2"]), 5, None)
    assert [n.machine_id for n in down.status.nodes] == ["w1", "m2", "m0"]


def test_the_master_prime_goes_only_behind_a_control_plane_endpoint() -> None:
    refused = refusal(cluster(masters=5), kind="scale-down", machines=["m0"])
    assert refused.type == plan.REFUSED and "no control-plane endpoint" in refused.message
    assert "set spec.control_plane_endpoint" in refused.message and "keep the master-prime" in refused.message
    behind_vip = cluster(masters=5)
    behind_vip.spec.control_plane_endpoint = "192.0.2.10:6443"
    plan.check(behind_vip, OperationRequest(kind="scale-down", machines=["m0"]))
    from_task = cluster(masters=5)
    from_task.endpoint = "192.0.2.11:6443"  # a Terraform task's control_plane_endpoint output
    plan.check(from_task, OperationRequest(kind="scale-down", machines=["m0"]))
    plan.check(cluster(masters=5), OperationRequest(kind="scale-down", machines=["m1"]))  # not the prime: fine


def test_a_two_member_control_plane_says_to_add_a_member_or_keep_both() -> None:
    refused = refusal(cluster(masters=2), kind="scale-down", machines=["m1"])
    assert "1 of 2 control-plane members would remain" in refused.message
    assert "add a member first" in refused.message and "keep both" in refused.message
    assert "add a member first" not in refusal(cluster(), kind="scale-down", machines=["m1", "m2"]).message


def test_the_clusters_copy_is_compact_and_leaves_the_operations_own_whole() -> None:
    start = plan.start(cluster(), OperationRequest(kind="rolling-reboot", machines=["m1", "w0"]), 1, None)
    small = plan.compact(start.status)
    assert small.nodes == [] and small.request.machines == [] and small.workflow_id == "operation:prod:1"
    assert len(start.status.nodes) == 2 and start.status.request.machines == ["m1", "w0"]


def test_a_wrong_version_is_said_before_the_clusters_phase_and_a_non_version_in_words():
    """An upgrade to a skipped minor is refused as such even while the cluster forms; a value
    that is no version at all is refused where it enters, in words, not as a pattern."""
    import pydantic

    forming = ClusterStatus(spec=ClusterSpec(name="c", kubernetes_version="1.31.0"), phase="forming")
    with pytest.raises(ApplicationError, match="skips a minor version"):
        plan.check(forming, OperationRequest(kind="upgrade", kubernetes_version="1.33.0"))
    with pytest.raises(ApplicationError, match="forming, not ready: nothing to upgrade until it is"):
        plan.check(forming, OperationRequest(kind="upgrade", kubernetes_version="1.32.0"))
    with pytest.raises(pydantic.ValidationError, match="'banana' is not a Kubernetes version"):
        OperationRequest(kind="upgrade", kubernetes_version="banana")
