"""The runtime OS's side of the control plane, over HTTP: fragments, rendering in the machine
workflow (`render` step, `failed:render`), the NoCloud seed served to this boot's token only,
and the phone home."""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.api.test_discovery_api import Site, facts
from tests.servers import wait_for

EDGE_URL = "http://10.213.9.3:8080"
MOTD = "write_files:\n  - path: /etc/motd\n    content: 'site {{ var.site }}'\nruncmd:\n  - [touch, /run/motd-fragment]\n"
RULES = [
    {"name": "all", "expression": "true", "attributes": [
        {"type": "role", "value": "master-prime"}, {"type": "include", "value": "motd"},
        {"type": "variable", "value": "site=lab-1"}, {"type": "karg", "value": "mitigations=off"},
    ]},
]


def _put_fragment(api_server, name: str, content: str) -> httpx.Response:
    with api_server.client() as http:
        return http.put(f"/v1/cloud-init/fragments/{name}", json={"content": content})


def _edge_boot(site: Site, mac: str) -> dict:
    with httpx.Client(base_url=site.api.url, headers={"Authorization": f"Bearer {site.edge_token}"}) as edge:
        return edge.post("/v1/edge/boot", json={"mac": mac}).raise_for_status().json()


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMKghDL7yrcf6ce+TNunlIDSsEa8z12rNEIGYR43W9c1 root@node"


def _seed(site: Site, machine_id: str, item: str, token: str | None, edge: str = EDGE_URL, form=None) -> httpx.Response:
    headers = {"X-Tempered-Edge-Url": edge} | ({"Authorization": f"Bearer {token}"} if token else {})
    method = "POST" if item == "phone-home" else "GET"
    return httpx.request(method, f"{site.api.url}/v1/boot/{machine_id}/{item}", headers=headers, data=form, timeout=60)


def _discovered(api_server, unique, prefix: str, mac: str, rules=RULES) -> tuple[Site, str, str]:
    """A machine through discovery and admission: (site, machine id, discovery token)."""
    site = Site(api_server, unique, prefix)
    with api_server.client() as http:
        http.put(f"/v1/clusters/{site.cluster}/rules", json=rules).raise_for_status()
    machine_id, token = site.boot(mac)
    assert site.post(machine_id, token, facts(mac)).status_code == 202
    return site, machine_id, token


@pytest.mark.parametrize(
    "content, status, message",
    [
        ("ntp: {servers: one.example}\n", 422, "fails cloud-init's schema: ntp.servers"),
        ("runcmd: [\n", 422, "not valid YAML"),
        ("runcmd: ['{{ var.x ']\n", 422, "template error"),
        ("merge_how: 'list(append)+colour()'\nruncmd: [x]\n", 422, "unknown merger"),
    ],
)
def test_fragments_are_checked_when_saved(api_server, unique, content, status, message):
    name = unique("frag")
    refused = _put_fragment(api_server, name, content)
    assert refused.status_code == status and message in refused.json()["detail"], refused.text
    with api_server.client() as http:
        assert http.get(f"/v1/cloud-init/fragments/{name}").status_code == 404


def test_fragments_can_be_saved_read_listed_and_deleted(api_server, unique):
    name = unique("frag")
    saved = _put_fragment(api_server, name, MOTD.replace("\n", "\r\n"))
    assert saved.status_code == 200, saved.text
    with api_server.client() as http:
        shown = http.get(f"/v1/cloud-init/fragments/{name}").json()
        assert shown["content"] == MOTD and shown["included_by"] == 0 and shown["digest"] == saved.json()["digest"]
        assert name in [f["name"] for f in http.get("/v1/cloud-init/fragments").json()]
        assert http.put(f"/v1/cloud-init/fragments/bad%2Fname", json={"content": MOTD}).status_code in (404, 422)
        assert http.delete(f"/v1/cloud-init/fragments/{name}").status_code == 204
        assert http.delete(f"/v1/cloud-init/fragments/{name}").status_code == 404


def test_a_machine_gets_its_user_data_and_kargs_on_the_runtime_boot_and_phones_home(api_server, unique):
    mac = "52:54:00:c6:00:01"
    assert _put_fragment(api_server, "motd", MOTD).status_code == 200
    site, machine_id, discovery_token = _discovered(api_server, unique, "52:54:00:c6", mac)
    view = site.wait_state(machine_id, "post-discover")
    assert view["state"] == "post-discover" and "user-data rendered, with motd" in view["reason"], view["reason"]

    answer = _edge_boot(site, mac)
    instruction, token = answer["instruction"], answer["token"]
    assert instruction["action"] == "runtime" and instruction["kargs"] == ["mitigations=off"]

    meta = yaml.safe_load(_seed(site, machine_id, "meta-data", token).raise_for_status().text)
    assert meta == {"instance-id": f"{machine_id}-boot-{instruction['boot']}", "local-hostname": meta["local-hostname"]}
    assert meta["local-hostname"].startswith("node-")
    served = _seed(site, machine_id, "user-data", token).raise_for_status().text
    assert served.startswith("#cloud-config\n")
    user_data = yaml.safe_load(served)
    assert user_data["hostname"] == meta["local-hostname"]
    assert {"path": "/etc/motd", "content": "site lab-1"} in user_data["write_files"]
    assert user_data["runcmd"][-1] == ["touch", "/run/motd-fragment"]
    assert user_data["phone_home"]["url"] == f"{EDGE_URL}/machines/{machine_id}/{token}/phone-home"
    assert user_data["users"][0]["ssh_authorized_keys"][0].startswith("ssh-ed25519 ")
    assert user_data["fs_setup"][0]["overwrite"] is True  # a new machine: its data disk is wiped
    assert _seed(site, machine_id, "vendor-data", token).text == ""

    with api_server.client() as http:
        assert http.get(f"/v1/cloud-init/fragments/motd").json()["included_by"] >= 1
        assert http.delete("/v1/cloud-init/fragments/motd").status_code == 409

    forged_key = {"instance_id": meta["instance-id"], "pub_key_ed25519": "ssh-ed25519 not-a-key; rm -rf /"}
    assert _seed(site, machine_id, "phone-home", token, form=forged_key).status_code == 422
    phoned = _seed(site, machine_id, "phone-home", token, form={"instance_id": meta["instance-id"], "pub_key_ed25519": HOST_KEY})
    assert phoned.status_code == 200 and phoned.json()["state"] == "post-boot-2", phoned.text
    assert _seed(site, machine_id, "phone-home", token).status_code == 200  # a repeat: answered again
    assert site.machine(machine_id)["ssh_host_key"] == HOST_KEY  # what Ansible will pin


