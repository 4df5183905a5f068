"""Smoke test of tests/nodelab.py: namespace nodes that ssh, sudo and Ansible see as separate machines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.nodelab import Node, NodeLab, netns_pids, nodelab_available
from tests.servers import wait_for

pytestmark = [
    pytest.mark.skipif(nodelab_available() is not None, reason=nodelab_available() or ""),
    pytest.mark.timeout(120),
]

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(key)], check=True)
    return key


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    """A tiny fake kubeadm, laid out like the real stand-in directory."""
    folder = tmp_path / "standin"
    folder.mkdir()
    kubeadm = folder / "kubeadm"
    kubeadm.write_text('#!/bin/sh\necho "kubeadm stand-in: $(basename "$0") $*"\n')
    kubeadm.chmod(0o755)
    (folder / "kubectl").symlink_to("kubeadm")
    (folder / "standin.json").write_text("{}\n")
    return folder


def known_hosts(path: Path, *nodes: Node) -> Path:
    path.write_text("".join(f"{node.ip} {node.host_key}\n" for node in nodes))
    return path


def ssh(lab: NodeLab, key: Path, hosts: Path, node: Node, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", "none", "-i", str(key), "-o", "IdentitiesOnly=yes",
         "-o", f"ProxyCommand={lab.proxy_command}", "-o", f"UserKnownHostsFile={hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
         f"tempered@{node.ip}", command],
        capture_output=True, text=True, timeout=30,
    )


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"




def sleepers(node: Node) -> list[int]:
    """The `sleep` processes running in a node's network namespace."""
    def command(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""
    return [pid for pid in netns_pids(node.netns) if command(pid) == "sleep" and alive(pid)]


def our_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(f"tpd-{os.getpid()}-")]


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


def test_nodes_are_separate_machines(tmp_path: Path, client_key: Path, standin: Path):
    host_files = {f: Path(f).read_bytes() for f in ("/etc/passwd", "/etc/group", "/etc/shadow")}
    marker = f"nodelab-{os.getpid()}"
    assert not Path(f"/etc/{marker}").exists()
    workdir = tmp_path / "lab"
    pids: set[int] = set()

    with NodeLab(workdir, (client_key.with_suffix(".pub")).read_text(), standin,
                 f"tpd-{os.getpid()}-nodes-ctl") as lab:
        one, two = lab.add("node-1"), lab.add("node-2")
        print(f"boot: node-1 {one.boot_seconds:.3f}s, node-2 {two.boot_seconds:.3f}s")
        assert (one.ip, two.ip) == (lab.lab.address(11), lab.lab.address(12))
        hosts = known_hosts(tmp_path / "known_hosts", one, two)

        def run(node: Node, command: str, hosts: Path = hosts) -> str:
            done = ssh(lab, client_key, hosts, node, command)
            assert done.returncode == 0, f"{command} on {node.name}: {done.stderr}\n{node.tail()}"
            return done.stdout

        # Its own hostname; tempered may sudo without a password.
        assert run(one, "hostname") == "node-1\n"
        assert run(two, "hostname; sudo -n id -u") == "node-2\n0\n"

        # /etc is the node's own: invisible to the host and to the other node.
        run(one, f"echo one | sudo -n tee /etc/{marker} >/dev/null; echo kept | sudo -n tee /var/lib/{marker}")
        assert one.read(f"/etc/{marker}") == "one\n"
        assert not Path(f"/etc/{marker}").exists() and not Path(f"/var/lib/{marker}").exists()
        assert two.read(f"/etc/{marker}") is None and two.read(f"/var/lib/{marker}") is None
        run(one, "echo gone | sudo -n tee /run/volatile")

        # The kubeadm stand-in is on the node's /usr/local/sbin (on root's PATH, not on tempered's).
        assert run(one, "/usr/local/sbin/kubeadm version") == "kubeadm stand-in: kubeadm version\n"
        assert run(one, "sudo -n kubectl get nodes") == "kubeadm stand-in: kubectl get nodes\n"
        assert run(one, "readlink /usr/local/sbin/kubectl") == "kubeadm\n"

        # A reboot keeps the disk, empties /run and brings a new host key.
        old_key = one.host_key
        one.reboot()
        assert one.host_key != old_key
        stale = ssh(lab, client_key, hosts, one, "true")
        assert stale.returncode == 255 and "Host key verification failed" in stale.stderr, stale.stderr
        hosts = known_hosts(tmp_path / "known_hosts", one, two)
        assert run(one, f"cat /var/lib/{marker} /etc/{marker}; test ! -e /run/volatile", hosts) == "kept\none\n"

        # Power off kills what runs there (here a daemon started like a playbook starts containerd).
        daemon = two.exec("start-stop-daemon", "--start", "--background", "--make-pidfile",
                          "--pidfile", "/run/sleeper.pid", "--exec", "/bin/sleep", "--", "600")
        assert daemon.returncode == 0, daemon.stderr
        sleeper = int(wait_for(lambda: (two.read("/run/sleeper.pid") or "").strip(), "the daemon's pidfile"))
        wait_for(lambda: sleepers(two) == [sleeper], "the daemon to run sleep in node-2")
        two.stop()
        assert not alive(sleeper) and netns_pids(two.netns) == []
        assert not lab.reachable(two.ip)
        down = ssh(lab, client_key, hosts, two, "true")
        assert down.returncode == 255
        two.start()
        hosts = known_hosts(tmp_path / "known_hosts", one, two)
        assert run(two, "hostname", hosts) == "node-2\n"

        # Leave something running for close() to stop.
        # (A pidfile of its own: without one, start-stop-daemon refuses when any `sleep` runs on the host.)
        again = two.exec("start-stop-daemon", "--start", "--background", "--make-pidfile",
                         "--pidfile", "/run/sleeper-2.pid", "--exec", "/bin/sleep", "--", "600")
        assert again.returncode == 0, again.stdout + again.stderr
        wait_for(lambda: sleepers(two), "the second daemon to run sleep in node-2")
        for ns in lab.lab.namespaces:
            pids.update(netns_pids(ns))
        assert len(pids) >= 3

    assert {f: Path(f).read_bytes() for f in host_files} == host_files
    assert not Path(f"/etc/{marker}").exists()
    assert our_namespaces() == []
    assert [pid for pid in pids if alive(pid)] == []
    assert mounts_under(workdir) == []


@pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="ansible-core is not installed in the venv")
def test_ansible_reaches_nodes(tmp_path: Path, client_key: Path, standin: Path):
    with NodeLab(tmp_path / "lab", client_key.with_suffix(".pub").read_text(), standin,
                 f"tpd-{os.getpid()}-nodes-ctl") as lab:
        nodes = [lab.add("node-1"), lab.add("node-2")]
        hosts = known_hosts(tmp_path / "known_hosts", *nodes)
        ssh_args = (f'-o ProxyCommand="{lab.proxy_command}" -o UserKnownHostsFile={hosts} '
                    "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
        inventory = tmp_path / "inventory.ini"
        inventory.write_text(
            "[nodes]\n"
            + "".join(f"{n.name} ansible_host={n.ip}\n" for n in nodes)
            + "[nodes:vars]\n"
            f"ansible_user=tempered\nansible_ssh_private_key_file={client_key}\n"
            f"ansible_ssh_common_args='{ssh_args}'\nansible_python_interpreter=/usr/bin/python3\n"
        )
        playbook = tmp_path / "playbook.yml"
        playbook.write_text(
            "- hosts: nodes\n"
            "  gather_facts: false\n"
            "  become: true\n"
            "  tasks:\n"
            "    - command: hostname\n"
            "      register: hostname\n"
            "    - assert: {that: [hostname.stdout == inventory_hostname]}\n"
            "    - copy: {dest: /etc/from-ansible, content: \"{{ inventory_hostname }}\\n\"}\n"
        )
        env = {
            **os.environ,
            "ANSIBLE_HOME": str(tmp_path / "ansible"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible" / "tmp"),
            # No ControlPersist master left behind in the root namespace after the test.
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_NOCOLOR": "1",
        }
        began = time.monotonic()
        done = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)],
            capture_output=True, text=True, env=env, timeout=90,
        )
        print(f"ansible-playbook: {time.monotonic() - began:.1f}s")
        assert done.returncode == 0, done.stdout + done.stderr
        for node in nodes:
            assert node.read("/etc/from-ansible") == f"{node.name}\n"
        assert not Path("/etc/from-ansible").exists()
    assert our_namespaces() == []
