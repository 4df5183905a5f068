"""Scale out (issue 18, item 4): two `tempered api` and two `tempered worker` processes, each
with a home of its own (as on separate hosts), against one Temporal and one PostgreSQL, run the
fleet simulator (api/lab/fleet.py) to `ready`, every call going to the two APIs in turn; then
one worker is killed (SIGKILL, by its PID) in the middle of a second fleet and the other one
finishes it. What each process did is read from its own /metrics."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from activities.storage.settings import TASK_QUEUE
from api.lab import fleet
from tests.api.test_metrics import parse, total
from tests.servers import VENV_BIN, DevServer, Postgres, Process, free_port, wait_http

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or Postgres.bindir() is None, reason="PostgreSQL runs as its own user: needs root and postgresql"
)

NAMESPACE = "scale"
ACTIVITIES = "tempered_step_duration_seconds_count"  # the worker's own: one per activity attempt
WORKFLOW_TASKS = "temporal_workflow_task_execution_latency"  # the SDK's histogram: its _count, one per workflow task


@dataclass
class Stack:
    """One Temporal (namespace `scale`), one PostgreSQL, two APIs and two workers."""

    work: Path
    postgres: Postgres
    temporal: DevServer
    apis: list[tuple[str, Process]] = field(default_factory=list)  # (url, process)
    workers: list[tuple[str, Process]] = field(default_factory=list)  # (metrics host:port, process)
    token: str = ""

    def env(self, name: str, api_port: int, api_url: str, **extra: str) -> dict[str, str]:
        """A process's environment: its own home, the shared database, Temporal and secret key."""
        home = self.work / name
        return os.environ | {
            "TEMPERED_HOME": str(home), "DATABASE_URL": self.postgres.url,
            "TEMPORAL_ADDRESS": self.temporal.address, "TEMPORAL_NAMESPACE": NAMESPACE,
            "TEMPERED_API_PORT": str(api_port), "TEMPERED_API": api_url,
            "TEMPERED_SECRET_KEY": SECRET_KEY, **extra,
        }

    def stop(self) -> None:
        for _, proc in [*self.apis, *self.workers]:
            proc.stop()
        self.temporal.stop()
        self.postgres.stop()


SECRET_KEY = Fernet.generate_key().decode()  # what every host of a site shares (README, Secrets across hosts)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    work = tmp_path_factory.mktemp("scale-out")
    found = Stack(work, Postgres(work).start(), DevServer(work, namespaces=(NAMESPACE,)).start())
    try:
        ports = [free_port(), free_port()]
        first_url = f"http://127.0.0.1:{ports[0]}"
        for n, port in enumerate(ports, 1):
            url = f"http://127.0.0.1:{port}"
            proc = Process(["api"], found.env(f"api{n}", port, url), work / f"api{n}.log").start()
            found.apis.append((url, proc))
        for n in (1, 2):
            metrics = f"127.0.0.1:{free_port()}"
            env = found.env(f"worker{n}", ports[0], first_url, TEMPERED_WORKER_METRICS=metrics)
            found.workers.append((metrics, Process(["worker"], env, work / f"worker{n}.log").start()))
        for url, proc in found.apis:
            try:
                wait_http(url + "/healthz", timeout=120)
            except TimeoutError:
                raise AssertionError(f"{url} did not start:\n{proc.tail()}") from None
        found.token = (work / "api1" / "admin-token").read_text().strip()
        asyncio.run(_both_workers_poll(found.temporal.address))
        yield found
    finally:
        found.stop()


async def _pollers(client: Client, kind: TaskQueueType.ValueType) -> set[str]:
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(namespace=NAMESPACE, task_queue=TaskQueue(name=TASK_QUEUE), task_queue_type=kind)
    )
    return {poller.identity for poller in answer.pollers}


