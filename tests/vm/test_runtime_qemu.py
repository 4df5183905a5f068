"""A machine's whole first cycle in QEMU, power-on to `ready`: PXE through the real edge, the
discovery image, admission and rendering, then the runtime OS fetched into RAM, configured by
real cloud-init from the user-data the control plane rendered, phoning home (post-boot-2), and
joined by Ansible over SSH into that booted runtime OS (host key pinned from the phone home),
where the lab's fragment installed the kubeadm stand-in (infra/lab/standin/: NOT kubeadm). Then
the machine is power-cycled and goes round again as a machine that is not new: its data disk is
kept, its DHCP lease too (one address from PXE to the runtime OS, the one on record), and
Ansible rejoins it to `ready` without a second `kubeadm init` or `join`.

What cloud-init did is read from the serial console, where a test fragment (an `include` the
cluster's rules add) prints one line of findings at the end of its run. The fragment syncs the
file it writes on the data disk: the test power-cycles the VM seconds later, which a real
reboot (which syncs) would not need. What kubeadm's stand-in was asked to do is read over SSH,
through the same bastion namespace the session's worker uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from temporalio.service import RPCError

from activities import sshkey
from activities.domain.machine import MachineStatus
from api import temporal
from api.lab import standin
from tests.conftest import NODES_CTL
from tests.lifecycle import cluster_status
from tests.netlab import ip
from tests.servers import stop
from tests.vm.test_bootedge_qemu import (  # noqa: F401  (pxe_lab is a fixture used by name)
    PREFIX,
    VIRTIO_ROM,
    Firmware,
    PxeLab,
    _missing,
    _text,
    _unavailable,
    pxe_lab,
)

pytestmark = [
    pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or ""),
    pytest.mark.skipif(_missing(VIRTIO_ROM) is not None, reason=_missing(VIRTIO_ROM) or ""),
]
BIOS = Firmware("bios", uefi=False, native_pxe=False)
STAGE_DEADLINE_S = 600.0  # TCG: a runtime boot is minutes, not seconds
CHECK = re.compile(r"TEMPERED-CHECK (.*)")
FRAGMENT = """\
write_files:
  - path: /etc/tempered-fragment
    content: "from the {{ var.site }} fragment"
runcmd:
  - - sh
    - -c
    - >-
      test -e /var/lib/tempered/first-boot || cat /proc/sys/kernel/random/boot_id > /var/lib/tempered/first-boot;
      sync;
      echo "TEMPERED-CHECK hostname=$(hostname) fragment=$(tr ' ' _ < /etc/tempered-fragment)
      data=$(findmnt -no SOURCE,FSTYPE /var/lib/tempered | tr -s ' ' ,) fsuuid=$(findmnt -no UUID /var/lib/tempered)
      first=$(cat /var/lib/tempered/first-boot) boot=$(cat /proc/sys/kernel/random/boot_id)
      containerd=$(findmnt -no SOURCE /var/lib/containerd | tr -d ' ')
      cmdline_karg=$(grep -o 'tempered.lab=[a-z0-9]*' /proc/cmdline)" > /dev/ttyS0
