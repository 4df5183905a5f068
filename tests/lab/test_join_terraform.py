"""The end-to-end path of a before-bootstrap Terraform task (issue 16): the real runner applies
infra/terraform/vip-pool with the real Terraform engine against the real API's state store, and
its `endpoint` output is the controlPlaneEndpoint of the master-prime's kubeadm config, joined
for real through Ansible against the kubeadm stand-in (tests/lab/test_join.py's node lab)."""

from __future__ import annotations

from tests.lab.test_join import Site, discover, join, pytestmark, site  # noqa: F401 (the lab's fixture and skip)
from tests.lifecycle import cluster_status, create_cluster

VIP = {"name": "vip", "module": "vip-pool", "stage": "before-bootstrap",
       "variables": {"cluster": "{{ cluster.name }}", "pool": ["192.0.2.10"]},
       "outputs": {"control_plane_endpoint": "endpoint"}}


async def test_a_before_bootstrap_tasks_output_is_the_prime_kubeadm_endpoint(site: Site, api_server):
    await create_cluster(site.client, site.settings, site.cluster, quorum=1, join_method="ansible", terraform=[VIP])
    prime = site.machine("m1", 1)
    assert (await discover(prime, "post-discover")).role == "master-prime"
    ready = await join(prime, timeout=300)
    assert ready.state == "ready", ready.reason

    status = await cluster_status(site.client, site.cluster)
    assert [(t.name, t.state, t.outputs.get("endpoint")) for t in status.tasks] == [
        ("vip", "applied", "192.0.2.10:6443")
    ]
    assert status.endpoint == "192.0.2.10:6443"
    assert site.cluster_state()["endpoint"] == "192.0.2.10:6443"  # what kubeadm init was given
    assert [c["rc"] for c in site.calls("kubeadm init")] == [0]
    with api_server.client() as http:  # the task's state is in Tempered's store
        states = http.get("/v1/terraform/states").json()
    assert any(s.get("cluster") == site.cluster and s.get("name") == "vip" for s in states), states
