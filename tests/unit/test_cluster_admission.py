"""The cluster workflow's pure decisions (workflows/admission.py), without a workflow."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from activities.domain.cluster import JoinCredentials, Member
from workflows import admission


def members(*roles: str, ready: tuple[str, ...] = ()) -> list[Member]:
    return [Member(machine_id=f"m{i}", role=role, ready=f"m{i}" in ready) for i, role in enumerate(roles)]


def test_the_built_in_policy_gives_one_master_prime_then_masters_to_the_quorum_then_workers():
    given: list[Member] = []
    for i in range(6):
        given.append(Member(machine_id=f"m{i}", role=admission.assign_role(given, quorum_count=3)))
    assert [m.role for m in given] == ["master-prime", "master", "master", "worker", "worker", "worker"]
    assert admission.assign_role(members("worker", "master"), quorum_count=3) == "master-prime"  # none yet
    assert admission.assign_role(members("master-prime"), quorum_count=1) == "worker"


def test_the_phase_follows_the_master_prime_and_the_ready_control_plane():
    assert admission.phase([]) == "forming"
    assert admission.phase(members("worker", ready=("m0",))) == "forming"
    assert admission.phase(members("master-prime", "worker", ready=("m1",))) == "bootstrapping"
    assert admission.phase(members("master-prime", ready=("m0",))) == "ready"
    # the prime gone, a ready master keeps the control plane up
    assert admission.phase(members("master", "worker", ready=("m0",))) == "ready"


def test_only_ready_control_plane_members_answer_for_the_cluster():
    assert admission.ready_control_plane(members("master-prime", "master", "worker", ready=("m0", "m2"))) == ["m0"]
    assert admission.roles(members("master-prime", "worker")) == [("m0", "master-prime"), ("m1", "worker")]


def test_a_held_machine_is_told_why():
    held = admission.held_for_control_plane("master", members("master-prime", "master"))
    assert (held.role, held.hold, held.reason) == ("master", True, "waiting for the control plane: master-prime m0 to join")
    assert admission.held_for_control_plane("worker", []).reason == "waiting for the control plane: a master-prime"
    failed = admission.held_by_rules("", ["r1: boom", "r2: timeout"])
    assert failed.hold and failed.rule_errors == ["r1: boom", "r2: timeout"]
    assert failed.reason == "rules failed, fix them and the machine is re-evaluated: r1: boom; r2: timeout"


def test_the_join_token_is_due_before_it_expires_and_at_once_when_there_is_none():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert admission.renew_in(JoinCredentials(), 3600, now) == timedelta(0)
    token = JoinCredentials(token_id=1, token_expires_at=now + timedelta(hours=24))
    assert admission.renew_in(token, 3600, now) == timedelta(hours=23)
    assert admission.renew_in(token, 3600, now + timedelta(hours=23, minutes=30)) == -timedelta(minutes=30)
