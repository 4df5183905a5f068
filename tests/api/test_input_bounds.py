"""Bad input is refused where it enters, never later (issue 12, item 5).

Over HTTP against a real `tempered api` (and, for DNS settings that still fail inside an
activity, a real worker): every refusal is a 413/422 that names the field without quoting the
input back, nothing is stored, and the API keeps serving.
"""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from sqlmodel import func, select

from activities.domain.dns import DnsServer, DnsSettings, TsigKey
from activities.storage import db, dnsconfig
from activities.storage.models import Facts as FactsRow
from tests.lifecycle import MachineDriver, create_cluster
from tests.api.test_discovery_api import VM_FACTS, Site

KEY = {"name": "tempered", "secret": "c2VjcmV0", "algorithm": "hmac-sha256"}


def _dns(**extra) -> dict:
    return {"zone": "tempered.test", "servers": [{"host": "127.0.0.1", "port": 5353}], "key": KEY, **extra}


def _cluster(api_server, unique, **spec) -> str:
    name = unique("c")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": name, "quorum_count": 1, **spec}).raise_for_status()
    return name


def _refused(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text[:2000]
    assert len(response.content) < 8192, "the refusal quotes the input back"
    for fragment in fragments:
        assert fragment in response.text, (fragment, response.text[:2000])


def _healthy(api_server) -> None:
    with api_server.client() as http:
        assert http.get("/healthz").status_code == 200


# ---- (a) facts ---------------------------------------------------------------------------------


def test_facts_with_a_uuid_that_is_none_are_422_naming_the_field(api_server, unique, settings):
    site = Site(api_server, unique, "52:54:00:8a")
    machine_id, token = site.boot("52:54:00:8a:00:01")
    facts = copy.deepcopy(VM_FACTS)
    facts["nics"][0]["mac"] = "52:54:00:8a:00:01"
    facts["dmi"]["uuid"] = "not-a-uuid"
    _refused(site.post(machine_id, token, facts), 422, "dmi.uuid", "UUID")
    with db.session(settings.database_url) as s:
        stored = s.exec(select(func.count()).select_from(FactsRow).where(FactsRow.machine_id == machine_id)).one()
    assert stored == 0 and site.machine(machine_id)["state"] == "boot-1"
    facts["dmi"]["uuid"] = "9A8A8A8A-0000-4000-8000-00000000008A"  # upper case, as some firmware prints it
    assert site.post(machine_id, token, facts).status_code == 202


# ---- (b) DNS settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, fragment",
    [
        (_dns(zone="not a zone!"), "zone"),
        (_dns(zone="a..b"), "zone"),
        (_dns(zone="x" * 64 + ".test"), "zone"),
        (_dns(reverse_zone="0.213.10.in-addr.arpa/"), "reverse_zone"),
        (_dns(key={**KEY, "name": "bad key"}), "key"),
        (_dns(servers=[{"host": "not a host"}]), "servers"),
        (_dns(servers=[{"host": "127.0.0.1"}] * 17), "at most 16"),
        (_dns(update_default_view=False, views=[{"name": "corp", "key": KEY, "mappings": [["10.0.0.0/8", "nope"]]}]), "mappings"),
    ],
)
def test_dns_settings_that_cannot_be_used_are_422_when_saved(api_server, unique, body, fragment):
    cluster = _cluster(api_server, unique)
    with api_server.client() as http:
        _refused(http.put(f"/v1/clusters/{cluster}/dns", json=body), 422, fragment)
        assert http.get(f"/v1/clusters/{cluster}/dns").status_code == 404  # nothing stored


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("case", ["name-too-long", "saved-before-validation"])
async def test_dns_settings_that_still_fail_park_the_machine_at_once(client, settings, unique, api_server, case):
    """A name that cannot be built (a long zone plus the node's name past 255 octets), or settings
    stored before they were validated, fail the publish step without retries: failed:dns at
    once with the reason, not a retried activity minutes later. No DNS server is involved."""
    name = unique("c")
    await create_cluster(client, settings, name, quorum=1)
    if case == "name-too-long":
        zone = ".".join(["z" * 63] * 3 + ["z" * 58])  # 250 octets: a valid zone, no room for a node
        dnsconfig.store(settings, name, DnsSettings(zone=zone, servers=[{"host": "127.0.0.1", "port": 9}], key=KEY))
        expected = "NameTooLong"
    else:
        legacy = DnsSettings.model_construct(
            zone="not a zone!", servers=[DnsServer(host="127.0.0.1", port=9)], key=TsigKey(**KEY), reverse_zone=None,
            ttl=300, views=[], update_default_view=True, max_in_flight=32, batch_size=500, verify=True,
        )
        dnsconfig.store(settings, name, legacy)
        expected = "zone"
    suffix = {"name-too-long": "01", "saved-before-validation": "02"}[case]
    m = MachineDriver(client, settings, unique("m"), name, mac=f"52:54:00:8b:00:{suffix}", ip=f"10.213.9.{int(suffix)}")
    await m.discover()
    await m.wait_state("post-discover")
    await m.boot_runtime()
    await m.join(ok=True)
    parked = await m.wait_state("failed:dns", timeout=45)  # retried, it would stay in join-cluster
    assert expected in parked.reason and KEY["secret"] not in parked.reason
    with api_server.client() as http:
        shown = http.get(f"/v1/clusters/{name}/dns")
    assert shown.status_code == (409 if case == "saved-before-validation" else 200)
    assert KEY["secret"] not in shown.text


