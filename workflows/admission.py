"""The cluster workflow's pure decisions: which role the built-in policy gives, which phase
the members put the cluster in, what a held machine is told, when the join token is due.

Plain functions of the members and the spec, with no Temporal call, so they are tested
without a workflow (tests/unit/test_cluster_admission.py) and the workflow keeps only the
sequencing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import CONTROL_PLANE_ROLES, JoinCredentials, Member
    from activities.domain.machine import Admission

def assign_role(members: list[Member], quorum_count: int) -> str:
    """The built-in policy, used until a cluster has rules: one master-prime, then masters up to
    the quorum, then workers."""
    if not any(m.role == "master-prime" for m in members):
        return "master-prime"
    if sum(m.role in CONTROL_PLANE_ROLES for m in members) < quorum_count:
        return "master"
    return "worker"


def phase(members: list[Member]) -> str:
    """forming: no master-prime yet; bootstrapping: it is joining; ready: the control plane is
    up (and stays so while any control-plane member is ready)."""
    if ready_control_plane(members):
        return "ready"
    if any(m.role == "master-prime" for m in members):
        return "bootstrapping"
    return "forming"


def ready_control_plane(members: list[Member]) -> list[str]:
    """The control-plane machines that have joined: they mint credentials and answer api.<cluster>."""
    return [m.machine_id for m in members if m.ready and m.role in CONTROL_PLANE_ROLES]


def roles(members: list[Member]) -> list[tuple[str, str]]:
    """What rules decide on: who the members are and their roles (not whether they are ready)."""
    return [(m.machine_id, m.role) for m in members]


def held_by_rules(role: str, errors: list[str]) -> Admission:
    """A machine whose rules failed waits in holding, with the rules' errors as its reason."""
    return Admission(
        role=role, hold=True, rule_errors=errors,
        reason="rules failed, fix them and the machine is re-evaluated: " + "; ".join(errors),
    )


def held_for_control_plane(role: str, members: list[Member]) -> Admission:
    """A member that is not the master-prime waits until the control plane is up."""
    prime = next((m.machine_id for m in members if m.role == "master-prime"), None)
    waiting_for = f"master-prime {prime} to join" if prime else "a master-prime"
    return Admission(role=role, hold=True, reason=f"waiting for the control plane: {waiting_for}")


def renew_in(credentials: JoinCredentials, renew_before_s: int, now: datetime) -> timedelta:
    """How long until the join token must be renewed (zero or less: now; no token yet: now)."""
    if credentials.token_expires_at is None:
        return timedelta(0)
    return credentials.token_expires_at - timedelta(seconds=renew_before_s) - now