def test_the_seed_is_served_only_to_this_boots_token(api_server, unique):
    mac, other_mac = "52:54:00:c7:00:01", "52:54:00:c7:00:02"
    assert _put_fragment(api_server, "motd", MOTD).status_code == 200
    site, machine_id, discovery_token = _discovered(api_server, unique, "52:54:00:c7", mac)
    other_id, other_token = site.boot(other_mac)
    assert site.wait_state(machine_id, "post-discover")["state"] == "post-discover"
    # The discovery boot's token, before the machine boots its runtime OS: not a runtime boot.
    assert _seed(site, machine_id, "user-data", discovery_token).status_code == 403
    token = _edge_boot(site, mac)["token"]

    for item in ("meta-data", "user-data", "vendor-data", "phone-home"):
        assert _seed(site, machine_id, item, None).status_code == 401
        assert _seed(site, machine_id, item, "forged-token").status_code == 401
        refused = _seed(site, machine_id, item, other_token)
        assert refused.status_code == 403 and "another machine" in refused.text
        old = _seed(site, machine_id, item, discovery_token)
        assert old.status_code == 403 and "booted again" in old.text
        for answer in (refused, old):
            assert "ssh-ed25519" not in answer.text and "motd" not in answer.text
    assert _seed(site, machine_id, "user-data", token, edge="http://x/a?b=\"c\"").status_code == 400
    assert _seed(site, machine_id, "user-data", token).status_code == 200


def test_a_missing_fragment_parks_the_machine_in_failed_render_until_retried(api_server, unique):
    name = unique("later")
    rules = [{"name": "w", "expression": "true", "attributes": [{"type": "role", "value": "master-prime"},
                                                               {"type": "include", "value": name}]}]
    site, machine_id, token = _discovered(api_server, unique, "52:54:00:c8", "52:54:00:c8:00:01", rules)
    view = site.wait_state(machine_id, "failed:render")
    assert view["state"] == "failed:render", view
    assert f"include '{name}' names no fragment" in view["reason"] and "tempered machine retry" in view["reason"]
    assert site.instruction(machine_id, token)["action"] == "wait"  # the agent keeps the machine in discovery
    wait_for(lambda: _listed(api_server, machine_id, "failed:render"), "the list to show failed:render")

    assert _put_fragment(api_server, name, MOTD).status_code == 200
    with api_server.client() as http:
        assert http.post(f"/v1/machines/{machine_id}/retry").status_code == 200
    view = site.wait_state(machine_id, "post-discover")  # MOTD reads var.site, which no rule sets
    assert "fragment '" in view["reason"] and "variable 'site' is not set for this machine" in view["reason"], view["reason"]
    assert _put_fragment(api_server, name, "runcmd: [[touch, /run/later]]\n").status_code == 200
    with api_server.client() as http:
        assert http.post(f"/v1/machines/{machine_id}/retry").status_code == 200
    assert site.wait_state(machine_id, "post-discover")["state"] == "post-discover"
    assert site.instruction(machine_id, token)["action"] == "reboot"
    wait_for(lambda: _listed(api_server, machine_id, "post-discover"), "the list to show post-discover")


def _listed(api_server, machine_id: str, state: str) -> bool:
    """The machine is in the list filtered by `state` (lists read the database's copy of states,
    where the workflow writes a failed step: patch failure-listed)."""
    with api_server.client() as http:
        answer = http.get("/v1/machines", params={"state": state, "limit": 1000})
    return machine_id in [row["id"] for row in answer.json()]


def test_a_variable_that_breaks_the_schema_is_a_render_failure_with_cloud_inits_error(api_server, unique):
    name = unique("ntp")
    assert _put_fragment(api_server, name, "package_update: {{ var.update }}\n").status_code == 200
    rules = [{"name": "w", "expression": "true", "attributes": [
        {"type": "role", "value": "master-prime"}, {"type": "include", "value": name},
        {"type": "variable", "value": "update=maybe"},
    ]}]
    site, machine_id, _ = _discovered(api_server, unique, "52:54:00:c9", "52:54:00:c9:00:01", rules)
    view = site.wait_state(machine_id, "failed:render")
    assert "fails cloud-init's schema: package_update: 'maybe' is not of type 'boolean'" in view["reason"], view
