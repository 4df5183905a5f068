"""Lab benchmark: `tempered lab up --machines N` from power-on to `ready`, and where the time goes.

It brings up a lab of its own (a temporary TEMPERED_HOME, its own name prefix and free ports, so a
lab already up is not touched), with the images hard-linked from an existing home when there are
some (`--images-from`, default: this environment's TEMPERED_HOME) so it builds nothing. It waits
for every machine to be `ready` (or one `failed:*`), prints `tempered lab timings` (power-on to each
state; power-on to `ready` split into the control plane's seconds and the VM's) and takes the lab
down with `--purge`. Prints figures; asserts nothing. Root (namespaces, QEMU); minutes under TCG.

Then the anchor for the `ansible` column: the same join playbook, run the same way (ansible-runner
through `activities.ansible.run`, as the `kubeadm_join` activity and tests/lab/test_join.py run
it), against natively running sshd nodes in network namespaces (tests/nodelab.py, with the
kubeadm stand-in): `kubeadm init` of one node, then the join credentials on it and the join of a
second node as a worker. What the lab's column takes beyond it is the emulated guest's.
`--anchor-only` runs just that (seconds, no VM).

    sudo .venv/bin/python -m tests.bench.bench_lab [--machines 3] [--images-from ~/.tempered]
    sudo .venv/bin/python -m tests.bench.bench_lab --anchor-only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from activities.storage import settings as settings_mod
from tests.lab.test_lab_infra import seed_images as seed_lab_images
from tests.servers import free_port

VENV_BIN = Path(sys.executable).parent
PREFIX = f"tb{os.getpid() % 1000}"  # namespaces tbNNN-*: never another lab's


def seed_images(home: Path, source: Path) -> bool:
    """Hard-link `source`'s built images (and point at its package cache) into `home`, so `up`
    finds them up to date. False when `source` has none."""
    images, cache = source / "edge" / "images", source / "cache" / "images"
    if not (images / "discovery").is_dir() or not (images / "runtime").is_dir():
        return False
    seed_lab_images(home, images / "discovery", images / "runtime", cache if cache.is_dir() else None)
    return True


def lab(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "tempered"), "lab", *args], env=env, text=True, capture_output=True,
                          timeout=timeout)


def ansible_seconds(env: dict[str, str]) -> str:
    """Each lab machine's `ansible` column (the `kubeadm_join` activity), from `lab timings --json`."""
    shown = lab(env, "timings", "--json", timeout=120)
    try:
        figures = json.loads(shown.stdout)
    except json.JSONDecodeError:
        return "no figures"
    return ", ".join(f"{f['machine']} {f['by_kind'].get('ansible', 0.0):.1f} s" for f in figures) or "no machine"


def play(playbook: str, node, group: str, extravars: dict, settings) -> tuple[float, dict]:
    """Seconds of one run of `infra/ansible/<playbook>` against one node, and its set_stats data."""
    from activities import ansible

    host = ansible.Host(node.name, node.ip, node.host_key, [group])
    began = time.monotonic()
    outcome = ansible.run(playbook, [host], extravars, settings, f"anchor-{node.name}", ansible.Progress())
    seconds = time.monotonic() - began
    if not outcome.ok:
        raise RuntimeError(f"{playbook} on {node.name}: {outcome.summary()}")
    return seconds, outcome.stats


def standin_seconds(state: Path, subcommand: str) -> float:
    """Seconds the stand-in's own `kubeadm <subcommand>` ran, from its start and end records."""
    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    runs = [c for c in calls if c["argv"][1:2] == [subcommand] and c["argv"][2:3] != ["phase"]]
    started = {c["pid"]: c["t"] for c in runs if c["phase"] == "start"}
    return sum(c["t"] - started[c["pid"]] for c in runs if c["phase"] == "end" and c["pid"] in started)


