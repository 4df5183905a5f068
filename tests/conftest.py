"""Shared fixtures: one real Temporal dev server, one `tempered worker` process and one
`tempered api` process for the session, each started on first use.

Tests isolate themselves by unique cluster and machine names, never by mocks. Each test carries
the marker of its layer, from the folder it lives in (`pytest -m unit`, `-m workflow`, ...).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from bootedge.images import runtime as runtime_image
from activities.storage import settings as settings_mod
from api import temporal
from tests.servers import DevServer


TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "workflow", "api", "lab", "vm", "bench")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer: the first folder under tests/."""
    for item in items:
        layer = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if layer in LAYERS:
            item.add_marker(layer)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Time spent per layer, from the setup, call and teardown of its tests (a session fixture
    counts in the test that first used it, and in the session's last test when it stops): the
    figures the README's Tests section quotes."""
    seconds: dict[str, float] = {}
    tests: dict[str, set[str]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if not isinstance(report, pytest.TestReport):
                continue
            layer = next((name for name in LAYERS if name in report.keywords), "other")
            seconds[layer] = seconds.get(layer, 0.0) + report.duration
            tests.setdefault(layer, set()).add(report.nodeid)
    if not seconds:
        return
    terminalreporter.write_sep("-", "time by layer")
    for layer in sorted(seconds, key=lambda name: LAYERS.index(name) if name in LAYERS else len(LAYERS)):
        terminalreporter.write_line(f"{layer:<9} {len(tests[layer]):5d} tests {seconds[layer]:9.1f} s")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tempered")


@pytest.fixture(scope="session")
def dev_server(workdir: Path):
    server = DevServer(workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(workdir: Path, dev_server: DevServer) -> settings_mod.Settings:
    """The session's settings. The API's port is chosen here, before any process starts, so the
    worker knows where the session's API (`api_server`) is: its Terraform runs reach the state
    store there, as a deployed worker does through TEMPERED_API."""
    from tests.servers import free_port

    base = settings_mod.load()
    api_port = free_port()
    return replace(
        base,
        home=workdir,
        database_url=f"sqlite:///{workdir / 'tempered.db'}",
        temporal_address=dev_server.address,
        temporal_namespace="default",
        api_port=api_port,
        api_url=f"http://127.0.0.1:{api_port}",
    )


@pytest_asyncio.fixture(scope="session")
async def client(settings: settings_mod.Settings) -> Client:
    client = await temporal.connect(settings)
    await temporal.ensure_search_attributes(client)
    return client


# The control namespace of tests/lab/test_join.py's node labs: workers reach those nodes' sshd
# through it (a bastion, as far as Tempered knows), never from the root namespace.
NODES_CTL = f"tpd-{os.getpid()}-nodes-ctl"


def stack_env(settings: settings_mod.Settings, **extra: str) -> dict[str, str]:
    """The environment a `tempered` process needs to join this test session's stack. The API is
    where `settings` says, unless `extra` moves its port (then its URL follows the port)."""
    api = {} if "TEMPERED_API_PORT" in extra else {
        "TEMPERED_API_PORT": str(settings.api_port), "TEMPERED_API": settings.api_url,
    }
    return os.environ | api | {
        "TEMPERED_HOME": str(settings.home),
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "TEMPERED_SSH_PROXY_COMMAND": f"nsenter --net=/run/netns/{NODES_CTL} nc %h %p",
        **extra,
    }


@pytest.fixture(scope="session")
def worker(settings: settings_mod.Settings, client: Client):
    """A real `tempered worker` process: it polls whether or not a test's event loop runs."""
    from tests.servers import Process, free_port

    env = stack_env(settings, TEMPERED_WORKER_METRICS=f"127.0.0.1:{free_port()}")  # tests/api/test_metrics.py
    proc = Process(["worker"], env, settings.home / "worker.log").start()
    yield proc
    proc.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "") -> None:
    """Poll an async condition; fail with `what` if it never holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")


@pytest.fixture(scope="session")
def api_server(settings: settings_mod.Settings, worker) -> "ApiServer":
    """`tempered api` as a real process on the session's Temporal and database."""
    from tests.servers import Process, wait_http

    env = stack_env(settings)  # on the port the session's settings chose (the worker knows it)
    proc = Process(["api"], env, settings.home / "api.log").start()
    url = settings.api_url
    try:
        wait_http(url + "/healthz")
    except TimeoutError:
        proc.stop()
        raise AssertionError(f"the API did not start:\n{proc.tail()}") from None
    token = (settings.home / "admin-token").read_text().strip()
    yield ApiServer(url=url, token=token, env=env, process=proc)
    proc.stop()


class ApiServer:
    def __init__(self, url: str, token: str, env: dict, process) -> None:
        self.url, self.token, self.env, self.process = url, token, env, process

    def client(self, token: str | None = "admin"):
        import httpx

        headers = {} if token is None else {"Authorization": f"Bearer {self.token if token == 'admin' else token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="session")
def uds_api(settings: settings_mod.Settings, worker, tmp_path_factory) -> str:
    """A second API process on a unix socket: edges inside test namespaces reach it there
    (sockets on the filesystem cross network namespaces; nothing touches the root network)."""
    import httpx

    from tests.servers import Process

    path = tmp_path_factory.mktemp("uds") / "api.sock"
    proc = Process(["api", "--uds", str(path)], stack_env(settings), settings.home / "api-uds.log").start()
    transport = httpx.HTTPTransport(uds=str(path))
    for _ in range(300):
        try:
            if httpx.Client(transport=transport).get("http://cp/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        import time

        time.sleep(0.1)
    else:
        proc.stop()
        raise AssertionError(f"the unix-socket API did not start:\n{proc.tail()}")
    yield f"unix:{path}"
    proc.stop()


def catch_all_edge(api_server, unique, prefix: str, token_file: Path, join_method: str = "external") -> tuple[str, str]:
    """Register an edge that takes machines under `prefix` into a fresh one-master cluster, on
    a segment of its own; write its token to `token_file`. Returns (cluster, edge name). Its
    joins are reported from outside (join_method external) unless the lab installs kubeadm's
    stand-in and asks for "ansible"."""
    cluster, name = unique("c"), unique("edge")
    with api_server.client() as http:
        spec = {"name": cluster, "quorum_count": 1, "join_method": join_method}
        http.post("/v1/clusters", json=spec).raise_for_status()
        policy = {"mode": "catch-all", "cluster": cluster, "mac_prefixes": [prefix], "segment": name}
        created = http.post("/v1/edges", json={"name": name, "policy": policy})
        created.raise_for_status()
    token_file.write_text(created.json()["token"])
    return cluster, name


# ---- the runtime image ----------------------------------------------------------------------


def _build_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "building the runtime image needs root (mmdebstrap --mode=root)"
    missing = [tool for tool in ("mmdebstrap", "mksquashfs", "unsquashfs") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install --no-install-recommends {runtime_image.HOST_PACKAGES})"
    from tests.vm.test_discovery_image import _mirror_unreachable

    return _mirror_unreachable()


@dataclass
class Built:
    info: runtime_image.RuntimeImageInfo
    seconds: float
    cache: Path
    steps: list[str]


MiB = 1 << 20


@pytest.fixture(scope="session")
def runtime_build(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Built:
    """The runtime image, built once per session (minutes): every test that boots it shares it."""
    if (reason := _build_unavailable()) is not None:
        pytest.skip(reason)
    if os.environ.get("TEMPERED_IMAGE_CACHE"):
        cache = Path(os.environ["TEMPERED_IMAGE_CACHE"])
    else:
        cache = pytestconfig.cache.mkdir("tempered-images")
    output = tmp_path_factory.mktemp("runtime-image")
    steps: list[str] = []
    started = time.monotonic()
    info = runtime_image.build_runtime(
        output, progress=lambda m: steps.append(f"{time.monotonic() - started:6.1f} s  {m}"), cache_dir=cache
    )
    seconds = time.monotonic() - started
    print(
        f"\n[runtime image] built in {seconds:.1f} s: vmlinuz {info.vmlinuz_bytes / MiB:.1f} MiB, initrd.img "
        f"{info.initrd_bytes / MiB:.1f} MiB, root.squashfs {info.squashfs_bytes / MiB:.1f} MiB "
        f"({info.rootfs_bytes / MiB:.0f} MiB unpacked, {info.packages} packages), kernel {info.kernel_release}"
    )
    print("  " + ", ".join(f"{k} {v}" for k, v in info.versions.items()))
    for step in steps:
        print(f"  - {step}")
    return Built(info, seconds, cache, steps)
