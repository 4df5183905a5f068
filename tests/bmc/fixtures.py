"""Pytest fixtures that start the BMC emulators as processes (stopped by PID at teardown).

    from tests.bmc.fixtures import ipmi_bmc, redfish_bmc  # noqa: F401  (fixtures used by name)

    def test_x(redfish_bmc):
        bmc = redfish_bmc(qmp=vm.qmp_socket)        # or fake=True, or memory=path
        driver_for(bmc.settings())

Each emulator has its own user and a fresh random password; `settings(password=...)` gives
power settings with another password, for the wrong-credentials tests.
"""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from pydantic import SecretStr

from activities.domain.power import PowerSettings
from tests.servers import stop
from tests.tlsfiles import TlsFiles

REPO = Path(__file__).resolve().parents[2]
START_S = 60.0  # an import of sushy-tools and Flask on a busy 2-core host
USER = "admin"


@dataclass
class Emulator:
    """A running BMC emulator: its process, its log and the settings that reach it."""

    driver: str  # redfish | ipmi
    proc: subprocess.Popen
    port: int
    password: str
    log: Path
    scheme: str = "http"

    @property
    def address(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}" if self.driver == "redfish" else f"127.0.0.1:{self.port}"

    def settings(self, password: str | None = None, username: str = USER) -> PowerSettings:
        return PowerSettings(driver=self.driver, address=self.address, username=username,  # type: ignore[arg-type]
                             password=SecretStr(self.password if password is None else password))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop(self.proc)


def _start(module: str, args: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """Start `python -m module`, wait for its `listening PORT` line."""
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=err, env={**os.environ, **env}, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_S
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if proc.poll() is not None or left <= 0:
            stop(proc)
            raise AssertionError(f"{module} did not start\n{log.read_text(errors='replace')}")
        if select.select([proc.stdout], [], [], min(left, 1.0))[0]:
            line += os.read(proc.stdout.fileno(), 1)
    word, port = line.decode().split()
    assert word == "listening", line
    return proc, int(port)


def _backend(qmp: Path | None, memory: Path | None, fake: bool) -> list[str]:
    if qmp is not None:
        return ["--qmp", str(qmp)]
    if memory is not None:
        return ["--memory", str(memory)]
    assert fake, "give qmp=, memory= or fake=True"
    return ["--fake"]


@pytest.fixture
def redfish_bmc(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Start sushy-tools' emulator: `redfish_bmc(qmp=SOCKET | memory=FILE | fake=True)`; with
    `tls=True` it serves HTTPS with a certificate for 127.0.0.1 from a CA nobody trusts."""
    started: list[Emulator] = []

    def start(qmp: Path | None = None, memory: Path | None = None, fake: bool = False, tls: bool = False) -> Emulator:
        n = len(started)
        password = secrets.token_urlsafe(12)
        auth = tmp_path / f"redfish-{n}.htpasswd"
        auth.write_text(f"{USER}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        state = tmp_path / f"redfish-{n}-state"
        args = ["--auth-file", str(auth), "--state-dir", str(state), *_backend(qmp, memory, fake)]
        if tls:
            (tmp_path / f"redfish-{n}-tls").mkdir()
            files = TlsFiles(tmp_path / f"redfish-{n}-tls")
            args += ["--tls", str(files.dir / "server.pem"), str(files.dir / "server.key")]
        log = tmp_path / f"redfish-{n}.log"
        proc, port = _start("tests.bmc.redfish_qmp", args, log, {})
        started.append(Emulator("redfish", proc, port, password, log, "https" if tls else "http"))
        return started[-1]

    try:
        yield start
    finally:
        for emulator in started:
            emulator.stop()


@pytest.fixture
def ipmi_bmc(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Start the pyghmi BMC: `ipmi_bmc(qmp=SOCKET | memory=FILE)`."""
    started: list[Emulator] = []

    def start(qmp: Path | None = None, memory: Path | None = None) -> Emulator:
        password = secrets.token_urlsafe(12)
        log = tmp_path / f"ipmi-{len(started)}.log"
        env = {"BMC_USER": USER, "BMC_PASSWORD": password}
        proc, port = _start("tests.bmc.ipmi_qmp", _backend(qmp, memory, False), log, env)
        started.append(Emulator("ipmi", proc, port, password, log))
        return started[-1]

    try:
        yield start
    finally:
        for emulator in started:
            emulator.stop()
