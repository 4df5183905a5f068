"""Power settings and power commands over HTTP and the CLI, against the session's real API and
worker (and a `tempered worker --site NAME` of its own where a site is needed).

The password goes in once (PUT, or the CLI's stdin) and never comes out: not in an answer, the
audit trail, or a log line of the API or the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from api import temporal
from tests.api.test_cli import tempered
from tests.api.test_tokens import audit, create_token
from tests.conftest import stack_env
from tests.servers import Process, VENV_BIN, wait_for

PASSWORD = "Bmc-" + secrets.token_hex(12)  # unique: found in a log only if it leaked there


def machine(api_server, unique) -> str:
    """A registered machine (its id: the MAC), in a cluster of its own."""
    cluster = unique("pw")
    mac = "52:54:00:" + ":".join(secrets.token_hex(3)[i:i + 2] for i in (0, 2, 4))
    with api_server.client() as http:
        assert http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).status_code == 201
        registered = http.post("/v1/machines", json={"cluster": cluster, "mac": mac})
    assert registered.status_code == 201, registered.text
    return registered.json()["id"]


@contextlib.contextmanager
def site_worker(settings, site: str) -> Iterator[Process]:
    """A `tempered worker --site SITE` process, polling its queue (stopped by PID after)."""
    log = settings.home / f"worker-{site}.log"
    proc = Process(["worker", "--site", site], stack_env(settings, TEMPERED_WORKER_METRICS="off"), log).start()
    try:
        wait_for(lambda: f"tempered-site-{site}" in log.read_text(errors="replace"), "the site worker to poll")
        yield proc
    finally:
        proc.stop()


async def command_running(settings, machine_id: str) -> bool:
    """Whether the power command workflow of the machine is running (the API started it)."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    client = await temporal.connect(settings)
    try:
        described = await client.get_workflow_handle(f"power:{machine_id}").describe()
    except RPCError:
        return False
    return described.status == WorkflowExecutionStatus.RUNNING


def settings_body(**extra) -> dict:
    return {"driver": "redfish", "address": "https://127.0.0.1:9", "username": "admin", "password": PASSWORD,
            "verify_tls": False, **extra}


def never_leaked(api_server, settings, password: str = PASSWORD) -> None:
    """The password is in no log of the session's processes and in no audit entry."""
    for log in settings.home.glob("*.log"):
        assert password not in log.read_text(errors="replace"), f"the BMC password is in {log.name}"
    assert password not in str(audit(api_server))


def test_settings_are_written_by_admins_and_never_answer_the_password(api_server, settings, unique):
    machine_id = machine(api_server, unique)
    path = f"/v1/machines/{machine_id}/power"
    operator = create_token(api_server, unique("op"), "operator")
    with api_server.client() as http:
        assert http.get(path).json() | {"machine_id": None} == {
            "machine_id": None, "driver": "manual", "address": "", "username": "", "has_password": False,
            "system_id": "", "verify_tls": True, "site": None, "source": "default"}
        saved = http.put(path, json=settings_body(site="rack-a"))
        assert saved.status_code == 200, saved.text
        assert saved.json()["has_password"] is True and saved.json()["site"] == "rack-a"
        shown = http.get(path)
        assert shown.json() == saved.json() and PASSWORD not in shown.text
        refused = http.put(path, json={"driver": "ipmi", "username": "x"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "address"]
        for body, field in (({"driver": "ipmi", "address": "10.0.9.22"}, "username"),
                            ({"driver": "redfish", "address": f"https://admin:{PASSWORD}@10.0.9.21", "username": "a"},
                             "address"),
                            ({"driver": "manual", "address": "10.0.9.22"}, "driver")):
            refused = http.put(path, json=body)
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", field], refused.text
            assert PASSWORD not in refused.text
        assert http.get(path).json()["has_password"] is True  # nothing refused was stored
        with api_server.client(operator) as as_operator:
            assert as_operator.get(path).status_code == 200
            assert as_operator.put(path, json=settings_body()).status_code == 403
            assert as_operator.delete(path).status_code == 403
        assert http.delete(path).status_code == 204
        assert http.get(path).json()["driver"] == "manual"
    entries = [e for e in audit(api_server) if e["params"].get("machine_id") == machine_id]
    assert [(e["method"], e["status"]) for e in entries if e["route"] == "/v1/machines/{machine_id}/power"] == [
        ("DELETE", 204), ("DELETE", 403), ("PUT", 403), *[("PUT", 422)] * 4, ("PUT", 200)]
    never_leaked(api_server, settings)


def test_an_unknown_machine_is_a_404_everywhere(api_server, unique):
    path = f"/v1/machines/{unique('nothing')}/power"
    with api_server.client() as http:
        for method, url, body in (("GET", path, None), ("PUT", path, settings_body()), ("DELETE", path, None),
                                  ("POST", path + "/cycle", None)):
            answer = http.request(method, url, json=body)
            assert answer.status_code == 404 and "no machine" in answer.json()["detail"], (method, answer.text)
        assert http.post(path + "/explode").status_code == 422


@pytest.mark.parametrize("action, words", [
    ("cycle", "power-cycle this machine now"), ("on", "power on this machine now"),
    ("off", "power off this machine now"), ("status", "unknown: nobody to ask, a person powers this machine"),
    ("pxe-once", "make this machine's next boot a network boot (its firmware's boot menu), then power-cycle it now"),
])
def test_a_manual_machine_answers_at_once_what_a_person_must_do(api_server, unique, action, words):
    machine_id = machine(api_server, unique)
    with api_server.client() as http:
        answer = http.post(f"/v1/machines/{machine_id}/power/{action}")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"machine_id": machine_id, "action": action, "driver": "manual", "state": "unknown",
                             "answer": f"manual power: {words}"}


