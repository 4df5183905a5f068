"""GET /v1/machines reads state and role from the database (activities/storage/machinestate.py):
machines driven to `ready` by the fleet simulator through the real API, worker and Temporal
are listed with the state and role their workflows answer, and filtered by them in SQL."""

from __future__ import annotations

import asyncio

from api.lab import fleet
from tests.servers import wait_for


def _walk(http, **params) -> list[dict]:
    rows, after = [], None
    while True:
        answer = http.get("/v1/machines", params={**params, **({"after": after} if after else {})})
        answer.raise_for_status()
        rows += answer.json()
        if (after := answer.headers.get("x-next-cursor")) is None:
            return rows


def test_a_list_shows_what_each_workflow_says_and_filters_by_it(api_server) -> None:
    plan = fleet.Plan(machines=3, clusters=1, window_s=1, timeout_s=240, poll_s=0.5, quorum=1)
    result = asyncio.run(fleet.run(api_server.url, api_server.token, plan))
    assert len(result.ready) == 3, "\n".join(fleet.report(result))
    cluster = result.machines[0].rack.cluster
    ids = sorted(m.id for m in result.machines)
    with api_server.client() as http:
        views = {i: http.get(f"/v1/machines/{i}").json() for i in ids}
        # ready is recorded by the DNS step's activity, after which the workflow moves: wait on it
        seen: list[list[dict]] = []
        try:
            listed = wait_for(lambda: (rows := _walk(http, cluster=cluster, limit=2)) and not seen.append(rows)
                              and all(r["state"] == "ready" for r in rows) and rows, "the list showing ready")
        except AssertionError as err:
            raise AssertionError(f"{err}; last listed: {seen[-1:]}") from None
        assert [r["id"] for r in listed] == ids
        for row in listed:
            view = views[row["id"]]
            assert (row["state"], row["role"], row["mac"]) == (view["state"], view["role"], view["macs"][0]), row
        assert [r["id"] for r in _walk(http, cluster=cluster, state="ready", limit=2)] == ids
        primes = _walk(http, cluster=cluster, role="master-prime")
        assert [r["id"] for r in primes] == [i for i in ids if views[i]["role"] == "master-prime"] and len(primes) == 1
        assert _walk(http, cluster=cluster, state="holding") == []
        assert len(_walk(http, cluster=cluster, role="worker", state="ready")) == sum(
            v["role"] == "worker" for v in views.values())
