"""The seams between a machine and the control plane (issue 12, items 1, 2 and 9).

A lost answer never wedges a machine: every machine-facing call is idempotent per boot. A
per-boot token is bound to its boot, and a runtime token reads nothing once the machine is
ready; expired tokens are purged. Retrying `failed:render` goes back through the rules.

The first test runs the real discovery agent (the shell script the image embeds) against the
real edge, API and worker of a private stack (its own Temporal dev server), so that pausing the
worker disturbs no other test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client

from activities.domain.ids import machine_workflow_id
from activities.storage import db
from api.auth import PURGE_BATCH, find_token, issue_token
from activities.storage.models import Facts as FactsRow, Token
from tests.conftest import catch_all_edge
from tests.netlab import Lab, lab_available
from tests.servers import DevServer, Process
from tests.api.test_discovery_api import Site, facts
from tests.api.test_runtime_api import HOST_KEY, _edge_boot, _put_fragment, _seed

AGENT = Path(__file__).parents[2] / "infra" / "images" / "discovery" / "agent"
PREFIX = "52:54:00:5e"


# ---- 1. a lost answer never wedges a machine -----------------------------------------------


class PrivateStack:
    """Temporal, a worker and a unix-socket API of their own (the worker is paused by a test)."""

    def __init__(self, home: Path) -> None:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home, self.socket = home, home / "api.sock"
        self.temporal = DevServer(home).start()
        self.env = os.environ | {
            "TEMPERED_HOME": str(home), "DATABASE_URL": f"sqlite:///{home / 'tempered.db'}",
            "TEMPORAL_ADDRESS": self.temporal.address,
        }
        self.worker = Process(["worker"], self.env, home / "worker.log").start()
        self.api = Process(["api", "--uds", str(self.socket)], self.env, home / "api.log").start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.client(None).get("/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"the private API did not start:\n{self.api.tail()}")

    def client(self, token: str | None = "admin") -> httpx.Client:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {(self.home / 'admin-token').read_text().strip()}"
        transport = httpx.HTTPTransport(uds=str(self.socket))
        return httpx.Client(transport=transport, base_url="http://cp", headers=headers, timeout=60)

    def stop(self) -> None:
        for part in (self.api, self.worker):
            part.proc.send_signal(signal.SIGCONT)  # a paused worker cannot stop
            part.stop()
        self.temporal.stop()


def _fake_machine(root: Path, cmdline: str, mac: str) -> tuple[Path, Path]:
    """A /proc and a /sys the agent reads instead of the host's: 2 cores, 4 GiB, a 40 GB disk,
    one NIC with `mac`, a DMI UUID of its own."""
    proc, sys_ = root / "proc", root / "sys"
    files = {
        proc / "cmdline": cmdline + "\n",
        proc / "cpuinfo": "processor\t: 0\nmodel name\t: Seam CPU\n\nprocessor\t: 1\nmodel name\t: Seam CPU\n",
        proc / "meminfo": "MemTotal:        4194304 kB\n",
        sys_ / "block/vda/size": f"{40 * 10**9 // 512}\n",
        sys_ / "block/vda/queue/rotational": "0\n",
        sys_ / "block/vda/serial": "SEAM-DISK\n",
        sys_ / "class/net/eth0/address": mac + "\n",
        sys_ / "class/net/eth0/speed": "1000\n",
        sys_ / "class/net/eth0/carrier": "1\n",
        sys_ / "class/dmi/id/product_uuid": "5EA05EA0-0000-4000-8000-00000000005E\n",
        sys_ / "class/dmi/id/product_serial": "SEAM-1\n",
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (sys_ / "class/net/eth0/device").mkdir()
    return proc, sys_


def _kernel_line(lab: Lab, ns: str, edge_ip: str, mac: str) -> tuple[str, str]:
    """The kernel line of the boot script the edge answers for `mac`, and the whole script."""
    script = lab.exec(ns, ["curl", "-sf", "--max-time", "60", f"http://{edge_ip}:8080/boot.ipxe?mac={mac}"]).stdout
    return next(line for line in script.splitlines() if line.startswith("kernel ")), script


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def _facts_updates_accepted(address: str, machine_id: str) -> int:
    """How many `facts_reported` Updates the machine's workflow accepted (refused ones leave no
    event in its history)."""
    client = await Client.connect(address)
    count = 0
    async for event in client.get_workflow_handle(machine_workflow_id(machine_id)).fetch_history_events():
        accepted = event.workflow_execution_update_accepted_event_attributes
        count += event.HasField("workflow_execution_update_accepted_event_attributes") and (
            accepted.accepted_request.input.name == "facts_reported"
        )
    return count


@pytest.mark.skipif(lab_available() is not None, reason=lab_available() or "")
@pytest.mark.skipif(shutil.which("dnsmasq") is None or shutil.which("wget") is None, reason="needs dnsmasq and wget")
def test_a_facts_answer_lost_while_the_worker_is_paused_still_ends_in_a_reboot(tmp_path, unique):
    """The worker is paused (SIGSTOP) past the edge's 15 s relay timeout: the agent's POST gets
    503, the Update still applies once the worker resumes, and the agent's retry must be
    answered as the first one was, so that it follows its instruction and reboots."""
    from tests.lab.test_bootedge_lab import EdgeLab

    stack = PrivateStack(tmp_path / "stack")
    lab = Lab()
    agent = None
    try:
        token_file = tmp_path / "edge-token"
        _, name = catch_all_edge(stack, unique, PREFIX, token_file)
        edge_ns, client_ns = lab.netns("edge"), lab.netns("client")
        lab.veth(edge_ns, client_ns, 3, 50)
        edge = EdgeLab(lab, edge_ns, client_ns, name, tmp_path / "state", token_file, tmp_path / "edge.log")
        edge.start_edge(f"unix:{stack.socket}")

        mac = f"{PREFIX}:00:01"
        kernel, _ = _kernel_line(lab, client_ns, edge.edge_ip, mac)
        assert "/images/discovery/vmlinuz" in kernel, kernel
        proc, sys_ = _fake_machine(tmp_path / "machine", " ".join(kernel.split()[2:]), mac)
        bin_ = tmp_path / "bin"
        bin_.mkdir()
        rebooted = tmp_path / "rebooted"
        for command in ("reboot", "poweroff"):
            (bin_ / command).write_text(f"#!/bin/sh\necho {command} \"$@\" >> {rebooted}\n")
            (bin_ / command).chmod(0o755)
        agent_log = tmp_path / "agent.log"
        env = os.environ | {
            "PATH": f"{bin_}:{os.environ['PATH']}", "TEMPERED_PROCFS": str(proc), "TEMPERED_SYSFS": str(sys_),
            "TMPDIR": str(tmp_path),
        }

        stack.worker.proc.send_signal(signal.SIGSTOP)
        agent = lab.run(client_ns, ["sh", str(AGENT)], agent_log, env=env)
        _wait_for(lambda: "could not relay POST" in edge.log.read_text(), 60, "the edge to give up on the facts")
        stack.worker.proc.send_signal(signal.SIGCONT)
        assert "facts POST failed" in agent_log.read_text() or "could not relay" in edge.log.read_text()

        _wait_for(rebooted.exists, 120, f"the agent to reboot:\n{agent_log.read_text()}")
        assert rebooted.read_text().split() == ["reboot", "-f"]
        log = agent_log.read_text()
        assert "tempered-agent: instruction: reboot" in log and "tempered-agent: rebooting" in log, log
        with stack.client() as http:
            machine_id = kernel.split("tempered.machine=", 1)[1].split()[0]
            view = http.get(f"/v1/machines/{machine_id}").json()
        assert view["state"] == "post-discover", view
        assert sum(t["state"] == "discover" and t["reason"].startswith("facts received") for t in view["history"]) == 1

        taken = asyncio.run(_facts_updates_accepted(stack.temporal.address, machine_id))
        # the retry asks with the lost POST's Update ID (one per boot and facts digest, api/boot.py):
        # Temporal answers it from that one Update, which applied once
        assert taken == 1, f"the lost POST's Update applied once and its retry rode on it ({taken} accepted)"

        kernel, script = _kernel_line(lab, client_ns, edge.edge_ip, mac)  # the next PXE contact
        assert kernel.split()[1].endswith("/images/runtime/vmlinuz"), script
    finally:
        if agent is not None:
            from tests.servers import stop

            stop(agent)
        lab.close()
        stack.stop()


def test_a_repeated_facts_post_answers_what_the_first_did(api_server, settings, unique):
    site = Site(api_server, unique, "52:54:00:5f")
    mac = "52:54:00:5f:00:01"
    machine_id, token = site.boot(mac)
    first = site.post(machine_id, token, facts(mac))
    assert first.status_code == 202, first.text
    assert site.wait_state(machine_id, "post-discover")["state"] == "post-discover"
    again = site.post(machine_id, token, facts(mac))  # the first answer was lost on the way
    assert again.status_code == 202 and again.json() == first.json(), again.text
    view = site.machine(machine_id)
    assert view["state"] == "post-discover" and [t["state"] for t in view["history"]].count("discover") == 2
    assert site.instruction(machine_id, token)["action"] == "reboot"
    other = site.post(machine_id, token, facts(mac, processors__count=4))  # not a repeat: too late
    assert other.status_code == 409, other.text
    with db.session(settings.database_url) as s:  # refused before anything was stored
        stored = s.exec(select(FactsRow.digest).where(FactsRow.machine_id == machine_id)).all()
    assert stored == [first.json()["digest"]], stored


def test_a_repeated_phone_home_and_join_result_answer_what_the_first_did(api_server, unique, tmp_path):
    site, machine_id, mac = _runtime_boot(api_server, unique, "52:54:00:60", tmp_path)
    token = _edge_boot(site, mac)["token"]
    form = {"instance_id": "i", "pub_key_ed25519": HOST_KEY}
    first = _seed(site, machine_id, "phone-home", token, form=form)
    assert first.status_code == 200 and first.json()["state"] == "post-boot-2", first.text
    again = _seed(site, machine_id, "phone-home", token, form=form)
    assert again.status_code == 200 and again.json()["state"] in ("post-boot-2", "join-cluster"), again.text
    assert _seed(site, machine_id, "phone-home", token).status_code == 200  # cloud-init without keys
    other_key = HOST_KEY.replace("AAAAIMKg", "AAAAIMKh")
    swapped = _seed(site, machine_id, "phone-home", token, form={"pub_key_ed25519": other_key})
    assert swapped.status_code == 409 and site.machine(machine_id)["ssh_host_key"] == HOST_KEY, swapped.text
    assert site.wait_state(machine_id, "join-cluster")["state"] == "join-cluster"

    result = {"ok": True, "reason": "joined by hand"}
    with api_server.client() as http:
        assert http.post(f"/v1/machines/{machine_id}/join-result", json=result).status_code == 200
        assert site.wait_state(machine_id, "ready")["state"] == "ready"
        again = http.post(f"/v1/machines/{machine_id}/join-result", json=result)  # its answer was lost
        assert again.status_code == 200 and again.json()["state"] == "ready", again.text
        assert http.post(f"/v1/machines/{machine_id}/join-result", json={"ok": False}).status_code == 409

    # Ready: the runtime token (in /proc/cmdline, readable by the node's containers) reads nothing.
    for item in ("meta-data", "user-data", "vendor-data", "phone-home"):
        refused = _seed(site, machine_id, item, token, form=form if item == "phone-home" else None)
        assert refused.status_code == 403 and "ready" in refused.text, (item, refused.text)
        assert "ssh-ed25519" not in refused.text


# ---- 2. per-boot tokens are bound to one boot ----------------------------------------------


def _runtime_boot(api_server, unique, prefix: str, tmp_path: Path) -> tuple[Site, str, str]:
    """A machine of an external-join cluster (its join is reported from outside), discovered
    and admitted: (site, machine id, mac)."""
    site = Site.__new__(Site)  # Site's own cluster joins through Ansible: this one does not
    site.api, site.prefix = api_server, prefix
    site.cluster, _ = catch_all_edge(api_server, unique, prefix, tmp_path / "edge-token")
    site.edge_token = (tmp_path / "edge-token").read_text()
    mac = f"{prefix}:00:01"
    machine_id, token = site.boot(mac)
    assert site.post(machine_id, token, facts(mac)).status_code == 202
    assert site.wait_state(machine_id, "post-discover")["state"] == "post-discover"
    return site, machine_id, mac


def _facts_rows(settings, machine_id: str) -> list[int]:
    with db.session(settings.database_url) as s:
        return list(s.exec(select(FactsRow.boot).where(FactsRow.machine_id == machine_id)).all())


def test_an_earlier_boots_token_is_refused_once_the_next_boot_began(api_server, settings, unique):
    site = Site(api_server, unique, "52:54:00:61")
    mac = "52:54:00:61:00:01"
    machine_id, old = site.boot(mac)
    _, new = site.boot(mac)  # boot 2 began before boot 1's agent said anything
    refused = site.post(machine_id, old, facts(mac))
    assert refused.status_code == 403 and "booted again" in refused.json()["detail"], refused.text
    assert _facts_rows(settings, machine_id) == [] and site.machine(machine_id)["state"] == "boot-1"
    told = httpx.get(f"{site.api.url}/v1/boot/{machine_id}/instruction", headers={"Authorization": f"Bearer {old}"})
    assert told.status_code == 403 and "booted again" in told.text
    assert site.post(machine_id, new, facts(mac)).status_code == 202
    assert _facts_rows(settings, machine_id) == [2]
    assert site.instruction(machine_id, new)["action"] in ("wait", "reboot")
    with api_server.client() as http:  # reprovisioned (no new boot began): the agent still reboots
        http.post(f"/v1/machines/{machine_id}/reprovision").raise_for_status()
    assert site.instruction(machine_id, new)["action"] == "reboot"
    assert site.post(machine_id, new, facts(mac)).status_code == 403  # facts are not taken now


def test_expired_tokens_are_purged_in_bounded_batches_as_tokens_are_issued(settings, unique):
    machine = unique("m")
    expired = [issue_token(settings, "boot", ttl=timedelta(seconds=-60), machine_id=machine, boot=n)
               for n in range(3)]
    live = issue_token(settings, "boot", ttl=timedelta(hours=1), machine_id=machine, boot=3)
    forever = issue_token(settings, "operator", name=unique("op"))

    def kept() -> int:
        with db.session(settings.database_url) as s:
            return len(s.exec(select(Token.id).where(Token.machine_id == machine)).all())

    assert kept() == 1  # the three expired went when the live one was issued
    assert find_token(settings, live, ("boot",)) and find_token(settings, forever, ("operator",))
    assert all(find_token(settings, t, ("boot",)) is None for t in expired)

    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    with db.session(settings.database_url) as s:  # a backlog larger than one batch
        for n in range(PURGE_BATCH + 10):
            s.add(Token(kind="boot", digest=f"{machine}-{n}", machine_id=machine, boot=n, expires_at=yesterday))
        s.commit()
    issue_token(settings, "operator", name=unique("op"))
    assert kept() >= 1 + 10  # one batch per token issued: bounded work (older expired ones go first)
    for _ in range(5):
        issue_token(settings, "operator", name=unique("op"))
    assert kept() == 1


# ---- 9. retrying failed:render re-runs the rules -------------------------------------------


def test_retrying_failed_render_evaluates_the_fixed_rules(api_server, unique):
    missing, good = unique("missing"), unique("good")
    assert _put_fragment(api_server, good, "runcmd: [[touch, /run/good]]\n").status_code == 200

    def rules(include: str, karg: str) -> list[dict]:
        return [{"name": "w", "expression": "true", "attributes": [
            {"type": "role", "value": "master-prime"}, {"type": "include", "value": include},
            {"type": "karg", "value": karg},
        ]}]

    site = Site(api_server, unique, "52:54:00:62")
    mac = "52:54:00:62:00:01"
    with api_server.client() as http:
        http.put(f"/v1/clusters/{site.cluster}/rules", json=rules(missing, "quiet")).raise_for_status()
    machine_id, token = site.boot(mac)
    assert site.post(machine_id, token, facts(mac)).status_code == 202
    view = site.wait_state(machine_id, "failed:render")
    assert view["state"] == "failed:render" and f"include '{missing}' names no fragment" in view["reason"], view

    with api_server.client() as http:  # the README: fix the rules, then retry
        http.put(f"/v1/clusters/{site.cluster}/rules", json=rules(good, "mitigations=off")).raise_for_status()
        assert http.post(f"/v1/machines/{machine_id}/retry").status_code == 200
    view = site.wait_state(machine_id, "post-discover")
    assert view["state"] == "post-discover" and f"with {good}" in view["reason"], view["reason"]
    assert {"type": "include", "value": good} in view["attributes"], view["attributes"]
    runtime = _edge_boot(site, mac)["instruction"]
    assert runtime["action"] == "runtime" and runtime["kargs"] == ["mitigations=off"], runtime
