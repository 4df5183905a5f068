"""The lab's control plane: `tempered up`'s processes, or a running stack the lab is pointed at.

Its own stack lives under `$TEMPERED_HOME/lab/control` (databases, admin token, logs) on ports
of its own, so it never meets a `tempered up` on the defaults. Besides the API on loopback, a
second API process serves a unix socket: the edge, inside its namespace, reaches the control
plane there (a socket file crosses network namespaces; no route into the root namespace is
needed). The worker reaches the lab's machines over SSH through `nsenter` into the site
namespace (`TEMPERED_SSH_PROXY_COMMAND`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from activities.storage import settings as settings_mod
from activities.storage.settings import Settings
from api.lab import network
from api.lab.state import LabState


UI_OFFSET = settings_mod.UI_PORT_OFFSET  # the Web UI listens this far above Temporal, as `tempered up` does


@dataclass(frozen=True)
class Ports:
    api: int = 8100
    temporal: int = 7300  # the Web UI on temporal + UI_OFFSET

    @property
    def ui(self) -> int:
        return self.temporal + UI_OFFSET

    def all(self) -> dict[str, int]:
        return {"API": self.api, "Temporal": self.temporal, "Temporal Web UI": self.ui}


def proxy_command() -> str:
    return f"nsenter --net=/run/netns/{network.SITE} nc %h %p"


def environment(state: LabState, ports: Ports) -> dict[str, str]:
    """The environment of the lab's own stack (and of any command that talks to it)."""
    return environment_for_home(state.dir, ports.api, ports.temporal)


def environment_for_home(lab: Path, api_port: int, temporal_port: int) -> dict[str, str]:
    ports = Ports(api=api_port, temporal=temporal_port)
    home = lab / "control"
    return {
        **os.environ,
        "TEMPERED_HOME": str(home),
        "DATABASE_URL": f"sqlite:///{home / 'tempered.db'}",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports.temporal}",
        "TEMPERED_TEMPORAL_UI": f"http://127.0.0.1:{ports.ui}",
        "TEMPERED_API_HOST": "127.0.0.1",
        "TEMPERED_API_PORT": str(ports.api),
        "TEMPERED_API": f"http://127.0.0.1:{ports.api}",
        "TEMPERED_SSH_PROXY_COMMAND": proxy_command(),
    }


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_for(env: dict[str, str]) -> Settings:
    with _environ(env):
        return settings_mod.load()


def _wait_port(port: int, proc, what: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s: see {log}")


def start(state: LabState, ports: Ports) -> "Api":
    """Temporal, the worker, the API on loopback and the API on a unix socket, each recorded."""
    from api.auth import ensure_admin_token
    from api.stack import _register_search_attributes, temporal_command

    env = environment(state, ports)
    settings = settings_for(env)
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    logs = state.dir / "logs"
    proc = network.spawn(state, "temporal", temporal_command(settings, ports.temporal, ports.ui), logs / "temporal.log", env=env)
    _wait_port(ports.temporal, proc, "Temporal", logs / "temporal.log")
    asyncio.run(_register_search_attributes(settings))
    state.ui_url = settings.temporal_ui_url
    state.save()
    token = ensure_admin_token(settings)
    tempered = [sys.executable, "-m", "api.cli"]
    network.spawn(state, "worker", [*tempered, "worker"], logs / "worker.log", env=env)
    proc = network.spawn(state, "api", [*tempered, "api"], logs / "api.log", env=env)
    _wait_port(ports.api, proc, "the API", logs / "api.log")
    state.api_url = settings.api_url
    state.save()
    start_socket_api(state, env)
    return Api(settings.api_url, token)


def start_socket_api(state: LabState, env: dict[str, str]) -> None:
    """A second API process on a unix socket, for the edge in its namespace."""
    sock = state.dir / "api.sock"
    sock.unlink(missing_ok=True)
    log = state.dir / "logs" / "api-socket.log"
    proc = network.spawn(state, "api-socket", [sys.executable, "-m", "api.cli", "api", "--uds", str(sock)], log, env=env)
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the unix-socket API exited: see {log}")
        try:
            if client.get("http://lab/healthz").status_code == 200:
                state.api_socket = str(sock)
                state.save()
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the unix-socket API did not answer within 60s: see {log}")


def use_running(state: LabState, url: str) -> "Api":
    """A stack started elsewhere with this environment (`tempered up`): the lab adds only the
    unix-socket API for its edge, which must share that stack's database and Temporal."""
    settings = settings_mod.load()
    token = os.environ.get("TEMPERED_TOKEN") or (
        settings.admin_token_file.read_text().strip() if settings.admin_token_file.exists() else ""
    )
    if not token:
        raise RuntimeError(f"no token for {url}: set TEMPERED_TOKEN or run this where {settings.admin_token_file} is")
    api = Api(url.rstrip("/"), token)
    api.get("/healthz")
    state.external_control_plane = True
    state.api_url, state.ui_url = api.url, settings.temporal_ui_url
    state.save()
    start_socket_api(state, dict(os.environ))
    return api


@dataclass
class Api:
    """The few REST calls the lab makes, as the admin."""

    url: str
    token: str

    def call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            response = httpx.request(
                method, self.url + path, json=json, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
            )
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach the API at {self.url}: {e}") from None
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def exists(self, path: str) -> bool:
        """Whether GET `path` finds one thing (a 404: no), without walking a paged list."""
        try:
            response = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach the API at {self.url}: {e}") from None
        if response.status_code not in (200, 404):
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
        return response.status_code == 200