"""


@pytest.fixture(scope="module")
def discovery_images(tmp_path_factory, pytestconfig, runtime_build) -> Path:
    """Both images, as an edge serves them: images/{discovery,runtime}/ (the runtime image is the
    session's, linked in)."""
    from bootedge.images import discovery as images, runtime as runtime_image

    root = tmp_path_factory.mktemp("images")
    cache = Path(os.environ.get("TEMPERED_IMAGE_CACHE") or pytestconfig.cache.mkdir("tempered-images"))
    images.build_discovery(root / "discovery", cache_dir=cache)
    (root / "runtime").mkdir()
    for name in runtime_image.FILES:
        os.link(runtime_build.info.output_dir / name, root / "runtime" / name)
    return root


async def _until(what: str, check, vm, lab: PxeLab, deadline_s: float = STAGE_DEADLINE_S):
    """Poll `check` (async, returns a value or None) until it answers; fail with the consoles."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        found = await check()
        if found is not None:
            return found
        await asyncio.sleep(1)
    stop(vm)
    raise AssertionError(f"{what}: not within {deadline_s:.0f}s\n{lab.diagnostics()}")


async def _runtime_cycle(lab: PxeLab, handle, mac: str, machine_uuid: str, serial: str, fresh: bool, marks: dict):
    """Power on into discovery, follow the machine to its runtime OS's phone home; return the
    console's TEMPERED-CHECK findings. The VM is left running."""
    started = time.monotonic()
    label = "first" if fresh else "again"

    async def state_in(*states: str):
        try:
            status = await handle.query("status", result_type=MachineStatus)
        except RPCError:  # not PXE booted yet: no workflow
            return None
        assert not status.state.startswith("failed:"), f"{status.state}: {status.reason}"
        return status if status.state in states else None

    vm = lab.boot(BIOS, mac, machine_uuid, serial, fresh_disk=fresh)
    status = await _until("admission and rendering", lambda: state_in("post-discover", "holding"), vm, lab)
    assert status.state == "post-discover", status.reason
    await _until("the agent rebooting", lambda: _value(vm.poll() is not None), vm, lab)
    marks[f"{label}: discovery done"] = time.monotonic() - started
    (lab.tmp / f"discovery-{label}.log").write_text(_text(lab.serial_log))

    vm = lab.boot(BIOS, mac, machine_uuid, serial, fresh_disk=False)
    # The phone home moves the machine to post-boot-2, and the join step starts at once.
    status = await _until("the runtime OS phoning home", lambda: state_in("post-boot-2", "join-cluster"), vm, lab)
    assert any(t.state == "post-boot-2" and t.reason == "cloud-init phoned home" for t in status.history), status
    marks[f"{label}: phoned home"] = time.monotonic() - started
    findings = await _until("the fragment's check line", lambda: _value(_check_line(lab)), vm, lab, 120)
    (lab.tmp / f"runtime-{label}.log").write_text(_text(lab.serial_log))
    return vm, findings


async def _value(value):
    return value or None


def _check_line(lab: PxeLab) -> dict[str, str] | None:
    match = CHECK.search(_text(lab.serial_log))
    if match is None:
        return None
    return dict(field.split("=", 1) for field in match.group(1).split() if "=" in field)


@pytest.fixture
def lab_join_method() -> str:
    """These VMs get the kubeadm stand-in: the cluster joins them with Ansible (the default)."""
    return "ansible"


@pytest.fixture
def bastion(pxe_lab: PxeLab) -> str:
    """The session worker's way to the VM: its SSH proxy command runs `nc` in NODES_CTL (the
    namespace tests/lab/test_join.py's node labs use), which here sits on the PXE lab's bridge.
    Returns the proxy command."""
    ip("netns", "add", NODES_CTL)
    pxe_lab.lab.namespaces.append(NODES_CTL)  # deleted with the lab
    ip("link", "set", "lo", "up", netns=NODES_CTL)
    pxe_lab.lab.attach(pxe_lab.lan, NODES_CTL, "ctl", 1)
    return f"nsenter --net=/run/netns/{NODES_CTL} nc %h %p"


def _standin_calls(settings, proxy: str, address: str, host_key: str) -> list[dict]:
    """The stand-in's call records on the node, read over SSH as Ansible reaches it: the control
    plane's key, the host key from the phone home pinned, through the bastion."""
    path = f"{standin.STATE_DIR}/calls.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        key, known = Path(tmp) / "id", Path(tmp) / "known_hosts"
        key.write_text(sshkey.private_key(settings))
        key.chmod(0o600)
        known.write_text(f"{address} {host_key}\n")
        shown = subprocess.run(
            ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
             "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", f"ProxyCommand={proxy}",
             f"tempered@{address}", "sudo", "sh", "-c", f"sync; cat {path}"],  # synced: a power cut follows
            capture_output=True, text=True, timeout=120,
        )
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines()]


def _ended(calls: list[dict], *words: str) -> list[dict]:
    """Finished calls whose argv starts with `words` ("kubeadm", "init")."""
    return [c for c in calls if c["phase"] == "end" and c["argv"][: len(words)] == list(words)]


def _timeline(status: MachineStatus, powered_on: float) -> str:
    """Seconds from power-on to each state the machine entered since, from its own history."""
    return ", ".join(
        f"{t.state} {t.at.timestamp() - powered_on:.0f}s" for t in status.history if t.at.timestamp() >= powered_on
    )


