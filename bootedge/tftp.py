"""TFTP for the iPXE binaries, served by dnsmasq in TFTP-only mode (no DNS, no DHCP).

dnsmasq is a maintained, widely deployed TFTP server: read-only, confined to its root (it
refuses names that climb out of it), and started and stopped by the edge as a child process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
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


def stop_orphan(pid_file: Path) -> None:
    """Stop the TFTP server a SIGKILLed edge left behind (it still holds port 69), but only
    if that PID is still one of our dnsmasq TFTP servers."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if b"--enable-tftp" in cmdline and any(arg.startswith(b"--tftp-root=") and b"tempered-tftp-" in arg for arg in cmdline):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        stale_root = next(arg for arg in cmdline if arg.startswith(b"--tftp-root=")).split(b"=", 1)[1]
        shutil.rmtree(stale_root.decode(), ignore_errors=True)


def start(interface: str, root: Path, state_dir: Path) -> subprocess.Popen:
    """Start dnsmasq as a TFTP server on `interface`; fail loudly if it does not stay up.

    It stays in the edge's process group, so whoever stops the edge's group stops it too."""
    pid_file, log_file = state_dir / "tftp.pid", state_dir / "tftp.log"
    stop_orphan(pid_file)
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
    )
    pid_file.write_text(str(proc.pid))
    try:
        proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return proc
    tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
    raise RuntimeError(f"the TFTP server (dnsmasq) exited: {' / '.join(tail)}")
