"""The machine-facing reads (api/boot_views.py) against the real API, Temporal and database: the
discovery agent's polls and cloud-init's seed ask the workflow once per recorded move, not once
per read, and a kept answer never outlives the boot its token is for."""

from __future__ import annotations

import httpx

from tests.api.test_discovery_api import Site, facts
from tests.api.test_metrics import scrape_api, value
from tests.api.test_runtime_api import HOST_KEY, _seed

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
