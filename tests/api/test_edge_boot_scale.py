"""The edge boot route with a fleet known (issue 18), over HTTP against a real `tempered api`.

Thousands of machines are in the database; the route finds the one at hand by MAC, UUID or
serial through indexed lookups and checks the edge's policy for that machine only. Also: an
Update nobody answers is a 504 that says what to do, not a 500.
"""

from __future__ import annotations

import httpx
from sqlalchemy import event
from sqlmodel import Session
from temporalio.client import Client

from activities.domain.edge import EdgeBootRequest
from activities.domain.machine import MachineStatus
from activities.storage import db
from activities.storage.models import Machine, MachineMac, utcnow
from api import temporal
from api.edges import _booting
from workflows.machine import MachineWorkflow

OWN, OTHER = "02:18:01", "02:18:02"  # this edge's prefix, and another cluster's machines'
FLEET = 2000


def _mac(prefix: str, n: int) -> str:
    return f"{prefix}:{n >> 16 & 0xff:02x}:{n >> 8 & 0xff:02x}:{n & 0xff:02x}"


def _uuid(prefix: str, n: int) -> str:
    return f"{prefix.replace(':', '')}00-0000-4000-8000-{n:012x}"


def _known_fleet(settings, cluster: str, other: str) -> None:
    """FLEET machines of `cluster` under OWN and FLEET // 4 of `other` under OTHER, each with a
    MAC; every third with a UUID (its id), every fifth with a serial."""
    with db.session(settings.database_url) as s:
        for prefix, into, count in ((OWN, cluster, FLEET), (OTHER, other, FLEET // 4)):
            for n in range(count):
                uuid = _uuid(prefix, n) if n % 3 == 0 else None
                machine_id = uuid or _mac(prefix, n)
                serial = f"S{prefix.replace(':', '')}-{n}" if n % 5 == 0 else None
                s.add(Machine(id=machine_id, uuid=uuid, serial=serial, cluster=into))
                s.add(MachineMac(mac=_mac(prefix, n), machine_id=machine_id))
        s.commit()


def test_the_boot_route_finds_the_machine_among_thousands_and_enforces_the_policy(api_server, settings, unique):
    cluster, other, name = unique("big"), unique("other"), unique("edge")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
        policy = {"mode": "catch-all", "cluster": cluster, "mac_prefixes": [OWN], "segment": name}
        token = http.post("/v1/edges", json={"name": name, "policy": policy}).json()["token"]
    _known_fleet(settings, cluster, other)
    bare_own, bare_other = _uuid("02:18:03", 1), _uuid("02:18:03", 2)  # registered by UUID, no MAC yet
    with db.session(settings.database_url) as s:
        s.add_all([Machine(id=bare_own, uuid=bare_own, cluster=cluster), Machine(id=bare_other, uuid=bare_other, cluster=other)])
        s.commit()
    boots = [
        ({"mac": _mac(OWN, 1234)}, _mac(OWN, 1234)),  # by its MAC
        ({"mac": _mac(OWN, 0xff0001), "uuid": _uuid(OWN, 1236).upper()}, _uuid(OWN, 1236)),  # a new NIC, its UUID
        ({"mac": _mac(OWN, 0xff0002), "serial": f"S{OWN.replace(':', '')}-1235"}, _mac(OWN, 1235)),  # its serial
    ]
    with httpx.Client(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as edge:
        for body, expected in boots:
            answer = edge.post("/v1/edge/boot", json=body)
            assert answer.status_code == 200, (body, answer.text)
            assert answer.json()["instruction"]["machine_id"] == expected, body
        for body in ({"mac": _mac(OWN, 0xff0003), "uuid": _uuid(OTHER, 3)},  # another cluster's machine by UUID
                     {"mac": _mac(OWN, 0xff0004), "serial": f"S{OTHER.replace(':', '')}-5"},  # ... by serial
                     {"mac": _mac(OTHER, 7)}):  # ... by its own MAC, outside the prefixes
            answer = edge.post("/v1/edge/boot", json=body)
            assert answer.status_code == 403, (body, answer.text)
        config = edge.get("/v1/edge/config")
        assert config.status_code == 200
        known = set(config.json()["known_macs"])
        assert {_mac(OWN, n) for n in range(FLEET)} <= known and not any(m.startswith(OTHER) for m in known)
        uuids = set(config.json()["known_uuids"])
        assert {_uuid(OWN, 3), bare_own} <= uuids and not {_uuid(OTHER, 3), bare_other} & uuids
        again = edge.get("/v1/edge/config", headers={"If-None-Match": config.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


async def test_an_update_nobody_answers_is_a_504_saying_what_to_do(api_server, client: Client, unique):
    """A machine workflow on a task queue no worker polls: its Update times out in the API."""
    machine_id = unique("stuck")
    status = MachineStatus(machine_id=machine_id)
    options = temporal.machine_start(status) | {"task_queue": unique("nobody-polls")}
    handle = await client.start_workflow(MachineWorkflow.run, status, **options)
    try:
        async with httpx.AsyncClient(base_url=api_server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {api_server.token}"}) as http:
            answer = await http.post(f"/v1/machines/{machine_id}/retry")
        assert answer.status_code == 504, answer.text
        detail = answer.json()["detail"]
        assert "did not answer in time" in detail and "tempered worker" in detail and "retry" in detail
    finally:
        await handle.terminate("test over")


async def test_the_edge_polls_its_config_with_its_etag(api_server, settings, unique):
    """`tempered bootedge`'s control-plane client: an unchanged config is a 304 it answers from
    its last copy (the same object); a change is fetched whole: a new policy, a machine
    registered under the edge's prefix, a machine retired. The ETag is a version counter
    (activities/storage/versions.py), not a digest of the whole config."""
    from bootedge.control import ControlPlane

    name = unique("edge")
    with api_server.client() as http:
        token = http.post("/v1/edges", json={"name": name, "policy": {"segment": name, "mac_prefixes": ["02:18:04"]}}).json()["token"]
    control = ControlPlane(api_server.url, token)
    try:
        first = await control.config()
        assert await control.config() is first  # 304: nothing was parsed again
        with api_server.client() as http:
            http.put(f"/v1/edges/{name}/policy", json={"segment": name, "mac_prefixes": ["02:18:05"]}).raise_for_status()
        changed = await control.config()
        assert changed is not first and changed.policy.mac_prefixes == ["02:18:05"]
        assert await control.config() is changed  # the edge's own polls (last_seen_at) change nothing
        with api_server.client() as http:  # a machine registered under its prefix: a new MAC in its config
            cluster = unique("etag")
            http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
            machine = http.post("/v1/machines", json={"cluster": cluster, "mac": "02:18:05:00:00:01"})
            assert machine.status_code == 201, machine.text
        registered = await control.config()
        assert registered is not changed and "02:18:05:00:00:01" in registered.known_macs
        assert await control.config() is registered
        with db.session(settings.database_url) as s:  # retired (as retire_machine does)
            s.get(Machine, "02:18:05:00:00:01").decommissioned_at = utcnow()
            s.commit()
        retired = await control.config()
        assert retired is not registered and "02:18:05:00:00:01" not in retired.known_macs
        with api_server.client() as http:
            http.post("/v1/machines/02:18:05:00:00:01/decommission")  # its workflow ends
    finally:
        await control.close()


def test_a_machine_seen_before_is_found_without_a_write(api_server, settings, unique):
    """The boot route's lookup commits only what is new (the machine, a new NIC): a machine
    asking again, as the edge does after each 504 or hold, costs reads only."""
    cluster, name = unique("seen"), unique("edge")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
        policy = {"mode": "catch-all", "cluster": cluster, "mac_prefixes": ["02:18:04"], "segment": name}
        http.post("/v1/edges", json={"name": name, "policy": policy}).raise_for_status()
    commits: list[int] = []
    counted = lambda session: commits.append(1)  # noqa: E731
    event.listen(Session, "after_commit", counted)
    try:
        first = _booting(settings, name, EdgeBootRequest(mac="02:18:04:00:00:01"))
        again = _booting(settings, name, EdgeBootRequest(mac="02:18:04:00:00:01"))
        assert len(commits) == 1
        another = _booting(settings, name, EdgeBootRequest(mac="02:18:04:00:00:02"))  # a new machine: written
        assert len(commits) == 2
    finally:
        event.remove(Session, "after_commit", counted)
    assert first.machine_id == again.machine_id == "02:18:04:00:00:01" and first.cluster == again.cluster == cluster
    assert another.machine_id == "02:18:04:00:00:02"