async def _both_workers_poll(address: str) -> None:
    """Both workers poll the task queue for workflow and activity tasks (Temporal says so)."""
    client = await Client.connect(address, namespace=NAMESPACE)
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        for _ in range(600):
            if len(await _pollers(client, kind)) >= 2:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"not two pollers of {kind} on {TASK_QUEUE}: {await _pollers(client, kind)}")


class Alternate(httpx.AsyncBaseTransport):
    """Sends each request to the next API in turn, as a round-robin load balancer does: one
    machine's boot question, facts, seed and phone home land on different replicas."""

    def __init__(self, urls: list[str]) -> None:
        self.targets = [httpx.URL(url) for url in urls]
        self.turn = itertools.count()
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=200, max_keepalive_connections=100))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self.targets[next(self.turn) % len(self.targets)]
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def scrape(url: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(url, headers=headers)
    assert answer.status_code == 200, answer.text
    return parse(answer.text)


async def worker_counts(stack: Stack) -> list[tuple[float, float]]:
    """(activity attempts, workflow tasks) each worker has run so far, from its /metrics."""
    counts = []
    for metrics, _ in stack.workers:
        samples = await scrape(f"http://{metrics}/metrics")
        tasks = sum(v for (name, _), v in samples.items() if name.startswith(WORKFLOW_TASKS) and name.endswith("_count"))
        counts.append((total(samples, ACTIVITIES), tasks))
    return counts


async def api_calls(stack: Stack, route: str) -> list[float]:
    """Requests each API has answered on `route`, from its /metrics."""
    return [total(await scrape(f"{url}/metrics", stack.token), "tempered_api_requests_total", route=route)
            for url, _ in stack.apis]


def check_fleet(stack: Stack, result: fleet.Result, machines: int) -> None:
    """Every machine ready, each once (no id merged or lost), one master-prime per cluster, as
    both APIs tell it."""
    text = "\n".join(fleet.report(result))
    assert not result.timed_out, text
    assert [m.error for m in result.machines if m.error] == [], text
    assert len(result.ready) == machines and len({m.id for m in result.machines}) == machines, text
    for url, _ in stack.apis:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=60) as http:
            for cluster in {m.rack.cluster for m in result.machines}:
                listed = http.get("/v1/machines", params={"cluster": cluster, "limit": 100})
                assert listed.status_code == 200, listed.text
                views = listed.json()
                views = views["items"] if isinstance(views, dict) else views
                mine = sorted(m.id for m in result.machines if m.rack.cluster == cluster)
                assert sorted(v["id"] for v in views) == mine, (url, cluster, views)
                assert {v["state"] for v in views} == {"ready"}, (url, views)
                assert Counter(v["role"] for v in views)["master-prime"] == 1, (url, views)


def run_fleet(stack: Stack, plan: fleet.Plan) -> fleet.Result:
    transport = Alternate([url for url, _ in stack.apis])
    return asyncio.run(fleet.run(stack.apis[0][0], stack.token, plan, transport=transport))


