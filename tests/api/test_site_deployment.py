"""The parts pointed at a site's own services: PostgreSQL through DATABASE_URL and a Temporal
namespace other than `default` through TEMPORAL_NAMESPACE."""

from __future__ import annotations

import os
from dataclasses import replace

import httpx
import pytest
from sqlmodel import select
from temporalio.service import RPCError

from activities.storage import db
from api import temporal
from activities.storage.models import Attribute
from tests.conftest import stack_env
from tests.lifecycle import MachineDriver
from tests.servers import DevServer, Postgres, Process, free_port, wait_http

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
