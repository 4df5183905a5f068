"""The lab's cluster `lab`: created through the API with the seed documents' rule set
(infra/lab/rules.yaml) and its DNS settings on the lab's BIND."""

from __future__ import annotations

from pathlib import Path

import yaml

from activities.domain.dns import DnsSettings
from api.lab import standin
from api.lab.control import Api
from api.lab.state import LabState

NAME = "lab"
RULES = Path(__file__).resolve().parents[2] / "infra" / "lab" / "rules.yaml"


def quorum(machines: int) -> int:
    """The seeds' quorum: three masters once there are five machines to spare them, else one."""
    return 3 if machines >= 5 else 1


def rules() -> list[dict]:
    return yaml.safe_load(RULES.read_text())


def create(api: Api, state: LabState, machines: int, dns: DnsSettings) -> None:
    """Create `lab` (kept if a previous lab left it), then set its rules and DNS settings."""
    if not api.exists(f"/v1/clusters/{NAME}"):
        api.call("POST", "/v1/clusters", json={"name": NAME, "quorum_count": quorum(machines)})
    state.cluster = NAME
    state.save()
    api.call("PUT", f"/v1/cloud-init/fragments/{standin.FRAGMENT_NAME}", json={"content": standin.fragment()})
    api.call("PUT", f"/v1/clusters/{NAME}/rules", json=rules())
    api.call("PUT", f"/v1/clusters/{NAME}/dns", json=_unsealed(dns))


def register_vm(api: Api, uuid: str, mac: str, qmp_socket: Path, cluster: str = NAME) -> None:
    """Pre-register a VM into `lab` (kept from a previous lab: left as it is) with QMP power on its
    socket, so reboot, reprovision and decommission power it through the product, as a BMC would."""
    machine = {"cluster": cluster, "uuid": uuid, "mac": mac}
    try:
        machine_id = api.call("POST", "/v1/machines", json=machine)["id"]
    except RuntimeError as e:
        if ": 409 " not in str(e):
            raise
        machine_id = uuid  # registered by an earlier `lab up`: its id is its (trusted) UUID
    api.call("PUT", f"/v1/machines/{machine_id}/power", json={"driver": "qmp", "address": str(qmp_socket)})


def _unsealed(dns: DnsSettings) -> dict:
    """The settings as JSON with the secrets in clear: they are write-only through the API."""
    body = dns.model_dump(mode="json")
    if dns.key is not None:
        body["key"]["secret"] = dns.key.secret.get_secret_value()
    for view, model in zip(body["views"], dns.views):
        view["key"]["secret"] = model.key.secret.get_secret_value()
    return body
