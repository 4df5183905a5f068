"""Power commands through the API to a real BMC: sushy-tools' Redfish emulator with its fake
driver (tests/bmc/, no QEMU), reached by the session's real worker, or by a site worker.

What the BMC answers decides the status: its state on success, a 502 with its own words for a
refusal (wrong password), a 504 for a BMC that does not answer. The password is in no answer,
audit entry or log.
"""

from __future__ import annotations

import pytest

from tests.api.test_power_api import machine, never_leaked, site_worker
from tests.bmc.fixtures import redfish_bmc  # noqa: F401  (a fixture, used by name)
from tests.servers import free_port, wait_for


def body(bmc, password: str | None = None, **extra) -> dict:
    return {"driver": "redfish", "address": bmc.address, "username": "admin",
            "password": bmc.password if password is None else password, **extra}


def test_commands_reach_the_redfish_bmc_and_answer_its_state(api_server, settings, unique, redfish_bmc):
    bmc = redfish_bmc(fake=True)
    machine_id = machine(api_server, unique)
    with api_server.client() as http:
        assert http.put(f"/v1/machines/{machine_id}/power", json=body(bmc)).status_code == 200
        states = {}
        for action in ("off", "status", "on", "cycle", "pxe-once"):
            answer = http.post(f"/v1/machines/{machine_id}/power/{action}")
            assert answer.status_code == 200, (action, answer.text)
            assert answer.json()["driver"] == "redfish" and answer.json()["action"] == action
            states[action] = answer.json()["state"]
    assert states == {"off": "off", "status": "off", "on": "on", "cycle": "on", "pxe-once": "unknown"}
    assert bmc.password not in bmc.log_text()
    never_leaked(api_server, settings, bmc.password)


def test_a_refusal_is_a_502_with_the_bmcs_answer(api_server, settings, unique, redfish_bmc):
    bmc = redfish_bmc(fake=True)
    machine_id = machine(api_server, unique)
    wrong = "Wrong-" + unique("pw")
    with api_server.client() as http:
        assert http.put(f"/v1/machines/{machine_id}/power", json=body(bmc, password=wrong)).status_code == 200
        answer = http.post(f"/v1/machines/{machine_id}/power/status")
    assert answer.status_code == 502, answer.text
    assert "refused the credentials" in answer.json()["detail"] and "401" in answer.json()["detail"]
    assert wrong not in answer.text and bmc.password not in answer.text
    for log in settings.home.glob("*.log"):
        assert wrong not in log.read_text(errors="replace"), log.name


def test_a_bmc_that_does_not_answer_is_a_504_naming_it(api_server, unique):
    machine_id = machine(api_server, unique)
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with api_server.client() as http:
        settings_ = {"driver": "redfish", "address": address, "username": "admin", "password": "x"}
        assert http.put(f"/v1/machines/{machine_id}/power", json=settings_).status_code == 200
        answer = http.post(f"/v1/machines/{machine_id}/power/status")
    assert answer.status_code == 504, answer.text
    assert answer.json()["detail"].startswith(f"BMC {address} unreachable: ")


def test_a_site_worker_runs_its_machines_commands_against_their_bmc(api_server, settings, unique, redfish_bmc):
    bmc = redfish_bmc(fake=True)
    machine_id, site = machine(api_server, unique), unique("rack")
    with site_worker(settings, site) as proc, api_server.client() as http:
        assert http.put(f"/v1/machines/{machine_id}/power", json=body(bmc, site=site)).status_code == 200
        answer = wait_for(lambda: (a := http.post(f"/v1/machines/{machine_id}/power/off")).status_code != 504 and a,
                          "the site's queue to list its worker")
        assert answer.status_code == 200 and answer.json()["state"] == "off", answer.text
        assert f"off {machine_id} through redfish" in proc.log.read_text(errors="replace")  # the site worker ran it
    never_leaked(api_server, settings, bmc.password)
