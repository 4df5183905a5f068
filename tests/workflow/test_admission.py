"""Cluster admission is serialised: machines arriving together never share the master-prime role
and no admission is lost."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from activities.domain.cluster import ClusterSpec, ClusterStatus
from activities.domain.machine import Admission, AdmitRequest
from api import temporal
from tests.lifecycle import MachineDriver, cluster_status, create_cluster

pytestmark = pytest.mark.usefixtures("worker")


async def test_twenty_machines_discovered_together_are_admitted_one_at_a_time(client, settings, unique):
    name = unique("c")
    await create_cluster(client, settings, name, quorum=3)
    machines = [
        MachineDriver(client, settings, unique(f"m{i:02d}"), name, mac=f"52:54:00:00:01:{i:02x}")
        for i in range(20)
    ]

    async def discover(m: MachineDriver) -> None:
        await m.discover()

    await asyncio.gather(*(discover(m) for m in machines))
    settled = await asyncio.gather(*(m.wait_state("post-discover", "holding") for m in machines))

    roles = Counter(s.role for s in settled)
    assert roles == {"master-prime": 1, "master": 2, "worker": 17}
    cluster = await cluster_status(client, name)
    assert sorted(m.machine_id for m in cluster.members) == sorted(m.machine_id for m in machines)
    assert {m.machine_id: m.role for m in cluster.members} == {s.machine_id: s.role for s in settled}
    prime = next(s for s in settled if s.role == "master-prime")
    assert prime.state == "post-discover"
    assert sorted(cluster.held) == sorted(s.machine_id for s in settled if s is not prime)

    # Bringing the master-prime up releases every held machine.
    p = next(m for m in machines if m.machine_id == prime.machine_id)
    await p.boot_runtime()
    await p.join(ok=True)
    await asyncio.gather(*(m.wait_state("post-discover") for m in machines if m is not p))
    assert (await cluster_status(client, name)).held == []


async def test_concurrent_admit_updates_are_idempotent_and_lose_nothing(client, settings, unique):
    name = unique("c")
    await create_cluster(client, settings, name, quorum=3)
    handle = temporal.cluster(client, name)
    ids = [unique("m") for _ in range(20)]

    async def admit(machine_id: str) -> Admission:
        request = AdmitRequest(machine_id=machine_id, cluster=name, is_new=True)
        return await handle.execute_update("admit", request, result_type=Admission)

    first = await asyncio.gather(*(admit(i) for i in ids))
    again = await asyncio.gather(*(admit(i) for i in reversed(ids)))
    assert Counter(a.role for a in first) == {"master-prime": 1, "master": 2, "worker": 17}
    assert [a.role for a in again] == [a.role for a in reversed(first)]
    assert len((await cluster_status(client, name)).members) == 20


async def test_the_cluster_continues_as_new_and_keeps_its_members(client, settings, unique):
    name = unique("c")
    handle = await temporal.start_cluster(
        client, ClusterStatus(spec=ClusterSpec(name=name, quorum_count=3), continue_after_events=40)
    )
    first_run = (await handle.describe()).run_id
    ids = [unique("m") for _ in range(30)]
    for machine_id in ids:  # one at a time: every admit adds events to the history
        await handle.execute_update(
            "admit", AdmitRequest(machine_id=machine_id, cluster=name, is_new=True), result_type=Admission
        )
    status = await cluster_status(client, name)
    assert (await handle.describe()).run_id != first_run
    assert [m.machine_id for m in status.members] == ids
    assert Counter(m.role for m in status.members) == {"master-prime": 1, "master": 2, "worker": 27}
