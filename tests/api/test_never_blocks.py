"""The API's event loop never blocks: a big rule save and a slow dry-run run in worker threads
while `/healthz` keeps answering; rule sets are bounded and a refusal never echoes a big body."""

from __future__ import annotations

import threading
import time

import httpx

from activities.storage import db
from activities.storage.models import Machine
from api.app import MAX_BODY_BYTES as MAX_BODY
from api.rules import MAX_RULES

HEALTHZ_BOUND_S = 1.0  # the bound for /healthz while the slowest work runs
ENDLESS = "(() => { while (true) {} })()"  # stopped by the sandbox after its time limit


def _rule(i: int, expression: str = "true") -> dict:
    return {"name": f"r{i}", "expression": expression, "attributes": [{"type": "role", "value": "worker"}]}


def _cluster(api_server, name: str) -> None:
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": name, "quorum_count": 1}).raise_for_status()


def _in_background(call) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        out["response"] = call()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_healthz_answers_while_a_big_save_and_a_slow_dry_run_run(api_server, settings, unique):
    name = unique("c")
    _cluster(api_server, name)
    with db.session(settings.database_url) as s:  # machines of the cluster, for the dry-run
        for i in range(3):
            s.add(Machine(id=unique(f"m{i}"), cluster=name))
        s.commit()
    biggest = [_rule(i, f"candidate.disks.length > {i}") for i in range(MAX_RULES)]

    def save() -> httpx.Response:
        with api_server.client() as http:
            return http.put(f"/v1/clusters/{name}/rules", json=biggest)

    def dry_run() -> httpx.Response:
        with api_server.client() as http:
            return http.post(f"/v1/clusters/{name}/rules/dry-run", json=[_rule(0, ENDLESS)])

    slowest: list[float] = []
    workers = [_in_background(save), _in_background(dry_run)]
    with httpx.Client(base_url=api_server.url, timeout=60) as probe:
        while any(thread.is_alive() for thread, _ in workers):
            started = time.monotonic()
            probe.get("/healthz").raise_for_status()
            slowest.append(time.monotonic() - started)
    for thread, _ in workers:
        thread.join()
    saved, dry = (out["response"] for _, out in workers)
    assert saved.status_code == 200, saved.text[:500]
    assert dry.status_code == 200, dry.text[:500]
    assert all("took longer than" in row["errors"][0] for row in dry.json())
    assert len(slowest) >= 5, "the save and the dry-run ended before /healthz was probed"
    assert max(slowest) < HEALTHZ_BOUND_S, f"/healthz took {max(slowest):.2f} s while rules were checked"


def test_rule_sets_are_bounded_and_refusals_do_not_echo_the_body(api_server, unique):
    name = unique("c")
    _cluster(api_server, name)
    with api_server.client() as http:
        too_many = http.put(f"/v1/clusters/{name}/rules", json=[_rule(i) for i in range(MAX_RULES + 1)])
        assert too_many.status_code == 422 and f"at most {MAX_RULES} rules" in too_many.text, too_many.text[:500]

        huge_rule = http.put(f"/v1/clusters/{name}/rules", json=[_rule(0, "true || " * 125_000 + "true")])
        assert huge_rule.status_code == 422
        assert "expression" in huge_rule.text and len(huge_rule.content) < 4096, huge_rule.text[:500]

        huge_body = http.put(f"/v1/clusters/{name}/rules", content=b"[" + b" " * MAX_BODY + b"]",
                             headers={"content-type": "application/json"})
        assert huge_body.status_code == 413 and len(huge_body.content) < 4096, huge_body.text[:500]

        dry_huge = http.post(f"/v1/clusters/{name}/rules/dry-run", json=[_rule(0, "true || " * 125_000 + "true")])
        assert dry_huge.status_code == 422 and len(dry_huge.content) < 4096

        assert http.get(f"/v1/clusters/{name}/rules").json() == []
        assert http.get("/healthz").status_code == 200