def unreachable(answer) -> bool:
    """The answer of the site worker for the BMC of settings_body (nothing listens on port 9)."""
    return answer.status_code == 504 and answer.json()["detail"].startswith("BMC https://127.0.0.1:9 unreachable")


def test_a_site_nobody_serves_is_said_with_the_command_to_start(api_server, unique):
    machine_id, site = machine(api_server, unique), unique("rack")
    with api_server.client() as http:
        assert http.put(f"/v1/machines/{machine_id}/power", json=settings_body(site=site)).status_code == 200
        answer = http.post(f"/v1/machines/{machine_id}/power/status")
    assert answer.status_code == 504, answer.text
    assert answer.json()["detail"] == f"no worker serves site {site}: start `tempered worker --site {site}` next to its BMCs"


def test_a_bmc_without_credentials_says_how_to_set_them(api_server, settings, unique):
    machine_id = machine(api_server, unique)
    with api_server.client() as http:
        body = {"driver": "ipmi", "address": "127.0.0.1:9", "username": "ADMIN"}  # no password stored
        assert http.put(f"/v1/machines/{machine_id}/power", json=body).status_code == 200
        answer = http.post(f"/v1/machines/{machine_id}/power/status")
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"].startswith(f"machine {machine_id}'s ipmi BMC at 127.0.0.1:9 has no credentials: "
                                              f"set them with 'tempered machine power {machine_id} set --driver ipmi")


def test_a_site_worker_serves_its_sites_power_commands(api_server, settings, unique):
    """`tempered worker --site NAME` runs the command scheduled on its queue: its log names the
    attempt, the main worker's does not."""
    machine_id, site = machine(api_server, unique), unique("rack")
    with site_worker(settings, site) as proc, api_server.client() as http:
        assert http.put(f"/v1/machines/{machine_id}/power", json=settings_body(site=site)).status_code == 200
        wait_for(lambda: unreachable(http.post(f"/v1/machines/{machine_id}/power/status")),
                 "the site's queue to list its worker")  # before: 504 no worker serves the site
        assert "power_machine" in proc.log.read_text(errors="replace")
    never_leaked(api_server, settings)


def test_power_from_the_cli(api_server, settings, unique):
    machine_id = machine(api_server, unique)
    env = api_server.env | {"TEMPERED_TOKEN": api_server.token, "COLUMNS": "200"}
    set_ = subprocess.run(
        [str(VENV_BIN / "tempered"), "machine", "power", machine_id, "set", "--driver", "redfish", "--address",
         "https://127.0.0.1:9", "--username", "admin", "--password-stdin", "--no-verify-tls", "-o", "json"],
        input=PASSWORD + "\n", env=env, capture_output=True, text=True, timeout=120,
    )
    assert set_.returncode == 0, set_.stderr
    assert PASSWORD not in set_.stdout + set_.stderr
    shown = tempered(api_server, "machine", "power", machine_id, "show")
    assert shown.returncode == 0 and "stored" in shown.stdout and "https://127.0.0.1:9" in shown.stdout
    no_driver = tempered(api_server, "machine", "power", machine_id, "set")
    assert no_driver.returncode == 2 and "set needs --driver" in no_driver.stderr
    assert tempered(api_server, "machine", "power", machine_id, "clear").returncode == 0
    cycled = tempered(api_server, "machine", "power", machine_id, "cycle")
    assert cycled.returncode == 0, cycled.stderr
    assert "manual power: power-cycle this machine now" in cycled.stdout
    missing = tempered(api_server, "machine", "power", unique("nothing"), "status")
    assert missing.returncode == 3 and "tempered machine list" in missing.stderr
    bad = tempered(api_server, "machine", "power", machine_id, "explode")
    assert bad.returncode == 2
    never_leaked(api_server, settings)