def test_two_apis_and_two_workers_run_a_fleet(stack: Stack) -> None:
    """12 machines in 2 clusters, every call alternating between the APIs: all ready, none lost
    or doubled, one master-prime per cluster; both workers ran activities and workflow tasks,
    both APIs answered boot questions. The second API's own admin token works on the first
    (tokens live in the shared database, not in a process)."""
    before_workers = asyncio.run(worker_counts(stack))
    before_boots = asyncio.run(api_calls(stack, "/v1/edge/boot"))
    plan = fleet.Plan(machines=12, clusters=2, window_s=2, timeout_s=300, poll_s=0.5, quorum=1)
    result = run_fleet(stack, plan)
    check_fleet(stack, result, 12)

    after_workers = asyncio.run(worker_counts(stack))
    for n, (before, after) in enumerate(zip(before_workers, after_workers), 1):
        assert after[0] > before[0], f"worker {n} ran no activity: {before} -> {after}"
        assert after[1] > before[1], f"worker {n} ran no workflow task: {before} -> {after}"
    boots = [a - b for a, b in zip(asyncio.run(api_calls(stack, "/v1/edge/boot")), before_boots)]
    assert all(n > 0 for n in boots) and sum(boots) == len(result.latencies["edge boot"]), boots

    other = (stack.work / "api2" / "admin-token").read_text().strip()
    assert other != stack.token
    assert httpx.get(f"{stack.apis[0][0]}/v1/clusters", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_a_fleet_finishes_when_one_worker_is_killed(stack: Stack) -> None:
    """A second fleet; once the second worker has run activities of it, it is killed by its PID
    (SIGKILL: no graceful shutdown, its cached workflows and running activities simply gone).
    The fleet still reaches ready on the first worker alone, every machine once."""
    metrics, victim = stack.workers[1]
    start = asyncio.run(worker_counts(stack))[1][0]
    plan = fleet.Plan(machines=12, clusters=2, window_s=2, timeout_s=420, poll_s=0.5, quorum=1)

    async def run_and_kill() -> tuple[fleet.Result, bool]:
        transport = Alternate([url for url, _ in stack.apis])
        running = asyncio.create_task(fleet.run(stack.apis[0][0], stack.token, plan, transport=transport))
        while total(await scrape(f"http://{metrics}/metrics"), ACTIVITIES) < start + 3 and not running.done():
            await asyncio.sleep(0.2)
        mid_run = not running.done()
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=30)
        return await running, mid_run

    result, mid_run = asyncio.run(run_and_kill())
    assert mid_run, "the fleet finished before the worker was killed: no fault was injected"
    assert victim.proc.returncode == -signal.SIGKILL
    check_fleet(stack, result, 12)
    assert stack.workers[0][1].proc.poll() is None  # the survivor ran it


# ---- the database's connections -------------------------------------------------------------

AVAILABLE = "PostgreSQL allows 97 (max_connections 100 less 3 reserved)"  # the test cluster's defaults


def test_a_pool_larger_than_postgres_allows_stops_the_process(stack: Stack) -> None:
    """A pool that alone could exceed max_connections stops `tempered worker` and `tempered api`
    before they serve (exit 2), naming both numbers and the fix; so does a size that is no number."""
    for part, size, said in (
        ("worker", "500", f"TEMPERED_DB_POOL_SIZE is 500 connections but {AVAILABLE}: lower TEMPERED_DB_POOL_SIZE or raise max_connections"),
        ("api", "500", f"TEMPERED_DB_POOL_SIZE is 500 connections but {AVAILABLE}"),
        ("worker", "0", "TEMPERED_DB_POOL_SIZE: '0' is not a whole number of at least 1"),
    ):
        port = free_port()
        env = stack.env(f"refused-{part}", port, f"http://127.0.0.1:{port}", TEMPERED_DB_POOL_SIZE=size, COLUMNS="300")
        done = subprocess.run([str(VENV_BIN / "tempered"), part], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (part, size, done.stdout, done.stderr)
        assert said in " ".join(done.stderr.split()), (part, size, done.stderr)


def test_pools_that_together_exceed_max_connections_are_warned_about(stack: Stack) -> None:
    """One more API with a pool of 90 fits PostgreSQL's 97 alone, but not beside the running
    processes' pools of 20 each (their connections' application_name says so): it says so at
    start, and serves all the same (the others already run; stopping would not give any back)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = Process(["api"], stack.env("api-extra", port, url, TEMPERED_DB_POOL_SIZE="90"), stack.work / "api-extra.log")
    extra.start()
    try:
        wait_http(url + "/healthz", timeout=120)
        line = next(line for line in extra.log.read_text().splitlines() if "Tempered processes on this database" in line)
        assert AVAILABLE in line and "TEMPERED_DB_POOL_SIZE of each: 90, 20" in line, line
        assert "lower TEMPERED_DB_POOL_SIZE or raise max_connections" in line, line
    finally:
        extra.stop()
