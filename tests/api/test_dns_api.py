"""DNS settings over HTTP: write-only secrets, sealed at rest, never in a log."""

from __future__ import annotations

import base64
import secrets
import sqlite3

import pytest


def _settings(secret: str, **extra) -> dict:
    return {
        "zone": "tempered.test",
        "servers": [{"host": "127.0.0.1", "port": 5353}],
        "key": {"name": "tempered", "secret": secret, "algorithm": "hmac-sha512"},
        **extra,
    }


def test_settings_are_stored_sealed_and_never_shown_or_logged(api_server, settings, unique):
    secret = base64.b64encode(secrets.token_bytes(48)).decode()
    cluster = unique("c")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
        stored = http.put("/v1/dns", json=_settings(secret, views=[{"name": "corp", "key": {"name": "corp", "secret": secret}}]))
        assert stored.status_code == 200, stored.text
        shown = http.get("/v1/dns").json()
        assert shown["key"]["secret"] == "**********" and shown["views"][0]["key"]["secret"] == "**********"
        assert shown["key"]["name"] == "tempered" and shown["servers"] == [{"host": "127.0.0.1", "port": 5353}]
        assert http.put(f"/v1/clusters/{cluster}/dns", json=_settings(secret, ttl=60)).status_code == 200
        assert http.get(f"/v1/clusters/{cluster}/dns").json()["ttl"] == 60
        assert http.put("/v1/clusters/no-such-cluster/dns", json=_settings(secret)).status_code == 404
        assert http.delete(f"/v1/clusters/{cluster}/dns").status_code == 204
        assert http.get(f"/v1/clusters/{cluster}/dns").status_code == 404
        assert http.delete("/v1/dns").status_code == 204

    database = settings.database_url.removeprefix("sqlite:///")
    dump = "\n".join(sqlite3.connect(database).iterdump())
    raw = base64.b64decode(secret)
    assert secret not in dump and raw.hex() not in dump
    for log in settings.home.glob("*.log"):
        assert secret not in log.read_text(errors="replace"), f"the secret is in {log.name}"
    assert (settings.home / "secret.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "body, fragment",
    [
        (_settings("not base64!"), "base64"),
        (_settings("c2VjcmV0", key=None), "needs its TSIG key"),
        (_settings("c2VjcmV0", max_in_flight=500), "less than or equal to 100"),
        ({**_settings("c2VjcmV0"), "key": {"name": "k", "secret": "c2VjcmV0", "algorithm": "md5"}}, "hmac-sha256"),
        (_settings("c2VjcmV0", servers=[]), "at least 1"),
    ],
)
def test_bad_dns_settings_are_422(api_server, body, fragment):
    with api_server.client() as http:
        response = http.put("/v1/dns", json=body)
    assert response.status_code == 422 and fragment in response.text


def test_dns_settings_from_a_yaml_file_with_the_cli(api_server, tmp_path):
    import subprocess

    from tests.servers import VENV_BIN

    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    config = tmp_path / "dns.yaml"
    config.write_text(
        "zone: tempered.test\nservers: [{host: 127.0.0.1, port: 53}]\nupdate_default_view: false\n"
        f"views:\n  - name: corp\n    key: {{name: corp, secret: '{secret}', algorithm: hmac-sha512}}\n"
        "    mappings: [['10.213.0.0/16', '172.20.0.0/16']]\n"
    )
    env = api_server.env | {"TEMPERED_TOKEN": api_server.token}
    run = lambda *a: subprocess.run([str(VENV_BIN / "tempered"), "dns", *a], env=env, capture_output=True, text=True, timeout=60)
    stored = run("set", str(config))
    assert stored.returncode == 0, stored.stderr
    assert "172.20.0.0/16" in stored.stdout and secret not in stored.stdout and "'**********'" in stored.stdout
    assert secret not in run("show").stdout
    assert run("delete").returncode == 0 and run("show").returncode == 3  # not found
