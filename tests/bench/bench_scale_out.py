"""Scale-out benchmark: the same fleet (api/lab/fleet.py) on a fresh stack with 1, then 2 (or more)
`tempered worker` processes on one Temporal dev server and PostgreSQL (tests/bench/bench_fleet.py's
stack, with the extra workers beside its own). Prints, per worker count: machines ready and time
to all ready, machines per minute, the edge boot p50/p99, and the CPU seconds of each process.
Asserts nothing (the README's "Scaling out" quotes it).

    .venv/bin/python -m tests.bench.bench_scale_out [--machines 100] [--clusters 10] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from api.lab import fleet
from tests.bench.bench_fleet import Stack, cpu_seconds
from tests.servers import Process


def add_workers(stack: Stack, count: int) -> list[Process]:
    """`count` more workers on the stack's Temporal and database (no metrics endpoint: the
    first worker has the default port)."""
    env = os.environ | {
        "TEMPERED_HOME": str(stack.work), "DATABASE_URL": stack.postgres.url,
        "TEMPORAL_ADDRESS": stack.temporal.address, "TEMPERED_API": stack.url,
        "TEMPERED_API_PORT": stack.url.rsplit(":", 1)[1], "TEMPERED_WORKER_METRICS": "off",
    }
    return [Process(["worker"], env, stack.work / f"worker{n + 2}.log").start() for n in range(count)]


def one(workers: int, plan: fleet.Plan) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"tempered-bench-scale-{workers}w-"))
    os.chmod(work, 0o755)
    stack = Stack(work)
    extra = add_workers(stack, workers - 1)
    try:
        procs = {"api": stack.api.proc, "temporal": stack.temporal.proc, "postgres": stack.postgres.proc,
                 **{f"worker{n + 1}": p.proc for n, p in enumerate([stack.worker, *extra])}}
        before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
        result = asyncio.run(fleet.run(stack.url, stack.token, plan))
        used = {name: cpu_seconds(p.pid) - before[name] for name, p in procs.items()}
        boots = result.latencies[fleet.BOOT_ANSWER]
        last = max((m.entered.get("ready", 0.0) for m in result.ready), default=float("nan"))
        print(f"{workers} worker(s): {len(result.ready)} of {plan.machines} ready, all by {last:.0f} s, "
              f"{result.per_minute():.0f} machines/min; boot answer p50 {fleet.percentile(boots, .5):.2f} s "
              f"p99 {fleet.percentile(boots, .99):.2f} s; CPU s " + ", ".join(f"{k} {v:.0f}" for k, v in used.items()),
              flush=True)
    finally:
        for proc in extra:
            proc.stop()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--poll", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    for _ in range(args.runs):
        for workers in (int(n) for n in args.workers.split(",")):
            one(workers, fleet.Plan(machines=args.machines, clusters=args.clusters, window_s=10.0,
                                    timeout_s=args.timeout, poll_s=args.poll))


if __name__ == "__main__":
    main()
