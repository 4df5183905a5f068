"""Lab benchmark: `tempered lab up --machines N` from power-on to `ready`, and where the time goes.

It brings up a lab of its own (a temporary TEMPERED_HOME, its own name prefix and free ports, so a
lab already up is not touched), with the images hard-linked from an existing home when there are
some (`--images-from`, default: this environment's TEMPERED_HOME) so it builds nothing. It waits
for every machine to be `ready` (or one `failed:*`), prints `tempered lab timings` (power-on to each
state; power-on to `ready` split into the control plane's seconds and the VM's) and takes the lab
down with `--purge`. Prints figures; asserts nothing. Root (namespaces, QEMU); minutes under TCG.

    sudo .venv/bin/python -m tests.bench.bench_lab [--machines 3] [--images-from ~/.tempered]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from activities.storage import settings as settings_mod
from tests.servers import free_port

VENV_BIN = Path(sys.executable).parent
PREFIX = f"tb{os.getpid() % 1000}"  # namespaces tbNNN-*: never another lab's


def seed_images(home: Path, source: Path) -> bool:
    """Hard-link `source`'s built images (and point at its package cache) into `home`, as
    tests/vm/test_lab.py does, so `up` finds them up to date. False when `source` has none."""
    images = source / "edge" / "images"
    if not (images / "discovery").is_dir() or not (images / "runtime").is_dir():
        return False
    (home / "edge" / "images").mkdir(parents=True)
    for part in ("discovery", "runtime"):  # hard links: the edge serves no file resolving outside its directory
        shutil.copytree(images / part, home / "edge" / "images" / part, copy_function=os.link)
    if (source / "cache" / "images").is_dir():
        (home / "cache").mkdir()
        (home / "cache" / "images").symlink_to(source / "cache" / "images")
    return True


def lab(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "tempered"), "lab", *args], env=env, text=True, capture_output=True,
                          timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--images-from", type=Path, default=settings_mod.load().home,
                        help="a TEMPERED_HOME whose edge/images to reuse (default: this environment's)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds to wait for every machine to be ready")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root: sudo .venv/bin/python -m tests.bench.bench_lab")

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
    finally:
        down = lab(env, "down", "--purge", timeout=300)
        print(down.stdout.strip(), down.stderr.strip())
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