@pytest.mark.timeout(1800)  # the session's runtime image build (minutes), then two TCG cycles to ready
async def test_the_runtime_os_is_configured_by_cloud_init_joined_by_ansible_and_keeps_its_data_disk(
    pxe_lab: PxeLab, bastion: str, client, api_server, settings
):
    mac = f"{PREFIX}:{secrets.token_hex(1)}:{secrets.token_hex(1)}"
    machine_uuid, serial = str(uuidlib.uuid4()), f"SN-{secrets.token_hex(4)}"
    fragment = f"lab-check-{secrets.token_hex(3)}"
    with api_server.client() as http:
        http.put(f"/v1/cloud-init/fragments/{fragment}", json={"content": FRAGMENT}).raise_for_status()
        http.put(f"/v1/cloud-init/fragments/{standin.FRAGMENT_NAME}",
                 json={"content": standin.fragment()}).raise_for_status()
        http.put(f"/v1/clusters/{pxe_lab.cluster}/rules", json=[{"name": "lab", "expression": "true", "attributes": [
            {"type": "role", "value": "master-prime"}, {"type": "include", "value": fragment},
            {"type": "include", "value": standin.FRAGMENT_NAME},
            {"type": "variable", "value": "site=qemu"}, {"type": "karg", "value": "tempered.lab=yes"},
        ]}]).raise_for_status()
    handle = temporal.machine(client, machine_uuid)
    marks: dict[str, float] = {}
    timelines: list[str] = []
    vm = None
    try:
        powered_on = time.time()
        vm, first = await _runtime_cycle(pxe_lab, handle, mac, machine_uuid, serial, True, marks)
        status = await handle.query("status", result_type=MachineStatus)
        assert first["hostname"] == status.node_name
        assert first["fragment"] == "from_the_qemu_fragment"
        assert first["data"] == "/dev/vda,ext4" and first["containerd"].startswith("/dev/vda")
        assert first["first"] == first["boot"]  # written on this boot: the disk was new
        assert first["cmdline_karg"] == "tempered.lab=yes"
        console = _text(pxe_lab.tmp / "runtime-first.log")
        assert "Tempered: booting the runtime image" in console
        with api_server.client() as http:  # the host key the node generated, from its phone home
            key = http.get(f"/v1/machines/{machine_uuid}").json()["ssh_host_key"]
        assert key and key.split()[1] in console, key

        # Joined by Ansible over SSH into this runtime OS: the stand-in's one `kubeadm init`.
        status = await _until("ready", lambda: _in(handle, "ready"), vm, pxe_lab)
        marks["first: ready"] = time.time() - powered_on
        timelines.append(_timeline(status, powered_on))
        assert status.reason == "kubeadm init ran; no DNS settings: nothing published", status.reason
        assert status.is_new is True
        # The cluster then registers a join token on its one control-plane machine, over SSH too.
        await _until("the join token", lambda: _minted(client, pxe_lab.cluster), vm, pxe_lab)
        marks["first: join token minted"] = time.time() - powered_on
        calls = _standin_calls(settings, bastion, status.ip, key)
        inits = _ended(calls, "kubeadm", "init")
        assert [(c["host"], c["rc"]) for c in inits] == [(status.node_name, 0)], calls
        assert inits[0]["config"][0]["nodeRegistration"]["name"] == status.node_name
        assert [c["rc"] for c in _ended(calls, "kubeadm", "token")] == [0], calls
        address = status.ip

        stop(vm)
        powered_on = time.time()
        vm, again = await _runtime_cycle(pxe_lab, handle, mac, machine_uuid, serial, False, marks)
        assert again["boot"] != first["boot"], "the second check line is the first boot's"
        assert again["fsuuid"] == first["fsuuid"] and again["first"] == first["first"], (first, again)
        status = await handle.query("status", result_type=MachineStatus)
        timelines.append(_timeline(status, powered_on))
        assert status.is_new is False and status.state in ("post-boot-2", "join-cluster")
        # One lease for the MAC from PXE to the runtime OS: the address on record is the node's.
        assert status.ip == address and _leased(pxe_lab, mac) == {address}, (status.ip, _leased(pxe_lab, mac))

        # Rejoined by Ansible at the same address: no second `kubeadm init` or `join`.
        status = await _until("ready again", lambda: _in(handle, "ready"), vm, pxe_lab)
        marks["again: ready"] = time.time() - powered_on
        timelines[-1] = _timeline(status, powered_on)
        assert status.is_new is False and status.ip == address
        assert "rejoined without init or join" in status.reason, status.reason
        with api_server.client() as http:  # a new host key: the runtime OS makes its keys each boot
            key = http.get(f"/v1/machines/{machine_uuid}").json()["ssh_host_key"]
        calls = _standin_calls(settings, bastion, status.ip, key)
        assert len(_ended(calls, "kubeadm", "init")) == 1 and not _ended(calls, "kubeadm", "join"), calls
    finally:
        if vm is not None:
            stop(vm)
        with contextlib.suppress(RPCError):  # no token renewals against a VM that is gone
            await temporal.cluster(client, pxe_lab.cluster).terminate("test finished")
        print("\n[runtime lab] from power-on: " + ", ".join(f"{k} {v:.0f}s" for k, v in marks.items()))
        for n, line in enumerate(timelines, 1):
            print(f"[runtime lab] cycle {n}, states from power-on: {line}")


def _leased(lab: PxeLab, mac: str) -> set[str]:
    """The addresses the site's DHCP server has leased to `mac` (dnsmasq's lease file)."""
    lines = (line.split() for line in (lab.tmp / "site.leases").read_text().splitlines())
    return {fields[2] for fields in lines if len(fields) > 2 and fields[1] == mac}


async def _minted(client, cluster: str):
    status = await cluster_status(client, cluster)
    return status if status.credentials.token_id is not None else None


async def _in(handle, state: str):
    status = await handle.query("status", result_type=MachineStatus)
    assert not status.state.startswith("failed:"), f"{status.state}: {status.reason}"
    return status if status.state == state else None
