"""Machines for tests: network namespaces that each run a real sshd and look like separate hosts.

A `NodeLab` is a private LAN (a bridge in its own namespace) with a control namespace at .1 and
one namespace per node at .11, .12, ... Each node is one process tree started with
`ip netns exec NODE unshare --mount --uts --propagation private -- sh -ec SETUP` that ends in
`exec sshd`: its own hostname, overlays on /etc, /var/lib and /var/log whose upper layers under
`workdir/NAME/` persist across reboots (its "data disk"), a fresh tmpfs on /run, and bind mounts
for /home and /usr/local/sbin (the kubeadm stand-in). Everything else, /tmp included, is the host's.

The test process never talks to a node from the root namespace: ssh and Ansible reach them through
`proxy_command`, which runs `nc` inside the control namespace. Nothing is added to the root
namespace; the node's mounts live only in its own mount namespace and vanish with its processes.
Stopping a node kills every process in its network namespace by PID (SIGTERM, then SIGKILL), so
whatever a test or a playbook started there goes too; closing the lab also deletes the namespaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netlab import Lab, ip

SSHD = "/usr/sbin/sshd"
STANDIN = Path(__file__).parents[1] / "infra" / "lab" / "standin"
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


def nodelab_available() -> str | None:
    """Why a node lab cannot run here, or None if it can."""
    from tests.netlab import lab_available

    reason = lab_available()
    if reason:
        return reason
    if not os.access(SSHD, os.X_OK):
        return "openssh-server is missing (no /usr/sbin/sshd)"
    for tool in ("nc", "ssh", "ssh-keygen", "nsenter", "unshare", "useradd", "sudo"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


def standin_image(image: Path, state: Path) -> Path:
    """`image` made a node lab's /usr/local/sbin holding the kubeadm stand-in (and kubectl), whose
    nodes share the fake cluster in `state`, as the nodes of one cluster share etcd. Returns `image`."""
    image.mkdir(parents=True, exist_ok=True)
    shutil.copy2(STANDIN / "kubeadm", image / "kubeadm")
    (image / "kubectl").symlink_to("kubeadm")
    (image / "standin.json").write_text(json.dumps({"state_dir": str(state), "root": ""}))
    return image


def control_planes_out_at_once(calls: list[dict]) -> list[tuple[str, str, float]]:
    """The quorum rule read from the kubeadm stand-in's records (its calls.jsonl, parsed): a
    control-plane node is out of service from the end of a drain of it (a drain that failed
    cordoned it too) to the end of an uncordon of it. Returns (out, also_out, t) for each drain
    that took a control-plane node out while another one was: empty when the rule held."""
    out: dict[str, float] = {}
    found = []
    ends = sorted((c for c in calls if c["phase"] == "end" and c.get("control_plane")), key=lambda c: c["t"])
    for call in ends:
        verb = next((a for a in call["argv"][1:] if a in ("drain", "uncordon")), None)
        if call["argv"][0] != "kubectl" or verb is None:
            continue
        node = call["node"]
        if verb == "drain":
            found += [(other, node, call["t"]) for other in out if other != node]
            out.setdefault(node, call["t"])
        elif call["rc"] == 0:
            out.pop(node, None)
    return found


def init_vars(node: "Node", cluster: str = "c") -> dict:
    """join.yml's variables (as the `kubeadm_join` activity passes them) that make `node` the
    master-prime of a new cluster: `kubeadm init`."""
    return {
        "tempered_action": "init", "tempered_role": "master-prime", "cluster_name": cluster, "node_name": node.name,
        "advertise_address": node.ip, "kubernetes_version": "1.31.0", "control_plane_endpoint": f"{node.ip}:6443",
        "pod_subnet": "10.244.0.0/16", "service_subnet": "10.96.0.0/12", "node_labels": [], "node_taints": [],
    }


def netns_pids(netns: str) -> list[int]:
    """The PIDs of live processes in a named network namespace (none if it is gone)."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()] if out.returncode == 0 else []


def kill_netns(netns: str, term_timeout: float = 5.0, kill_timeout: float = 10.0) -> None:
    """Stop every process in a network namespace by its PID: SIGTERM, then SIGKILL; wait for all."""
    for sig, timeout in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
        deadline = time.monotonic() + timeout
        signalled: set[int] = set()
        while True:
            pids = netns_pids(netns)
            if not pids:
                return
            for pid in set(pids) - signalled:  # also those forked after the first round
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                signalled.add(pid)
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
    raise RuntimeError(f"processes in {netns} survive SIGKILL: {netns_pids(netns)}")


