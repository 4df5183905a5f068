"""DNS in the machine lifecycle, with a real BIND: a node's name is published when it becomes
ready and removed on decommission, the cluster's API name follows its control plane, a refusal
parks the machine in failed:dns with the server's answer, and a server that is down is waited
for with backoff."""

from __future__ import annotations

import asyncio

import pytest

from activities.domain.cluster import ClusterStatus
from activities.domain.dns import DnsSettings, TsigKey
from activities.domain.machine import BootRequest, MachineStatus
from activities.storage import dnsconfig
from api import temporal
from tests.bind import REVERSE, ZONE, Bind, named_binary
from tests.conftest import eventually
from tests.lifecycle import MachineDriver, cluster_status, create_cluster
from tests.lab.test_dns import lookup

pytestmark = [
    pytest.mark.skipif(named_binary() is None, reason="BIND (named) is not installed"),
    pytest.mark.usefixtures("worker"),
]


@pytest.fixture(scope="module")
def bind(tmp_path_factory):
    server = Bind(tmp_path_factory.mktemp("bind")).start()
    yield server
    server.stop()


class AddressedMachine(MachineDriver):
    """A machine whose PXE requests carry the address the edge saw, as real ones do."""

    ip: str = "10.213.0.10"

    async def pxe(self):
        status = MachineStatus(machine_id=self.machine_id, cluster=self.cluster, mac=self.mac)
        return await temporal.pxe_boot(self.client, status, BootRequest(mac=self.mac, ip=self.ip))


def _settings(bind: Bind, key: TsigKey | None = None) -> DnsSettings:
    return DnsSettings(zone=ZONE, servers=[bind.server], key=key or bind.default_keys["hmac-sha512"], reverse_zone=REVERSE)


async def _joined(client, settings, unique, bind_settings: DnsSettings | None, ip: str) -> tuple[AddressedMachine, str]:
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    if bind_settings is not None:
        dnsconfig.store(settings, name, bind_settings)
    m = AddressedMachine(client, settings, unique("m"), name, mac=f"52:54:00:dd:{ip.split('.')[-2]:0>2}:{int(ip.split('.')[-1]):02x}")
    m.ip = ip
    await m.discover()
    await m.wait_state("post-discover")
    await m.boot_runtime()
    await m.join(ok=True)
    return m, name


async def test_a_ready_node_is_in_dns_until_decommissioned(client, settings, unique, bind):
    m, cluster = await _joined(client, settings, unique, _settings(bind), "10.213.8.21")
    ready = await m.wait_state("ready")
    node = (await m.status()).node_name
    assert f"published {node}.{ZONE} A 10.213.8.21" in ready.reason
    assert await lookup(bind, f"{node}.{ZONE}") == {"10.213.8.21"}
    assert await lookup(bind, "21.8.213.10.in-addr.arpa.", "PTR") == {f"{node}.{ZONE}."}

    async def api_name_published() -> bool:
        return (await cluster_status(client, cluster)).dns.startswith("published")

    await eventually(api_name_published, what="the API name")
    assert await lookup(bind, f"api.{cluster}.{ZONE}") == {"10.213.8.21"}

    await m.handle.execute_update("decommission", result_type=MachineStatus)
    await m.handle.result()
    assert await lookup(bind, f"{node}.{ZONE}") == set()
    assert await lookup(bind, "21.8.213.10.in-addr.arpa.", "PTR") == set()

    async def api_name_gone() -> bool:
        return await lookup(bind, f"api.{cluster}.{ZONE}") == set()

    await eventually(api_name_gone, what="the API name to follow the control plane")


async def test_a_refused_update_parks_the_machine_until_fixed_and_retried(client, settings, unique, bind):
    good = bind.default_keys["hmac-sha512"]
    wrong = TsigKey(name=good.name, secret="bm90LXRoZS1yaWdodC1zZWNyZXQtYXQtYWxs", algorithm=good.algorithm)
    m, cluster = await _joined(client, settings, unique, _settings(bind, wrong), "10.213.8.22")
    parked = await m.wait_state("failed:dns")
    assert "BADSIG" in parked.reason and good.secret.get_secret_value() not in parked.reason
    dnsconfig.store(settings, cluster, _settings(bind))  # the operator fixes the key
    await m.handle.execute_update("retry", result_type=MachineStatus)
    await m.wait_state("ready")
    assert await lookup(bind, f"{(await m.status()).node_name}.{ZONE}") == {"10.213.8.22"}


async def test_a_dns_server_that_is_down_is_waited_for(client, settings, unique, tmp_path):
    late = Bind(tmp_path)
    m, _ = await _joined(client, settings, unique, _settings(late), "10.213.8.23")
    await asyncio.sleep(4)  # the publish step is failing and being retried with backoff
    waiting = await m.status()
    assert (waiting.state, waiting.reason) == ("join-cluster", "publishing DNS records")
    late.start()
    try:
        await m.wait_state("ready", timeout=90)
        assert await lookup(late, f"{waiting.node_name}.{ZONE}") == {"10.213.8.23"}
    finally:
        late.stop()
