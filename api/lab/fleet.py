"""A fleet simulator: N machines powering on together, driven through a running Tempered stack by
the same HTTP calls the real parts make, in the same order (`tempered lab up --simulate N`,
tests/bench/bench_fleet.py).

Per machine: the edge's `POST /v1/edge/boot` (with the edge's token, as `bootedge/control.py`
sends it), the discovery agent's facts and instruction polls (with this boot's token, through
the headers the edge's relay adds), the second edge boot, cloud-init's NoCloud seed
(`meta-data`, `user-data`, `vendor-data`) and phone home, then the external join's
`POST /v1/machines/{id}/join-result` and the wait for `ready`. Each call's latency is kept; each
machine's time to every state comes from its own history (the workflow stamps each transition),
read once when the run is over.

The simulator watches the fleet as an operator's dashboard would: a page of the machine list per
cluster every few seconds (`GET /v1/machines?cluster=`, the database's copy of states), not a
`GET /v1/machines/{id}` per machine, which asks the machine's workflow. A machine listed
`failed:*` waits for an operator's retry, which no simulated machine gets: it ends there.

Machines arrive spread over a window. The run has an overall timeout: what has not reached
`ready` by then is reported with the state and reason it is stuck in, never waited on forever.
Each cluster gets a catch-all edge of its own (a rack and its edge), so machines are unknown
until they PXE boot, as in a site powering on a delivery.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial

import httpx

from bootedge.scripts import hold_delay

EDGE_GIVES_UP_S = 15.0  # bootedge/control.py: the edge's relay gives up after this
EDGE_URL = "http://192.0.2.1:8080"  # the edge's own URL, as its relay sends it (X-Tempered-Edge-Url)
STATES = ("boot-1", "discover", "post-discover", "boot-2", "post-boot-2", "join-cluster", "ready")
# "instruction" is a long poll: its time is mostly the API holding it (up to wait_s) until the machine moves
CALLS = ("edge boot", "facts", "instruction", "seed", "phone home", "join result", "list", "machine")
# Not a call: from a machine's boot question to the answer it can use, across the edge's retries
# after a 504 (each a separate "edge boot" call). Issue 18's p99 target is about this figure.
BOOT_ANSWER = "boot answer"


SETTLE_S = 120.0  # at most this long reading the machines' histories, after the run
LIST_EVERY_S = 5.0  # the fleet's list is read this often (or every poll_s, if shorter)


class Failed(Exception):
    """The machine is parked in a failed state."""


@dataclass(frozen=True)
class Plan:
    """What to simulate. `poll_s` is the discovery agent's instruction interval when the answer
    does not say `poll_after` (10 s in the image) and the external joiner's state poll;
    `window_s` spreads the power-ons."""

    machines: int
    clusters: int = 1
    window_s: float = 10.0
    timeout_s: float = 600.0
    poll_s: float = 10.0
    wait_s: int = 20  # the agent's long poll: the API holds a `wait` answer up to this long
    quorum: int = 1
    call_timeout_s: float = 300.0  # long on purpose: a slow answer is measured, not cut at 15 s
    name: str = field(default_factory=lambda: f"sim{random.randrange(16**4):04x}")


@dataclass
class Rack:
    """One cluster and the catch-all edge that takes its machines (MACs under `prefix`)."""

    cluster: str
    edge: str
    token: str
    prefix: str


@dataclass
class Machine:
    index: int
    rack: Rack
    mac: str
    uuid: str
    serial: str
    id: str | None = None
    step: str = "waiting to power on"  # where the driver is: what a stuck machine waits on
    state: str = ""
    reason: str = ""
    entered: dict[str, float] = field(default_factory=dict)  # state -> seconds from the run's start
    error: str = ""


@dataclass
class Result:
    plan: Plan
    started: datetime
    seconds: float
    machines: list[Machine]
    latencies: dict[str, list[float]]
    errors: Counter
    timed_out: bool

    @property
    def ready(self) -> list[Machine]:
        return [m for m in self.machines if m.state == "ready"]

    def per_minute(self) -> float:
        last = max((m.entered.get("ready", 0.0) for m in self.ready), default=0.0)
        return len(self.ready) / last * 60 if last else 0.0


def machine_facts(m: Machine) -> dict:
    """This machine's facts: its own MAC (and three NICs derived from it), UUID and serial."""
    return server_facts(m.index, [m.mac] + [_other_mac(m.mac, n) for n in range(1, 4)], m.uuid, m.serial)