# Runs as root in the node's fresh mount+UTS namespaces. $1 node name, $2 node dir, $3 sshd config.
_SETUP = r"""
name=$1 dir=$2 config=$3
echo "nodelab: booting $name"
hostname "$name"
# The root namespace's /run/netns (and every namespace file in it) would otherwise stay pinned here.
umount -l /run/netns 2>/dev/null || true
for layer in etc:/etc var-lib:/var/lib var-log:/var/log; do
    key=${layer%%:*} target=${layer#*:}
    mount -t overlay overlay -o "lowerdir=$target,upperdir=$dir/$key.upper,workdir=$dir/$key.work" "$target"
done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -m 0755 /run/sshd /run/lock
mount --bind "$dir/sbin" /usr/local/sbin
mount --bind "$dir/home" /home
if ! grep -q '^tempered:' /etc/passwd; then
    useradd --no-log-init --create-home --user-group --shell /bin/bash tempered
    usermod -p '*' tempered
    install -d -m 0700 -o tempered -g tempered /home/tempered/.ssh
    install -m 0600 -o tempered -g tempered "$dir/authorized_keys" /home/tempered/.ssh/authorized_keys
    echo 'tempered ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/tempered
    chmod 0440 /etc/sudoers.d/tempered
    echo "nodelab: created user tempered"
fi
echo "$name" > /etc/hostname
grep -q "[[:space:]]$name\$" /etc/hosts || printf '127.0.1.1\t%s\n' "$name" >> /etc/hosts
exec /usr/sbin/sshd -D -e -f "$config"
"""

_SSHD_CONFIG = """\
ListenAddress {ip}
Port 22
HostKey {host_key}
PidFile none
UsePAM no
AllowUsers tempered
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
StrictModes yes
AuthorizedKeysFile .ssh/authorized_keys
Subsystem sftp internal-sftp
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
"""


