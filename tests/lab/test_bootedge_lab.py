"""The boot edge on a real (virtual) wire: `tempered bootedge` in one network namespace, scapy
PXE clients in another, joined by a veth pair. The edge talks to the session's control plane
over a unix socket, so nothing leaves the namespaces."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlmodel import select

from activities.domain.machine import MachineStatus
from activities.storage import db
from api import temporal
from activities.storage.models import Token
from tests.conftest import catch_all_edge
from tests.netlab import Lab, lab_available
from tests.servers import VENV_BIN

pytestmark = [
    pytest.mark.skipif(lab_available() is not None, reason=lab_available() or ""),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq-base is not installed"),
]
PREFIX = "52:54:00:ab"


@dataclass
class EdgeLab:
    lab: Lab
    edge_ns: str
    client_ns: str
    name: str
    state: Path
    token_file: Path
    log: Path
    process: subprocess.Popen | None = None

    @property
    def edge_ip(self) -> str:
        return self.lab.address(3)

    @property
    def client_ip(self) -> str:
        return self.lab.address(50)

    def start_edge(self, control_plane: str) -> None:
        self.process = self.lab.run(
            self.edge_ns,
            [str(VENV_BIN / "tempered"), "bootedge", "--interface", "eth0", "--control-plane", control_plane,
             "--token-file", str(self.token_file), "--state-dir", str(self.state), "--policy-refresh", "0.5"],
            self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.curl("/boot.ipxe").returncode == 0 and (self.state / "config.json").exists():
                return
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.2)
        raise AssertionError(f"the edge did not come up:\n{self.log.read_text()}")

    def stop_edge(self) -> None:
        from tests.servers import stop

        stop(self.process)

    def client(self, *args: str) -> list[dict]:
        result = self.lab.exec(
            self.client_ns, [sys.executable, "-m", "tests.pxeclient", *args], cwd=Path(__file__).parents[2]
        )
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def curl(self, path: str) -> subprocess.CompletedProcess:
        return self.lab.exec(self.client_ns, ["curl", "-sf", "--max-time", "20", f"http://{self.edge_ip}:8080{path}"])


@pytest.fixture
def edge_lab(api_server, uds_api, tmp_path, unique):
    """An edge (catch-all into a fresh cluster, for MACs under PREFIX) and a client namespace."""
    token_file = tmp_path / "edge-token"
    _, name = catch_all_edge(api_server, unique, PREFIX, token_file)
    lab = Lab()
    try:
        edge_ns, client_ns = lab.netns("edge"), lab.netns("client")
        lab.veth(edge_ns, client_ns, 3, 50)
        setup = EdgeLab(lab, edge_ns, client_ns, name, tmp_path / "state", token_file, tmp_path / "edge.log")
        setup.start_edge(uds_api)
        yield setup
    finally:
        lab.close()
    assert not Path(f"/run/netns/{lab.namespaces[0] if lab.namespaces else 'none'}").exists()


def test_scapy_pxe_clients_get_the_right_answers(edge_lab):
    ipxe = edge_lab.client("discover", "--mac", f"{PREFIX}:00:01")
    assert len(ipxe) == 1
    offer = ipxe[0]
    assert offer["yiaddr"] == "0.0.0.0" and offer["siaddr"] == edge_lab.edge_ip
    assert offer["file"] == f"http://{edge_lab.edge_ip}:8080/boot.ipxe"
    assert offer["options"]["message-type"] == 2 and offer["options"]["server_id"] == edge_lab.edge_ip
    assert offer["options"]["vendor_class_id"] == "PXEClient"
    assert offer["options"]["vendor_specific"] == "060108ff"
    assert offer["options"]["pxe_client_machine_identifier"].startswith("00")

    bios = edge_lab.client("discover", "--mac", f"{PREFIX}:00:02", "--firmware", "bios")
    assert [a["file"] for a in bios] == ["undionly.kpxe"]
    efi = edge_lab.client("discover", "--mac", f"{PREFIX}:00:03", "--firmware", "efi")
    assert [a["file"] for a in efi] == ["snponly.efi"]

    ack = edge_lab.client("request", "--mac", f"{PREFIX}:00:03", "--server", edge_lab.edge_ip, "--client-ip", edge_lab.client_ip)
    assert len(ack) == 1 and ack[0]["options"]["message-type"] == 5
    assert ack[0]["ciaddr"] == edge_lab.client_ip and ack[0]["file"] == "snponly.efi"  # EDK2 asks on 4011


def test_no_answer_for_ordinary_dhcp_or_machines_outside_the_policy(edge_lab):
    assert edge_lab.client("discover", "--mac", f"{PREFIX}:00:04", "--not-pxe") == []
    assert edge_lab.client("discover", "--mac", "52:54:00:cd:00:01") == []  # outside mac_prefixes


def test_tftp_serves_ipxe_read_only_and_never_outside_its_root(edge_lab):
    got = edge_lab.client("tftp", "--server", edge_lab.edge_ip, "--file", "undionly.kpxe", "--timeout", "5")[0]
    expected = Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
    assert got == {"size": len(expected), "sha256": hashlib.sha256(expected).hexdigest()}
    for hostile in ("../../../../etc/passwd", "/etc/passwd", "../config.json"):
        refused = edge_lab.client("tftp", "--server", edge_lab.edge_ip, "--file", hostile, "--timeout", "5")[0]
        assert "error" in refused, hostile


async def test_an_ipxe_client_gets_its_boot_script_from_its_workflow(edge_lab, client, settings):
    chain = edge_lab.curl("/boot.ipxe")
    assert "chain" in chain.stdout and "${netX/mac}" in chain.stdout
    mac = f"{PREFIX}:00:05"
    uuid = "8d6f1c1e-3b7a-4c2e-9f00-00000000ab05"
    script = edge_lab.curl(f"/boot.ipxe?mac={mac}&uuid={uuid}&serial=SN5&platform=efi&buildarch=x86_64")
    assert script.returncode == 0, script.stderr
    lines = script.stdout.splitlines()
    assert lines[0] == "#!ipxe"
    kernel = next(line for line in lines if line.startswith("kernel "))
    assert kernel.startswith(f"kernel http://{edge_lab.edge_ip}:8080/images/discovery/vmlinuz initrd=initrd.gz ")
    assert f"tempered.machine={uuid}" in kernel and "tempered.boot=1" in kernel
    token = next(arg for arg in kernel.split() if arg.startswith("tempered.token=")).split("=", 1)[1]
    assert f"initrd http://{edge_lab.edge_ip}:8080/images/discovery/initrd.gz" in lines

    malformed = edge_lab.curl("/boot.ipxe?mac=not-a-mac&platform=efi")
    assert "Tempered will not boot this machine: malformed boot request" in malformed.stdout

    status = await temporal.machine(client, uuid).query("status", result_type=MachineStatus)
    assert (status.state, status.boot, status.mac) == ("boot-1", 1, mac)
    from api.auth import digest

    with db.session(settings.database_url) as s:
        row = s.exec(select(Token).where(Token.digest == digest(token))).one()
    assert (row.kind, row.machine_id, row.boot, row.edge) == ("boot", uuid, 1, edge_lab.name)
    assert token not in json.dumps([e.model_dump(mode="json") for e in status.history])


def test_the_edge_keeps_serving_from_its_cache_when_the_control_plane_is_gone(edge_lab):
    edge_lab.stop_edge()
    edge_lab.start_edge("unix:/nonexistent/api.sock")  # restarted, and cut off
    assert [a["file"] for a in edge_lab.client("discover", "--mac", f"{PREFIX}:00:06")] == [
        f"http://{edge_lab.edge_ip}:8080/boot.ipxe"
    ]
    held = edge_lab.curl(f"/boot.ipxe?mac={PREFIX}:00:06&attempt=2")
    assert "Tempered: the control plane is not answering" in held.stdout
    assert "sleep 20" in held.stdout and "attempt=3" in held.stdout


def test_a_preregistered_edge_answers_only_registered_machines(edge_lab, api_server, unique):
    cluster = unique("c")
    mac = f"{PREFIX}:00:07"
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
        policy = {"mode": "preregistered", "mac_prefixes": [PREFIX], "segment": edge_lab.name}
        http.put(f"/v1/edges/{edge_lab.name}/policy", json=policy).raise_for_status()
        time.sleep(2)  # the edge refreshes its policy every 0.5 s in this test
        assert edge_lab.client("discover", "--mac", mac) == []
        assert "not registered" in edge_lab.curl(f"/boot.ipxe?mac={mac}").stdout
        http.post("/v1/machines", json={"cluster": cluster, "mac": mac}).raise_for_status()
    time.sleep(2)
    assert len(edge_lab.client("discover", "--mac", mac)) == 1
    assert "images/discovery/vmlinuz" in edge_lab.curl(f"/boot.ipxe?mac={mac}").stdout


def test_a_flood_of_malformed_packets_leaves_the_edge_serving(edge_lab):
    sent = edge_lab.client("garbage", "--server", edge_lab.edge_ip, "--count", "3000")
    assert sent == [{"sent": 3000}]
    assert edge_lab.process.poll() is None
    assert len(edge_lab.client("discover", "--mac", f"{PREFIX}:00:08")) == 1
    edge_lab.stop_edge()
    log = edge_lab.log.read_text()
    assert "dropped a packet" not in log  # bad input is parsed away, not an error
    counts = ast.literal_eval(log.rsplit("boot edge stopped; answered ", 1)[1].splitlines()[0])
    assert sum(counts.values()) >= 3000 and counts["not-pxe"] >= 1000 and counts["answered-ipxe"] >= 1


def test_the_discovery_agent_talks_to_the_control_plane_through_its_edge(edge_lab, tmp_path):
    from tests.api.test_discovery_api import facts

    mac = f"{PREFIX}:00:09"
    script = edge_lab.curl(f"/boot.ipxe?mac={mac}").stdout
    kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
    args = dict(arg.split("=", 1) for arg in kernel.split()[2:] if "=" in arg)
    machine, token = args["tempered.machine"], args["tempered.token"]
    body = tmp_path / "facts.json"
    body.write_text(json.dumps(facts(mac)))
    base = f"http://{edge_lab.edge_ip}:8080/machines/{machine}"
    auth = ["-H", f"Authorization: Bearer {token}"]
    posted = edge_lab.lab.exec(
        edge_lab.client_ns,
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *auth, "-H", "Content-Type: application/json",
         "--data-binary", f"@{body}", f"{base}/facts"],
    )
    assert posted.stdout == "202"
    forged = edge_lab.lab.exec(
        edge_lab.client_ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer forged",
                             "--data-binary", f"@{body}", f"{base}/facts"],
    )
    assert forged.stdout == "401"
    # The agent's long poll, relayed with its wait: held until the machine moves, answered with
    # when to ask again
    for _ in range(5):
        told = json.loads(edge_lab.lab.exec(edge_lab.client_ns, ["curl", "-s", *auth, f"{base}/instruction?wait=25"]).stdout)
        assert told["poll_after"] == 1, told
        if told["action"] == "reboot":
            break
    assert told["action"] == "reboot", told
    too_long = edge_lab.lab.exec(edge_lab.client_ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *auth,
                                                     f"{base}/instruction?wait=31"])
    assert too_long.stdout == "422"  # refused at the edge
    # a machine that does not move (no facts): held past the edge's own 15 s, answered all the same
    still = edge_lab.curl(f"/boot.ipxe?mac={PREFIX}:00:1a").stdout
    still_args = dict(arg.split("=", 1) for arg in next(
        line for line in still.splitlines() if line.startswith("kernel ")).split()[2:] if "=" in arg)
    held = edge_lab.lab.exec(edge_lab.client_ns, [
        "curl", "-s", "-w", " %{http_code}", "-H", f"Authorization: Bearer {still_args['tempered.token']}",
        f"http://{edge_lab.edge_ip}:8080/machines/{still_args['tempered.machine']}/instruction?wait=17"])
    assert held.stdout.endswith(" 200") and '"action":"wait"' in held.stdout, held.stdout

    # Rebooted into the runtime OS: cloud-init reads its seed through the edge, with the token in
    # the URL (it cannot send headers), and phones home the same way.
    script = edge_lab.curl(f"/boot.ipxe?mac={mac}").stdout
    kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
    assert kernel.split()[1].endswith("/images/runtime/vmlinuz"), script
    seed = next(arg for arg in kernel.split() if arg.startswith("ds=nocloud-net;s=")).removeprefix("ds=nocloud-net;s=")
    runtime_token = dict(arg.split("=", 1) for arg in kernel.split()[2:] if "=" in arg)["tempered.token"]
    assert seed == f"http://{edge_lab.edge_ip}:8080/machines/{machine}/{runtime_token}/"
    meta = yaml.safe_load(edge_lab.lab.exec(edge_lab.client_ns, ["curl", "-sf", f"{seed}meta-data"]).stdout)
    assert meta["instance-id"].startswith(f"{machine}-boot-")
    user_data = yaml.safe_load(edge_lab.lab.exec(edge_lab.client_ns, ["curl", "-sf", f"{seed}user-data"]).stdout)
    assert user_data["phone_home"]["url"] == f"{seed}phone-home" and user_data["hostname"] == meta["local-hostname"]

    def status(url: str, *extra: str) -> str:
        return edge_lab.lab.exec(edge_lab.client_ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *extra, url]).stdout

    assert status(seed.replace(runtime_token, "forged") + "user-data") == "401"
    assert status(seed.replace(runtime_token, token) + "user-data") == "403"  # the discovery boot's token
    assert status(f"{seed}network-config") == "404"
    assert status(f"{seed}phone-home", "-X", "POST", "--data", "hostname=x") == "200"
    log = edge_lab.log.read_text()
    assert runtime_token not in log and token not in log


def _wait_for_log(edge_lab: EdgeLab, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = edge_lab.log.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the edge's log:\n{edge_lab.log.read_text(errors='replace')}")


def _dnsmasq_pid(edge_lab: EdgeLab) -> int:
    """The edge's TFTP child, checked to be a live dnsmasq before a test signals it."""
    pid = int((edge_lab.state / "tftp.pid").read_text())
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"dnsmasq")
    return pid


