"""A cluster's Terraform tasks over HTTP against a real `tempered api` and `tempered worker` (the
real runner and the real Terraform engine): create-time checks (422), plan (a real dry run),
retry (409 when nothing failed), 404s."""

from __future__ import annotations

from tests.api.test_cli import tempered

NODE_RECORD = {"name": "inventory", "module": "node-record", "stage": "after-ready",
               "variables": {"cluster": "{{ cluster.name }}"}}


def test_create_refuses_a_missing_module_and_a_bad_template(api_server, unique):
    with api_server.client() as http:
        missing = http.post("/v1/clusters", json={"name": unique("c"), "terraform": [
            NODE_RECORD | {"module": "no-such-module"}]})
        assert missing.status_code == 422, missing.text
        assert "task inventory: no module 'no-such-module'" in missing.json()["detail"]
        bad = http.post("/v1/clusters", json={"name": unique("c"), "terraform": [
            NODE_RECORD | {"variables": {"cluster": "{{ cluster.name "}}]})
        assert bad.status_code == 422, bad.text
        assert bad.json()["detail"].startswith("task inventory: variable cluster: unexpected end of template")


def test_plan_is_a_real_dry_run_shown_on_the_cluster(api_server, unique):
    name = unique("c")
    with api_server.client() as http:
        created = http.post("/v1/clusters", json={"name": name, "quorum_count": 1, "terraform": [NODE_RECORD]})
        assert created.status_code == 201, created.text

        planned = http.post(f"/v1/clusters/{name}/terraform/inventory/plan", timeout=300)
        assert planned.status_code == 200, planned.text
        assert "1 to add" in planned.json()["summary"]
        shown = http.get(f"/v1/clusters/{name}").json()
        assert [(t["name"], t["state"], t["last_plan"]) for t in shown["tasks"]] == [
            ("inventory", "pending", planned.json()["summary"])
        ]
        assert (shown["failed"], shown["endpoint"]) == ("", "")


def test_retry_with_nothing_failed_is_a_conflict_and_unknown_names_are_404(api_server, unique):
    name = unique("c")
    with api_server.client() as http:
        assert http.post("/v1/clusters", json={"name": name, "quorum_count": 1}).status_code == 201
        refused = http.post(f"/v1/clusters/{name}/retry")
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"] == f"nothing to retry: cluster {name} has no failed Terraform task or decommission"
        assert http.post(f"/v1/clusters/{unique('gone')}/retry").status_code == 404
        assert http.post(f"/v1/clusters/{unique('gone')}/terraform/x/plan").status_code == 404
        unknown = http.post(f"/v1/clusters/{name}/terraform/nope/plan")
        assert unknown.status_code == 404 and "no Terraform task 'nope'" in unknown.json()["detail"]


def test_the_cli_creates_a_cluster_with_tasks_plans_shows_and_retries(api_server, unique, tmp_path):
    name = unique("c")
    spec = tmp_path / "tasks.yaml"
    spec.write_text("- name: inventory\n  module: node-record\n  stage: after-ready\n"
                    "  variables: {cluster: '{{ cluster.name }}'}\n")
    assert tempered(api_server, "cluster", "create", name, "--terraform", str(spec)).returncode == 0
    planned = tempered(api_server, "cluster", "plan", name, "inventory")
    assert planned.returncode == 0 and "1 to add" in planned.stdout, planned.stderr
    shown = tempered(api_server, "cluster", "show", name)
    assert "Terraform tasks" in shown.stdout and "inventory" in shown.stdout and "pending" in shown.stdout
    refused = tempered(api_server, "cluster", "retry", name)
    assert refused.returncode == 1 and "nothing to retry" in refused.stderr
    spec.write_text("[{name: x, module: nowhere, stage: after-ready}]")
    bad = tempered(api_server, "cluster", "create", unique("c"), "--terraform", str(spec))
    assert bad.returncode == 2 and "no module 'nowhere'" in bad.stderr
