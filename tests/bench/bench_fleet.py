"""Fleet benchmark: N machines powering on together across C clusters, through the real API, edge
routes, workflows and PostgreSQL, by the fleet simulator (api/lab/fleet.py); beside it, in the
same run, the same workflow shape on bare Temporal (tests/bench/fleet_anchor.py) and the DNS
publish against `nsupdate` (tests/bench/bench_dns.py).

It starts its own stack (Temporal dev server, PostgreSQL, `tempered worker`, `tempered api`, as
the test harness does), and prints, per run: time to each state (first / p50 / all), machines
per minute, per-call p50/p99, the machines not ready and where they are stuck, Temporal history
events and billable actions per machine and per cluster, failed activity attempts, the CPU
seconds of each process, and the anchor's throughput with the ratio. Asserts nothing.

    .venv/bin/python -m tests.bench.bench_fleet [--machines 1000] [--clusters 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import EventType, TimeoutType, WorkflowTaskFailedCause
from temporalio.client import Client

from api.lab import fleet
from tests.api.test_metrics import parse, value
from tests.bench import bench_dns, fleet_anchor
from tests.temporal_actions import count_actions
from tests.servers import DevServer, Postgres, Process, free_port, wait_http

E = EventType


def actions(events) -> int:
    """Billable Temporal Cloud actions in one run's history events, as Temporal Cloud bills them
    (tests/temporal_actions.py says which events count and why: one per workflow run started,
    activity scheduled and retry, timer, signal, accepted Update, search-attribute upsert and
    marker; queries, heartbeats and rejected Updates are billed too but are in no history)."""
    return count_actions(events).total


@dataclass
class Histories:
    events: Counter = field(default_factory=Counter)  # workflow type -> events
    actions: Counter = field(default_factory=Counter)  # workflow type -> actions
    workflows: dict[str, set] = field(default_factory=dict)  # workflow type -> ids
    failed_attempts: Counter = field(default_factory=Counter)  # activity type -> failed attempts
    failed_tasks: Counter = field(default_factory=Counter)  # workflow tasks that failed or timed out, by why
    ready_events: int = 0  # the machines that reached ready: their lifecycles' events and actions
    ready_actions: int = 0
    ready: int = 0


def _failed_attempts(events, into: Counter) -> None:
    """Attempts that failed: every attempt before an activity's last, plus a last one that failed."""
    names = {}
    for event in events:
        if event.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            into[names.get(attrs.scheduled_event_id, "?")] += max(0, attrs.attempt - 1)
        elif event.event_type in (E.EVENT_TYPE_ACTIVITY_TASK_FAILED, E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT):
            attrs = (event.activity_task_failed_event_attributes if event.event_type == E.EVENT_TYPE_ACTIVITY_TASK_FAILED
                     else event.activity_task_timed_out_event_attributes)
            into[names.get(attrs.scheduled_event_id, "?")] += 1


FAILED_TASK = (E.EVENT_TYPE_WORKFLOW_TASK_FAILED, E.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT)


def _failed_task(event) -> str:
    """Why a workflow task failed: its timeout (a sticky task not taken within
    sticky_queue_schedule_to_start_timeout, or a task that ran past its 10 s) or its cause."""
    if event.event_type == E.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
        kind = event.workflow_task_timed_out_event_attributes.timeout_type
        return "timed out " + TimeoutType.Name(kind).removeprefix("TIMEOUT_TYPE_").lower().replace("_", "-")
    cause = event.workflow_task_failed_event_attributes.cause
    return WorkflowTaskFailedCause.Name(cause).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_").lower()


async def read_histories(address: str, since: datetime, ready: set[str] = frozenset()) -> Histories:
    """Every machine and cluster workflow run started since `since`, read through the client."""
    client = await Client.connect(address)
    found = Histories()
    query = f"StartTime >= '{since.isoformat()}' AND WorkflowType IN ('MachineWorkflow', 'ClusterWorkflow')"
    runs = [wf async for wf in client.list_workflows(query)]
    gate = asyncio.Semaphore(16)

    async def one(wf) -> None:
        async with gate:
            history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        events = list(history.events)
        found.events[wf.workflow_type] += len(events)
        found.actions[wf.workflow_type] += actions(events)
        found.workflows.setdefault(wf.workflow_type, set()).add(wf.id)
        if wf.id.removeprefix("machine:") in ready and wf.workflow_type == "MachineWorkflow":
            found.ready_events += len(events)
            found.ready_actions += actions(events)
        _failed_attempts(events, found.failed_attempts)
        found.failed_tasks.update(_failed_task(e) for e in events if e.event_type in FAILED_TASK)

    await asyncio.gather(*(one(wf) for wf in runs))
    found.ready = len(ready)
    return found


def history_lines(h: Histories) -> list[str]:
    lines = [f"{'workflows':<16} {'count':>6} {'events':>8} {'per wf':>8} {'actions':>8} {'per wf':>8}"]
    for kind, label in (("MachineWorkflow", "machine"), ("ClusterWorkflow", "cluster")):
        n = len(h.workflows.get(kind, ()))
        if n:
            lines.append(f"{label:<16} {n:>6} {h.events[kind]:>8} {h.events[kind] / n:>8.1f} "
                         f"{h.actions[kind]:>8} {h.actions[kind] / n:>8.1f}")
    if h.ready:
        lines.append(f"{'ready machines':<16} {h.ready:>6} {h.ready_events:>8} {h.ready_events / h.ready:>8.1f} "
                     f"{h.ready_actions:>8} {h.ready_actions / h.ready:>8.1f}  (new -> ready lifecycles)")
    failed = ", ".join(f"{name} {k}" for name, k in h.failed_attempts.most_common() if k) or "none"
    kinds = ", ".join(f"{why} {k}" for why, k in h.failed_tasks.most_common()) or "none"
    lines.append(f"failed activity attempts: {sum(h.failed_attempts.values())} ({failed}); "
                 f"failed workflow tasks: {sum(h.failed_tasks.values())} ({kinds})")
    return lines