@dataclass
class Node:
    """One machine: a network namespace plus a mount+UTS namespace in which sshd runs."""

    lab: "NodeLab"
    name: str
    ip: str
    netns: str
    dir: Path
    host_key: str = ""
    proc: subprocess.Popen | None = None
    boot_seconds: float = 0.0

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def pid(self) -> int:
        """sshd's PID: the process that holds the node's mount and UTS namespaces."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"node {self.name} is not running\n{self.tail()}")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> None:
        if self.running:
            return
        began = time.monotonic()
        self._install_image()
        key = self.dir / "ssh_host_ed25519_key"
        for old in (key, key.with_suffix(".pub")):
            old.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{self.name}", "-f", str(key)],
            check=True, capture_output=True,
        )
        self.host_key = " ".join(key.with_suffix(".pub").read_text().split()[:2])
        config = self.dir / "sshd_config"
        config.write_text(_SSHD_CONFIG.format(ip=self.ip, host_key=key))
        with open(self.log, "a") as log:
            log.write(f"--- nodelab: start {self.name} at {time.strftime('%H:%M:%S')}\n")
        self.proc = self.lab.lab.run(
            self.netns,
            ["unshare", "--mount", "--uts", "--propagation", "private", "--",
             "sh", "-ec", _SETUP, "nodelab-setup", self.name, str(self.dir), str(config)],
            self.log,
            env={"PATH": NODE_PATH, "LANG": "C.UTF-8", "HOME": "/root"},
        )
        self.lab.wait_ssh(self)
        self.boot_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Power off: every process in the node's network namespace is stopped, by PID."""
        kill_netns(self.netns)
        if self.proc is not None:
            self.proc.wait(timeout=10)
            if self.proc in self.lab.lab.processes:
                self.lab.lab.processes.remove(self.proc)
            self.proc = None

    def reboot(self) -> None:
        """Same disk (upper layers, /home), fresh /run, a new host key."""
        self.stop()
        self.start()

    def exec(
        self, *argv: str, input: str | None = None, timeout: float = 60, check: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command as root inside the node (its net, mount and UTS namespaces)."""
        command = ["nsenter", f"--target={self.pid}", "--net", "--mount", "--uts", "--", *argv]
        return subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=check,
            env={"PATH": NODE_PATH, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})},
        )

    def read(self, path: str) -> str | None:
        """A file's text as the node sees it, or None if it does not exist there."""
        done = self.exec("sh", "-c", 'test -e "$1" || exit 3; cat -- "$1"', "read", path)
        if done.returncode == 3:
            return None
        if done.returncode != 0:
            raise RuntimeError(f"reading {path} on {self.name}: {done.stderr.strip()}")
        return done.stdout

    def _install_image(self) -> None:
        """The node's disk layout; /usr/local/sbin is refreshed from the stand-in at every boot."""
        for sub in ("etc.upper", "etc.work", "var-lib.upper", "var-lib.work", "var-log.upper", "var-log.work",
                    "home"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "authorized_keys").write_text(self.lab.authorized_key.strip() + "\n")
        sbin = self.dir / "sbin"
        shutil.rmtree(sbin, ignore_errors=True)
        if self.lab.standin_dir.is_dir():
            shutil.copytree(self.lab.standin_dir, sbin, symlinks=True)
        else:
            sbin.mkdir()
        sbin.chmod(0o755)


@dataclass
class NodeLab:
    """A LAN of nodes reachable through a control namespace; a context manager."""

    workdir: Path
    authorized_key: str
    standin_dir: Path
    ctl_netns: str
    boot_timeout: float = 20.0
    lab: Lab = field(default_factory=Lab)
    nodes: dict[str, Node] = field(default_factory=dict)
    lan_netns: str = ""

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.standin_dir = Path(self.standin_dir)
        if re.search(r"[,:\s\\]", str(self.workdir)):
            raise ValueError(f"overlayfs options cannot carry this path: {self.workdir}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.lan_netns = self.lab.netns("lan")
            self.lab.bridge(self.lan_netns)
            ip("netns", "add", self.ctl_netns)
            self.lab.namespaces.append(self.ctl_netns)
            ip("link", "set", "lo", "up", netns=self.ctl_netns)
            self.lab.attach(self.lan_netns, self.ctl_netns, "ctl", 1)
        except BaseException:
            self.close()
            raise

    @property
    def proxy_command(self) -> str:
        """For ssh's and Ansible's ProxyCommand: nc run inside the control namespace."""
        return f"nsenter --net=/run/netns/{self.ctl_netns} nc %h %p"

    def __enter__(self) -> "NodeLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, name: str) -> Node:
        if not _NAME.match(name):
            raise ValueError(f"not a usable hostname: {name!r}")
        if name in self.nodes:
            raise ValueError(f"node {name} exists")
        host = 11 + len(self.nodes)
        netns = self.lab.netns(f"n{host}")
        self.lab.attach(self.lan_netns, netns, f"n{host}", host)
        node = Node(self, name, self.lab.address(host), netns, self.workdir / name)
        self.nodes[name] = node
        node.start()
        return node

    def reachable(self, ip_address: str, port: int = 22) -> bool:
        done = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.ctl_netns}", "nc", "-z", "-w1", ip_address, str(port)],
            capture_output=True,
        )
        return done.returncode == 0

    def wait_ssh(self, node: Node) -> None:
        deadline = time.monotonic() + self.boot_timeout
        while True:
            if node.proc is None or node.proc.poll() is not None:
                raise RuntimeError(f"node {node.name} died while booting; {node.log}:\n{node.tail()}")
            if self.reachable(node.ip):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sshd on {node.name} ({node.ip}) not answering after {self.boot_timeout}s; "
                    f"{node.log}:\n{node.tail()}"
                )
            time.sleep(0.02)

    def close(self) -> None:
        """Stop every process in every namespace of the lab by PID, then delete the namespaces."""
        errors: list[str] = []
        for ns in reversed(self.lab.namespaces):
            try:
                kill_netns(ns)
            except RuntimeError as e:
                errors.append(str(e))
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    errors.append(f"sshd of {node.name} (pid {node.proc.pid}) did not exit")
                node.proc = None
        names = list(self.lab.namespaces)
        self.lab.close()
        for ns in names:  # a namespace file can be busy for a moment while a mount namespace dies
            for _ in range(50):
                if not os.path.exists(f"/run/netns/{ns}"):
                    break
                time.sleep(0.05)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            else:
                errors.append(f"namespace {ns} could not be deleted")
        if errors:
            raise RuntimeError("; ".join(errors))
