"""The cluster workflow with fake activities (tests/workflow/conftest.py): admission that never
makes two master-primes, holding until the control plane is up, rules that fail, and control-
plane joins one at a time. Machines are driven through their own workflows, as in production:
machines ask for admission and for their join plan by Signal (workflows/admission_ask.py).
"""

from __future__ import annotations

import asyncio

import pytest

from activities.domain.rules import RulesRequest, RulesVerdict
from tests.conftest import eventually
from tests.workflow.conftest import FakeSite, took_signal


def rules_make_one_prime(request: RulesRequest) -> RulesVerdict:
    """Rules that give master-prime to a machine while the cluster has none, worker otherwise."""
    has_prime = any(member.role == "master-prime" for member in request.members)
    return RulesVerdict(has_rules=True, role="worker" if has_prime else "master-prime")


@pytest.mark.parametrize(
    ("rules", "second_role"),
    [(None, "master"), (rules_make_one_prime, "worker")],
    ids=["built-in-policy", "rules"],
)
async def test_two_machines_admitted_together_make_exactly_one_master_prime(fake_site: FakeSite, rules, second_role):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=3)
    if rules:
        fakes.evaluate_rules.answer(rules)
    fakes.evaluate_rules.hold()
    machines = [fake_site.machine(cluster), fake_site.machine(cluster)]

    await machines[0].discover()
    await fakes.evaluate_rules.wait_waiting(1)  # one batch at a time: the other machine's ask waits in the queue
    await machines[1].discover()
    await fake_site.wait_cluster(cluster, lambda s: len(s.admission_queue) == 2, "both asks queued")
    fakes.evaluate_rules.release()
    settled = await asyncio.gather(*(m.wait_state("post-discover", "holding") for m in machines))

    first, later = fakes.evaluate_rules.calls  # the later one sees the first as a member
    assert (first.members, [m.machine_id for m in later.members]) == ([], [first.machine_id])
    prime = next(s for s in settled if s.role == "master-prime")
    second = next(s for s in settled if s is not prime)
    assert (prime.state, second.role, second.state) == ("post-discover", second_role, "holding")
    status = await fake_site.cluster_status(cluster)
    assert sorted((m.machine_id, m.role) for m in status.members) == sorted(
        [(prime.machine_id, "master-prime"), (second.machine_id, second_role)]
    )
    assert (status.phase, status.held) == ("bootstrapping", [second.machine_id])


async def test_held_machines_are_released_when_the_prime_is_ready(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    prime = fake_site.machine(cluster)
    await prime.discover()
    await prime.wait_state("post-discover")
    workers = [fake_site.machine(cluster), fake_site.machine(cluster)]
    for w in workers:
        await w.discover()
    held = await asyncio.gather(*(w.wait_state("holding") for w in workers))
    assert all(h.reason == f"waiting for the control plane: master-prime {prime.machine_id} to join" for h in held)
    status = await fake_site.cluster_status(cluster)
    assert (status.phase, sorted(status.held)) == ("bootstrapping", sorted(w.machine_id for w in workers))

    await prime.pxe()
    await prime.phone_home()
    await prime.wait_state("ready")

    released = await asyncio.gather(*(w.wait_state("post-discover") for w in workers))
    assert [r.role for r in released] == ["worker", "worker"]
    assert all(len(fakes.evaluate_rules.calls_for(w.machine_id)) == 2 for w in workers)  # held, then released
    assert fakes.admit_machine.calls == []  # asked by Signal, not by an activity
    status = await fake_site.cluster_status(cluster)
    assert (status.phase, status.held) == ("ready", [])


async def test_rule_errors_hold_the_machine_until_the_rules_are_fixed(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=1)
    m = fake_site.machine(cluster)
    error = "rule prime: ReferenceError: facts2 is not defined"
    fakes.evaluate_rules.answer(RulesVerdict(has_rules=True, errors=[error]))

    await m.discover()
    held = await m.wait_state("holding")
    assert held.reason == f"rules failed, fix them and the machine is re-evaluated: {error}"
    assert (await fake_site.cluster_status(cluster)).members == []  # a machine the rules cannot place is no member

    # Saving fixed rules releases the machines held in the cluster (api/rules.py): the same Signal.
    fakes.evaluate_rules.answer(RulesVerdict(has_rules=True, role="master-prime"))
    await m.handle.signal("release")
    admitted = await m.wait_state("post-discover")
    assert admitted.role == "master-prime"
    assert [(x.machine_id, x.role) for x in (await fake_site.cluster_status(cluster)).members] == [
        (m.machine_id, "master-prime")
    ]


async def test_a_master_join_plan_waits_for_the_master_lease(fake_site: FakeSite):
    fakes = fake_site.fakes
    cluster = await fake_site.cluster(quorum=3)
    prime = fake_site.machine(cluster)
    await prime.ansible_to_ready()
    first, second = fake_site.machine(cluster), fake_site.machine(cluster)
    for m in (first, second):
        await m.discover()
        assert (await m.wait_state("post-discover")).role == "master"  # the control plane is up: no holding

    fakes.kubeadm_join.hold()
    await first.pxe()
    await first.phone_home()
    await fakes.kubeadm_join.wait_waiting(1)  # the first master joins, and holds the lease meanwhile
    assert (await fake_site.cluster_status(cluster)).master_joining == first.machine_id

    await second.pxe()
    await second.phone_home()

    async def plan_asked() -> bool:
        return await took_signal(fake_site.cluster_handle(cluster), "request_join_plan", second.machine_id)

    await eventually(plan_asked, 30, what="the cluster to take the second master's join plan ask")
    assert fakes.kubeadm_join.calls_for(second.machine_id) == []
    assert (await fake_site.cluster_status(cluster)).master_joining == first.machine_id
    assert (await second.status()).state == "join-cluster"

    fakes.kubeadm_join.release()
    await asyncio.gather(first.wait_state("ready"), second.wait_state("ready"))
    [first_join] = fakes.kubeadm_join.calls_for(first.machine_id)
    [second_join] = fakes.kubeadm_join.calls_for(second.machine_id)
    assert (first_join.plan.action, second_join.plan.action) == ("join", "join")
    assert (first_join.plan.prime, second_join.plan.prime) == (prime.machine_id, prime.machine_id)
    # Each master gets a certificate key of its own.
    keys = [first_join.plan.credentials.certificate_key_id, second_join.plan.credentials.certificate_key_id]
    assert None not in keys and keys[0] != keys[1]

    async def all_ready() -> bool:  # a machine signals `member_ready` after it shows `ready`
        status = await fake_site.cluster_status(cluster)
        return sorted(m.role for m in status.members if m.ready) == ["master", "master", "master-prime"]

    await eventually(all_ready, 30, what="the cluster to count both masters ready")
    assert (await fake_site.cluster_status(cluster)).master_joining is None
