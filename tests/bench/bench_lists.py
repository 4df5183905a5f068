"""List and edge-boot benchmark (issue 18): 10,000 machines in a real PostgreSQL, listed page by
page through a real `tempered api` over loopback, and the edge's boot question timed with 10,
1,000 and 10,000 machines known.

Prints p50/p99 per page (unfiltered, by cluster, by state, by role) and per boot; asserts
nothing. The machines are rows of the storage layer (no workflows), each with the state the
lists read (table machinestate: 90% ready workers, 10% holding): a page is one SQL query. Each timed boot is a known machine's first boot through the real
route (identified, checked against the edge's policy, its workflow started by update-with-start
on a real `tempered worker`).

    .venv/bin/python -m tests.bench.bench_lists [--machines 10000] [--boots 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
from sqlalchemy import insert, text

from activities.storage import db
from activities.storage import settings as settings_mod
from activities.domain.edge import EdgeBootRequest
from activities.storage.models import Machine, MachineMac, MachineState, utcnow
from api import edges, machine_list
from tests.conftest import stack_env
from tests.servers import DevServer, Postgres, Process, free_port, wait_http

CLUSTERS = 10
PREFIX = "02:42:00"


def mac(n: int) -> str:
    return f"{PREFIX}:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"


def add_machines(settings, first: int, last: int) -> None:
    """Machines first..last-1 (ids are their MACs), round-robin over the clusters, one MAC each."""
    now = utcnow()
    machines = [{"id": mac(n), "cluster": f"c{n % CLUSTERS}", "created_at": now} for n in range(first, last)]
    with db.session(settings.database_url) as s:
        for start in range(0, len(machines), 2000):
            chunk = machines[start:start + 2000]
            s.execute(insert(Machine), chunk)
            s.execute(insert(MachineMac), [{"mac": m["id"], "machine_id": m["id"]} for m in chunk])
            s.execute(insert(MachineState), [state(n) for n in range(first + start, first + start + len(chunk))])
        s.commit()
    with db.engine(settings.database_url).connect() as connection:  # what autovacuum does within a minute of
        connection.execute(text("ANALYZE"))                       # a bulk insert: the planner's row counts
        connection.commit()


def state(n: int) -> dict:
    """Machine n's recorded state: one in ten is held, the others are ready workers."""
    return {"machine_id": mac(n), "state": "holding" if n % 10 == 0 else "ready",
            "role": None if n % 10 == 0 else "worker", "mac": mac(n), "updated_at": utcnow()}


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  ({len(ordered)} requests)"


def walk(http: httpx.Client, **params) -> tuple[int, list[float]]:
    """Every page of GET /v1/machines with these filters: (rows seen, seconds per page)."""
    rows, times, after = 0, [], None
    while True:
        started = time.perf_counter()
        answer = http.get("/v1/machines", params={**params, **({"after": after} if after else {})})
        times.append(time.perf_counter() - started)
        answer.raise_for_status()
        rows += len(answer.json())
        if (after := answer.headers.get("x-next-cursor")) is None:
            return rows, times


def boots(edge: httpx.Client, numbers: range) -> list[float]:
    times = []
    for n in numbers:
        started = time.perf_counter()
        answer = edge.post("/v1/edge/boot", json={"mac": mac(n)})
        times.append(time.perf_counter() - started)
        answer.raise_for_status()
        assert answer.json()["instruction"]["machine_id"] == mac(n)
    return times


def in_process(settings, picks: range, rounds: int = 3) -> tuple[list[float], list[float]]:
    """The database halves of the two routes, timed in this process against the same PostgreSQL:
    the boot route's identify + policy + record of already booted machines (`_booting`), and
    the machine list's page query (`machine_list.rows`, 100 rows from a random key)."""
    booting, pages = [], []
    for _ in range(rounds):
        for n in picks:
            started = time.perf_counter()
            edges._booting(settings, "bench", EdgeBootRequest(mac=mac(n)))
            booting.append(time.perf_counter() - started)
            started = time.perf_counter()
            machine_list.rows(settings, None, None, None, mac(n), 101)
            pages.append(time.perf_counter() - started)
    return booting, pages


def configs(edge: httpx.Client, rounds: int = 10) -> tuple[list[float], list[float]]:
    """GET /v1/edge/config: full answers, then with If-None-Match (304)."""
    full, unchanged = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        answer = edge.get("/v1/edge/config")
        full.append(time.perf_counter() - started)
        started = time.perf_counter()
        edge.get("/v1/edge/config", headers={"If-None-Match": answer.headers["etag"]})
        unchanged.append(time.perf_counter() - started)
    return full, unchanged


def run(settings, machines: int, boot_count: int, api_pid: int) -> None:
    with httpx.Client(base_url=settings.api_url, timeout=120,
                      headers={"Authorization": f"Bearer {(settings.home / 'admin-token').read_text().strip()}"}) as http:
        for n in range(CLUSTERS):
            http.post("/v1/clusters", json={"name": f"c{n}", "quorum_count": 1}).raise_for_status()
        policy = {"mode": "preregistered", "mac_prefixes": [PREFIX], "segment": "bench"}  # every machine is its own
        token = http.post("/v1/edges", json={"name": "bench", "policy": policy}).json()["token"]
        with httpx.Client(base_url=settings.api_url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as edge:
            known, booted = 0, 0
            for size in sorted({10, 1000, machines}):
                add_machines(settings, known, size)
                known = size
                picks = range(booted, min(known, booted + boot_count))  # known machines not booted yet
                booted = picks.stop
                print(f"edge boot, {known:>6} machines known:   {percentiles(boots(edge, picks))}")
                booting, pages = in_process(settings, picks)
                print(f"  its database part alone (in process):  {percentiles(booting)}")
                print(f"  a 100-row page query alone (in process): {percentiles(pages)}")
                full, unchanged = configs(edge)
                print(f"edge config, {known:>6} known:  full {percentiles(full)}")
                print(f"edge config, {known:>6} known:  304  {percentiles(unchanged)}")
        for label, params in (("unfiltered, limit 100", {"limit": 100}),
                              ("unfiltered, limit 1000", {"limit": 1000}),
                              ("cluster=c3, limit 100", {"cluster": "c3", "limit": 100}),
                              ("state=ready, limit 100", {"state": "ready", "limit": 100}),
                              ("state=holding, limit 100", {"state": "holding", "limit": 100}),
                              ("c3, role=worker, limit 100", {"cluster": "c3", "role": "worker", "limit": 100}),
                              ("state=failed:admit (none)", {"state": "failed:admit", "limit": 100})):
            used = cpu_seconds(api_pid)
            rows, times = walk(http, **params)
            cpu = (cpu_seconds(api_pid) - used) / len(times) * 1000
            print(f"GET /v1/machines {label:<24} {rows:>6} rows  {percentiles(times)}  API CPU {cpu:.1f} ms/page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--boots", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tempered-bench-lists-"))
    temporal = DevServer(work).start()
    postgres = Postgres(work).start()
    port = free_port()
    settings = replace(settings_mod.load(), home=work, database_url=postgres.url, temporal_address=temporal.address,
                       temporal_namespace="default", api_port=port, api_url=f"http://127.0.0.1:{port}")
    env = stack_env(settings)
    api = Process(["api"], env, work / "api.log").start()
    worker = Process(["worker"], env, work / "worker.log").start()
    try:
        wait_http(settings.api_url + "/healthz")
        run(settings, args.machines, args.boots, api.proc.pid)
    finally:
        worker.stop()
        api.stop()
        postgres.stop()
        temporal.stop()


if __name__ == "__main__":
    main()
