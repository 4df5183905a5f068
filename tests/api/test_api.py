"""The REST API over HTTP, served by a real `tempered api` process."""

from __future__ import annotations

import re
import signal
import time
from dataclasses import replace

import httpx
import pytest

from tests.conftest import stack_env
from tests.servers import DevServer, Process, free_port, wait_http


def _poll(fetch, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_health_needs_no_token(api_server):
    response = httpx.get(api_server.url + "/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_every_operator_route_refuses_a_missing_or_wrong_token(api_server):
    spec = httpx.get(api_server.url + "/openapi.json").json()
    routes = [
        (method, re.sub(r"\{[^}]+\}", "x", path))
        for path, methods in spec["paths"].items()
        for method in methods
        if path != "/healthz"
    ]
    assert len(routes) >= 10
    for token in (None, "not-a-token"):
        with api_server.client(token) as http:
            for method, path in routes:
                response = http.request(method.upper(), path, json={})
                assert response.status_code == 401, (method, path, token, response.text)
                scheme = "Basic" if path.startswith("/v1/terraform/state/") else "Bearer"  # Terraform's backend: the cluster's basic auth
                assert response.headers["www-authenticate"].split(" ")[0] == scheme, (method, path)
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_openapi_docs_are_served(api_server):
    assert "swagger" in httpx.get(api_server.url + "/docs").text.lower()


def test_cluster_lifecycle_over_http(api_server, unique):
    name = unique("c")
    with api_server.client() as http:
        created = http.post("/v1/clusters", json={"name": name, "quorum_count": 1})
        assert created.status_code == 201, created.text
        assert created.json()["phase"] == "forming"
        assert created.json()["temporal_url"].endswith(f"/workflows/cluster:{name}")
        assert http.post("/v1/clusters", json={"name": name}).status_code == 409
        assert name in [c["spec"]["name"] for c in http.get("/v1/clusters").json()]
        assert http.get(f"/v1/clusters/{name}").json()["spec"]["quorum_count"] == 1

        machine = http.post("/v1/machines", json={"cluster": name, "mac": "52-54-00-AA-00-01"})
        assert machine.status_code == 201, machine.text
        deleting = http.delete(f"/v1/clusters/{name}")  # with its machine: decommissioned first
        assert deleting.status_code == 202, deleting.text
        assert deleting.json()["phase"] == "deleting" and deleting.json()["deletion"]["step"]
        again = http.delete(f"/v1/clusters/{name}")  # the progress, or gone already
        assert again.status_code in (202, 404) and (again.status_code == 404 or again.json()["phase"] == "deleting")
        gone = _poll(lambda: http.get(f"/v1/clusters/{name}"), lambda r: r.status_code == 404)
        assert gone.status_code == 404, gone.text
        retired = http.get(f"/v1/machines/{machine.json()['id']}").json()
        assert retired["state"] == "decommissioned", retired
        assert name not in [c["spec"]["name"] for c in http.get("/v1/clusters").json()]
        unknown = http.delete(f"/v1/clusters/{name}")
        assert unknown.status_code == 404 and "no cluster named" in unknown.json()["detail"]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"name": "Bad_Name"}, "DNS label"),
        ({"name": "ok", "quorum_count": 2}, "odd"),
        ({"name": "ok", "quorum_count": 9}, "less than or equal to 7"),
        ({}, "Field required"),
    ],
)
def test_bad_cluster_bodies_are_422_with_the_reason(api_server, body, fragment):
    with api_server.client() as http:
        response = http.post("/v1/clusters", json=body)
    assert response.status_code == 422
    assert fragment in response.text


