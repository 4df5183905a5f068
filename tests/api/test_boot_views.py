"""The machine-facing reads (api/boot_views.py) against the real API, Temporal and database: the
discovery agent's polls and cloud-init's seed ask the workflow once per recorded move, not once
per read, and a kept answer never outlives the boot its token is for."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.api.test_discovery_api import Site, facts
from tests.api.test_metrics import scrape_api, value
from tests.api.test_runtime_api import HOST_KEY, _seed
from tests.conftest import stack_env
from tests.servers import Process, free_port, wait_for, wait_http

READS = "tempered_machine_status_reads_total"
SEED = ("meta-data", "user-data", "vendor-data")


def _polls(api_server) -> tuple[float, float]:
    """(asked of the workflow, answered from a kept answer) so far."""
    _, samples = scrape_api(api_server)
    return value(samples, READS, source="workflow"), value(samples, READS, source="kept")


def test_the_workflow_is_asked_once_per_move_and_an_old_boot_is_still_refused(api_server, unique):
    site = Site(api_server, unique, "52:54:00:b7")
    mac = "52:54:00:b7:00:01"
    machine_id, token = site.boot(mac)
    asked, kept = _polls(api_server)  # the edge's answer (boot-1) is kept: the agent's reads need not ask
    assert [site.instruction(machine_id, token)["action"] for _ in range(3)] == ["wait"] * 3  # no facts yet
    assert site.post(machine_id, token, facts(mac)).status_code == 202
    assert _polls(api_server) == (asked, kept + 4)

    # the facts moved it (discover): asked again, and once more after the move to post-discover
    assert site.wait_state(machine_id, "post-discover")["state"] == "post-discover"
    asked, kept = _polls(api_server)
    assert [site.instruction(machine_id, token)["action"] for _ in range(2)] == ["reboot"] * 2
    assert _polls(api_server) == (asked + 1, kept + 1)

    _, token2 = site.boot(mac)  # its second boot: the first boot's token, though its answer was kept
    old = httpx.get(f"{api_server.url}/v1/boot/{machine_id}/instruction", headers={"Authorization": f"Bearer {token}"})
    assert old.status_code == 403 and "booted again" in old.json()["detail"]
    assert site.instruction(machine_id, token2)["action"] in ("wait", "reboot")

    asked, kept = _polls(api_server)  # cloud-init's seed on the runtime boot: one ask for three reads
    assert [_seed(site, machine_id, item, token2).status_code for item in SEED] == [200, 200, 200]
    assert _polls(api_server) == (asked, kept + 3)  # boot-2 was asked and kept by the polls above
    form = {"instance_id": f"{machine_id}-boot-2", "pub_key_ed25519": HOST_KEY}
    assert _seed(site, machine_id, "phone-home", token2, form=form).status_code == 200
    asked, kept = _polls(api_server)  # phoned home: joining and ready may not be written, always asked
    assert [_seed(site, machine_id, "meta-data", token2).status_code for _ in range(2)] == [200, 200]
    assert _polls(api_server) == (asked + 2, kept)


def test_a_held_machines_polls_ask_once(api_server, unique):
    """Held below preflight: the copy's row still says `discover`, yet the hold is kept."""
    site = Site(api_server, unique, "52:54:00:b8")
    mac = "52:54:00:b8:00:01"
    machine_id, token = site.boot(mac)
    assert site.post(machine_id, token, facts(mac, processors__count=1)).status_code == 202
    assert site.wait_state(machine_id, "holding")["state"] == "holding"
    asked, kept = _polls(api_server)
    told = [site.instruction(machine_id, token) for _ in range(3)]
    assert all(t["action"] == "wait" and "below preflight" in t["reason"] for t in told), told
    assert _polls(api_server) == (asked + 1, kept + 2)


HELD = "tempered_instruction_polls_held"


def _long_poll(api_url: str, machine_id: str, token: str, wait: int) -> httpx.Response:
    return httpx.get(f"{api_url}/v1/boot/{machine_id}/instruction", params={"wait": wait},
                     headers={"Authorization": f"Bearer {token}"}, timeout=wait + 30)


def test_a_long_poll_is_held_until_its_machine_moves(api_server, unique):
    """`instruction?wait=N`: a `wait` answer is held until the machine's recorded row moves, then
    answered with `poll_after`; the agent asks again at once, and is told to reboot the same way."""
    site = Site(api_server, unique, "52:54:00:b9")
    mac = "52:54:00:b9:00:01"
    machine_id, token = site.boot(mac)
    assert site.instruction(machine_id, token)["poll_after"] is None  # no wait asked: not a long poll
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_long_poll, api_server.url, machine_id, token, 30)
        wait_for(lambda: value(scrape_api(api_server)[1], HELD) >= 1, "the poll to be held", timeout=30)
        assert not held.done()  # no facts yet: it waits for the machine to move
        assert site.post(machine_id, token, facts(mac)).status_code == 202
        told = held.result(timeout=60)
    assert told.status_code == 200 and told.json()["poll_after"] == 1, told.text
    for _ in range(5):  # discover, then post-discover: each move answers a held poll
        if told.json()["action"] == "reboot":
            break
        told = _long_poll(api_server.url, machine_id, token, 30)
        assert told.status_code == 200 and told.json()["poll_after"] == 1, told.text
    assert told.json()["action"] == "reboot"


def test_a_long_poll_whose_machine_stays_is_answered_from_the_kept_answer(api_server, unique):
    """A wait that runs out answers what the machine was told, without asking its workflow."""
    site = Site(api_server, unique, "52:54:00:ba")
    machine_id, token = site.boot("52:54:00:ba:00:01")
    asked, kept = _polls(api_server)
    told = _long_poll(api_server.url, machine_id, token, 1)
    assert told.status_code == 200 and told.json()["action"] == "wait" and told.json()["poll_after"] == 1
    assert _polls(api_server) == (asked, kept + 2)  # read before and after the hold, both kept
    refused = httpx.get(f"{api_server.url}/v1/boot/{machine_id}/instruction", params={"wait": 31},
                        headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 422  # a wait past 30 s is refused where it enters


def test_a_stopping_api_answers_its_held_polls_at_once(api_server, settings, unique, tmp_path):
    """uvicorn waits for every request in flight before it stops: the held polls are answered
    as soon as it is told to stop, not after their wait, and it says so."""
    site = Site(api_server, unique, "52:54:00:bb")
    machine_id, token = site.boot("52:54:00:bb:00:01")
    port = free_port()
    api = Process(["api"], stack_env(settings, TEMPERED_API_PORT=str(port)), tmp_path / "api.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(_long_poll, url, machine_id, token, 30)
            admin = {"Authorization": f"Bearer {api_server.token}"}
            wait_for(lambda: f"{HELD} 1.0" in httpx.get(f"{url}/metrics", headers=admin).text, "the poll to be held",
                     timeout=30)
            api.stop(signal.SIGTERM)  # gives up after 20 s: the poll would hold it 30
            told = held.result(timeout=60)
    finally:
        api.stop(signal.SIGKILL)
    assert told.status_code == 200 and told.json()["action"] == "wait", told.text
    assert "answered 1 held instruction polls: the API is stopping" in api.tail(), api.tail()