# ---- process CPU --------------------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    """`root` and every live descendant (by /proc parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU of a process tree, its reaped children included."""
    total = 0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


# ---- the stack ----------------------------------------------------------------------------------


class Stack:
    """Temporal, PostgreSQL, a worker and an API, each stopped by its PID."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.postgres = Postgres(work).start()
        self.temporal = DevServer(work).start()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = os.environ | {
            "TEMPERED_HOME": str(work), "DATABASE_URL": self.postgres.url, "TEMPORAL_ADDRESS": self.temporal.address,
            "TEMPERED_API_PORT": str(port), "TEMPERED_API": self.url,
        }
        self.worker = Process(["worker"], env, work / "worker.log").start()
        self.api = Process(["api"], env, work / "api.log").start()
        wait_http(self.url + "/healthz", timeout=120)
        self.token = (work / "admin-token").read_text().strip()

    def cpu(self) -> dict[str, float]:
        procs = {"api": self.api.proc, "worker": self.worker.proc, "temporal": self.temporal.proc,
                 "postgres": self.postgres.proc}
        return {name: cpu_seconds(proc.pid) for name, proc in procs.items()}

    def stop(self) -> None:
        for part in (self.api, self.worker, self.temporal, self.postgres):
            part.stop()


def status_reads(stack: Stack) -> str:
    """The machine-facing reads answered from a kept answer, and those that asked the workflow
    (api/boot_views.py), from the API's metrics: since the stack started."""
    text = httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {stack.token}"}, timeout=30).text
    samples, name = parse(text), "tempered_machine_status_reads_total"
    return (f"machine status reads: {value(samples, name, source='workflow'):.0f} asked the workflow, "
            f"{value(samples, name, source='kept'):.0f} answered from a kept answer")


def one_run(stack: Stack, plan: fleet.Plan, anchor: bool) -> fleet.Result:
    before, since = stack.cpu(), datetime.now(timezone.utc)  # the clusters start before the machines
    own = time.process_time()
    result = asyncio.run(fleet.run(stack.url, stack.token, plan, progress=lambda line: print(line, flush=True)))
    used = {name: seconds - before[name] for name, seconds in stack.cpu().items()}
    used["simulator"] = time.process_time() - own  # this process: the machines' and the edge's calls
    print("\n".join(fleet.report(result)))
    print(status_reads(stack))
    print("CPU seconds: " + ", ".join(f"{name} {s:.0f}" for name, s in used.items())
          + f" (of {result.seconds * os.cpu_count():.0f} on {os.cpu_count()} cores)")
    print("\n".join(history_lines(asyncio.run(read_histories(stack.temporal.address, since, {m.id for m in result.ready})))))
    if anchor:
        temporal, own = stack.cpu()["temporal"], time.process_time()
        base = asyncio.run(_anchor(stack.temporal.address, plan))
        temporal, own = stack.cpu()["temporal"] - temporal, time.process_time() - own
        mine = result.per_minute()
        print(f"bare Temporal, same shape: {base.ready} of {base.machines} ready in {base.seconds:.0f} s, "
              f"{base.per_minute:.0f} machines/min; Tempered/bare: "
              + (f"{base.per_minute / mine:.1f}x slower" if mine else "no machine ready in Tempered"))
        # what the bare shape alone takes of the host: Tempered's API, database and calls come on top
        print(f"bare Temporal CPU seconds: temporal {temporal:.0f}, its worker and starters {own:.0f} "
              f"(of {base.seconds * os.cpu_count():.0f} on {os.cpu_count()} cores)")
    return result


async def _anchor(address: str, plan: fleet.Plan) -> fleet_anchor.AnchorResult:
    client = await Client.connect(address)
    return await fleet_anchor.run(client, plan.machines, plan.clusters, plan.window_s, plan.poll_s, plan.timeout_s)


def dns_comparison(nodes: int, rounds: int) -> None:
    figures = bench_dns.measure(nodes, rounds)
    median = figures["median"]
    print(f"DNS publish of {nodes} nodes (A + PTR), median of {rounds}: nsupdate {median['nsupdate']:.3f} s, "
          f"tempered {median['tempered']:.3f} s: {figures['ratio']:.2f}x (target <= 2.0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0, help="seconds over which the machines power on")
    parser.add_argument("--poll", type=float, default=10.0, help="the agent's instruction interval (10 s in the image)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take before it reports")
    parser.add_argument("--quorum", type=int, default=1)
    parser.add_argument("--no-anchor", action="store_true", help="skip the bare-Temporal anchor")
    parser.add_argument("--dns-rounds", type=int, default=3, help="0: skip the DNS comparison")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tempered-bench-fleet-"))
    os.chmod(work, 0o755)
    stack = Stack(work)
    print(f"stack up in {work} (logs there): API {stack.url}, Temporal {stack.temporal.address}", flush=True)
    try:
        for run in range(args.runs):
            print(f"--- run {run + 1} of {args.runs}", flush=True)
            plan = fleet.Plan(machines=args.machines, clusters=args.clusters, window_s=args.window,
                              timeout_s=args.timeout, poll_s=args.poll, quorum=args.quorum)
            one_run(stack, plan, anchor=not args.no_anchor)
    finally:
        stack.stop()
    if args.dns_rounds:
        dns_comparison(args.machines, args.dns_rounds)


if __name__ == "__main__":
    main()
