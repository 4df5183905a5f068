"""`tempered up`: starts Temporal, worker and API, stops every child on Ctrl-C, keeps state,
restarts a child that dies and gives up on one that keeps dying; its home is private."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import stat
import subprocess
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import httpx

from activities.storage import settings as settings_mod
from api import stack
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


def _journal_mode(path: Path) -> str:
    """The journal mode SQLite keeps in the file (a write-ahead log is kept across opens)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("PRAGMA journal_mode").fetchone()[0]


def _ctrl_c(proc: subprocess.Popen) -> list[int]:
    children = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    return children


def test_up_runs_the_stack_and_keeps_state_across_a_restart(tmp_path):
    temporal_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TEMPERED_TEMPORAL_UI", "TEMPERED_API")} | {
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
        assert _journal_mode(tmp_path / "temporal.db") == "wal"  # one append and one sync per commit
        _assert_private(tmp_path)
        printed = _wait_for_banner(log)
        assert url in printed and f"{url}/docs" in printed and str(token_file) in printed
        # The Web UI follows the moved Temporal: printed, in the API's links, and served there.
        ui = f"http://127.0.0.1:{temporal_port + settings_mod.UI_PORT_OFFSET}"
        assert f"Temporal UI    {ui}" in printed and ":8233" not in printed and ":8000" not in printed
        # The PIDs of what it started (to find them in ps/top), and where the worker serves /metrics.
        printed_pids = {int(pid) for pid in re.findall(r"(?:temporal|worker|api) pid (\d+)", printed)}
        assert printed_pids == set(_children(up.pid)) and len(printed_pids) == 3, printed
        assert f"worker metrics http://127.0.0.1:{api_port + 1}/metrics" in printed
        shown = httpx.get(url + "/v1/clusters/kept", headers=headers).json()
        assert shown["temporal_url"] == f"{ui}/namespaces/default/workflows/cluster:kept"
        assert httpx.get(ui, timeout=10, follow_redirects=True).status_code == 200

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


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_private(home: Path) -> None:
    """$TEMPERED_HOME and its logs directory 0700; both databases (and their WAL files) and
    every log 0600."""
    assert _mode(home) == 0o700 and _mode(home / "logs") == 0o700
    files = [*home.glob("*.db"), *home.glob("*.db-*"), *(home / "logs").glob("*.log")]
    assert {"tempered.db", "temporal.db", "worker.log", "api.log", "temporal.log"} <= {f.name for f in files}
    assert {f.name: oct(_mode(f)) for f in files} == {f.name: oct(0o600) for f in files}


def _env(home: Path) -> dict:
    env = os.environ | {
        "TEMPERED_HOME": str(home),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "TEMPERED_API_PORT": str(free_port()),
    }
    env.pop("DATABASE_URL", None)
    return env


def _worker_pid(up: subprocess.Popen, other_than: int = 0, timeout: float = 60.0) -> int:
    """The PID of `tempered up`'s worker child (the second child), once it is not `other_than`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _children(up.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if cmdline[-2:] == [b"worker", b""] and pid != other_than and _alive(pid):
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no worker child (other than {other_than}) within {timeout}s")


def test_a_killed_worker_is_restarted_and_the_api_keeps_answering(tmp_path):
    env = _env(tmp_path)
    url = f"http://127.0.0.1:{env['TEMPERED_API_PORT']}"
    log = tmp_path / "up.log"
    up = _start(env, log)
    try:
        wait_http(url + "/healthz", timeout=90)
        headers = {"Authorization": f"Bearer {(tmp_path / 'admin-token').read_text().strip()}"}
        api_pid = _children(up.pid)[-1]
        worker = _worker_pid(up)
        os.kill(worker, signal.SIGKILL)
        answers, deadline = [], time.monotonic() + 90
        while True:  # the API answers every probe while the worker is down and restarted
            answers.append(httpx.get(url + "/healthz", timeout=5).status_code)
            try:
                new_worker = _worker_pid(up, other_than=worker, timeout=0.2)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "no new worker"
        assert set(answers) == {200} and up.poll() is None and _alive(api_pid)
        printed = log.read_text()
        assert f"worker (pid {worker}) exited with signal SIGKILL" in printed and "Restarting it in 1 s" in printed
        # The new worker processes work: a cluster's workflow starts and answers its query.
        created = httpx.post(url + "/v1/clusters", json={"name": "after", "quorum_count": 1}, headers=headers, timeout=60)
        assert created.status_code == 201, created.text
        shown = httpx.get(url + "/v1/clusters/after", headers=headers, timeout=60)
        assert shown.status_code == 200 and shown.json()["phase"] == "forming"
        assert _alive(new_worker) and api_pid in _children(up.pid)
    finally:
        children = _ctrl_c(up)
    assert not any(_alive(pid) for pid in children)


def test_a_child_that_keeps_dying_stops_the_stack(tmp_path):
    env = _env(tmp_path)
    log = tmp_path / "up.log"
    up = _start(env, log)
    try:
        wait_http(f"http://127.0.0.1:{env['TEMPERED_API_PORT']}/healthz", timeout=90)
        children = set(_children(up.pid))
        worker = 0
        while up.poll() is None:  # every worker it starts dies at once
            try:
                worker = _worker_pid(up, other_than=worker, timeout=5)
            except AssertionError:
                continue
            children.add(worker)
            os.kill(worker, signal.SIGKILL)
        assert up.wait(timeout=60) == 1
        printed = log.read_text()
        assert printed.count("exited with signal SIGKILL") == stack.MAX_CRASHES
        assert f"It died {stack.MAX_CRASHES} times within" in printed and "it keeps dying, stopping the stack" in printed
        assert not any(_alive(pid) for pid in children)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)


def test_private_home_tolerates_a_journal_that_vanishes(tmp_path, monkeypatch):
    """SQLite removes its journal while another process tightens the home's modes: a file
    found by the listing and gone by the chmod (a dangling link stands in for it) is skipped."""
    (tmp_path / "temporal.db-journal").symlink_to(tmp_path / "gone")
    (tmp_path / "tempered.db").write_bytes(b"")
    monkeypatch.setenv("TEMPERED_HOME", str(tmp_path))
    umask = os.umask(0o022)  # private_home sets this process's umask: put it back afterwards
    try:
        settings_mod.load().private_home()
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "tempered.db").stat().st_mode) == 0o600
