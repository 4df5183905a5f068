"""Rules through the whole control plane: saved and checked over HTTP, evaluated in the sandbox
during serialised admission, with the attribute semantics of the README's Rules section."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from uuid import uuid4

import pytest

from tests.api.test_discovery_api import Site, facts

# The seeds' example: worker by default; master while masters < quorumCount; master-prime when
# there is none; more than one disk: always worker; include debug; a disabled serial-console karg.
SEED_RULES = [
    {"name": "workers", "expression": "true", "attributes": [{"type": "role", "value": "worker"}]},
    {"name": "masters", "expression": 'members.filter(m => m.role.startsWith("master")).length < quorumCount',
     "attributes": [{"type": "role", "value": "master"}]},
    {"name": "prime", "expression": 'members.filter(m => m.role.startsWith("master")).length < 1',
     "attributes": [{"type": "role", "value": "master-prime"}]},
    {"name": "storage", "expression": "candidate.disks.length > 1", "attributes": [{"type": "role", "value": "worker"}]},
    {"name": "debug", "expression": "true", "attributes": [{"type": "include", "value": "debug"}]},
    {"name": "serial console", "expression": "true", "attributes": [{"type": "karg", "value": "console=ttyS0"}], "enabled": False},
]


def _site(api_server, unique, prefix: str, quorum: int = 3) -> Site:
    return Site(api_server, unique, prefix, quorum=quorum)


def _put(api_server, cluster: str, rules: list):
    with api_server.client() as http:
        return http.put(f"/v1/clusters/{cluster}/rules", json=rules)


@pytest.mark.parametrize(
    "rules, fragment",
    [
        ([{"name": "x", "expression": "true", "attributes": [{"type": "colour", "value": "red"}]}], "role"),
        ([{"name": "x", "expression": "true", "attributes": [{"type": "variable", "value": "novalue"}]}], "name=value"),
        ([{"name": "x", "expression": "candidate.disks.length >\n  > 1", "attributes": []}], "line 2"),
        ([{"name": "x", "expression": "true"}, {"name": "x", "expression": "false"}], "unique"),
    ],
)
def test_rules_are_checked_when_saved(api_server, unique, rules, fragment):
    cluster = unique("c")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
    refused = _put(api_server, cluster, rules)
    assert refused.status_code == 422 and fragment in refused.text, refused.text
    with api_server.client() as http:
        assert http.get(f"/v1/clusters/{cluster}/rules").json() == []


def test_the_seed_rules_assign_one_prime_two_masters_and_workers(api_server, unique):
    site = _site(api_server, unique, "52:54:00:f1")
    assert _put(api_server, site.cluster, SEED_RULES).status_code == 200
    machines = []
    for i in range(7):
        mac = f"52:54:00:f1:00:{i:02x}"
        body = facts(mac)
        if i in (0, 3):  # multi-disk machines, one of them first in line
            body["disks"].append({"name": "vdb", "size_bytes": 10**12, "serial": f"big-{i}"})
        machines.append((mac, *site.boot(mac), body))

    def report(machine):
        mac, machine_id, token, body = machine
        return site.post(machine_id, token, body).status_code

    with ThreadPoolExecutor(max_workers=7) as pool:  # they all arrive together
        assert set(pool.map(report, machines)) == {202}
    views = {m[1]: site.wait_state(m[1], "post-discover", "holding") for m in machines}
    roles = Counter(v["role"] for v in views.values())
    assert roles == {"master-prime": 1, "master": 2, "worker": 4}, roles
    for index in (0, 3):
        assert views[machines[index][1]]["role"] == "worker"
    for view in views.values():
        kinds = [(a["type"], a["value"]) for a in view["attributes"]]
        assert ("include", "debug") in kinds and ("karg", "console=ttyS0") not in kinds


def test_a_failing_rule_holds_the_machine_until_the_rules_are_fixed(api_server, unique):
    site = _site(api_server, unique, "52:54:00:f2", quorum=1)
    broken = [{"name": "gpu nodes", "expression": "candidate.facts.nothing.length > 0", "attributes": [{"type": "role", "value": "worker"}]}]
    assert _put(api_server, site.cluster, broken).status_code == 200
    mac = "52:54:00:f2:00:01"
    machine_id, token = site.boot(mac)
    site.post(machine_id, token, facts(mac)).raise_for_status()
    held = site.wait_state(machine_id, "holding")
    assert held["state"] == "holding" and "rule 'gpu nodes'" in held["reason"] and "TypeError" in held["reason"]
    fixed = [
        {"name": "prime", "expression": "members.length == 0", "attributes": [
            {"type": "role", "value": "master-prime"}, {"type": "variable", "value": "rack=r1"}, {"type": "label", "value": "tier=gold"}]},
        {"name": "gpus", "expression": "candidate.gpus > 0", "attributes": [{"type": "label", "value": "gpu=yes"}]},
    ]
    assert _put(api_server, site.cluster, fixed).status_code == 200
    admitted = site.wait_state(machine_id, "post-discover")
    assert admitted["state"] == "post-discover" and admitted["role"] == "master-prime"
    assert admitted["status"]["attributes"]["var"] == {"rack": "r1"}
    labels = [a["value"] for a in admitted["attributes"] if a["type"] == "label"]
    assert labels == ["tier=gold", "gpu=yes"]  # VM_FACTS has one VGA controller: gpus > 0


def test_a_hostile_rule_is_an_error_on_the_machine_and_the_api_keeps_serving(api_server, unique):
    site = _site(api_server, unique, "52:54:00:f3", quorum=1)
    hostile = [{"name": "spin", "expression": "(() => { while (true) {} })()", "attributes": [{"type": "role", "value": "worker"}]},
               {"name": "env", "expression": "process.env.HOME.length > 0", "attributes": []}]
    assert _put(api_server, site.cluster, hostile).status_code == 200
    mac = "52:54:00:f3:00:01"
    machine_id, token = site.boot(mac)
    site.post(machine_id, token, facts(mac)).raise_for_status()
    held = site.wait_state(machine_id, "holding")
    assert "rule 'spin'" in held["reason"] and "rule 'env'" in held["reason"]
    with api_server.client() as http:
        assert http.get("/healthz").status_code == 200


def test_dry_run_shows_current_and_would_be_attributes(api_server, unique):
    site = _site(api_server, unique, "52:54:00:f4", quorum=1)
    mac = "52:54:00:f4:00:01"
    machine_id, token = site.boot(mac)
    site.post(machine_id, token, facts(mac)).raise_for_status()
    site.wait_state(machine_id, "post-discover")
    candidate = [{"name": "big memory", "expression": "candidate.facts.memory.total_bytes > 2 * 2**30",
                  "attributes": [{"type": "role", "value": "worker"}, {"type": "include", "value": "bigmem"}]}]
    with api_server.client() as http:
        rows = http.post(f"/v1/clusters/{site.cluster}/rules/dry-run", json=candidate).json()
        assert http.get(f"/v1/clusters/{site.cluster}/rules").json() == []  # nothing stored
    assert rows == [{"machine_id": machine_id, "current": {"role": "master-prime", "labels": [], "taints": [], "includes": [], "variables": {}, "kargs": []},
                     "would_be": {"role": "worker", "labels": [], "taints": [], "includes": ["bigmem"], "variables": {}, "kargs": []},
                     "errors": []}]


def test_rules_see_the_machines_node_name_as_hostname(api_server, unique):
    """One name everywhere: a rule on `hostname` sees the node name (from the MAC it booted
    from, not its SMBIOS UUID id), for the candidate and for the members, and the machine's
    view shows the same name."""
    site = _site(api_server, unique, "52:54:00:f5", quorum=1)
    named = [
        {"name": "prime by name", "expression": 'candidate.hostname === "node-525400f50001"',
         "attributes": [{"type": "role", "value": "master-prime"}]},
        {"name": "worker beside it", "expression": 'candidate.hostname === "node-525400f50002" && '
         'members.some(m => m.hostname === "node-525400f50001")', "attributes": [{"type": "role", "value": "worker"}]},
    ]
    assert _put(api_server, site.cluster, named).status_code == 200
    views = {}
    for last in (1, 2):
        mac, uuid = f"52:54:00:f5:00:0{last}", str(uuid4())
        machine_id, token = site.boot(mac, uuid=uuid)
        assert machine_id == uuid
        body = facts(mac, dmi__uuid=uuid)
        body["nics"].append({"name": "eth1", "mac": f"52:54:00:f5:00:1{last}", "driver": "virtio_net"})
        site.post(machine_id, token, body).raise_for_status()
        views[last] = site.wait_state(machine_id, "post-discover", "holding")
    assert [views[1]["role"], views[2]["role"]] == ["master-prime", "worker"], [v["reason"] for v in views.values()]
    assert [views[1]["node_name"], views[2]["node_name"]] == ["node-525400f50001", "node-525400f50002"]