def test_machine_routes(api_server, unique):
    name = unique("c")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": name, "quorum_count": 1}).raise_for_status()
        mac = "52:54:00:aa:00:02"
        created = http.post("/v1/machines", json={"cluster": name, "mac": mac.upper(), "serial": "SN-1"})
        assert created.status_code == 201, created.text
        view = created.json()
        assert (view["id"], view["state"], view["macs"], view["serial"]) == (mac, "new", [mac], "SN-1")
        assert view["temporal_url"].endswith(f"/workflows/machine:{mac}")

        assert http.post("/v1/machines", json={"cluster": name, "mac": mac}).status_code == 409
        assert http.post("/v1/machines", json={"cluster": "nope", "mac": "52:54:00:aa:00:03"}).status_code == 404
        bad_mac = http.post("/v1/machines", json={"cluster": name, "mac": "52:54:00"})
        assert bad_mac.status_code == 422 and "not a MAC address" in bad_mac.text
        placeholder = http.post(
            "/v1/machines", json={"cluster": name, "uuid": "00000000-0000-0000-0000-000000000000"}
        )
        assert placeholder.status_code == 422 and "firmware placeholder" in placeholder.text
        by_uuid = http.post("/v1/machines", json={"cluster": name, "uuid": "8D6F1C1E-0000-4000-8000-000000000001"})
        assert by_uuid.json()["id"] == "8d6f1c1e-0000-4000-8000-000000000001"

        listed = _poll(
            lambda: http.get("/v1/machines", params={"cluster": name}).json(), lambda rows: len(rows) == 2
        )
        assert sorted(m["id"] for m in listed) == sorted([mac, by_uuid.json()["id"]])
        only_new = _poll(
            lambda: http.get("/v1/machines", params={"cluster": name, "state": "new"}).json(), lambda r: len(r) == 2
        )
        assert {m["state"] for m in only_new} == {"new"}
        assert http.get("/v1/machines", params={"cluster": name, "state": "ready"}).json() == []
        assert http.get("/v1/machines", params={"state": "x' OR 1=1"}).status_code == 422

        refused = http.post(f"/v1/machines/{mac}/retry")
        assert refused.status_code == 409 and "nothing to retry" in refused.json()["detail"]
        assert http.get("/v1/machines/no-such-machine").status_code == 404
        assert http.post("/v1/machines/no-such-machine/retry").status_code == 404

        not_yet = http.post(f"/v1/machines/{mac}/reboot")  # refused by the workflow's validator
        assert not_yet.status_code == 409, not_yet.text
        assert not_yet.json()["detail"] == "the machine is new: nothing to reboot before its next PXE boot"

        again = http.post(f"/v1/machines/{mac}/reprovision")
        assert again.status_code == 200 and again.json()["state"] == "new"
        shown = http.get(f"/v1/machines/{mac}").json()
        assert [t["state"] for t in shown["history"]] == ["new", "new"]


def test_temporal_down_is_a_503_that_says_so(tmp_path, settings):
    server = DevServer(tmp_path).start()
    port = free_port()
    mine = replace(settings, home=tmp_path, database_url=f"sqlite:///{tmp_path / 'tempered.db'}",
                   temporal_address=server.address)
    env = stack_env(mine, TEMPERED_API_PORT=str(port))
    api = Process(["api"], env, tmp_path / "api.log").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        token = (tmp_path / "admin-token").read_text().strip()
        server.stop()
        response = httpx.get(
            f"http://127.0.0.1:{port}/v1/machines/x", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        assert response.status_code == 503, response.text
        assert server.address in response.json()["detail"]
        assert api.proc.poll() is None  # the API keeps serving
    finally:
        api.stop(signal.SIGTERM)
        server.stop()


async def test_the_port_flag_moves_the_api_and_its_links(tmp_path, settings, client, unique):
    """`tempered api --port` beats TEMPERED_API_PORT: the docs line and the `tempered_api` memo
    of the workflows it starts name the port it bound, not the environment's."""
    from workflows.metadata import API_MEMO

    bound, configured = free_port(), free_port()
    mine = replace(settings, home=tmp_path, database_url=f"sqlite:///{tmp_path / 'tempered.db'}")
    api = Process(["api", "--port", str(bound)], stack_env(mine, TEMPERED_API_PORT=str(configured)),
                  tmp_path / "api.log").start()
    try:
        wait_http(f"http://127.0.0.1:{bound}/healthz")
        assert f"OpenAPI docs at http://127.0.0.1:{bound}/docs" in api.tail(), api.tail()
        token = (tmp_path / "admin-token").read_text().strip()
        name = unique("bound")
        created = httpx.post(f"http://127.0.0.1:{bound}/v1/clusters", json={"name": name, "quorum_count": 1},
                             headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert created.status_code == 201, created.text
        handle = client.get_workflow_handle(f"cluster:{name}")
        assert (await (await handle.describe()).memo())[API_MEMO] == f"http://127.0.0.1:{bound}"
        await handle.terminate("test done")
    finally:
        api.stop(signal.SIGTERM)


async def test_registering_a_machine_found_without_a_cluster_places_it(api_server, client, settings, unique):
    from tests.lifecycle import MachineDriver

    mac = "52:54:00:ee:00:01"
    found = MachineDriver(client, settings, mac, None, mac=mac)  # as an edge with no catch-all would
    await found.discover()
    assert "not in any cluster" in (await found.wait_state("holding")).reason
    name = unique("c")
    headers = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.url, headers=headers, timeout=60) as http:
        assert (await http.post("/v1/clusters", json={"name": name, "quorum_count": 1})).status_code == 201
        placed = await http.post("/v1/machines", json={"cluster": name, "mac": mac})
        assert placed.status_code == 201, placed.text
        assert placed.json()["cluster"] == name
        again = await http.post("/v1/machines", json={"cluster": name, "mac": mac})
        assert again.status_code == 409 and "already in cluster" in again.json()["detail"]
    assert (await found.wait_state("post-discover")).role == "master-prime"
