"""The activities' metrics (issue 15, item 6), measured in this process around the real outside
systems: `tempered_dns_updates_total` against a real BIND on a loopback port (by view and
result, refusals and silence included), and `tempered_ansible_run_seconds` around a real
ansible-playbook run that fails without leaving the machine."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from activities import ansible
from activities.dns import DnsRefused, DnsUnavailable, Publisher
from activities.domain.dns import DnsRecord, DnsSettings
from tests.bind import ZONE, Bind, named_binary
from tests.lab.test_dns import bind, default_view  # noqa: F401 (the fixture)



def updates(view: str, result: str) -> float:
    return REGISTRY.get_sample_value("tempered_dns_updates_total", {"view": view, "result": result}) or 0.0


@pytest.mark.skipif(named_binary() is None, reason="BIND (named) is not installed")
async def test_dns_updates_are_counted_by_view_and_result(bind, tmp_path):
    ok, refused, unavailable = updates("default", "ok"), updates("default", "refused"), updates("default", "unavailable")
    sent = await Publisher(default_view(bind)).publish([DnsRecord(name="counted", addresses=["10.213.9.1"])])
    assert sent == 2 and updates("default", "ok") - ok == 2  # the zone and the reverse zone

    readonly = DnsSettings(zone=ZONE, servers=[bind.server], key=bind.readonly)
    with pytest.raises(DnsRefused):
        await Publisher(readonly).publish([DnsRecord(name="refused", addresses=["10.213.9.2"])])
    assert updates("default", "refused") - refused == 1

    down = Bind(tmp_path)  # never started: nothing listens on its port
    silent = DnsSettings(zone=ZONE, servers=[down.server], key=down.default_keys["hmac-sha256"])
    with pytest.raises(DnsUnavailable):
        await Publisher(silent, timeout=1).publish([DnsRecord(name="later", addresses=["10.213.9.3"])])
    assert updates("default", "unavailable") - unavailable == 1


def test_an_ansible_run_is_timed_by_playbook_and_status(settings):
    """A run that cannot succeed (no variables, and every SSH connection fails at once: the
    proxy command is `false`, so nothing leaves the machine) ends `failed`, timed as such."""
    ran = replace(settings, ssh_proxy_command="false")  # the session home: short enough for ssh
    labels = {"playbook": "decommission.yml", "status": "failed"}
    before = REGISTRY.get_sample_value("tempered_ansible_run_seconds_count", labels) or 0.0
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderPlaceholderPlaceholderPla"
    host = ansible.Host("node-x", "127.0.0.1", key, ["node"])
    outcome = ansible.run("decommission.yml", [host], {}, ran, "metrics-test", ansible.Progress())
    assert outcome.status == "failed", outcome.summary()
    assert REGISTRY.get_sample_value("tempered_ansible_run_seconds_count", labels) == before + 1
