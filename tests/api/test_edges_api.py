"""Edge registration and the edge-facing routes, over HTTP against a real `tempered api`."""

from __future__ import annotations

import stat
import subprocess

import httpx
import pytest

from tests.servers import VENV_BIN


def _edge(api_server, unique, **policy):
    name = unique("edge")
    with api_server.client() as http:
        created = http.post("/v1/edges", json={"name": name, "policy": {"segment": name, **policy}})
    assert created.status_code == 201, created.text
    return name, created.json()["token"]


def _as_edge(api_server, token):
    return httpx.Client(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_two_edges_on_one_segment_may_not_answer_the_same_machines(api_server, unique):
    segment = unique("seg")
    with api_server.client() as http:
        first = http.post("/v1/edges", json={"name": unique("a"), "policy": {"segment": segment, "mac_prefixes": ["52:54:00:0a"]}})
        assert first.status_code == 201
        overlapping = http.post("/v1/edges", json={"name": unique("b"), "policy": {"segment": segment, "mac_prefixes": ["52:54:00"]}})
        assert overlapping.status_code == 409 and first.json()["name"] in overlapping.json()["detail"]
        everything = http.post("/v1/edges", json={"name": unique("c"), "policy": {"segment": segment}})
        assert everything.status_code == 409
        disjoint = http.post("/v1/edges", json={"name": unique("d"), "policy": {"segment": segment, "mac_prefixes": ["52:54:00:0b"]}})
        assert disjoint.status_code == 201
        elsewhere = http.post("/v1/edges", json={"name": unique("e"), "policy": {"segment": unique("other")}})
        assert elsewhere.status_code == 201
        widened = http.put(f"/v1/edges/{disjoint.json()['name']}/policy", json={"segment": segment})
        assert widened.status_code == 409


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"name": "Bad Name"}, "DNS label"),
        ({"name": "ok", "policy": {"mode": "catch-all"}}, "needs the cluster"),
        ({"name": "ok", "policy": {"mac_prefixes": ["zz:00"]}}, "not a MAC prefix"),
        ({"name": "ok", "policy": {"mode": "everything"}}, "preregistered"),
    ],
)
def test_bad_edge_bodies_are_422(api_server, body, fragment):
    with api_server.client() as http:
        response = http.post("/v1/edges", json=body)
    assert response.status_code == 422 and fragment in response.text


def test_edge_tokens_and_operator_tokens_do_not_mix(api_server, unique):
    name, token = _edge(api_server, unique)
    with _as_edge(api_server, token) as edge:
        assert edge.get("/v1/edge/config").status_code == 200
        assert edge.get("/v1/clusters").status_code == 401
    with api_server.client() as http:
        assert http.get("/v1/edge/config").status_code == 401
        assert http.get(f"/v1/edges/{name}").json()["last_seen_at"] is not None
        assert http.delete(f"/v1/edges/{name}").status_code == 204
    with _as_edge(api_server, token) as edge:
        assert edge.get("/v1/edge/config").status_code == 401  # revoked with the edge


def test_the_config_lists_only_registered_machines_the_edge_may_answer(api_server, unique):
    cluster = unique("c")
    name, token = _edge(api_server, unique, mac_prefixes=["52:54:00:1a"])
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
        http.post("/v1/machines", json={"cluster": cluster, "mac": "52:54:00:1a:00:01"}).raise_for_status()
        http.post("/v1/machines", json={"cluster": cluster, "mac": "52:54:00:1b:00:01"}).raise_for_status()
    with _as_edge(api_server, token) as edge:
        config = edge.get("/v1/edge/config").json()
    assert config["name"] == name and config["policy"]["mode"] == "preregistered"
    assert "52:54:00:1a:00:01" in config["known_macs"] and "52:54:00:1b:00:01" not in config["known_macs"]


def test_boot_requests_follow_the_edge_policy(api_server, unique):
    cluster = unique("c")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
    _, strict = _edge(api_server, unique, mac_prefixes=["52:54:00:2a"])
    _, catch_all = _edge(api_server, unique, mode="catch-all", cluster=cluster, mac_prefixes=["52:54:00:2b"])
    with _as_edge(api_server, strict) as edge:
        refused = edge.post("/v1/edge/boot", json={"mac": "52:54:00:2a:00:01"})
        assert refused.status_code == 403 and "not registered" in refused.json()["detail"]
        outside = edge.post("/v1/edge/boot", json={"mac": "52:54:00:2b:00:01"})
        assert outside.status_code == 403 and "mac_prefixes" in outside.json()["detail"]
    with _as_edge(api_server, catch_all) as edge:
        placeholder = "00000000-0000-0000-0000-000000000000"
        first = edge.post("/v1/edge/boot", json={"mac": "52-54-00-2B-00-02", "uuid": placeholder})
        assert first.status_code == 200, first.text
        answer = first.json()
        assert answer["instruction"]["machine_id"] == "52:54:00:2b:00:02"  # a placeholder UUID is no identity
        assert (answer["instruction"]["action"], answer["instruction"]["boot"]) == ("discovery", 1)
        assert len(answer["token"]) >= 40
        again = edge.post("/v1/edge/boot", json={"mac": "52:54:00:2b:00:02"}).json()
        assert again["instruction"]["boot"] == 2 and again["token"] != answer["token"]
        bad = edge.post("/v1/edge/boot", json={"mac": "not-a-mac"})
        assert bad.status_code in (403, 422)
    with api_server.client() as http:
        shown = http.get("/v1/machines/52:54:00:2b:00:02").json()
    assert (shown["cluster"], shown["state"], shown["macs"]) == (cluster, "boot-1", ["52:54:00:2b:00:02"])


def test_edge_create_from_the_cli_writes_a_private_token_file(api_server, unique, tmp_path):
    token_file = tmp_path / "edge.token"
    env = api_server.env | {"TEMPERED_TOKEN": api_server.token}
    name = unique("edge")
    result = subprocess.run(
        [str(VENV_BIN / "tempered"), "edge", "create", name, "--segment", name, "--mac-prefix", "52:54:00:3a",
         "--token-file", str(token_file)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    with _as_edge(api_server, token_file.read_text().strip()) as edge:
        assert edge.get("/v1/edge/config").json()["policy"]["mac_prefixes"] == ["52:54:00:3a"]
    listed = subprocess.run([str(VENV_BIN / "tempered"), "edge", "list"], env=env, capture_output=True, text=True)
    assert name in listed.stdout


def test_a_discovery_pool_edge_takes_unknown_machines_without_a_cluster(api_server, unique):
    _, token = _edge(api_server, unique, mode="discovery-pool", mac_prefixes=["52:54:00:4a"])
    with _as_edge(api_server, token) as edge:
        answer = edge.post("/v1/edge/boot", json={"mac": "52:54:00:4a:00:01"})
    assert answer.status_code == 200 and answer.json()["instruction"]["action"] == "discovery"
    with api_server.client() as http:
        shown = http.get("/v1/machines/52:54:00:4a:00:01").json()
    assert (shown["cluster"], shown["state"]) == (None, "boot-1")