# ---- (c) cluster specs and request bodies ------------------------------------------------------


def test_a_huge_cluster_spec_is_413_and_the_api_keeps_serving(api_server, unique):
    name = unique("c")
    huge = {"name": name, "quorum_count": 1, "ntp_servers": ["ntp.example.org"] * 600_000}  # ~10 MB
    with api_server.client() as http:
        _refused(http.post("/v1/clusters", json=huge), 413, "at most")

        def chunks():  # no Content-Length: counted as it streams
            body, size = json.dumps(huge).encode(), 64 << 10
            for start in range(0, len(body), size):
                yield body[start : start + size]

        _refused(http.post("/v1/clusters", content=chunks(), headers={"Content-Type": "application/json"}), 413, "at most")
        assert http.get(f"/v1/clusters/{name}").status_code == 404
    _healthy(api_server)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"ntp_servers": ["ntp.example.org"] * 17}, "at most 16"),
        ({"ntp_servers": ["not a host"]}, "ntp_servers"),
        ({"kubernetes_version": "1." * 20_000}, "kubernetes_version"),
        ({"control_plane_endpoint": "x" * 100_000}, "control_plane_endpoint"),
        ({"pod_cidr": "10.244.0.0/33"}, "pod_cidr"),
        ({"service_cidr": "services"}, "service_cidr"),
        ({"preflight": {"architectures": ["x86_64"] * 100}}, "architectures"),
    ],
)
def test_cluster_spec_fields_are_bounded(api_server, unique, spec, fragment):
    name = unique("c")
    with api_server.client() as http:
        _refused(http.post("/v1/clusters", json={"name": name, "quorum_count": 1, **spec}), 422, fragment)
        assert http.get(f"/v1/clusters/{name}").status_code == 404


# ---- (f) preflight -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preflight, fragment",
    [
        ({"min_cores": -1}, "min_cores"),
        ({"min_cores": 10**9}, "min_cores"),
        ({"min_memory_bytes": -1}, "min_memory_bytes"),
        ({"min_memory_bytes": 10**30}, "min_memory_bytes"),
        ({"min_disk_bytes": 10**40}, "min_disk_bytes"),
        ({"architectures": []}, "architectures"),
    ],
)
def test_preflight_numbers_are_bounded(api_server, unique, preflight, fragment):
    name = unique("c")
    with api_server.client() as http:
        _refused(http.post("/v1/clusters", json={"name": name, "quorum_count": 1, "preflight": preflight}), 422, fragment)
        assert http.get(f"/v1/clusters/{name}").status_code == 404


# ---- (d) and (e): edges ------------------------------------------------------------------------


