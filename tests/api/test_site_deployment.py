"""The parts pointed at a site's own services: PostgreSQL through DATABASE_URL and a Temporal
namespace other than `default` through TEMPORAL_NAMESPACE; and the API and worker as the
systemd units of infra/deploy/ run them, against Temporal over mutual TLS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from temporalio.service import RPCError

from activities.storage import db
from api import temporal
from activities.storage.models import Attribute
from tests.conftest import stack_env
from tests.lifecycle import MachineDriver
from tests.servers import VENV_BIN, DevServer, Postgres, Process, free_port, stop, wait_for_port, wait_http
from tests.tlsfiles import TlsFiles
from tests.unit.test_deploy_units import DEPLOY, INSTALLED, parse_environment_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting PostgreSQL as its own user needs root")


@pytest.fixture
def site(tmp_path, settings):
    pg = Postgres(tmp_path).start()
    server = DevServer(tmp_path, namespaces=("site-a",)).start()
    port = free_port()
    mine = replace(
        settings, home=tmp_path, database_url=pg.url, temporal_address=server.address, temporal_namespace="site-a"
    )
    env = stack_env(mine, TEMPORAL_NAMESPACE="site-a", TEMPERED_API_PORT=str(port))
    processes = [Process([part], env, tmp_path / f"{part}.log").start() for part in ("worker", "api")]
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield mine, f"http://127.0.0.1:{port}"
    finally:
        for proc in processes:
            proc.stop()
        server.stop()
        pg.stop()


async def test_postgres_and_a_named_namespace(site):
    settings, url = site
    headers = {"Authorization": f"Bearer {(settings.home / 'admin-token').read_text().strip()}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        assert (await http.post("/v1/clusters", json={"name": "site", "quorum_count": 1})).status_code == 201
        created = await http.post("/v1/machines", json={"cluster": "site", "mac": "52:54:00:dd:00:01"})
        assert created.status_code == 201, created.text
        assert "/namespaces/site-a/workflows/machine:52:54:00:dd:00:01" in created.json()["temporal_url"]

        client = await temporal.connect(settings)
        m = MachineDriver(client, settings, "52:54:00:dd:00:01", "site", mac="52:54:00:dd:00:01")
        await m.discover()
        await m.wait_state("post-discover")  # the admission activity wrote the role to PostgreSQL
        shown = (await http.get("/v1/machines/52:54:00:dd:00:01")).json()
        assert shown["attributes"] == [{"type": "role", "value": "master-prime"}]
        assert shown["facts"]["boot"] == 1

    with db.session(settings.database_url) as s:
        assert s.exec(select(Attribute.value).where(Attribute.machine_id == m.machine_id)).all() == ["master-prime"]
    default = await temporal.connect(replace(settings, temporal_namespace="default"))
    with pytest.raises(RPCError):
        await temporal.machine(default, m.machine_id).describe()


# --- infra/deploy: the units' own environment -------------------------------------------------

UNITS_RUN = ("tempered-worker.service", "tempered-api.service")
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what a unit's process gets


def _unit(name: str) -> tuple[list[str], dict[str, str]]:
    """A unit's ExecStart (the installed venv swapped for this one) and its Environment= lines."""
    text = (DEPLOY / name).read_text()
    command = re.search(r"^ExecStart=(.*)$", text, re.M).group(1).split()
    assert command[0] == INSTALLED
    extra = dict(line.split("=", 1) for line in re.findall(r"^Environment=(.*)$", text, re.M))
    return [str(VENV_BIN / "tempered"), *command[1:]], extra


@pytest.fixture
def tls_temporal(tmp_path):
    """The dev server, with the namespace tempered.env names, behind a mutual-TLS front."""
    files = TlsFiles(tmp_path)
    namespace = parse_environment_file(DEPLOY / "tempered.env")["TEMPORAL_NAMESPACE"]
    server = DevServer(tmp_path, namespaces=(namespace,)).start()
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.tlsproxy", str(port), server.address, str(files.server_cert),
         str(files.server_key), str(files.ca)],
        cwd=Path(__file__).parents[2], start_new_session=True,
    )
    try:
        wait_for_port(port)
        yield files, f"127.0.0.1:{port}"
    finally:
        stop(proxy)
        server.stop()


async def test_the_units_environment_runs_api_and_worker(tmp_path, tls_temporal):
    """`tempered api` and `tempered worker` started as the units start them (their ExecStart,
    with exactly tempered.env and the unit's Environment=, hosts and paths substituted) serve a
    cluster and a machine out of PostgreSQL, through Temporal over mutual TLS."""
    files, temporal_address = tls_temporal
    pg = Postgres(tmp_path).start()
    documented = parse_environment_file(DEPLOY / "tempered.env")
    port = free_port()
    state = tmp_path / "var/lib/tempered"
    substituted = {
        "TEMPERED_HOME": str(state), "DATABASE_URL": pg.url, "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_TLS_CA": str(files.ca), "TEMPORAL_TLS_CERT": str(files.client_cert),
        "TEMPORAL_TLS_KEY": str(files.client_key), "TEMPERED_API_HOST": "127.0.0.1",
        "TEMPERED_API_PORT": str(port), "TEMPERED_API": f"http://127.0.0.1:{port}",
    }
    assert set(substituted) <= set(documented)
    processes = []
    try:
        for unit in UNITS_RUN:
            command, extra = _unit(unit)
            extra = {k: str(state) if v == documented["TEMPERED_HOME"] else v for k, v in extra.items()}
            env = {"PATH": SYSTEMD_PATH} | documented | substituted | extra
            proc = subprocess.Popen(command, env=env, stdout=open(tmp_path / f"{unit}.log", "ab"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            processes.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", timeout=90)
        token = (state / "admin-token").read_text().strip()
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            created = await http.post("/v1/clusters", json={"name": "units", "quorum_count": 1})
            assert created.status_code == 201, created.text
            ui, namespace = documented["TEMPERED_TEMPORAL_UI"], documented["TEMPORAL_NAMESPACE"]
            assert created.json()["temporal_url"] == f"{ui}/namespaces/{namespace}/workflows/cluster:units"
            shown = await http.get("/v1/clusters/units")  # a query the worker answers
            assert shown.status_code == 200 and shown.json()["phase"] == "forming", shown.text
            machine = await http.post("/v1/machines", json={"cluster": "units", "mac": "52:54:00:dd:00:02"})
            assert machine.status_code == 201, machine.text
            assert (await http.get("/v1/machines/52:54:00:dd:00:02")).json()["state"]
    finally:
        for proc in processes:
            stop(proc)
        pg.stop()
    logs = "".join((tmp_path / f"{unit}.log").read_text() for unit in UNITS_RUN)
    assert "Traceback" not in logs, logs
