"""Prometheus metrics (issue 15, item 6), scraped from the real processes after real calls: the
API's requests by route template, the worker's steps, rules, machines and the Temporal SDK's
own metrics. The edge's are scraped in tests/lab/test_edge_metrics.py (it needs namespaces)."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_discovery_api import Site, facts
from tests.servers import wait_for as until

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 for a series not yet created (a counter that never moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` that carries `labels` (whatever its other labels)."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def scrape_api(api_server) -> tuple[str, Samples]:
    with api_server.client() as http:
        answer = http.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text, parse(answer.text)


def scrape_worker(worker) -> Samples:
    answer = httpx.get(f"http://{worker.env['TEMPERED_WORKER_METRICS']}/metrics", timeout=30)
    assert answer.status_code == 200, answer.text
    return parse(answer.text)




def test_api_metrics_need_a_token_and_count_requests_by_route_template(api_server):
    assert httpx.get(f"{api_server.url}/metrics").status_code == 401
    assert httpx.get(f"{api_server.url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    route = "/v1/machines/{machine_id}"
    _, before = scrape_api(api_server)
    missing = str(uuid.uuid4())
    with api_server.client() as http:
        assert http.get(f"/v1/machines/{missing}").status_code == 404
        assert http.get("/healthz").status_code == 200
        assert http.get("/openapi.json").status_code == 200  # the app's own routes, outside the API
        assert http.get("/static-offline-docs/swagger-ui.css").status_code == 200  # a mount: its prefix
        assert http.get(f"/no-such-path/{missing}").status_code == 404
    text, after = scrape_api(api_server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tempered_api_requests_total", method="GET", route=route, code="404") == 1
    assert moved("tempered_api_request_duration_seconds_count", method="GET", route=route) == 1
    assert moved("tempered_api_requests_total", method="GET", route="/healthz", code="200") == 1
    # the scrape before this one counts too, with its 401s before it
    assert moved("tempered_api_requests_total", method="GET", route="/metrics", code="200") == 1
    assert moved("tempered_api_requests_total", method="GET", route="/openapi.json", code="200") == 1
    assert moved("tempered_api_requests_total", method="GET", route="/static-offline-docs", code="200") == 1
    assert moved("tempered_api_requests_total", method="GET", route="unmatched", code="404") == 1
    assert total(after, "tempered_api_requests_total", route="unmatched", code="200") == 0
    assert missing not in text  # the template, never the raw path: no series per machine


def test_worker_metrics_show_steps_rules_machines_and_the_sdk(api_server, worker, unique):
    before = scrape_worker(worker)
    site = Site(api_server, unique, "52:54:00:3e")
    rules = [{"name": "all", "expression": "true", "attributes": [{"type": "label", "value": "metrics=yes"}]}]
    with api_server.client() as http:
        http.put(f"/v1/clusters/{site.cluster}/rules", json=rules).raise_for_status()
    mac = "52:54:00:3e:00:01"
    machine_id, token = site.boot(mac)
    assert site.post(machine_id, token, facts(mac)).status_code == 202
    state = site.wait_state(machine_id, "post-discover", "holding")["state"]
    assert state in ("post-discover", "holding")

    def moved(name: str, **labels: str) -> float:
        return total(scrape_worker(worker), name, **labels) - total(before, name, **labels)

    steps = "tempered_step_duration_seconds_count"
    until(lambda: moved(steps, activity="evaluate_rules_batch", outcome="completed") >= 1, "the rules batch's duration")
    until(lambda: moved(steps, activity="record_roles", outcome="completed") >= 1, "record_roles' step duration")
    until(lambda: moved("tempered_rule_evaluation_seconds_count") >= 1, "a rule evaluation")

    def machines() -> float:
        shown = site.machine(machine_id)["state"]
        return value(scrape_worker(worker), "tempered_machines", cluster=site.cluster, state=shown) == 1

    until(machines, f"tempered_machines for {site.cluster} in its current state")
    samples = scrape_worker(worker)
    assert total(samples, "temporal_worker_task_slots_available", task_queue="tempered") > 0  # the SDK's own
    assert total(samples, "temporal_request_total") > 0
    assert not any(machine_id in str(labels) or mac in str(labels) for _, labels in samples)
