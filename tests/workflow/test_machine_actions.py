"""Temporal Cloud actions of one machine's lifecycle, new -> ready: counted, printed, bounded.

A fleet multiplies each action a machine workflow takes (issue 18: at most 25 per machine).
The count is the machine workflow's own history (tests/temporal_actions.py says what counts);
the cluster workflow's history is printed beside it, for the admission and join plan the
machine asked of it.
"""

from __future__ import annotations

import pytest

from tests.temporal_actions import Actions, count_actions
from tests.workflow.conftest import FakeMachine, FakeSite
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
    # What the Web UI lists machines by is still right at the end.
    attributes = (await m.handle.describe()).typed_search_attributes
    status = await m.status()
    assert (attributes.get(search.STATE), attributes.get(search.CLUSTER)) == ("ready", m.cluster)
    assert (attributes.get(search.ROLE), attributes.get(search.MAC)) == (status.role, m.mac)