def server_facts(i: int, macs: list[str], uuid: str, serial: str) -> dict:
    """About 8 KB of facts shaped as the discovery agent reports them for a 2U server (32 cores,
    256 GiB, one to three NVMe disks, 25G NICs, 48 PCI functions and a GPU); `i` varies the disks."""
    return {
        "schema": 1, "architecture": "x86_64", "firmware": "uefi",
        "processors": {"count": 32, "model": "AMD EPYC 7302 16-Core Processor"},
        "processor0": "AMD EPYC 7302 16-Core Processor", "memory": {"total_bytes": 256 << 30},
        "disks": [{"name": f"nvme{d}n1", "size_bytes": 3840755982336, "model": "SAMSUNG MZQL23T8HCLS-00A07",
                   "serial": f"S64HNE0R{i:05d}{d}", "rotational": False} for d in range(1 + i % 3)],
        "nics": [{"name": f"eno{n}", "mac": mac, "driver": "mlx5_core", "speed_mbps": 25000, "link": True, "ipv4": None}
                 for n, mac in enumerate(macs)],
        "pci": [{"slot": f"0000:{b:02x}:00.{f}", "vendor": "0x15b3", "device": "0x1017", "class": "0x020000",
                 "driver": "mlx5_core"} for b in range(12) for f in range(4)]
        + [{"slot": "0000:c1:00.0", "vendor": "0x10de", "device": "0x20b5", "class": "0x030200", "driver": "nvidia"}],
        "dmi": {"uuid": uuid, "serial": serial, "vendor": "Dell Inc.", "product": "PowerEdge R7525",
                "board_serial": f"CN{i:010d}"},
    }


def _other_mac(mac: str, n: int) -> str:
    """The machine's n-th other NIC: a locally administered MAC derived from the booting one."""
    digest = hashlib.sha256(f"{mac}/{n}".encode()).digest()
    return "06:" + ":".join(f"{b:02x}" for b in digest[:5])


def host_key(m: Machine) -> str:
    """An OpenSSH ed25519 public key line (its blob: type name and 32 key bytes)."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(m.mac.encode()).digest()
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def fleet(plan: Plan, racks: list[Rack]) -> list[Machine]:
    """The machines, dealt to the racks in turn; MAC, UUID and serial unique to this run."""
    found = []
    for i in range(plan.machines):
        rack = racks[i % len(racks)]
        low = i // len(racks)
        mac = f"{rack.prefix}:{low >> 8 & 255:02x}:{low & 255:02x}"
        uuid = f"{hashlib.sha256(f'{plan.name}/{i}'.encode()).hexdigest()[:8]}-0000-4000-8000-{i:012x}"
        found.append(Machine(i, rack, mac, uuid, serial=f"{plan.name.upper()}{i:06d}"))
    return found


async def prepare(http: httpx.AsyncClient, plan: Plan) -> list[Rack]:
    """Create the plan's clusters (external join) and one catch-all edge for each (admin token)."""
    run = int(hashlib.sha256(plan.name.encode()).hexdigest()[:4], 16)  # MACs of this run only
    racks = []
    for c in range(plan.clusters):
        cluster, edge = f"{plan.name}-c{c}", f"{plan.name}-e{c}"
        spec = {"name": cluster, "quorum_count": plan.quorum, "join_method": "external"}
        (await http.post("/v1/clusters", json=spec)).raise_for_status()
        prefix = f"02:{run >> 8 & 255:02x}:{run & 255:02x}:{c & 255:02x}"
        policy = {"mode": "catch-all", "cluster": cluster, "mac_prefixes": [prefix], "segment": edge}
        created = await http.post("/v1/edges", json={"name": edge, "policy": policy})
        created.raise_for_status()
        racks.append(Rack(cluster, edge, created.json()["token"], prefix))
    return racks