def test_a_tftp_server_that_dies_is_restarted_and_serves_again(edge_lab):
    """dnsmasq killed by PID: the edge says so in its log, starts it again, and a real TFTP read
    works; the edge itself never stopped."""
    pid = _dnsmasq_pid(edge_lab)
    os.kill(pid, signal.SIGKILL)
    _wait_for_log(edge_lab, f"the TFTP server (dnsmasq, pid {pid}) died: killed by SIGKILL")
    log = _wait_for_log(edge_lab, "the TFTP server is serving again (dnsmasq, pid ")
    restarted = int(log.rsplit("the TFTP server is serving again (dnsmasq, pid ", 1)[1].split(")")[0])
    assert restarted != pid and _dnsmasq_pid(edge_lab) == restarted
    got = edge_lab.client("tftp", "--server", edge_lab.edge_ip, "--file", "undionly.kpxe", "--timeout", "5")[0]
    expected = Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
    assert got == {"size": len(expected), "sha256": hashlib.sha256(expected).hexdigest()}
    assert edge_lab.process.poll() is None
    assert len(edge_lab.client("discover", "--mac", f"{PREFIX}:00:0a")) == 1


# Binds the edge's TFTP port as soon as dnsmasq lets go of it (no SO_REUSEADDR: dnsmasq cannot share it).
_PORT_THIEF = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    try:
        sock.bind((sys.argv[1], 69))
        break
    except OSError:
        time.sleep(0.005)
