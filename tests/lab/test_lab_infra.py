"""`tempered lab up --machines 0` as a user runs it (a subprocess, as root, with a private
TEMPERED_HOME, its own namespace prefix and free ports): the site's DHCP and the edge answer a
PXE client on the bridge, the lab BIND answers in both views, the edge and the cluster `lab` are
registered with the seeds' rules; a second `up` refuses; `down` leaves nothing; a lab killed
with SIGKILL is refused by `up` and cleaned by `down`, even with its state file gone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import VENV_BIN, free_port

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"tlt{os.getpid() % 100000}"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    for tool in ("named", "dnsmasq", "dig", "curl", "nc", "ip"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is missing"
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


class Lab:
    """The `tempered lab` command with this test's home, prefix and ports."""

    def __init__(self, home: Path):
        self.home = home
        self.first_up: subprocess.CompletedProcess | None = None
        self.api_port, self.temporal_port, self.dns_port = free_port(), free_port(), free_port()
        self.env = os.environ | {"TEMPERED_HOME": str(home), "TEMPERED_LAB_PREFIX": PREFIX}

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "tempered"), "lab", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> subprocess.CompletedProcess:
        return self.run("up", "--machines", "0", "--api-port", str(self.api_port),
                        "--temporal-port", str(self.temporal_port), "--dns-port", str(self.dns_port))

    @property
    def state(self) -> dict:
        return json.loads((self.home / "lab" / "lab.json").read_text())

    def api(self, path: str):
        token = (self.home / "lab" / "control" / "admin-token").read_text().strip()
        response = httpx.get(f"http://127.0.0.1:{self.api_port}{path}", headers={"Authorization": f"Bearer {token}"})
        return response.raise_for_status().json()


def namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX + "-")]


def alive(pid: int) -> bool:
    try:
        return b") Z" not in Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False


def seed_images(home: Path, discovery: Path, runtime: Path, cache: Path | None) -> None:
    """Put built images (and the package cache they were built from) where the lab's `up` looks
    for them, so it finds them up to date and builds nothing (the VM tests and bench_lab)."""
    images = home / "edge" / "images"
    images.mkdir(parents=True)
    # hard links, not symlinks: the edge serves no file that resolves outside its images directory
    shutil.copytree(discovery, images / "discovery", copy_function=os.link)
    shutil.copytree(runtime, images / "runtime", copy_function=os.link)
    if cache is not None:
        (home / "cache").mkdir()
        (home / "cache" / "images").symlink_to(cache)


def assert_nothing_left(pids: list[int]) -> None:
    assert namespaces() == [], f"namespaces left: {namespaces()}"
    assert [p for p in pids if alive(p)] == [], "lab processes outlived down"
    bridges = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    assert "br0" not in bridges, "a lab bridge appeared in the root namespace"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("labhome"))
    done = lab.up()
    lab.first_up = done
    try:
        assert done.returncode == 0, f"lab up failed:\n{done.stdout}\n{done.stderr}"
        yield lab
    finally:
        pids = [p["pid"] for p in lab.state["processes"].values()] if (lab.home / "lab" / "lab.json").exists() else []
        down = lab.run("down", "--purge")
        assert down.returncode == 0, down.stderr
        assert_nothing_left(pids)


