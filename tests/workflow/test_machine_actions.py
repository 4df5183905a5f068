"""Temporal Cloud actions of one machine's lifecycle, new -> ready: counted, printed, bounded.

A fleet multiplies each action a machine workflow takes (issue 18: at most 25 per machine).
The count is the machine workflow's own history (tests/temporal_actions.py says what counts);
the cluster workflow's history is printed beside it, for the admission and join plan the
machine asked of it.
"""

from __future__ import annotations

import pytest

from activities.domain.machine import MachineStatus
from tests.temporal_actions import Actions, count_actions
from tests.workflow.conftest import FakeMachine, FakeSite, states_passed
from workflows import search

MOST_ACTIONS = 25


async def _lifecycle(fake_site: FakeSite, join_method: str) -> tuple[FakeMachine, Actions, Actions]:
    cluster = await fake_site.cluster(quorum=1, join_method=join_method)
    m = fake_site.machine(cluster)
    if join_method == "external":
        await m.to_ready()
    else:
        await m.ansible_to_ready()
    # Ready is published before the cluster is told: wait until it knows, so the history is whole.
    await fake_site.wait_cluster(cluster, lambda c: all(member.ready for member in c.members), "the member ready")
    machine = count_actions([event async for event in m.handle.fetch_history_events()])
    of_cluster = count_actions([event async for event in fake_site.cluster_handle(cluster).fetch_history_events()])
    print(f"\n{join_method} join, machine workflow new -> ready: {machine.breakdown()}")
    print(f"{join_method} join, its cluster workflow (one machine): {of_cluster.breakdown()}")
    return m, machine, of_cluster


@pytest.mark.parametrize("join_method", ["ansible", "external"])
async def test_a_machine_lifecycle_takes_at_most_25_actions(fake_site: FakeSite, join_method: str):
    m, machine, _ = await _lifecycle(fake_site, join_method)

    assert machine.total <= MOST_ACTIONS, machine.breakdown()
    # One upsert per state it moved to after `new` at most: none for a new reason, a repeated
    # state, or the `new` that the same first task leaves for `boot-1`.
    status = await m.status()
    assert machine.by_kind["search attributes upserted"] <= len(states_passed(status)) - 1, machine.breakdown()
    await _published(m, status)


async def _published(m: FakeMachine, status: MachineStatus) -> None:
    """The search attributes say what the status says (an unset role: no attribute)."""
    attributes = (await m.handle.describe()).typed_search_attributes
    assert (attributes.get(search.STATE), attributes.get(search.CLUSTER)) == (status.state, status.cluster)
    assert (attributes.get(search.ROLE), attributes.get(search.MAC)) == (status.role or None, status.mac)


async def test_the_search_attributes_follow_every_state(fake_site: FakeSite):
    """Held outside any cluster, assigned, admitted, joined by an outside tool, ready, then
    reprovisioned (the role unset): at each stop the Web UI's search attributes are right."""
    cluster = await fake_site.cluster(quorum=1, join_method="external")
    m = fake_site.machine(None)
    await _published(m, await _pxe_status(m))
    await m.report_facts(1)
    await _published(m, await m.wait_state("holding"))
    await m.update("assign", cluster)
    await _published(m, await m.wait_state("post-discover"))
    await m.pxe()
    await _published(m, await m.status())
    await m.phone_home()
    await _published(m, await m.wait_state("join-cluster"))
    await m.join(ok=True)
    ready = await m.wait_state("ready")
    assert ready.role == "master-prime" and ready.cluster == cluster
    await _published(m, ready)
    await _published(m, await m.update("reprovision"))


async def _pxe_status(m: FakeMachine) -> MachineStatus:
    await m.pxe()
    return await m.status()
