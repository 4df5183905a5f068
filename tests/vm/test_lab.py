"""The whole product on real VMs: `tempered lab up --machines 3` as a user runs it.

Three QEMU machines (a BIOS one, a UEFI one and a BIOS one with two disks) go from power-on
through discovery, the seeds' rules (master-prime, worker, storage worker), their runtime OS
from RAM and an Ansible join over SSH into it (kubeadm there is the lab's stand-in, whose fake
cluster state the VMs share) to `ready`. Then, on the same lab, what the product promises:

- one `kubeadm init`, the workers' joins only after it, the rules' labels and taints on the nodes;
- A and PTR records in both DNS views (the corp view answers the mapped address);
- a power-cycled worker comes back to `ready` as not new: its data disk kept, no new init/join;
- a reprovisioned worker is wiped (its new `kubeadm join` passes the preflight that refuses a
  node that still has its kubelet.conf) and reassigned;
- a decommissioned worker leaves the cluster and DNS;
- `tempered lab down --purge` leaves nothing.

The images are the session's (built once, shared with the other VM tests): the lab finds them
up to date where `tempered image build` keeps them, and builds nothing."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.lab.test_lab_infra import Lab, _dig, assert_nothing_left, seed_images
from tests.lab.test_lab_infra import _unavailable as _lab_unavailable
from tests.vm.test_bootedge_qemu import _unavailable as _qemu_unavailable
from tests.vm.test_bootedge_qemu import discovery_images  # noqa: F401  (a fixture used by name)

pytestmark = [
    pytest.mark.skipif(_lab_unavailable() is not None, reason=_lab_unavailable() or ""),
    pytest.mark.skipif(_qemu_unavailable() is not None, reason=_qemu_unavailable() or ""),
]
READY_WITHIN_S = 2400  # TCG on two cores, three VMs: runtime boots and Ansible joins are minutes
AGAIN_WITHIN_S = 1500  # a power cycle or a reprovision back to ready, two VMs at once
MASTER, WORKER, STORAGE = "52:54:00:7e:00:01", "52:54:00:7e:00:02", "52:54:00:7e:00:03"
STORAGE_TAINT = {"key": "node-role/storage", "value": "true", "effect": "NoSchedule"}


class Fleet:
    """The lab's machines through its API, and the stand-in's shared cluster state on the host."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.standin = lab.home / "lab" / "kubeadm-standin"
        self.ids: dict[str, str] = {}  # MAC -> machine id (a decommissioned machine leaves the cluster's list)

    def machines(self) -> dict[str, dict]:
        """Every machine of the cluster `lab`, whole, by its first MAC."""
        listed = self.lab.api("/v1/machines?cluster=lab")
        found = {m["macs"][0]: m for m in (self.lab.api(f"/v1/machines/{v['id']}") for v in listed)}
        self.ids |= {mac: m["id"] for mac, m in found.items()}
        return found

    def machine(self, mac: str) -> dict:
        return self.lab.api(f"/v1/machines/{self.ids[mac]}")

    def act(self, machine: dict, action: str) -> None:
        token = (self.lab.home / "lab" / "control" / "admin-token").read_text().strip()
        url = f"http://127.0.0.1:{self.lab.api_port}/v1/machines/{machine['id']}/{action}"
        httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).raise_for_status()

    def vm_name(self, mac: str) -> str:
        return f"lab-{int(mac.rsplit(':', 1)[1], 16)}"

    def wait(self, mac: str, done: Callable[[dict], bool], what: str, timeout: float) -> dict:
        """Poll the machine until `done`; on a timeout or a failure, say where it stands and
        show its console's last lines."""
        end = time.monotonic() + timeout
        while True:
            machine = self.machine(mac)
            if done(machine):
                return machine
            if machine["state"].startswith("failed:") or time.monotonic() > end:
                console = self.lab.run("console", self.vm_name(mac), "-n", "40").stdout
                pytest.fail(f"{mac} never {what}: {machine['state']} ({machine['reason']})\n{console}")
            time.sleep(2)

    def cluster(self) -> dict:
        return json.loads((self.standin / "cluster.json").read_text())

    def calls(self, sub: str, host: str | None = None) -> list[dict]:
        """The stand-in's finished calls of `kubeadm <sub>` that succeeded (on one host); not
        `kubeadm init phase upload-certs`."""
        lines = [json.loads(line) for line in (self.standin / "calls.jsonl").read_text().splitlines()]
        return [c for c in lines if c["phase"] == "end" and c["rc"] == 0 and c["argv"][:2] == ["kubeadm", sub]
                and "phase" not in c["argv"] and (host is None or c["host"] == host)]

    def dns(self, name: str, kind: str = "A") -> tuple[list[str], list[str]]:
        """What the lab view and the corp view (its TSIG key) answer."""
        _, corp = json.loads((self.lab.home / "lab" / "dns-keys.json").read_text())
        key = f"{corp['algorithm']}:{corp['name']}:{corp['secret']}"
        mapped = name.replace("10.213.", "172.20.", 1) if kind == "PTR" else name
        return _dig(self.lab, name, kind=kind), _dig(self.lab, mapped, key, kind=kind)


