"""Nothing is lost when processes die: the worker is killed mid-lifecycle, the dev server is
stopped and restarted on its DB file. Each test has its own server and a real `tempered worker`."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from activities.domain.machine import MachineStatus
from api import temporal
from activities.storage.settings import Settings
from tests.conftest import stack_env
from tests.lifecycle import MachineDriver, admitted_machine, cluster_status, create_cluster
from tests.servers import DevServer, Process


@dataclass
class PrivateStack:
    server: DevServer
    worker: Process
    settings: Settings
    client: Client


@pytest_asyncio.fixture
async def private_stack(tmp_path: Path, settings):
    """A dev server and a worker process of our own, so killing them touches no other test."""
    server = DevServer(tmp_path).start()
    mine = replace(
        settings,
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'tempered.db'}",
        temporal_address=server.address,
    )
    worker = Process(["worker"], stack_env(mine), tmp_path / "worker.log").start()
    try:
        client = await temporal.connect(mine)
        await temporal.ensure_search_attributes(client)  # as the edge or API would before starting
        yield PrivateStack(server, worker, mine, client)
    finally:
        worker.stop(signal.SIGKILL)
        server.stop()


async def test_killing_the_worker_mid_lifecycle_loses_nothing(private_stack, unique):
    worker, client = private_stack.worker, private_stack.client
    m = await admitted_machine(client, private_stack.settings, unique)

    worker.stop(signal.SIGKILL)
    # The machine reboots into the runtime OS while no worker runs: its request waits, durably.
    pending = asyncio.create_task(m.pxe())
    await asyncio.sleep(2)
    assert not pending.done()
    worker.start()
    instruction = await asyncio.wait_for(pending, 60)
    assert (instruction.action, instruction.state) == ("runtime", "boot-2")
    await m.phone_home()
    await m.wait_state("join-cluster")
    worker.stop(signal.SIGKILL)
    worker.start()
    await m.join(ok=True)
    ready = await m.wait_state("ready")
    assert ready.role == "master-prime"
    assert (await cluster_status(client, m.cluster)).phase == "ready"


async def test_restarting_the_dev_server_on_its_db_file_continues_every_workflow(private_stack, unique):
    server, worker, settings = private_stack.server, private_stack.worker, private_stack.settings
    client = private_stack.client
    name = unique("c")
    await create_cluster(client, settings, name, quorum=3)
    prime = MachineDriver(client, settings, unique("prime"), name)
    held = MachineDriver(client, settings, unique("held"), name, mac="52:54:00:00:00:02")
    fresh = MachineDriver(client, settings, unique("fresh"), name, mac="52:54:00:00:00:03")
    await prime.discover()
    await prime.wait_state("post-discover")
    await held.discover()
    await held.wait_state("holding")
    await fresh.pxe()
    await prime.boot_runtime()
    before = {m.machine_id: await m.status() for m in (prime, held, fresh)}

    worker.stop()
    server.stop()
    server.start()  # same port, same DB file
    worker.start()
    client = await temporal.connect(settings)
    for m in (prime, held, fresh):
        m.client = client
        after = await m.status()
        assert after == before[m.machine_id]

    await prime.join(ok=True)
    await prime.wait_state("ready")
    await held.wait_state("post-discover")
    await fresh.report_facts(1)
    assert (await fresh.wait_state("post-discover")).role == "master"
    status = await temporal.machine(client, held.machine_id).query("status", result_type=MachineStatus)
    assert status.role == "master"