@pytest.mark.parametrize("args", [["machine", "power"], ["worker"]])
def test_the_power_commands_explain_themselves(args):
    shown = subprocess.run([str(VENV_BIN / "tempered"), *args, "--help"], capture_output=True, text=True,
                           env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0, shown.stderr
    assert ("--password-stdin" in shown.stdout and "pxe-once" in shown.stdout) if "power" in args else (
        "--site" in shown.stdout and "TEMPERED_WORKER_SITES" in shown.stdout)


def test_a_bmc_address_in_the_facts_is_kept_as_discovered(api_server, unique):
    """An agent that reads its BMC's address (`facts.bmc`) fills the power settings' address,
    without credentials; a value that is no address is ignored, the facts still accepted."""
    from tests.api.test_discovery_api import Site, facts

    site = Site(api_server, unique, "52:54:00:e9")
    machine_id, token = site.boot("52:54:00:e9:00:01")
    stored = site.post(machine_id, token, facts("52:54:00:e9:00:01", bmc={"driver": "ipmi", "address": "10.0.9.22"}))
    assert stored.status_code == 202, stored.text
    with api_server.client() as http:
        view = http.get(f"/v1/machines/{machine_id}/power").json()
    assert (view["driver"], view["address"], view["source"], view["has_password"]) == ("ipmi", "10.0.9.22", "discovery", False)
    other_id, other_token = site.boot("52:54:00:e9:00:02")
    bad = facts("52:54:00:e9:00:02", bmc={"address": "$(reboot)"})
    assert site.post(other_id, other_token, bad).status_code == 202
    with api_server.client() as http:
        assert http.get(f"/v1/machines/{other_id}/power").json()["source"] == "default"


def test_a_second_command_while_one_runs_is_a_409_and_the_first_runs_when_its_worker_is_back(api_server, settings, unique):
    """The first command waits for the site's worker (stopped after it polled: Temporal still
    lists it, so the command is scheduled); a second on the same machine is refused; the worker
    started again runs the first."""
    import threading

    machine_id, site = machine(api_server, unique), unique("rack")
    log = settings.home / f"worker-{site}.log"
    env = stack_env(settings, TEMPERED_WORKER_METRICS="off")
    first_worker = Process(["worker", "--site", site], env, log).start()
    try:
        wait_for(lambda: f"tempered-site-{site}" in log.read_text(errors="replace"), "the site worker to poll")
        with api_server.client() as http:
            assert http.put(f"/v1/machines/{machine_id}/power", json=settings_body(site=site)).status_code == 200
            wait_for(lambda: unreachable(http.post(f"/v1/machines/{machine_id}/power/status")),
                     "the site's queue to list its worker")  # answered by the site worker
    finally:
        first_worker.stop()
    answers: list = []
    with api_server.client() as http:
        waiting = threading.Thread(target=lambda: answers.append(http.post(f"/v1/machines/{machine_id}/power/on")))
        waiting.start()
        wait_for(lambda: asyncio.run(command_running(settings, machine_id)), "the first command to be running")
        second = http.post(f"/v1/machines/{machine_id}/power/off")
        assert second.status_code == 409, second.text
        assert second.json()["detail"] == f"a power command on machine {machine_id} is still running: wait for its answer"
        assert not answers  # still waiting for a worker
        again = Process(["worker", "--site", site], env, log).start()
        try:
            waiting.join(timeout=90)
        finally:
            again.stop()
    [first] = answers
    assert unreachable(first), first.text


@pytest.mark.parametrize("site, why", [("rack-a,rack-b", "is not one site name"), ("Rack_A", "is not a site name")])
def test_a_site_worker_needs_one_site_name(tmp_path, site, why):
    started = subprocess.run([str(VENV_BIN / "tempered"), "worker", "--site", site], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "TEMPERED_HOME": str(tmp_path), "COLUMNS": "200"}, timeout=60)
    assert started.returncode == 2 and why in started.stderr, started.stderr


def test_a_site_whose_worker_stopped_is_said_after_the_wait_for_a_worker(api_server, settings, unique):
    """Temporal still lists a worker that stopped a moment ago, so the command is scheduled on
    its queue; after the 2-minute wait for a worker (schedule-to-start) it fails with the same
    answer as a site nobody ever served (about 2 min)."""
    import httpx

    machine_id, site = machine(api_server, unique), unique("rack")
    with site_worker(settings, site), api_server.client() as http:
        assert http.put(f"/v1/machines/{machine_id}/power", json=settings_body(site=site)).status_code == 200
        wait_for(lambda: unreachable(http.post(f"/v1/machines/{machine_id}/power/status")),
                 "the site's queue to list its worker")
    with httpx.Client(base_url=api_server.url, headers={"Authorization": f"Bearer {api_server.token}"}, timeout=300) as http:
        answer = http.post(f"/v1/machines/{machine_id}/power/on")
    assert answer.status_code == 504, answer.text
    assert answer.json()["detail"] == f"no worker serves site {site}: start `tempered worker --site {site}` next to its BMCs"
