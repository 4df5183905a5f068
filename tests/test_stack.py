"""`tempered up`: starts Temporal, worker and API, stops every child on Ctrl-C, keeps state."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx

from api import settings as settings_mod
from api import temporal
from tests.servers import VENV_BIN, free_port, wait_http


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _start(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "tempered"), "up"], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_banner(log: Path, timeout: float = 30.0) -> str:
    """What `tempered up` printed, once it says it is up."""
    deadline = time.monotonic() + timeout
    while "Tempered is up" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    return log.read_text()


def _ctrl_c(proc: subprocess.Popen) -> list[int]:
    children = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    return children


def test_up_runs_the_stack_and_keeps_state_across_a_restart(tmp_path):
    temporal_port, api_port = free_port(), free_port()
    env = os.environ | {
        "TEMPERED_HOME": str(tmp_path),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "TEMPERED_API_PORT": str(api_port),
    }
    env.pop("DATABASE_URL", None)
    url = f"http://127.0.0.1:{api_port}"
    log = tmp_path / "up.log"
    up = _start(env, log)
    try:
        wait_http(url + "/healthz", timeout=90)
        token_file = tmp_path / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.post(url + "/v1/clusters", json={"name": "kept", "quorum_count": 1}, headers=headers).status_code == 201
        assert (tmp_path / "temporal.db").exists() and (tmp_path / "tempered.db").exists()
        printed = _wait_for_banner(log)
        assert url in printed and f"{url}/docs" in printed and str(token_file) in printed

        settings = replace(settings_mod.load(), temporal_address=f"127.0.0.1:{temporal_port}")

        async def registered() -> set[str]:
            from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

            client = await temporal.connect(settings)
            listed = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace="default")
            )
            return set(listed.custom_attributes)

        assert {"TemperedState", "TemperedCluster", "TemperedRole", "TemperedMac"} <= asyncio.run(registered())
    finally:
        children = _ctrl_c(up)
    assert len(children) == 3
    assert not any(_alive(pid) for pid in children), "a child outlived Ctrl-C"

    up = _start(env, log)
    try:
        wait_http(url + "/healthz", timeout=90)
        assert (tmp_path / "admin-token").read_text().strip() == token
        kept = httpx.get(url + "/v1/clusters/kept", headers=headers)
        assert kept.status_code == 200 and kept.json()["phase"] == "forming"
    finally:
        children = _ctrl_c(up)
    assert not any(_alive(pid) for pid in children)


def test_up_stops_everything_when_a_child_dies(tmp_path):
    env = os.environ | {
        "TEMPERED_HOME": str(tmp_path),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "TEMPERED_API_PORT": str(free_port()),
    }
    up = _start(env, tmp_path / "up.log")
    try:
        wait_http(f"http://127.0.0.1:{env['TEMPERED_API_PORT']}/healthz", timeout=90)
        children = _children(up.pid)
        worker = children[1]
        os.kill(worker, signal.SIGKILL)
        assert up.wait(timeout=60) == 1
        assert "worker exited" in (tmp_path / "up.log").read_text()
        assert not any(_alive(pid) for pid in children)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
