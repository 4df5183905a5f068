"""`tempered terraform state` against a real `tempered api`: every command, its help, its errors."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from activities.storage import tfcredentials
from tests.api.test_cli import tempered
from tests.api.test_terraform_state import Backend, lock_info, state
from tests.servers import VENV_BIN


@pytest.mark.parametrize("command", ["list", "versions", "show", "rollback", "unlock", "credentials"])
def test_every_state_command_explains_itself(command):
    result = subprocess.run([str(VENV_BIN / "tempered"), "terraform", "state", command, "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and len(result.stdout) > 300


def test_states_versions_rollback_unlock_and_credentials_from_the_cli(api_server, settings, unique):
    cluster, name = unique("tfcli"), unique("task")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
    backend = Backend(api_server, cluster, name, tfcredentials.cluster_credentials(settings, cluster))
    lineage = str(uuid.uuid4())
    backend.post(state(1, lineage, "one")).raise_for_status()
    backend.post(state(2, lineage, "two")).raise_for_status()
    holder = lock_info(who="frank@runner-7")
    backend.lock(holder).raise_for_status()

    listed = tempered(api_server, "terraform", "state", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if cluster in line]
    assert name in row and "frank@runner-7" in row
    as_json = json.loads(tempered(api_server, "terraform", "state", "list", "-o", "json").stdout)
    assert any(s["cluster"] == cluster and s["versions"] == 2 for s in as_json)

    versions = tempered(api_server, "terraform", "state", "versions", cluster, name, "-o", "json")
    assert [v["version"] for v in json.loads(versions.stdout)] == [1, 2]
    assert tempered(api_server, "terraform", "state", "show", cluster, name).stdout.encode() == state(2, lineage, "two") + b"\n"
    assert tempered(api_server, "terraform", "state", "show", cluster, name, "--version", "1").stdout.encode() == state(1, lineage, "one") + b"\n"

    locked = tempered(api_server, "terraform", "state", "rollback", cluster, name, "1")
    assert locked.returncode == 1 and "frank@runner-7" in locked.stderr and "force-unlock" in locked.stderr
    unlocked = tempered(api_server, "terraform", "state", "unlock", cluster, name)
    assert unlocked.returncode == 0 and holder["ID"] in unlocked.stdout and "frank@runner-7" in unlocked.stdout
    again = tempered(api_server, "terraform", "state", "unlock", cluster, name)
    assert again.returncode == 1 and "not locked" in again.stderr
    rolled = tempered(api_server, "terraform", "state", "rollback", cluster, name, "1")
    assert rolled.returncode == 0 and "current again as version 3 (serial 3)" in rolled.stdout
    assert json.loads(backend.get().content)["outputs"]["marker"]["value"] == "one"

    missing = tempered(api_server, "terraform", "state", "show", cluster, unique("nosuch"))
    assert missing.returncode == 3 and "tempered terraform state list" in missing.stderr
    assert tempered(api_server, "terraform", "state", "show", cluster, name, "--version", "9").returncode == 3

    username, password = tfcredentials.cluster_credentials(settings, cluster)
    shown = tempered(api_server, "terraform", "state", "credentials", cluster)
    assert shown.returncode == 0 and username in shown.stdout and password in shown.stdout
    assert f"/v1/terraform/state/{cluster}/<name>" in shown.stdout
    rotated = json.loads(tempered(api_server, "terraform", "state", "credentials", cluster, "--rotate", "-o", "json").stdout)
    assert rotated["password"] != password and rotated["password"] == tfcredentials.cluster_credentials(settings, cluster)[1]
    unknown = tempered(api_server, "terraform", "state", "credentials", unique("nosuch"))
    assert unknown.returncode == 3 and "tempered cluster list" in unknown.stderr

    with api_server.client() as http:
        viewer = http.post("/v1/tokens", json={"name": unique("view"), "role": "viewer"}).json()["token"]
    env_viewer = api_server.env | {"TEMPERED_TOKEN": viewer, "COLUMNS": "200"}
    refused = subprocess.run([str(VENV_BIN / "tempered"), "terraform", "state", "show", cluster, name],
                             env=env_viewer, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 4 and "admin role" in refused.stderr
