"""Shared fixtures: one real Temporal dev server and one in-process worker for the session.

Tests isolate themselves by unique cluster and machine names, never by mocks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from api import settings as settings_mod
from api import temporal
from api.worker import build
from tests.servers import DevServer


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
    base = settings_mod.load()
    return replace(
        base,
        home=workdir,
        database_url=f"sqlite:///{workdir / 'tempered.db'}",
        temporal_address=dev_server.address,
        temporal_namespace="default",
    )


@pytest_asyncio.fixture(scope="session")
async def client(settings: settings_mod.Settings) -> Client:
    client = await temporal.connect(settings)
    await temporal.ensure_search_attributes(client)
    return client


@pytest_asyncio.fixture(scope="session")
async def worker(client: Client, settings: settings_mod.Settings) -> AsyncIterator[None]:
    with ThreadPoolExecutor(max_workers=16) as executor:
        w = build(client, settings, executor)
        async with w:
            yield


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