def anchor() -> dict[str, float]:
    """The join playbook's seconds against native namespace nodes: init, credentials, a worker's join."""
    from activities import sshkey
    from activities.join import new_token
    from tests.nodelab import NodeLab, init_vars, nodelab_available, standin_image

    if (reason := nodelab_available()) is not None:
        raise RuntimeError(f"no node lab here: {reason}")
    home = Path(tempfile.mkdtemp(prefix="ta-", dir="/tmp"))  # short: ssh control sockets live under it
    settings = replace(settings_mod.load(), home=home, database_url=f"sqlite:///{home / 'tempered.db'}")
    state = home / "cluster"  # the stand-in's fake cluster, shared by the nodes
    state.mkdir()
    try:
        with NodeLab(home / "nodes", sshkey.public_key(settings), standin_image(home / "image", state),
                     f"{PREFIX}-anchor-ctl") as nodes:
            settings = replace(settings, ssh_proxy_command=nodes.proxy_command)
            prime, worker = nodes.add("anchor-m1"), nodes.add("anchor-w1")
            init, _ = play("join.yml", prime, "node", init_vars(prime), settings)
            token = new_token()
            minted, stats = play("credentials.yml", prime, "control_plane", {
                "cluster": "c", "join_token": token, "token_ttl": "3600s", "certificate_key": "", "upload_stamp": 0,
            }, settings)
            joined, _ = play("join.yml", worker, "node", init_vars(worker) | {
                "tempered_action": "join", "tempered_role": "worker", "control_plane_endpoint": f"{prime.ip}:6443",
                "join_token": token, "ca_cert_hash": stats["ca_cert_hash"],
            }, settings)
            return {"init": init, "credentials": minted, "join": joined,
                    "kubeadm init": standin_seconds(state, "init"), "kubeadm join": standin_seconds(state, "join")}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def print_anchor() -> None:
    try:
        seconds = anchor()
    except Exception as e:  # a figure, not a test: say why there is none
        print(f"anchor: not measured: {e}")
        return
    print(f"anchor: the join playbook against a native sshd node in a namespace: init {seconds['init']:.1f} s "
          f"(the stand-in's kubeadm init {seconds['kubeadm init']:.1f} s of it); a second node: credentials on the "
          f"first {seconds['credentials']:.1f} s, join {seconds['join']:.1f} s (kubeadm join "
          f"{seconds['kubeadm join']:.1f} s of it); same ansible-runner path as the kubeadm_join activity", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--images-from", type=Path, default=settings_mod.load().home,
                        help="a TEMPERED_HOME whose edge/images to reuse (default: this environment's)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds to wait for every machine to be ready")
    parser.add_argument("--anchor-only", action="store_true",
                        help="only the anchor: the join playbook against native namespace nodes (no VM)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root: sudo .venv/bin/python -m tests.bench.bench_lab")
    if args.anchor_only:
        print_anchor()
        return

    home = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))  # short: ssh control sockets live under it
    seeded = seed_images(home, args.images_from.expanduser())
    print(f"lab in {home}, {args.machines} machine(s); images "
          + (f"from {args.images_from}" if seeded else "built now (~110 s)"), flush=True)
    env = os.environ | {"TEMPERED_HOME": str(home), "TEMPERED_LAB_PREFIX": PREFIX}
    ports = ["--api-port", str(free_port()), "--temporal-port", str(free_port()), "--dns-port", str(free_port())]
    started = time.monotonic()
    try:
        up = lab(env, "up", "--machines", str(args.machines), *ports, "--timeout", str(args.timeout),
                 timeout=args.timeout + 900)
        print(f"lab up exited {up.returncode} after {time.monotonic() - started:.0f} s "
              f"({'every machine ready' if up.returncode == 0 else 'not every machine ready'})")
        if up.returncode != 0:
            print(up.stdout[-3000:], up.stderr[-3000:], sep="\n")
        timings = lab(env, "timings", timeout=120)
        print(timings.stdout, timings.stderr, sep="")
        ansible = ansible_seconds(env)
    finally:
        down = lab(env, "down", "--purge", timeout=300)
        print(down.stdout.strip(), down.stderr.strip())
        shutil.rmtree(home, ignore_errors=True)
    print(f"ansible (the kubeadm_join activity) in the lab: {ansible}")
    print_anchor()  # after `down`: no VM competes for the cores


if __name__ == "__main__":
    main()
