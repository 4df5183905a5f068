"""An edge acts only on its own machines (issue 12, item 3): over HTTP against a real `tempered api`.

Edge A posting the UUID or serial of edge B's machine with one of A's MACs used to get a boot
token for B's machine, bump its boot and add A's MAC to it. Now it is a 403 with the reason,
nothing changes, and the API logs a WARNING naming the edge, the machine and why.
"""

from __future__ import annotations

import time

import httpx

from tests.api.test_discovery_api import Site

B_UUID = "9b9b9b9b-0000-4000-8000-00000000009b"
B_SERIAL = "SCOPE-B-0001"


def _as_edge(api_server, token: str) -> httpx.Client:
    return httpx.Client(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _log_line(api_server, *fragments: str, timeout: float = 15.0) -> str:
    """The API log line holding every fragment (stderr is line-buffered; poll briefly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in api_server.process.log.read_text(errors="replace").splitlines():
            if all(f in line for f in fragments):
                return line
        time.sleep(0.2)
    raise AssertionError(f"no API log line with {fragments}:\n{api_server.process.tail()}")


def _snapshot(site: Site, machine_id: str) -> tuple:
    view = site.machine(machine_id)
    return view["boot"], sorted(view["macs"]), view["cluster"], view["uuid"], view["serial"]


def test_an_edge_cannot_claim_another_clusters_machine_by_uuid_or_serial(api_server, unique):
    a = Site(api_server, unique, "52:54:00:9a")
    b = Site(api_server, unique, "52:54:00:9b")
    b_id, b_token = b.boot("52:54:00:9b:00:01", uuid=B_UUID, serial=B_SERIAL)
    a_id, _ = a.boot("52:54:00:9a:00:01")
    assert b_id == B_UUID and a_id == "52:54:00:9a:00:01"
    before = _snapshot(b, b_id)

    attempts = [
        {"mac": "52:54:00:9a:00:01", "uuid": B_UUID},  # one of A's machines' MACs, B's UUID
        {"mac": "52:54:00:9a:00:02", "uuid": B_UUID.upper()},  # a fresh MAC of A's
        {"mac": "52:54:00:9a:00:03", "serial": B_SERIAL},  # B's serial alone
    ]
    with _as_edge(api_server, a.edge_token) as edge:
        for body in attempts:
            answer = edge.post("/v1/edge/boot", json=body)
            assert answer.status_code == 403, (body, answer.text)
            assert "mac_prefixes" in answer.json()["detail"] and "token" not in answer.json()
        config = edge.get("/v1/edge/config").json()
    a_name = config["name"]
    assert B_UUID not in config["known_uuids"]  # nor is it told about B's machines

    assert _snapshot(b, b_id) == before  # boot count, MACs, cluster, identity: untouched
    assert b.instruction(b_id, b_token)["action"] in ("wait", "reboot")  # B's token still for this boot
    line = _log_line(api_server, "WARNING", a_name, b_id, "mac_prefixes")
    assert b_token not in line and a.edge_token not in line

    again, _ = a.boot("52:54:00:9a:00:01")  # A's own machine still boots
    assert again == a_id and a.machine(a_id)["boot"] == 2


def test_an_edge_cannot_claim_a_machine_with_no_mac_in_its_prefixes(api_server, unique):
    """Without a cluster in its policy (preregistered), the MAC prefixes say which machines are
    the edge's own; a machine registered by UUID alone is claimed by the NIC it boots from."""
    b = Site(api_server, unique, "52:54:00:9c")
    uuid = "9c9c9c9c-0000-4000-8000-00000000009c"
    b_id, _ = b.boot("52:54:00:9c:00:01", uuid=uuid)
    name = unique("edge")
    with api_server.client() as http:
        policy = {"mode": "preregistered", "mac_prefixes": ["52:54:00:9d"], "segment": name}
        token = http.post("/v1/edges", json={"name": name, "policy": policy}).json()["token"]
        registered = "9d9d9d9d-0000-4000-8000-00000000009d"
        http.post("/v1/machines", json={"cluster": b.cluster, "uuid": registered}).raise_for_status()
    before = _snapshot(b, b_id)
    with _as_edge(api_server, token) as edge:
        refused = edge.post("/v1/edge/boot", json={"mac": "52:54:00:9d:00:01", "uuid": uuid})
        assert refused.status_code == 403 and "mac_prefixes" in refused.json()["detail"]
        own = edge.post("/v1/edge/boot", json={"mac": "52:54:00:9d:00:02", "uuid": registered})
        assert own.status_code == 200, own.text
    assert _snapshot(b, b_id) == before
    _log_line(api_server, "WARNING", name, b_id, "mac_prefixes")


def test_an_edge_without_prefixes_acts_only_on_its_clusters_machines(api_server, unique):
    """A catch-all edge with no mac_prefixes (a segment of its own) owns its cluster's machines
    and unplaced ones: another cluster's machine, found by UUID or serial, is refused."""
    b = Site(api_server, unique, "52:54:00:9e")
    uuid, serial = "9e9e9e9e-0000-4000-8000-00000000009e", "SCOPE-E-0001"
    b_id, _ = b.boot("52:54:00:9e:00:01", uuid=uuid, serial=serial)
    cluster, name = unique("c"), unique("edge")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
        policy = {"mode": "catch-all", "cluster": cluster, "segment": name}
        token = http.post("/v1/edges", json={"name": name, "policy": policy}).json()["token"]
    before = _snapshot(b, b_id)
    with _as_edge(api_server, token) as edge:
        for body in ({"mac": "52:54:00:9f:00:01", "uuid": uuid}, {"mac": "52:54:00:9f:00:02", "serial": serial}):
            refused = edge.post("/v1/edge/boot", json=body)
            assert refused.status_code == 403 and b.cluster in refused.json()["detail"], refused.text
        own = edge.post("/v1/edge/boot", json={"mac": "52:54:00:9f:00:03"})
        assert own.status_code == 200 and own.json()["instruction"]["machine_id"] == "52:54:00:9f:00:03"
        assert edge.post("/v1/edge/boot", json={"mac": "52:54:00:9f:00:03"}).json()["instruction"]["boot"] == 2
    assert _snapshot(b, b_id) == before
    _log_line(api_server, "WARNING", name, b_id, b.cluster)


def test_an_edge_with_prefixes_cannot_claim_another_clusters_machine_that_has_no_mac_yet(api_server, unique):
    """A machine registered by UUID alone is claimed by the NIC it boots from, but only through
    an edge of its own cluster: a catch-all edge of another cluster gets a 403."""
    b = Site(api_server, unique, "52:54:00:a1")
    uuid = "a1a1a1a1-0000-4000-8000-0000000000a1"
    with api_server.client() as http:
        b_id = http.post("/v1/machines", json={"cluster": b.cluster, "uuid": uuid}).json()["id"]
    a = Site(api_server, unique, "52:54:00:a2")  # a catch-all edge with prefixes, of another cluster
    with _as_edge(api_server, a.edge_token) as edge:
        refused = edge.post("/v1/edge/boot", json={"mac": "52:54:00:a2:00:01", "uuid": uuid})
        assert refused.status_code == 403 and b.cluster in refused.json()["detail"], refused.text
    assert b.machine(b_id)["macs"] == [] and b.machine(b_id)["boot"] == 0
    _log_line(api_server, "WARNING", b_id, b.cluster)
    own_id, _ = b.boot("52:54:00:a1:00:01", uuid=uuid)  # its own cluster's edge claims it
    assert own_id == b_id and b.machine(b_id)["macs"] == ["52:54:00:a1:00:01"]