def test_an_edge_reported_ip_must_be_an_address(api_server, unique):
    site = Site(api_server, unique, "52:54:00:8c")
    with httpx.Client(base_url=api_server.url, headers={"Authorization": f"Bearer {site.edge_token}"}) as edge:
        for ip in ("not-an-ip", "10.0.0.300", "x" * 10_000):
            _refused(edge.post("/v1/edge/boot", json={"mac": "52:54:00:8c:00:01", "ip": ip}), 422, "ip")
        with api_server.client() as http:
            assert http.get("/v1/machines/52:54:00:8c:00:01").status_code == 404  # nothing recorded
        assert edge.post("/v1/edge/boot", json={"mac": "52:54:00:8c:00:01", "ip": "10.213.9.9"}).status_code == 200


def test_an_edge_policy_must_name_an_existing_cluster(api_server, unique):
    name, missing = unique("edge"), unique("nocluster")
    policy = {"mode": "catch-all", "cluster": missing, "mac_prefixes": ["52:54:00:8d"], "segment": name}
    with api_server.client() as http:
        _refused(http.post("/v1/edges", json={"name": name, "policy": policy}), 422, missing)
        assert http.get(f"/v1/edges/{name}").status_code == 404
        cluster = _cluster(api_server, unique)
        created = http.post("/v1/edges", json={"name": name, "policy": policy | {"cluster": cluster}})
        assert created.status_code == 201, created.text
        _refused(http.put(f"/v1/edges/{name}/policy", json=policy), 422, missing)
        assert http.get(f"/v1/edges/{name}").json()["policy"]["cluster"] == cluster
        _refused(http.delete(f"/v1/clusters/{cluster}"), 409, name)  # the edge would dangle
        _refused(http.put(f"/v1/edges/{name}/policy", json=policy | {"mac_prefixes": ["52:54:00:8d"] * 300}), 422, "mac_prefixes")
        assert http.delete(f"/v1/edges/{name}").status_code == 204
        assert http.delete(f"/v1/clusters/{cluster}").status_code == 202


def test_a_rule_holds_a_bounded_number_of_attributes(api_server, unique):
    cluster = _cluster(api_server, unique)
    labels = [{"type": "label", "value": f"tempered.io/l{i}=x"} for i in range(65)]
    rule = {"name": "many", "expression": "true", "attributes": labels}
    with api_server.client() as http:
        _refused(http.put(f"/v1/clusters/{cluster}/rules", json=[rule]), 422, "attributes", "at most 64")
        assert http.get(f"/v1/clusters/{cluster}/rules").json() == []
        assert http.put(f"/v1/clusters/{cluster}/rules", json=[rule | {"attributes": labels[:64]}]).status_code == 200


def test_a_validation_error_never_quotes_the_input(api_server, unique):
    secret = "c2VjcmV0" + "A" * 2000 + "!"  # not base64, and long
    with api_server.client() as http:
        response = http.put("/v1/dns", json=_dns(key={**KEY, "secret": secret}))
    _refused(response, 422, "secret")
    assert secret not in response.text


def test_a_validation_message_never_carries_a_large_input_back(api_server, unique):
    """Some validators name the bad value in their message (a MAC): it is cut short."""
    huge = "52:54:00:" + "ab" * 200_000
    with api_server.client() as http:
        bad_mac = http.post("/v1/machines", json={"cluster": unique("c"), "mac": huge})
    _refused(bad_mac, 422, "not a MAC address")
    assert huge[:100] not in bad_mac.text


def test_a_422_lists_each_field_in_the_validators_words(api_server, unique):
    """`detail` is a list of {loc, msg, type}; a validator's message comes without pydantic's
    "Value error, " prefix and may quote a short value (README, REST API)."""
    with api_server.client() as http:
        bad = http.post("/v1/machines", json={"cluster": unique("c"), "mac": "secret-zz"})
    assert bad.status_code == 422, bad.text
    assert bad.json() == {"detail": [
        {"loc": ["body", "mac"], "msg": "not a MAC address: 'secret-zz'", "type": "value_error"}
    ]}