@pytest.mark.timeout(READY_WITHIN_S + 2 * AGAIN_WITHIN_S + 900)
def test_a_three_machine_lab_from_power_on_to_ready_and_its_day_two(runtime_build, discovery_images):  # noqa: F811
    # A short home: ssh's control sockets live in the run directories under it (at most 72 characters)
    home = Path(tempfile.mkdtemp(prefix="tlab-", dir="/tmp"))
    seed_images(home, discovery_images / "discovery", runtime_build.info.output_dir, runtime_build.cache)
    lab = Lab(home)
    done = lab.run(
        "up", "--machines", "3", "--api-port", str(lab.api_port), "--temporal-port", str(lab.temporal_port),
        "--dns-port", str(lab.dns_port), "--timeout", str(READY_WITHIN_S), timeout=READY_WITHIN_S + 600,
    )
    pids = [p["pid"] for p in lab.state["processes"].values()] if (home / "lab" / "lab.json").exists() else []
    try:
        assert done.returncode == 0, f"lab up:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
        assert "stand-in" in done.stdout  # the live table names kubeadm's stand-in
        fleet = Fleet(lab)
        print(lab.run("timings").stdout)
        _check_roles_and_nodes(fleet)
        _check_dns(fleet, fleet.machines().values())
        _check_cycle_and_reprovision(fleet)
        _check_decommission(fleet)
    finally:
        down = lab.run("down", "--purge")
        shutil.rmtree(home, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_left(pids)


def _check_roles_and_nodes(fleet: Fleet) -> None:
    """The rules' roles on the lab's mix of machines; one init, then the workers' joins; the
    rules' labels and taints on the Node objects."""
    machines = fleet.machines()
    assert sorted(machines) == [MASTER, WORKER, STORAGE]
    firmware = {m: json.loads((fleet.lab.home / "lab" / "vms" / fleet.vm_name(m) / "spec.json").read_text())
                for m in machines}
    assert [(firmware[m]["firmware"], firmware[m]["system_disks"]) for m in (MASTER, WORKER, STORAGE)] == [
        ("bios", 1), ("uefi", 1), ("bios", 2)]
    roles = {mac: (m["state"], m["role"]) for mac, m in machines.items()}
    assert roles == {MASTER: ("ready", "master-prime"), WORKER: ("ready", "worker"), STORAGE: ("ready", "worker")}
    names = {mac: m["node_name"] for mac, m in machines.items()}
    [init] = fleet.calls("init")
    assert init["host"] == names[MASTER]
    joins = fleet.calls("join")
    assert sorted(j["host"] for j in joins) == sorted([names[WORKER], names[STORAGE]])
    starts = {(c["host"], c["pid"]): c["t"] for c in _starts(fleet)}
    assert all(starts[j["host"], j["pid"]] > init["t"] for j in joins), "a worker joined before the init ended"
    nodes = fleet.cluster()["nodes"]
    assert sorted(nodes) == sorted(names.values())
    storage = nodes[names[STORAGE]]
    assert storage["labels"]["node-role/storage"] == "true" and storage["taints"] == [STORAGE_TAINT]
    assert nodes[names[MASTER]]["control_plane"] and not nodes[names[WORKER]]["control_plane"]
    assert nodes[names[WORKER]]["taints"] == []


def _starts(fleet: Fleet) -> list[dict]:
    lines = [json.loads(line) for line in (fleet.standin / "calls.jsonl").read_text().splitlines()]
    return [c for c in lines if c["phase"] == "start"]


def _check_dns(fleet: Fleet, machines) -> None:
    """Each node's A and PTR records in the lab view (native) and the corp view (mapped)."""
    zone = fleet.lab.state["dns"]["zone"]
    for machine in machines:
        name = f"{machine['node_name']}.{zone}"
        [address], corp = fleet.dns(name)
        assert ipaddress.ip_address(address) in ipaddress.ip_network("10.213.0.0/24"), (name, address)
        assert corp == [address.replace("10.213.", "172.20.", 1)], name
        assert fleet.dns(address, "PTR") == ([f"{name}."], [f"{name}."]), name


def _check_cycle_and_reprovision(fleet: Fleet) -> None:
    """Side by side, through the product's power (the lab's VMs have QMP power settings): the
    worker is rebooted; the storage worker is reprovisioned (a one-time PXE boot and a cycle)."""
    before = fleet.machines()
    worker, storage = before[WORKER], before[STORAGE]
    zone = fleet.lab.state["dns"]["zone"]
    address, _ = fleet.dns(f"{worker['node_name']}.{zone}")
    fleet.act(storage, "reprovision")
    fleet.act(worker, "reboot")

    def back(mac: str) -> Callable[[dict], bool]:
        return lambda m: m["boot"] > before[mac]["boot"] and m["state"] == "ready"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waits = [pool.submit(fleet.wait, mac, back(mac), "came back to ready", AGAIN_WITHIN_S) for mac in (WORKER, STORAGE)]
        cycled, reprovisioned = (w.result() for w in waits)
    # The power-cycled worker: not new, same role and address, no new init or join (a rejoin).
    assert (cycled["is_new"], cycled["role"]) == (False, "worker")
    assert "boot-1" in [t["state"] for t in cycled["history"]]
    assert len(fleet.calls("join", worker["node_name"])) == 1 and len(fleet.calls("init")) == 1
    assert fleet.calls("reset", worker["node_name"]) == []
    assert fleet.dns(f"{worker['node_name']}.{zone}")[0] == address  # one DHCP lease from PXE to the runtime OS
    # The reprovisioned one: wiped (its second join passed the preflight that refuses an existing
    # kubelet.conf) and reassigned by the rules, labels and taints included. Like any machine
    # after its first join, it stays new until its next reboot.
    assert (reprovisioned["is_new"], reprovisioned["role"]) == (True, "worker")
    assert any(t["state"] == "new" and t["reason"].startswith("reprovision") for t in reprovisioned["history"])
    assert len(fleet.calls("join", storage["node_name"])) == 2
    node = fleet.cluster()["nodes"][reprovisioned["node_name"]]
    assert node["labels"]["node-role/storage"] == "true" and node["taints"] == [STORAGE_TAINT]
    _check_dns(fleet, [cycled, reprovisioned])


def _check_decommission(fleet: Fleet) -> None:
    """The decommissioned worker is drained and deleted from the cluster, and leaves DNS."""
    worker = fleet.machines()[WORKER]
    zone = fleet.lab.state["dns"]["zone"]
    [address], _ = fleet.dns(f"{worker['node_name']}.{zone}")
    fleet.act(worker, "decommission")
    fleet.wait(WORKER, lambda m: m["state"] == "decommissioned", "was decommissioned", 900)
    power = fleet.lab.run("power", fleet.vm_name(WORKER), "status")  # powered off at the end, through QMP
    assert "paused" in power.stdout or "shutdown" in power.stdout, power.stdout + power.stderr
    assert worker["node_name"] not in fleet.cluster()["nodes"]
    assert fleet.dns(f"{worker['node_name']}.{zone}") == ([], [])
    assert fleet.dns(address, "PTR") == ([], [])
    assert {m["state"] for mac, m in fleet.machines().items() if mac != WORKER} == {"ready"}
