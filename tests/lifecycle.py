"""Drive a machine through its lifecycle the way the outside world does: the boot edge's PXE
update-with-start, the discovery agent's facts (stored in the database, referenced by digest),
cloud-init's phone home and the join's result."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from temporalio.client import Client, WorkflowHandle

from activities.domain.cluster import ClusterSpec, ClusterStatus
from activities.domain.machine import BootInstruction, BootRequest, FactsReport, JoinResult, MachineStatus
from activities.storage import db
from api import temporal
from activities.storage.models import Cluster, Facts, HostKey, Machine
from activities.storage.settings import Settings
from tests.conftest import eventually


async def create_cluster(
    client: Client, settings: Settings, name: str, quorum: int = 1, join_method: str = "external", **spec_fields
) -> WorkflowHandle:
    """A cluster for lifecycle tests: by default its joins are reported from outside (the
    `join_finished` Update), the way tests/lab/test_join.py's Ansible joins are not."""
    spec = ClusterSpec(name=name, quorum_count=quorum, join_method=join_method, **spec_fields)
    with db.session(settings.database_url) as s:
        s.add(Cluster(name=name, spec=spec.model_dump()))
        s.commit()
    return await temporal.start_cluster(client, ClusterStatus(spec=spec))


async def cluster_status(client: Client, name: str) -> ClusterStatus:
    return await temporal.cluster(client, name).query("status", result_type=ClusterStatus)


@dataclass
class MachineDriver:
    client: Client
    settings: Settings
    machine_id: str
    cluster: str | None
    mac: str = "52:54:00:00:00:01"
    ip: str | None = None  # the address the edge saw it boot from (what Ansible reaches)
    host_key: str | None = None  # the SSH host key its runtime OS posts in the phone home

    @property
    def handle(self) -> WorkflowHandle:
        return temporal.machine(self.client, self.machine_id)

    async def pxe(self) -> BootInstruction:
        status = MachineStatus(machine_id=self.machine_id, cluster=self.cluster, mac=self.mac)
        return await temporal.pxe_boot(self.client, status, BootRequest(mac=self.mac, ip=self.ip))

    async def report_facts(self, boot: int, facts: dict | None = None) -> MachineStatus:
        data = facts or {"processors": {"count": 4}, "memory": {"total_bytes": 8 << 30}, "disks": [{"name": "vda"}]}
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        with db.session(self.settings.database_url) as s:
            if s.get(Machine, self.machine_id) is None:
                s.add(Machine(id=self.machine_id, cluster=self.cluster))
                s.flush()
            row = Facts(machine_id=self.machine_id, boot=boot, digest=digest, data=data)
            s.add(row)
            s.commit()
            facts_id = row.id
        report = FactsReport(boot=boot, facts_id=facts_id, digest=digest)
        return await self.handle.execute_update("facts_reported", report, result_type=MachineStatus)

    async def phone_home(self) -> MachineStatus:
        """cloud-init's phone home: the API stores the host key, then tells the workflow."""
        if self.host_key:
            boot = (await self.status()).boot
            with db.session(self.settings.database_url) as s:
                s.merge(HostKey(machine_id=self.machine_id, boot=boot, key=self.host_key))
                s.commit()
        return await self.handle.execute_update("phoned_home", result_type=MachineStatus)

    async def join(self, ok: bool = True, reason: str = "") -> MachineStatus:
        return await self.handle.execute_update(
            "join_finished", JoinResult(ok=ok, reason=reason), result_type=MachineStatus
        )

    async def status(self) -> MachineStatus:
        return await self.handle.query("status", result_type=MachineStatus)

    async def wait_state(self, *states: str, timeout: float = 60.0) -> MachineStatus:
        async def reached() -> bool:
            return (await self.status()).state in states

        try:
            await eventually(reached, timeout, what=f"{self.machine_id} to reach {states}")
        except AssertionError as err:
            status = await self.status()
            raise AssertionError(f"{err}; it is {status.state}: {status.reason}") from None
        return await self.status()

    async def discover(self) -> MachineStatus:
        """PXE boot into discovery and report this boot's facts."""
        return await self.report_facts((await self.pxe()).boot)

    async def boot_runtime(self) -> MachineStatus:
        """From post-discover: PXE boot the runtime OS, phone home, and start joining (for an
        external join: until the workflow waits for the join result)."""
        await self.pxe()
        await self.phone_home()

        async def waiting() -> bool:
            status = await self.status()
            return status.state == "join-cluster" and status.reason.startswith("waiting for the join result")

        await eventually(waiting, 60, what=f"{self.machine_id} to wait for its join result")
        return await self.status()

    async def to_ready(self) -> MachineStatus:
        """new -> ... -> ready for a machine whose cluster lets it through."""
        await self.discover()
        await self.wait_state("post-discover")
        await self.boot_runtime()
        await self.join(ok=True)
        return await self.wait_state("ready")


async def admitted_machine(client: Client, settings: Settings, unique) -> MachineDriver:
    """The master-prime of a fresh one-master cluster, admitted and in post-discover."""
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    m = MachineDriver(client, settings, unique("m"), name)
    await m.discover()
    await m.wait_state("post-discover")
    return m
