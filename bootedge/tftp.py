"""TFTP for the iPXE binaries, served by dnsmasq in TFTP-only mode (no DNS, no DHCP).

dnsmasq is a maintained, widely deployed TFTP server: read-only, confined to its root (it
refuses names that climb out of it), and started and stopped by the edge as a child process.
The edge supervises it (`Supervised`): a dnsmasq that dies is restarted with backoff, and one
that keeps dying stops the edge with a non-zero exit, so that firmware never meets a silent
port 69 on an edge that still answers DHCP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("tempered.bootedge.tftp")
POLL_S = 0.5
# Restarts in a row (no stable minute between deaths) before the edge gives up; their delays.
MAX_RESTARTS = 4
STABLE_S = 60.0
BACKOFF_CAP_S = 30.0

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
    written_before = log_file.stat().st_size if log_file.exists() else 0
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
    with open(log_file, "rb") as log:  # only what this dnsmasq said, not an earlier one
        log.seek(written_before)
        tail = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()][-3:]
    raise RuntimeError(f"the TFTP server (dnsmasq) exited: {' / '.join(tail)}")


class TftpKeepsDying(RuntimeError):
    """dnsmasq died MAX_RESTARTS times in a row: the edge stops rather than serve without TFTP."""


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


class Supervised:
    """The dnsmasq TFTP child, restarted when it dies (1, 2, 4, ... s apart) until it keeps dying.

    Deaths count as "in a row" unless the server stayed up for STABLE_S before dying; every
    death, restart and give-up is logged in the edge's log (dnsmasq's own words stay in
    STATE_DIR/tftp.log and are quoted when a restart fails)."""

    def __init__(self, interface: str, root: Path, state_dir: Path) -> None:
        self.interface, self.root, self.state_dir = interface, root, state_dir
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self._starting = threading.Lock()  # a restart in its thread vs stop(): never an orphan

    def start(self) -> None:
        """The first start: fails loudly (the edge does not come up without TFTP)."""
        self.proc = start(self.interface, self.root, self.state_dir)

    async def supervise(self) -> None:
        """Watch the child for the edge's lifetime; raises TftpKeepsDying when giving up."""
        in_a_row = 0
        while True:
            up_since = time.monotonic()
            while self.proc.poll() is None:
                await asyncio.sleep(POLL_S)
            if self.stopping:  # the edge is shutting down: dnsmasq got the same signal
                return
            in_a_row = 1 if time.monotonic() - up_since >= STABLE_S else in_a_row + 1
            log.error("the TFTP server (dnsmasq, pid %d) died: %s", self.proc.pid, _exit_status(self.proc.returncode))
            in_a_row = await self._restart(in_a_row)

    async def _restart(self, in_a_row: int) -> int:
        """Start dnsmasq again after a backoff; returns the deaths in a row so far."""
        while True:
            if in_a_row > MAX_RESTARTS:
                raise TftpKeepsDying(f"the TFTP server (dnsmasq) died {in_a_row} times in a row; giving up")
            delay = min(2.0 ** (in_a_row - 1), BACKOFF_CAP_S)
            log.warning("restarting the TFTP server in %.0f s (restart %d of %d)", delay, in_a_row, MAX_RESTARTS)
            await asyncio.sleep(delay)
            try:
                if not await asyncio.to_thread(self._start_unless_stopping):
                    return in_a_row
            except RuntimeError as err:
                log.error("the TFTP server did not restart: %s", err)
                in_a_row += 1
                continue
            log.info("the TFTP server is serving again (dnsmasq, pid %d)", self.proc.pid)
            return in_a_row

    def _start_unless_stopping(self) -> bool:
        with self._starting:
            if self.stopping:
                return False
            self.proc = start(self.interface, self.root, self.state_dir)
            return True

    def stop(self) -> None:
        """Stop dnsmasq, after any restart already under way (which then is the one stopped)."""
        with self._starting:
            self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