def test_up_builds_the_lab_and_status_shows_it(lab):
    state = lab.state
    assert state["complete"] and set(state["namespaces"]) == {f"{PREFIX}-lan", f"{PREFIX}-site", f"{PREFIX}-edge"}
    assert set(state["processes"]) >= {"site-dhcp", "bind", "temporal", "worker", "api", "api-socket", "edge"}
    shown = lab.run("status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"http://127.0.0.1:{lab.api_port}" in shown.stdout and f"http://127.0.0.1:{lab.temporal_port + 1000}" in shown.stdout
    assert "DEAD" not in shown.stdout and "cluster      lab" in shown.stdout
    said = lab.first_up.stdout.splitlines()  # the Web UI and how to stop it, once, last
    assert said[-2:] == [
        f"The lab is up. Temporal Web UI: http://127.0.0.1:{lab.temporal_port + 1000}",
        f"Stop it with: {'sudo ' if lab.env.get('SUDO_USER') else ''}{VENV_BIN / 'tempered'} lab down   (add --purge to also remove the VMs' disks and the lab's state)",
    ], said


def test_the_site_dhcp_and_the_edge_answer_a_pxe_client_on_the_bridge(lab):
    """A client namespace on the lab's bridge sends a PXE DISCOVER with a lab MAC: the site's
    dnsmasq offers an address, the edge a boot file and no address."""
    client, lan = f"{PREFIX}x-client", f"{PREFIX}-lan"
    subprocess.run(["ip", "netns", "add", client], check=True)
    try:
        subprocess.run(["ip", "link", "add", "eth0", "netns", client, "type", "veth", "peer", "name", "cli-p",
                        "netns", lan], check=True)
        subprocess.run(["ip", "-n", lan, "link", "set", "cli-p", "master", "br0", "up"], check=True)
        subprocess.run(["ip", "-n", client, "link", "set", "eth0", "up"], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", client, sys.executable, "-m", "tests.pxeclient", "discover",
             "--mac", "52:54:00:7e:99:01", "--firmware", "bios", "--timeout", "4"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        assert done.returncode == 0, done.stderr
        site = [a for a in answers if a["yiaddr"] != "0.0.0.0"]
        proxy = [a for a in answers if a["yiaddr"] == "0.0.0.0"]
        assert site and site[0]["yiaddr"].startswith("10.213.0.1"), answers
        assert site[0]["options"].get("server_id") == "10.213.0.2", answers
        assert proxy and proxy[0]["options"].get("server_id") == "10.213.0.3" and proxy[0]["file"], answers
    finally:
        subprocess.run(["ip", "netns", "del", client], capture_output=True)


def _dig(lab: Lab, name: str, key: str | None = None, kind: str = "A") -> list[str]:
    """`dig +short` against the lab's BIND; kind PTR takes an address (`dig -x`)."""
    query = ["-x", name] if kind == "PTR" else [name, kind]
    args = ["dig", "@127.0.0.1", "-p", str(lab.dns_port), "+short", "+tcp", *query]
    if key:
        args[1:1] = ["-y", key]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout.split()


def test_the_lab_bind_answers_in_both_views(lab):
    """A record published with the cluster's stored DNS settings (what the worker uses) reads
    back natively in the lab view and mapped in the corp view."""
    import asyncio

    from activities.dns import Publisher
    from activities.domain.dns import DnsRecord
    from activities.storage import dnsconfig
    from api.lab import control

    env = control.environment_for_home(lab.home / "lab", lab.api_port, lab.temporal_port)
    stored = dnsconfig.for_cluster(control.settings_for(env), "lab")
    assert stored is not None and stored.servers[0].port == lab.dns_port and [v.name for v in stored.views] == ["corp"]
    asyncio.run(Publisher(stored).publish([DnsRecord(name="probe", addresses=["10.213.0.42"])]))
    zone = stored.zone
    corp = stored.views[0].key
    assert _dig(lab, f"probe.{zone}") == ["10.213.0.42"]
    corp_key = f"{corp.algorithm}:{corp.name}:{corp.secret.get_secret_value()}"
    assert _dig(lab, f"probe.{zone}", corp_key) == ["172.20.0.42"]
    assert _dig(lab, "10.213.0.42", kind="PTR") == [f"probe.{zone}."]
    assert _dig(lab, "172.20.0.42", corp_key, kind="PTR") == [f"probe.{zone}."]  # the corp view's own reverse zone


def test_the_edge_and_the_cluster_are_registered(lab):
    edges = {e["name"]: e["policy"] for e in lab.api("/v1/edges")}
    assert edges["lab-edge"] == {**edges["lab-edge"], "mode": "catch-all", "cluster": "lab", "mac_prefixes": ["52:54:00:7e"]}
    cluster = lab.api("/v1/clusters/lab")
    assert cluster["spec"]["quorum_count"] == 1 and cluster["spec"]["join_method"] == "ansible"
    rules = lab.api("/v1/clusters/lab/rules")
    expected = yaml.safe_load((REPO / "infra" / "lab" / "rules.yaml").read_text())
    assert [(r["name"], r["expression"]) for r in rules] == [(r["name"], r["expression"]) for r in expected]
    assert any(r["name"] == "storage" and {"type": "role", "value": "worker"} in r["attributes"] for r in rules)


def test_the_worker_reaches_the_lab_through_its_proxy_command(lab):
    """The worker's TEMPERED_SSH_PROXY_COMMAND (what ssh and Ansible use) opens a stream into the
    lab's LAN: here to the edge's HTTP server."""
    worker = lab.state["processes"]["worker"]["pid"]
    environ = dict(e.split("=", 1) for e in Path(f"/proc/{worker}/environ").read_text().split("\0") if "=" in e)
    command = environ["TEMPERED_SSH_PROXY_COMMAND"].replace("%h", "10.213.0.3").replace("%p", "8080")
    done = subprocess.run(["sh", "-c", command], input="GET /boot.ipxe HTTP/1.0\r\n\r\n", capture_output=True,
                          text=True, timeout=30)
    assert "#!ipxe" in done.stdout, done.stdout + done.stderr


def test_a_second_up_refuses_in_one_line(lab):
    again = lab.up()
    assert again.returncode == 1
    assert again.stderr.strip() == "a lab is up: tempered lab down first", again.stderr


def test_a_port_in_use_is_one_line(tmp_path):
    other = Lab(tmp_path)
    other.env["TEMPERED_LAB_PREFIX"] = PREFIX + "p"
    with socket.socket() as held:
        held.bind(("127.0.0.1", other.api_port))
        held.listen()
        done = other.up()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"port {other.api_port} (API) is in use on 127.0.0.1: stop what holds it, or choose another port"
    ], done.stderr


def test_a_killed_lab_is_refused_by_up_and_cleaned_by_down(tmp_path, lab):
    """Every process SIGKILLed and the state file cut short: `up` names the leftovers, `down` finds
    them by the lab's prefix and its processes' mark; then `up` works again on the kept state.
    (Runs last: it kills the module's lab.)"""
    pids = [p["pid"] for p in lab.state["processes"].values()]
    tftp = [int(p) for p in subprocess.run(["ip", "netns", "pids", f"{PREFIX}-edge"], capture_output=True,
                                           text=True).stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    state_file = lab.home / "lab" / "lab.json"
    state_file.write_text(state_file.read_text()[:100])  # half-written: no PIDs can be read from it
    refused = lab.up()
    assert refused.returncode == 1 and "a stale lab was left behind" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    down = lab.run("down")
    assert down.returncode == 0, down.stderr
    assert_nothing_left(pids + tftp)
    # Without --purge the lab's control-plane state is kept: the next `up` reuses it.
    again = lab.up()
    assert again.returncode == 0, again.stderr
    assert lab.api("/v1/clusters/lab")["spec"]["name"] == "lab"


def test_without_root_up_and_down_say_so_in_one_line(tmp_path):
    """In a user namespace the command runs as an unprivileged user (the files stay readable)."""
    env = os.environ | {"TEMPERED_HOME": str(tmp_path), "TEMPERED_LAB_PREFIX": PREFIX + "r"}
    for command in ("up", "down"):
        done = subprocess.run(["unshare", "-U", str(VENV_BIN / "tempered"), "lab", command], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1 and "needs root" in done.stderr, done.stderr
    shown = subprocess.run([str(VENV_BIN / "tempered"), "lab", "status"], env=env, capture_output=True, text=True)
    assert (shown.returncode, shown.stdout.strip()) == (1, "no lab is up")