class Driver:
    """Drives the machines of one plan and keeps every call's latency."""

    def __init__(self, http: httpx.AsyncClient, edges: dict[str, httpx.AsyncClient], admin_token: str, plan: Plan) -> None:
        self.http, self.edges, self.admin, self.plan = http, edges, admin_token, plan
        self.latencies: dict[str, list[float]] = {name: [] for name in (*CALLS, BOOT_ANSWER)}
        self.errors: Counter = Counter()
        self.t0 = time.monotonic()
        self.started = datetime.now(timezone.utc)
        self.listed = asyncio.Event()  # set, and replaced, after each read of the fleet's list

    async def call(self, name: str, method: str, path: str, token: str, via: Rack | None = None,
                   **kwargs) -> httpx.Response:
        """One HTTP call, timed; transport errors and 5xx are counted and retried after a pause
        (as the edge holds a machine and the agent and cloud-init retry). A machine's calls go
        `via` its rack's edge (that edge's connections), an operator's through the admin's."""
        headers = {"Authorization": f"Bearer {token}", "X-Tempered-Edge-Url": EDGE_URL} | kwargs.pop("headers", {})
        http = self.edges[via.edge] if via else self.http
        for attempt in range(1000):
            started = time.monotonic()
            try:
                response = await http.request(method, path, headers=headers, timeout=self.plan.call_timeout_s, **kwargs)
            except httpx.HTTPError as err:
                self.errors[(name, type(err).__name__)] += 1
            else:
                self.latencies[name].append(time.monotonic() - started)
                if response.status_code < 500:
                    return response
                self.errors[(name, response.status_code)] += 1
            await asyncio.sleep(min(hold_delay(attempt), 30))
        raise RuntimeError(f"{name}: gave up")

    async def edge_boot(self, m: Machine, want: str) -> dict:
        """The edge's boot question until the workflow answers `want` (discovery or runtime);
        a `hold` answer is asked again after the edge's backoff, as its hold script does."""
        body = {"mac": m.mac, "uuid": m.uuid, "serial": m.serial, "platform": "efi", "buildarch": "x86_64",
                "ip": f"10.{m.index >> 16 & 255}.{m.index >> 8 & 255}.{m.index & 255}"}
        for attempt in range(1000):
            asked = time.monotonic()
            response = await self.call("edge boot", "POST", "/v1/edge/boot", m.rack.token, m.rack, json=body)
            self.latencies[BOOT_ANSWER].append(time.monotonic() - asked)
            if response.status_code >= 400:
                raise RuntimeError(f"edge boot answered {response.status_code}: {response.text[:200]}")
            answer = response.json()
            instruction = answer["instruction"]
            m.id = instruction["machine_id"]
            if instruction["action"] == want and answer.get("token"):
                return answer
            if instruction["action"] != "hold":
                raise RuntimeError(f"edge boot answered {instruction['action']}: {instruction.get('reason', '')}")
            m.step = f"held at the edge: {instruction.get('reason', '')}"
            await asyncio.sleep(hold_delay(attempt))
        raise RuntimeError("held too long")

    async def discovery(self, m: Machine, token: str) -> None:
        """The discovery agent: facts (a 409 means this boot is past discovery), then the
        instruction (a long poll of wait_s) until it says reboot, after the poll_after it says."""
        m.step = "posting facts"
        response = await self.call("facts", "POST", f"/v1/boot/{m.id}/facts", token, m.rack, json=machine_facts(m))
        if response.status_code not in (202, 409):
            raise RuntimeError(f"facts answered {response.status_code}: {response.text[:200]}")
        m.step = "polling the instruction"
        while True:
            give_up_if_failed(m)
            response = await self.call("instruction", "GET", f"/v1/boot/{m.id}/instruction?wait={self.plan.wait_s}",
                                       token, m.rack)
            if response.status_code >= 400:
                raise RuntimeError(f"instruction answered {response.status_code}: {response.text[:200]}")
            told = response.json()
            if told["action"] == "reboot":
                return
            m.step = f"told to wait: {told.get('reason', '')}"
            await asyncio.sleep(told.get("poll_after") or self.plan.poll_s)

    async def cloud_init(self, m: Machine, token: str) -> None:
        """cloud-init's NoCloud seed, then its phone home form."""
        m.step = "fetching the seed"
        for item in ("meta-data", "user-data", "vendor-data"):
            response = await self.call("seed", "GET", f"/v1/boot/{m.id}/{item}", token, m.rack)
            if response.status_code >= 400:
                raise RuntimeError(f"{item} answered {response.status_code}: {response.text[:200]}")
        m.step = "phoning home"
        form = {"instance_id": f"{m.id}-boot", "hostname": m.id, "fqdn": m.id, "pub_key_ed25519": host_key(m)}
        response = await self.call("phone home", "POST", f"/v1/boot/{m.id}/phone-home", token, m.rack, data=form)
        if response.status_code >= 400:
            raise RuntimeError(f"phone home answered {response.status_code}: {response.text[:200]}")

    async def machine_view(self, m: Machine) -> dict:
        response = await self.call("machine", "GET", f"/v1/machines/{m.id}", self.admin)
        response.raise_for_status()
        view = response.json()
        self.note(m, view)
        return view

    def note(self, m: Machine, view: dict) -> None:
        """Keep the machine's state and the first time its history shows it entering each state."""
        m.state, m.reason = view.get("state", ""), view.get("reason", "")
        for entry in view.get("history", []):
            at = datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))
            m.entered.setdefault(entry["state"], (at - self.started).total_seconds())

    async def join(self, m: Machine) -> None:
        """The external joiner: reports success (a 409 until the workflow has moved to
        `join-cluster` after the phone home: reported again shortly), then waits until the
        fleet's list shows the machine ready."""
        m.step = "reporting the join"
        while True:
            give_up_if_failed(m)
            response = await self.call("join result", "POST", f"/v1/machines/{m.id}/join-result", self.admin, json={"ok": True})
            if response.status_code < 400:
                self.note(m, response.json())
                break
            if response.status_code != 409:
                raise RuntimeError(f"join result answered {response.status_code}: {response.text[:200]}")
            await asyncio.sleep(min(self.plan.poll_s, 2.0))
        m.step = "waiting to be ready"
        while m.state != "ready":
            await self.listed.wait()
            give_up_if_failed(m)
        m.step = "ready"

    async def watch(self, machines: list[Machine], clusters: list[str]) -> None:
        """Read the fleet's list, a page per cluster (the clusters at once), every LIST_EVERY_S
        (or poll_s) for as long as the run lasts: each machine's listed state is its `state`,
        and the waiters wake."""
        every = min(self.plan.poll_s, LIST_EVERY_S)
        while True:
            by_id = {m.id: m for m in machines if m.id}
            for rows in await asyncio.gather(*(self.list_cluster(cluster) for cluster in clusters), return_exceptions=True):
                if isinstance(rows, Exception):  # counted; the next round reads it again
                    self.errors[("list", type(rows).__name__)] += 1
                    continue
                for row in rows:
                    m = by_id.get(row["id"])
                    if m is not None and row["state"]:
                        m.state = row["state"]
            self.listed.set()
            self.listed = asyncio.Event()
            await asyncio.sleep(every)

    async def list_cluster(self, cluster: str) -> list[dict]:
        """Every machine of `cluster` as the list shows it, page by page (none if the list
        answers an error: counted, and read again next round)."""
        rows: list[dict] = []
        params = {"cluster": cluster, "limit": 1000}
        while True:
            response = await self.call("list", "GET", "/v1/machines", self.admin, params=params)
            if response.status_code >= 400:
                self.errors[("list", response.status_code)] += 1
                return []
            rows += response.json()
            cursor = response.headers.get("X-Next-Cursor")
            if cursor is None:
                return rows
            params["after"] = cursor

    async def lifecycle(self, m: Machine, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            m.step = "first PXE boot"
            first = await self.edge_boot(m, "discovery")
            await self.discovery(m, first["token"])
            m.step = "second PXE boot"
            second = await self.edge_boot(m, "runtime")
            await self.cloud_init(m, second["token"])
            await self.join(m)
        except Exception as err:  # noqa: BLE001 - a machine's failure is reported, never raised
            m.error = f"{type(err).__name__}: {err}"

    async def settle(self, machines: list[Machine]) -> None:
        """After the run: each machine's history and where it stands, read from its workflow (a
        few at a time, all within SETTLE_S: a loaded API must not hold the report). A machine the
        list showed ready is read until its workflow says so too (the list learns of `ready` as
        the DNS step ends, a moment before the workflow moves)."""
        gate = asyncio.Semaphore(16)

        async def one(m: Machine) -> None:
            async with gate:
                listed = m.state
                try:
                    view = await asyncio.wait_for(self.machine_view(m), 30)
                    while listed == "ready" and view["state"] != "ready":
                        await asyncio.sleep(0.5)
                        view = await asyncio.wait_for(self.machine_view(m), 30)
                except Exception as err:  # noqa: BLE001 - said in the report, not raised
                    m.state, m.reason = listed, m.reason or f"could not read it: {err}"

        reads = [asyncio.ensure_future(one(m)) for m in machines if m.id]
        if reads:
            _, late = await asyncio.wait(reads, timeout=SETTLE_S)
            for read in late:  # their last known state stands
                read.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def give_up_if_failed(m: Machine) -> None:
    """A machine listed in `failed:*` waits for an operator's retry, which no simulated machine
    gets: it ends here, reported with its state."""
    if m.state.startswith("failed:"):
        raise Failed(m.state)


async def run(
    api_url: str, admin_token: str, plan: Plan, progress: Callable[[str], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Result:
    """Create the clusters and edges, power the machines on over the window, drive each to
    `ready` or until the plan's timeout, and return everything measured."""
    connect = partial(_client, api_url, transport, max(100, plan.machines * 2 // plan.clusters))
    async with contextlib.AsyncExitStack() as clients:
        http = await clients.enter_async_context(connect())
        http.headers["Authorization"] = f"Bearer {admin_token}"
        racks = await prepare(http, plan)
        machines = fleet(plan, racks)
        edges = {rack.edge: await clients.enter_async_context(connect()) for rack in racks}
        driver = Driver(http, edges, admin_token, plan)
        spread = plan.window_s / max(1, plan.machines - 1) if plan.machines > 1 else 0.0
        tasks = [asyncio.create_task(driver.lifecycle(m, i * spread)) for i, m in enumerate(machines)]
        watcher = asyncio.create_task(driver.watch(machines, [rack.cluster for rack in racks]))
        reporter = asyncio.create_task(_report_progress(driver, machines, progress)) if progress else None
        done, pending = await asyncio.wait(tasks, timeout=plan.timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        seconds = time.monotonic() - driver.t0
        for helper in (watcher, reporter):
            if helper:
                helper.cancel()
        await driver.settle(machines)
        return Result(plan, driver.started, seconds, machines, driver.latencies, driver.errors, bool(pending))


def _client(api_url: str, transport: httpx.AsyncBaseTransport | None, connections: int) -> httpx.AsyncClient:
    """The connections of one edge (or of the operator). One pool for the whole fleet made each
    call cost the simulator 8 ms of CPU or more (httpcore walks every waiting request of a pool
    on each turn): a pool per rack is both what real edges have and about 1 ms a call."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=min(connections, 200))
    return httpx.AsyncClient(base_url=api_url.rstrip("/"), limits=limits, transport=transport)


async def _report_progress(driver: Driver, machines: list[Machine], say: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(5)
        say(progress_line(time.monotonic() - driver.t0, machines))


def progress_line(seconds: float, machines: list[Machine]) -> str:
    steps = Counter("ready" if m.state == "ready" else ("error" if m.error else m.step.split(":")[0]) for m in machines)
    return f"{seconds:6.0f}s  " + ", ".join(f"{name}: {n}" for name, n in steps.most_common())


# ---- the report -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile: the p99 of 100 samples is the 99th, not the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def report(result: Result) -> list[str]:
    """The result as lines of text: time to each state, throughput, per-call latency, and the
    machines not ready with where they are stuck."""
    plan, n = result.plan, len(result.machines)
    lines = [
        f"fleet {plan.name}: {n} machines in {plan.clusters} clusters (quorum {plan.quorum}, external join), "
        f"arriving over {plan.window_s:.0f} s, agent poll {plan.poll_s:.0f} s; ran {result.seconds:.0f} s"
        + (f" and stopped at the {plan.timeout_s:.0f} s timeout" if result.timed_out else ""),
        f"ready: {len(result.ready)} of {n}; {result.per_minute():.0f} machines/min",
        f"{'state':<14} {'reached':>8} {'first s':>8} {'p50 s':>8} {'all s':>8}",
    ]
    for state in STATES:
        times = [m.entered[state] for m in result.machines if state in m.entered]
        every = f"{max(times):8.1f}" if times and len(times) == n else "       -"
        first = f"{min(times):8.1f}" if times else "       -"
        p50 = f"{statistics.median(times):8.1f}" if times else "       -"
        lines.append(f"{state:<14} {len(times):>8} {first} {p50} {every}")
    lines.append(f"{'call':<14} {'count':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  errors")
    for name in (*CALLS[:1], BOOT_ANSWER, *CALLS[1:]):  # the boot answer beside the edge boot calls it spans
        values = result.latencies.get(name, [])
        errs = ", ".join(f"{what}: {k}" for (call, what), k in sorted(result.errors.items(), key=str) if call == name)
        if values:
            lines.append(f"{name:<14} {len(values):>8} {percentile(values, .5) * 1000:8.0f} "
                         f"{percentile(values, .99) * 1000:8.0f} {max(values) * 1000:8.0f}  {errs}")
    slow = sum(1 for v in result.latencies["edge boot"] if v > EDGE_GIVES_UP_S)
    lines.append(f"edge boot answers past the edge's {EDGE_GIVES_UP_S:.0f} s: {slow}")
    stuck: Counter = Counter()
    example: dict[tuple[str, str], str] = {}
    for m in result.machines:
        if m.state != "ready":
            where = "parked, no operator retries it" if m.error.startswith("Failed") else (m.error[:120] or m.step.split(":")[0])
            key = (m.state or "no boot answered", where)
            stuck[key] += 1
            example.setdefault(key, m.reason or m.step.partition(": ")[2])
    for (state, where), k in stuck.most_common(10):
        reason = f"; e.g. {example[(state, where)][:160]}" if example[(state, where)] else ""
        lines.append(f"not ready: {k} in {state} ({where}){reason}")
    return lines
