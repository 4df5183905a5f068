"""List routes paged and filtered in the database (issue 18), over HTTP against a real `tempered api`.

Machines are added straight to the session's database (a fleet's rows, no workflows) and removed
after; a few are registered through the API so that state filters have workflows to match.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from sqlmodel import delete

from activities.storage import db
from activities.storage.models import Machine, MachineMac, MachineState
from tests.api.test_cli import tempered
from tests.servers import wait_for

FLEET = 250


def _walk(http, path: str, **params) -> list[dict]:
    """Every row of a paged list, following X-Next-Cursor; each page checked against `limit`."""
    rows: list[dict] = []
    after = None
    while True:
        answer = http.get(path, params={**params, **({"after": after} if after else {})})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page) <= params.get("limit", 100)
        rows.extend(page)
        after = answer.headers.get("x-next-cursor")
        if after is None:
            assert "link" not in answer.headers
            return rows
        assert 'rel="next"' in answer.headers["link"]


@pytest.fixture
def fleet(settings, unique, request) -> Iterator[tuple[str, list[str]]]:
    """FLEET machines (or as many as the test's indirect parameter) of a fresh cluster name in
    the database; removed afterwards."""
    cluster = unique("fleet")
    size = getattr(request, "param", FLEET)
    ids = [f"{cluster}-{n:04d}" for n in range(size)]
    with db.session(settings.database_url) as s:
        s.add_all(Machine(id=machine_id, cluster=cluster) for machine_id in ids)
        s.commit()
    yield cluster, ids
    with db.session(settings.database_url) as s:
        s.exec(delete(MachineMac).where(MachineMac.machine_id.in_(ids)))
        s.exec(delete(MachineState).where(MachineState.machine_id.in_(ids)))
        s.exec(delete(Machine).where(Machine.id.in_(ids)))
        s.commit()


def test_a_cursor_walk_lists_every_machine_once_in_id_order(api_server, fleet):
    cluster, ids = fleet
    with api_server.client() as http:
        listed = _walk(http, "/v1/machines", cluster=cluster, limit=37)
        everything = _walk(http, "/v1/machines", limit=1000)
    assert [m["id"] for m in listed] == sorted(ids)  # each once, none missing, in order
    assert all(m["cluster"] == cluster and m["state"] is None for m in listed)  # rows without workflows
    assert set(ids) <= {m["id"] for m in everything}
    assert len(everything) == len({m["id"] for m in everything})


def test_state_and_role_filters_page_through_the_cluster(api_server, fleet):
    """Three registered machines among the fleet's rows: a state filter finds exactly them,
    pages (possibly short) followed to the end."""
    cluster, ids = fleet
    macs = [f"52:54:00:7e:00:{n:02x}" for n in range(3)]
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
        registered = [http.post("/v1/machines", json={"cluster": cluster, "mac": mac}).json()["id"] for mac in macs]
        ids.extend(registered)  # removed with the fleet's rows
        new = wait_for(lambda: (rows := _walk(http, "/v1/machines", cluster=cluster, state="new", limit=2))
                       and len(rows) == 3 and rows, "the registered machines visible in state new")
        assert sorted(m["id"] for m in new) == sorted(registered)
        assert _walk(http, "/v1/machines", cluster=cluster, state="ready") == []
        assert _walk(http, "/v1/machines", cluster=cluster, role="worker") == []
        for machine_id in registered:
            http.post(f"/v1/machines/{machine_id}/decommission")


def _cursor(text: str) -> str:
    """A cursor as this API spells one, around any text: what a client tampering with one sends."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


ALL = ("/v1/machines", "/v1/clusters", "/v1/edges", "/v1/audit")


@pytest.mark.parametrize("params, field, paths", [
    ({"after": "not-a-cursor"}, "after", ALL),
    ({"after": "aGVsbG8"}, "after", ALL),  # base64 of something this API did not make
    ({"after": _cursor("k1:\x00")}, "after", ALL),  # PostgreSQL refuses NUL in text: was a 500
    ({"after": _cursor("k1:node\x1b[2J")}, "after", ALL),  # control characters
    # past a bigint, where the key is an integer id (elsewhere a long number is a name like any other)
    ({"after": _cursor(f"k1:{2**63}")}, "after", ("/v1/audit",)),
    ({"after": _cursor(f"k1:{-(2**63) - 1}")}, "after", ("/v1/audit",)),
    ({"limit": 0}, "limit", ALL),
    ({"limit": 1001}, "limit", ALL),
    ({"limit": "many"}, "limit", ALL),
    ({"state": "x' OR 1=1"}, "state", ("/v1/machines",)),
    ({"role": "Worker;"}, "role", ("/v1/machines",)),
])
def test_bad_cursors_limits_and_filters_are_422(api_server, params, field, paths):
    with api_server.client() as http:
        for path in paths:
            answer = http.get(path, params=params)
            assert answer.status_code == 422, (path, answer.text)
            assert [e["loc"] for e in answer.json()["detail"]] == [["query", field]], (path, answer.text)


def test_clusters_edges_and_audit_page_too(api_server, unique):
    prefix = unique("pg")
    with api_server.client() as http:
        for n in range(5):
            http.post("/v1/clusters", json={"name": f"{prefix}-{n}", "quorum_count": 1}).raise_for_status()
            http.post("/v1/edges", json={"name": f"{prefix}-{n}", "policy": {"segment": f"{prefix}-{n}"}}).raise_for_status()
        for path in ("/v1/clusters", "/v1/edges"):
            names = [row["spec"]["name"] if path == "/v1/clusters" else row["name"] for row in _walk(http, path, limit=2)]
            assert names == sorted(set(names)) and {f"{prefix}-{n}" for n in range(5)} <= set(names), path
        whole = http.get("/v1/audit", params={"limit": 1000}).json()
        assert len(whole) < 1000 and _walk(http, "/v1/audit", limit=3) == whole  # newest first, each once


@pytest.mark.parametrize("fleet", [1100], indirect=True)
def test_the_cli_follows_the_pages(api_server, fleet):
    """More machines than the largest page: `tempered machine list` shows every one."""
    cluster, ids = fleet
    listed = tempered(api_server, "machine", "list", "--cluster", cluster, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [m["id"] for m in json.loads(listed.stdout)] == sorted(ids)


def test_the_lab_finds_its_cluster_and_edge_without_a_list(api_server, unique):
    """`tempered lab up` asks for its one cluster and edge by name: a list's first page might not hold them."""
    from api.lab.control import Api

    api, name = Api(api_server.url, api_server.token), unique("lab")
    assert not api.exists(f"/v1/clusters/{name}") and not api.exists(f"/v1/edges/{name}")
    api.call("POST", "/v1/clusters", json={"name": name, "quorum_count": 1})
    api.call("POST", "/v1/edges", json={"name": name, "policy": {"segment": name}})
    assert api.exists(f"/v1/clusters/{name}") and api.exists(f"/v1/edges/{name}")
