"""TFTP for the iPXE binaries, served by dnsmasq in TFTP-only mode (no DNS, no DHCP).

dnsmasq is a maintained, widely deployed TFTP server: read-only, confined to its root (it
refuses names that climb out of it), and started and stopped by the edge as a child process.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

# Debian's ipxe package; the first existing path of each name wins.
IPXE_BUILDS = {
    "undionly.kpxe": ["/usr/lib/ipxe/undionly.kpxe"],
    "snponly.efi": ["/usr/lib/ipxe/snponly.efi"],
    "ipxe.efi": ["/usr/lib/ipxe/ipxe.efi", "/boot/ipxe.efi"],
}


def prepare_root() -> tuple[Path, list[str]]:
    """A fresh TFTP root holding the iPXE builds. It lives in its own world-readable directory
    because dnsmasq drops privileges to `nobody`, which cannot enter a private state dir."""
    root = Path(tempfile.mkdtemp(prefix="tempered-tftp-"))
    root.chmod(0o755)
    served = []
    for name, candidates in IPXE_BUILDS.items():
        source = next((Path(c) for c in candidates if Path(c).exists()), None)
        if source is not None:
            shutil.copyfile(source, root / name)
            (root / name).chmod(0o644)
            served.append(name)
    if not served:
        shutil.rmtree(root)
        raise RuntimeError("no iPXE builds found: apt-get install ipxe")
    return root, served


def start(interface: str, root: Path, log_file: Path) -> subprocess.Popen:
    """Start dnsmasq as a TFTP server on `interface`; fail loudly if it does not stay up."""
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(dnsmasq).exists():
        raise RuntimeError("dnsmasq is missing: apt-get install dnsmasq-base (it serves TFTP)")
    proc = subprocess.Popen(
        [
            dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            "--enable-tftp", f"--tftp-root={root}",
            f"--interface={interface}", "--bind-interfaces", "--pid-file=", "--log-facility=-",
        ],
        stdout=open(log_file, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return proc
    tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
    raise RuntimeError(f"the TFTP server (dnsmasq) exited: {' / '.join(tail)}")
