"""`tempered lab up | status | down`: the whole pipeline's parts on one machine, and gone again.

`up` checks everything it can before it starts anything (root, Debian packages, a lab already
up or left behind, ports), then starts the parts in order, recording each in the state file as
it starts. If a part fails, `up` prints one line and takes down what it had started.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from api.lab import cluster, control, edge, network, site, vm
from api.lab import state as state_mod
from api.lab.state import MARKER, LabState

IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")
IPXE_BUILDS = Path("/usr/lib/ipxe/undionly.kpxe")


class LabError(Exception):
    """A reason the lab cannot go on, said in one line."""


@dataclass(frozen=True)
class Options:
    machines: int = 0
    firmware: tuple[str, ...] = ()  # empty: the lab's mix (vm.specs)
    ports: control.Ports = control.Ports()
    dns_port: int = 5300
    control_plane: str | None = None  # a running stack's API URL, instead of the lab's own


# ---- checks --------------------------------------------------------------------------------


def missing_packages(opts: Options) -> list[str]:
    """The Debian packages the lab needs and this machine lacks (QEMU's only when VMs run)."""
    need = {
        "dnsmasq-base": site.dnsmasq_binary() is not None,
        "bind9": site.named_binary() is not None,
        "iproute2": shutil.which("ip") is not None,
        "curl": shutil.which("curl") is not None,
        "netcat-openbsd": shutil.which("nc") is not None,
    }
    if opts.machines > 0:
        need["qemu-system-x86"] = shutil.which("qemu-system-x86_64") is not None
        need["ipxe-qemu"] = IPXE_ROM.exists()
        need["ipxe"] = IPXE_BUILDS.exists()  # the edge's TFTP serves Debian's iPXE builds
        need["openssh-client"] = shutil.which("ssh") is not None  # Ansible joins the VMs over SSH
        # The runtime image's build checks these even when its image is up to date.
        need["mmdebstrap"] = shutil.which("mmdebstrap") is not None
        need["squashfs-tools"] = shutil.which("mksquashfs") is not None
        if any(spec.firmware == "uefi" for spec in plan_vms(opts)):
            need["ovmf"] = vm.OVMF_CODE.exists()
    return [name for name, present in need.items() if not present]


def preflight(opts: Options) -> None:
    if os.geteuid() != 0:
        raise LabError("tempered lab needs root (network namespaces, a bridge, QEMU taps): run it with sudo")
    if missing := missing_packages(opts):
        raise LabError(
            f"missing Debian packages: {' '.join(missing)} "
            f"(apt-get install --no-install-recommends {' '.join(missing)}, or run make demo, which installs them)"
        )
    recorded = state_mod.load()
    if recorded is not None and recorded.complete and network.recorded_alive(recorded):
        raise LabError("a lab is up: tempered lab down first")
    stale = network.lab_namespaces()
    if recorded is not None or stale:
        left = f"namespaces {', '.join(stale)}" if stale else f"state in {recorded.path}"
        raise LabError(f"a stale lab was left behind ({left}), probably killed: tempered lab down first")
    ports = {} if opts.control_plane else opts.ports.all()
    for what, port in {**ports, "BIND": opts.dns_port}.items():
        if not site.port_free(port):
            raise LabError(f"port {port} ({what}) is in use on 127.0.0.1: stop what holds it, or choose another port")
    bad = set(opts.firmware) - {"bios", "uefi"}
    if bad:
        raise LabError(f"unknown firmware {', '.join(sorted(bad))}: use bios and/or uefi")


# ---- up ------------------------------------------------------------------------------------


def up(opts: Options, say=print) -> LabState:
    """Bring the lab up; on any failure take it down again and raise LabError."""
    preflight(opts)
    state = LabState(state_mod.lab_dir())
    os.environ[MARKER] = str(state.dir)  # every child, QEMU included, carries the lab's mark
    state.save()
    try:
        if opts.machines > 0:  # first: minutes on a first run, and nothing else is up should it fail
            edge.build_images(say)
        say("network: namespaces and the bridge")
        network.build(state)
        say("site DHCP (dnsmasq) and DNS (BIND, views lab and corp)")
        site.start_dhcp(state)
        dns = site.start_dns(state, opts.dns_port)
        if opts.control_plane:
            say(f"control plane: using {opts.control_plane}")
            api = control.use_running(state, opts.control_plane)
        else:
            say("control plane: Temporal, the worker and the API")
            api = control.start(state, opts.ports)
        say("cluster lab: rules and DNS settings")
        cluster.create(api, state, opts.machines, dns)
        say("boot edge")
        edge.start(state, edge.register(api, state, cluster.NAME))
        if opts.machines > 0:
            start_vms(state, plan_vms(opts), api)  # ---- VMs: api/lab/vm.py ----
        state.complete = True
        state.save()
        return state
    except BaseException as e:
        down(state_mod.load() or state)
        if not isinstance(e, Exception):
            raise  # Ctrl-C: taken down all the same
        what = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"  # ours say it all
        raise LabError(f"the lab did not come up: {what}") from e


def plan_vms(opts: Options) -> list:
    """The machines: the lab's mix (`vm.specs`: BIOS, UEFI, a two-disk BIOS, then in turn),
    with --firmware, when given, taken in turn instead."""
    planned = vm.specs(opts.machines)
    if not opts.firmware:
        return planned
    return [replace(spec, firmware=opts.firmware[i % len(opts.firmware)]) for i, spec in enumerate(planned)]


def stop_command() -> str:
    """How whoever ran `up` stops the lab: the same program (e.g. `.venv/bin/tempered`, as
    `make demo` runs it), with sudo when they used sudo."""
    program = sys.argv[0] if Path(sys.argv[0]).name == "tempered" else "tempered"
    return f"{'sudo ' if os.environ.get('SUDO_USER') else ''}{program} lab down"


def client_env(state: LabState) -> dict[str, str]:
    """TEMPERED_API and TEMPERED_TOKEN for the CLI's client to reach this lab's control plane
    (its own admin token, unless it uses a running stack, whose token the caller has)."""
    env = {"TEMPERED_API": state.api_url or ""}
    token_file = state.dir / "control" / "admin-token"
    if not state.external_control_plane and token_file.exists():
        env["TEMPERED_TOKEN"] = token_file.read_text().strip()
    return env


def start_vms(state: LabState, specs: list, api: control.Api) -> None:
    """Start each VM on the lab's bridge, inside the LAN namespace, and record its PID; each is
    registered into the lab's cluster with QMP power (its BMC) as it starts.
    (QEMU runs inside tlab-lan, so `down` stops it with the namespace's processes too.)
    Every VM shares one host directory, the kubeadm stand-in's cluster state (etcd's part):
    kept by `down`, as the VMs' disks are, and removed with the lab's directory by `down --purge`."""
    share = state.dir / "kubeadm-standin"
    share.mkdir(exist_ok=True)
    for spec in specs:
        machine = vm.Vm(spec, state.dir / "vms" / spec.name)
        pid = machine.start(network.LAN, network.BRIDGE, str(share))
        state.add_process(f"vm-{spec.name}", pid, [], network.LAN)
        cluster.register_vm(api, machine.identity()["uuid"], spec.mac, machine.qmp_socket)


# ---- status --------------------------------------------------------------------------------


def status(say=print) -> bool:
    """Print what is up; True when the recorded lab is whole and every process alive."""
    state = state_mod.load()
    stale = network.lab_namespaces()
    if state is None:
        say("no lab is up" + (f" (but namespaces are left: {', '.join(stale)}; tempered lab down)" if stale else ""))
        return False
    say(f"lab in {state.dir} ({'up' if state.complete else 'incomplete'})")
    say(f"  namespaces   {', '.join(stale) or 'none'}   bridge {state.bridge or '-'}")
    alive = network.recorded_alive(state)
    for name, proc in state.processes.items():
        say(f"  {name:<12} pid {proc.pid:<8} {'alive' if name in alive else 'DEAD'}"
            + (f"  (in {proc.netns})" if proc.netns else ""))
    say(f"  API          {state.api_url or '-'}" + ("  (a running stack)" if state.external_control_plane else ""))
    say(f"  Temporal UI  {state.ui_url or '-'}")
    say(f"  DNS          {state.dns.get('server', '-')} zone {state.dns.get('zone', '-')}: {state.dns.get('views', '')}")
    say(f"  cluster      {state.cluster or '-'}   edge {state.edge or '-'} (catch-all for {edge.MAC_PREFIX})")
    whole = state.complete and len(alive) == len(state.processes) and set(state.namespaces) <= set(stale)
    return whole


# ---- down ----------------------------------------------------------------------------------


def down(state: LabState | None = None, purge: bool = False) -> list[str]:
    """Stop every lab process, delete every lab namespace (their bridge, veths and taps go with
    them); `purge` also removes disks, images and the control plane's state. Returns what is
    left (empty when all went)."""
    state = state or state_mod.load() or LabState(state_mod.lab_dir())
    left = [f"pid {pid}" for pid in network.stop_processes(state)]
    left += [f"namespace {ns}" for ns in network.delete_namespaces(state)]
    if not left:
        (state.dir / "api.sock").unlink(missing_ok=True)
        state.path.unlink(missing_ok=True)
        if purge and state.dir.exists():
            shutil.rmtree(state.dir)
    return left
