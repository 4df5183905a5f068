"""The lab registers each VM with QMP power as it starts (api/lab/cluster.py `register_vm`), so
the product powers the lab's machines as it would a BMC. Here against the session's real API."""

from __future__ import annotations

import uuid as uuidlib

from api.lab.cluster import register_vm
from api.lab.control import Api


def test_a_lab_vm_is_registered_with_qmp_power_and_a_second_lab_up_keeps_it(api_server, unique, tmp_path):
    cluster = unique("lab")
    api = Api(api_server.url, api_server.token)
    api.call("POST", "/v1/clusters", json={"name": cluster, "quorum_count": 1})
    vm_uuid = str(uuidlib.uuid4())
    socket = tmp_path / "vms" / "lab-1" / "qmp.sock"

    register_vm(api, vm_uuid, "52:54:00:7e:10:01", socket, cluster)
    register_vm(api, vm_uuid, "52:54:00:7e:10:01", socket, cluster)  # `lab up` again: already registered

    machine = api.get(f"/v1/machines/{vm_uuid}")
    assert (machine["cluster"], machine["state"]) == (cluster, "new")
    power = api.get(f"/v1/machines/{vm_uuid}/power")
    assert (power["driver"], power["address"], power["source"]) == ("qmp", str(socket), "operator")
    status = api.call("POST", f"/v1/machines/{vm_uuid}/power/status")  # no QEMU on that socket: off
    assert status["state"] == "off" and "not running" in status["answer"]
