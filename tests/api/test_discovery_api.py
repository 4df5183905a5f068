"""Facts intake, identity and preflight over HTTP, with tokens minted the real way: by an
edge's boot request for the machine."""

from __future__ import annotations

import copy
import time

import httpx
import pytest
from sqlmodel import func, select

from activities.storage import db
from activities.storage.models import Facts as FactsRow

VM_FACTS = {
    "schema": 1, "architecture": "x86_64", "firmware": "bios",
    "processors": {"count": 2, "model": "QEMU Virtual CPU"}, "processor0": "QEMU Virtual CPU",
    "memory": {"total_bytes": 4 << 30},
    "disks": [{"name": "vda", "size_bytes": 20 * 10**9, "model": None, "serial": "d1", "rotational": False}],
    "nics": [{"name": "eth0", "mac": "52:54:00:00:00:00", "driver": "virtio_net", "speed_mbps": None, "link": True}],
    "pci": [{"slot": "0000:00:03.0", "vendor": "0x1af4", "device": "0x1000", "class": "0x020000"},
            {"slot": "0000:00:02.0", "vendor": "0x1234", "device": "0x1111", "class": "0x030000"}],
    "dmi": {"uuid": None, "serial": None, "vendor": "QEMU", "product": "Standard PC"},
}


class Site:
    """A catch-all edge into a fresh one-master cluster, and helpers to act as its machines."""

    def __init__(self, api_server, unique, prefix: str, quorum: int = 1) -> None:
        self.api, self.prefix, self.cluster, edge = api_server, prefix, unique("c"), unique("edge")
        with api_server.client() as http:
            http.post("/v1/clusters", json={"name": self.cluster, "quorum_count": quorum}).raise_for_status()
            policy = {"mode": "catch-all", "cluster": self.cluster, "mac_prefixes": [prefix], "segment": edge}
            self.edge_token = http.post("/v1/edges", json={"name": edge, "policy": policy}).json()["token"]

    def boot(self, mac: str, uuid: str | None = None, serial: str | None = None) -> tuple[str, str]:
        """PXE through the edge: (machine id, this boot's token)."""
        with httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.edge_token}"}) as edge:
            answer = edge.post("/v1/edge/boot", json={"mac": mac, "uuid": uuid, "serial": serial}).json()
        return answer["instruction"]["machine_id"], answer["token"]

    def post(self, machine_id: str, token: str | None, body, raw: bytes | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs = {"content": raw, "headers": headers | {"Content-Type": "application/json"}} if raw is not None else {"json": body, "headers": headers}
        return httpx.post(f"{self.api.url}/v1/boot/{machine_id}/facts", timeout=60, **kwargs)

    def instruction(self, machine_id: str, token: str) -> dict:
        return httpx.get(f"{self.api.url}/v1/boot/{machine_id}/instruction", headers={"Authorization": f"Bearer {token}"}).json()

    def machine(self, machine_id: str) -> dict:
        with self.api.client() as http:
            return http.get(f"/v1/machines/{machine_id}").json()

    def wait_state(self, machine_id: str, *states: str) -> dict:
        deadline = time.monotonic() + 30
        while (view := self.machine(machine_id))["state"] not in states and time.monotonic() < deadline:
            time.sleep(0.2)
        return view


def facts(mac: str, **changes) -> dict:
    body = copy.deepcopy(VM_FACTS)
    body["nics"][0]["mac"] = mac
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[key]
        target[leaf] = value
    return body


def _count(settings, machine_id: str) -> int:
    with db.session(settings.database_url) as s:
        return s.exec(select(func.count()).select_from(FactsRow).where(FactsRow.machine_id == machine_id)).one()


def test_facts_intake_refuses_bad_requests_and_stores_nothing(api_server, settings, unique):
    site = Site(api_server, unique, "52:54:00:e1")
    mine, token = site.boot("52:54:00:e1:00:01")
    other, other_token = site.boot("52:54:00:e1:00:02")
    assert site.post(mine, None, facts("52:54:00:e1:00:01")).status_code == 401
    assert site.post(mine, "not-a-token", facts("52:54:00:e1:00:01")).status_code == 401
    assert site.post(mine, other_token, facts("52:54:00:e1:00:01")).status_code == 403
    huge = site.post(mine, token, None, raw=b'{"pad": "' + b"x" * (1 << 20) + b'"}')
    assert huge.status_code == 413
    assert site.post(mine, token, None, raw=b"{not json").status_code == 422
    invalid = site.post(mine, token, facts("52:54:00:e1:00:01", processors__count=0))
    assert invalid.status_code == 422 and "processors.count" in invalid.json()["detail"]
    assert site.post(mine, token, {"memory": {"total_bytes": 1}}).status_code == 422
    assert _count(settings, mine) == 0 and site.machine(mine)["state"] == "boot-1"
    with api_server.client() as http:  # an operator token is not a boot token
        assert http.post(f"/v1/boot/{mine}/facts", json=facts("52:54:00:e1:00:01")).status_code == 401


def test_good_facts_are_stored_once_per_boot_and_admit_the_machine(api_server, settings, unique):
    site = Site(api_server, unique, "52:54:00:e2")
    machine_id, token = site.boot("52:54:00:e2:00:01", serial="SN-E2-1")
    assert site.instruction(machine_id, token)["action"] == "wait"
    stored = site.post(machine_id, token, facts("52:54:00:e2:00:01"))
    assert stored.status_code == 202, stored.text
    assert stored.json()["below_preflight"] == [] and stored.json()["conflict"] is None
    assert site.post(machine_id, token, facts("52:54:00:e2:00:01")).status_code in (202, 409)  # same boot again
    assert _count(settings, machine_id) == 1
    view = site.wait_state(machine_id, "post-discover")
    assert view["state"] == "post-discover" and view["role"] == "master-prime"
    assert view["facts"]["processors"] == {"count": 2, "model": "QEMU Virtual CPU"} and view["facts"]["disks"] == 1
    assert view["facts"]["lspci"] == {"Ethernet controller": 1, "VGA compatible controller": 1}
    assert site.instruction(machine_id, token)["action"] == "reboot"


def test_a_machine_below_preflight_is_held_with_the_reason_and_drift_is_shown(api_server, settings, unique):
    site = Site(api_server, unique, "52:54:00:e3")
    mac = "52:54:00:e3:00:01"
    machine_id, token = site.boot(mac)
    small = facts(mac, processors__count=1, memory__total_bytes=1 << 30)
    assert site.post(machine_id, token, small).json()["below_preflight"] == [
        "1 CPU cores, needs 2", "1.0 GiB of memory, needs 3.0 GiB",
    ]
    held = site.wait_state(machine_id, "holding")
    assert held["state"] == "holding" and "below preflight: 1 CPU cores, needs 2" in held["reason"]
    told = site.instruction(machine_id, token)
    assert told["action"] == "wait" and "below preflight" in told["reason"]

    _, token2 = site.boot(mac)  # upgraded and rebooted: discovered again, with drift
    report = site.post(machine_id, token2, facts(mac)).json()
    assert report["below_preflight"] == [] and "CPU cores 1 -> 2" in report["drift"]
    view = site.wait_state(machine_id, "post-discover")
    assert view["state"] == "post-discover" and "memory 1.0 GiB -> 4.0 GiB" in view["drift"]
    assert any("changed since the last boot: CPU cores 1 -> 2" in t["reason"] for t in view["history"])


def test_identity_beyond_the_mac(api_server, unique):
    site = Site(api_server, unique, "52:54:00:e4")
    uuid = "8d6f1c1e-3b7a-4c2e-9f00-0000000000e4"
    first, token = site.boot("52:54:00:e4:00:01", uuid=uuid, serial="SN-E4")
    assert first == uuid
    two_nics = facts("52:54:00:e4:00:01", dmi__uuid=uuid, dmi__serial="SN-E4")
    two_nics["nics"].append({"name": "eth1", "mac": "52:54:00:e4:00:02", "driver": "virtio_net"})
    site.post(first, token, two_nics).raise_for_status()
    assert site.machine(first)["macs"] == ["52:54:00:e4:00:01", "52:54:00:e4:00:02"]
    assert site.boot("52:54:00:e4:00:02", uuid=uuid)[0] == first  # booting from its second NIC
    assert site.boot("52:54:00:e4:00:09", uuid=uuid, serial="SN-E4")[0] == first  # a replaced NIC
    assert site.boot("52:54:00:e4:00:08", serial="SN-E4")[0] == first  # no UUID at all: the serial

    placeholder = "00000000-0000-0000-0000-000000000000"
    a, _ = site.boot("52:54:00:e4:00:0a", uuid=placeholder)
    b, _ = site.boot("52:54:00:e4:00:0b", uuid=placeholder)
    assert (a, b) == ("52:54:00:e4:00:0a", "52:54:00:e4:00:0b")  # placeholder UUIDs identify no one

    shared = "8d6f1c1e-3b7a-4c2e-9f00-0000000000ee"
    c, _ = site.boot("52:54:00:e4:00:0c", uuid=shared, serial="SN-C")
    d, _ = site.boot("52:54:00:e4:00:0d", uuid=shared, serial="SN-D")
    assert c == shared and d == "52:54:00:e4:00:0d"  # a UUID two machines share identifies neither


def test_an_identity_conflict_is_shown_never_merged(api_server, settings, unique):
    site = Site(api_server, unique, "52:54:00:e5")
    a, _ = site.boot("52:54:00:e5:00:01")
    b, token_b = site.boot("52:54:00:e5:00:02")
    claims = facts("52:54:00:e5:00:02")
    claims["nics"].append({"name": "eth1", "mac": "52:54:00:e5:00:01", "driver": "e1000"})
    report = site.post(b, token_b, claims).json()
    assert report["conflict"] == f"NIC 52:54:00:e5:00:01 also belongs to machine {a}"
    held = site.wait_state(b, "holding")
    assert held["state"] == "holding" and "identity conflict" in held["reason"] and a in held["reason"]
    assert site.machine(a)["macs"] == ["52:54:00:e5:00:01"]  # nothing merged


def test_preflight_is_configured_per_cluster(api_server, unique):
    import subprocess

    from tests.servers import VENV_BIN

    site = Site(api_server, unique, "52:54:00:e6")
    name = unique("big")
    env = api_server.env | {"TEMPERED_TOKEN": api_server.token}
    created = subprocess.run(
        [str(VENV_BIN / "tempered"), "cluster", "create", name, "--quorum", "1", "--min-cores", "8", "--min-memory-gib", "32"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert created.returncode == 0, created.stderr
    mac = "52:54:00:e6:00:01"
    machine_id, token = site.boot(mac)
    with api_server.client() as http:  # move the machine to the demanding cluster before its facts
        http.post(f"/v1/machines/{machine_id}/decommission").raise_for_status()
        time.sleep(1)
        http.post("/v1/machines", json={"cluster": name, "mac": mac}).raise_for_status()
    machine_id, token = site.boot(mac)
    report = site.post(machine_id, token, facts(mac)).json()
    assert report["below_preflight"] == ["2 CPU cores, needs 8", "4.0 GiB of memory, needs 32.0 GiB"]
