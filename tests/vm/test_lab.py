"""The whole product on a real VM: `tempered lab up --machines 1` as a user runs it takes a
BIOS machine from power-on through discovery, the seeds' rules (it becomes the master-prime)
and its runtime OS to `ready`, joined by Ansible over SSH into the booted runtime OS (kubeadm
there is the lab's stand-in), with its name in DNS in both views; `tempered lab down` leaves
nothing. (Three machines need the stand-in's cluster state shared between VMs: not yet.)

The images are the session's (built once, shared with the other VM tests): the lab finds them
up to date where `tempered image build` keeps them, and builds nothing."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.lab.test_lab_infra import Lab, _dig, assert_nothing_left
from tests.lab.test_lab_infra import _unavailable as _lab_unavailable
from tests.vm.test_bootedge_qemu import _unavailable as _qemu_unavailable
from tests.vm.test_bootedge_qemu import discovery_images  # noqa: F401  (a fixture used by name)

pytestmark = [
    pytest.mark.skipif(_lab_unavailable() is not None, reason=_lab_unavailable() or ""),
    pytest.mark.skipif(_qemu_unavailable() is not None, reason=_qemu_unavailable() or ""),
]
READY_WITHIN_S = 1500  # TCG on two cores: a runtime boot and an Ansible join are minutes


def _seed_images(home: Path, discovery_images: Path, runtime_dir: Path, cache: Path) -> None:
    """Put the session's images (and the package cache they were built from) where the lab's
    `up` looks for them, so it finds them up to date."""
    images = home / "edge" / "images"
    images.mkdir(parents=True)
    # hard links, not symlinks: the edge serves no file that resolves outside its images directory
    shutil.copytree(discovery_images / "discovery", images / "discovery", copy_function=os.link)
    shutil.copytree(runtime_dir, images / "runtime", copy_function=os.link)
    (home / "cache").mkdir()
    (home / "cache" / "images").symlink_to(cache)


def test_a_lab_machine_from_power_on_to_ready(runtime_build, discovery_images):
    # A short home: ssh's control sockets live in the run directories under it (at most 72 characters)
    home = Path(tempfile.mkdtemp(prefix="tlab-", dir="/tmp"))
    _seed_images(home, discovery_images, runtime_build.info.output_dir, runtime_build.cache)
    lab = Lab(home)
    done = lab.run(
        "up", "--machines", "1", "--api-port", str(lab.api_port), "--temporal-port", str(lab.temporal_port),
        "--dns-port", str(lab.dns_port), "--timeout", str(READY_WITHIN_S), timeout=READY_WITHIN_S + 600,
    )
    pids = [p["pid"] for p in lab.state["processes"].values()] if (home / "lab" / "lab.json").exists() else []
    try:
        assert done.returncode == 0, f"lab up:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
        assert "stand-in" in done.stdout  # the live table names kubeadm's stand-in
        machines = {m["macs"][0]: m for m in (lab.api(f"/v1/machines/{v['id']}") for v in lab.api("/v1/machines?cluster=lab"))}
        assert sorted(machines) == ["52:54:00:7e:00:01"]
        [machine] = machines.values()
        assert (machine["state"], machine["role"]) == ("ready", "master-prime"), machine["reason"]
        assert {"type": "include", "value": "kubeadm-standin"} in machine["attributes"]
        _check_dns(lab, machines.values())
    finally:
        down = lab.run("down", "--purge")
        shutil.rmtree(home, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_left(pids)


def _check_dns(lab: Lab, machines) -> None:
    """Each node's A record in the lab view (its address) and in the corp view (mapped)."""
    zone = lab.state["dns"]["zone"]
    _, corp = json.loads((lab.home / "lab" / "dns-keys.json").read_text())
    key = f"{corp['algorithm']}:{corp['name']}:{corp['secret']}"
    for machine in machines:
        name = f"{machine['node_name']}.{zone}"
        [address] = _dig(lab, name)
        assert ipaddress.ip_address(address) in ipaddress.ip_network("10.213.0.0/24"), (name, address)
        assert _dig(lab, name, key) == [address.replace("10.213.", "172.20.", 1)], name
