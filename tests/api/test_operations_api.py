"""Cluster operations over HTTP against a real `tempered api` and `tempered worker`: a ready
cluster (external join, machines driven through the boot API's workflows), then the refusals
(422 quorum, version, non-member; 409 a second operation), a rolling reboot started (202) and
aborted, and a scale down that decommissions a worker; then the same through `tempered cluster ...`."""

from __future__ import annotations

import httpx

from activities.domain.cluster import ClusterStatus
from activities.storage import db
from activities.storage.models import Cluster
from api import temporal
from tests.api.test_cli import tempered
from tests.conftest import eventually
from tests.lifecycle import MachineDriver


async def test_operations_are_started_refused_aborted_and_shown(api_server, client, settings, unique):
    name = unique("c")
    headers = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.url, headers=headers, timeout=60) as http:
        created = await http.post("/v1/clusters", json={"name": name, "quorum_count": 1, "join_method": "external"})
        assert created.status_code == 201, created.text
        prime, worker = (MachineDriver(client, settings, unique("m"), name) for _ in range(2))
        await prime.to_ready()
        await worker.to_ready()
        path = f"/v1/clusters/{name}/operations"
        assert (await http.get(path)).status_code == 404
        assert (await http.post(f"{path}/pause")).status_code == 404

        async def refused(body: dict, code: int, words: str) -> None:
            answer = await http.post(path, json=body)
            assert answer.status_code == code and words in answer.json()["detail"], answer.text

        await refused({"kind": "scale-down", "machines": [prime.machine_id]}, 422, "would break quorum")
        await refused({"kind": "scale-down", "machines": ["nobody"]}, 422, "not members of cluster")
        await refused({"kind": "upgrade", "kubernetes_version": "1.33.0"}, 422, "skips a minor version")
        started = await http.post(path, json={"kind": "rolling-reboot", "machines": [worker.machine_id]})
        assert started.status_code == 202, started.text
        op = started.json()
        assert op["workflow_id"] == f"operation:{name}:1" and op["temporal_url"].endswith(op["workflow_id"])
        await refused({"kind": "rolling-reboot"}, 409, f"busy with rolling-reboot operation:{name}:1")
        assert (await http.post(f"{path}/abort")).status_code == 200

        async def state_is(state: str) -> bool:
            return (await http.get(path)).json()["state"] == state

        await eventually(lambda: state_is("aborted"), 60, what="the operation to end aborted")
        assert (await http.post(f"{path}/resume")).status_code == 409  # it ended
        scaled = await http.post(path, json={"kind": "scale-down", "machines": [worker.machine_id]})
        assert scaled.status_code == 202 and scaled.json()["workflow_id"] == f"operation:{name}:2"
        await eventually(lambda: state_is("done"), 90, what="the scale-down to finish")
        members = (await http.get(f"/v1/clusters/{name}")).json()["members"]
        assert [m["machine_id"] for m in members] == [prime.machine_id]

    shown = tempered(api_server, "cluster", "operation", name)
    assert shown.returncode == 0 and f"operation:{name}:2" in shown.stdout and "state done" in shown.stdout
    assert f"workflows/operation:{name}:2" in shown.stdout  # the Web UI link
    cluster_shown = tempered(api_server, "cluster", "show", name)
    assert f"operation: scale-down operation:{name}:2 done" in cluster_shown.stdout
    # A cluster that has not had the operation's last word yet (its signal still on the way, as
    # when an operator who saw it end is quicker): the API gives the cluster the same last word.
    status = await temporal.query(temporal.cluster(client, name), ClusterStatus)
    lagging = status.operation.model_copy(update={"state": "running", "progress": "decommissioning (stale)"})
    await temporal.cluster(client, name).signal("operation_progress", lagging)
    breach = tempered(api_server, "cluster", "scale-down", name, prime.machine_id)
    assert breach.returncode != 0 and "would break quorum" in breach.stderr
    assert "is done: nothing to pause" in tempered(api_server, "cluster", "operation", name, "pause").stderr
    rebooting = tempered(api_server, "cluster", "reboot", name, "--machine", prime.machine_id)
    assert rebooting.returncode == 0 and f"operation:{name}:3 started" in rebooting.stdout, rebooting.stderr
    busy = tempered(api_server, "cluster", "upgrade", name, "--kubernetes-version", "1.32.0")
    assert busy.returncode != 0 and f"busy with rolling-reboot operation:{name}:3" in busy.stderr
    aborted = tempered(api_server, "cluster", "operation", name, "abort")
    assert aborted.returncode == 0 and "aborting" in aborted.stdout, aborted.stderr

    await _an_upgrade_is_kept_and_a_terminated_operation_frees_the_cluster(api_server, client, settings, name)


async def _an_upgrade_is_kept_and_a_terminated_operation_frees_the_cluster(api_server, client, settings, name) -> None:
    """The upgrade's version lands in the Cluster row too; an operation workflow terminated behind
    the cluster's back (as in the Web UI) is settled by the API: 409 'it ended' on an action, and
    a start goes on after telling the cluster."""
    headers = {"Authorization": f"Bearer {api_server.token}"}
    path = f"/v1/clusters/{name}/operations"
    async with httpx.AsyncClient(base_url=api_server.url, headers=headers, timeout=60) as http:
        async def state_is(state: str) -> bool:
            return (await http.get(path)).json()["state"] == state

        await eventually(lambda: state_is("aborted"), 60, what="the CLI's abort to end")
        upgrade = await http.post(path, json={"kind": "upgrade", "kubernetes_version": "1.32.0"})
        assert upgrade.status_code == 202, upgrade.text
        with db.session(settings.database_url) as s:
            assert s.get(Cluster, name).spec["kubernetes_version"] == "1.32.0"
        assert (await http.get(f"/v1/clusters/{name}")).json()["spec"]["kubernetes_version"] == "1.32.0"
        await client.get_workflow_handle(upgrade.json()["workflow_id"]).terminate("as in the Web UI")
        paused = await http.post(f"{path}/pause")
        assert paused.status_code == 409 and "its workflow was TERMINATED" in paused.json()["detail"], paused.text
        shown = (await http.get(path)).json()
        assert shown["state"] == "aborted" and "its workflow was TERMINATED" in shown["error"]
        again = await http.post(path, json={"kind": "rolling-reboot"})
        assert again.status_code == 202, again.text
        await client.get_workflow_handle(again.json()["workflow_id"]).terminate("as in the Web UI")
        third = await http.post(path, json={"kind": "rolling-reboot"})  # the start settles it and tries again
        assert third.status_code == 202 and third.json()["workflow_id"] == f"operation:{name}:6", third.text
        await client.get_workflow_handle(third.json()["workflow_id"]).terminate("as in the Web UI")
        deleted = await http.delete(f"/v1/clusters/{name}")  # DELETE settles it too
        assert deleted.status_code == 202 and deleted.json()["phase"] == "deleting", deleted.text