print("bound", flush=True)
time.sleep(600)
"""


def test_an_edge_whose_tftp_server_keeps_dying_exits_non_zero(edge_lab, tmp_path):
    """Port 69 taken by another process once dnsmasq is killed: every restart fails, with
    backoff, and the edge gives up with exit status 1 rather than answer DHCP for a TFTP server
    that is not there."""
    thief_log = tmp_path / "thief.log"
    edge_lab.lab.run(edge_lab.edge_ns, [sys.executable, "-c", _PORT_THIEF, edge_lab.edge_ip], thief_log)
    pid = _dnsmasq_pid(edge_lab)
    os.kill(pid, signal.SIGKILL)
    _wait_for_log(edge_lab, f"the TFTP server (dnsmasq, pid {pid}) died: killed by SIGKILL")
    assert edge_lab.process.wait(timeout=120) == 1
    log = edge_lab.log.read_text(errors="replace")
    assert "bound" in thief_log.read_text()
    assert log.count("the TFTP server did not restart: the TFTP server (dnsmasq) exited") == 4, log
    assert "restarting the TFTP server in 8 s (restart 4 of 4)" in log
    assert "did not restart: the TFTP server (dnsmasq) exited: dnsmasq: failed to create listening socket" in log
    assert "boot edge exits: the TFTP server (dnsmasq) died 5 times in a row; giving up" in log
    assert "boot edge stopped" in log  # its sockets and TFTP root cleaned up on the way out
