"""The bare-Temporal anchor of the fleet benchmark: Tempered's workflow shape with trivial bodies,
on the same Temporal server, driven at the same arrival rate and poll interval.

Per machine one workflow, reached as Tempered's are: update-with-start for the first PXE boot,
an Update for the facts, the agent's polls as queries, a second PXE Update, the phone home
Update, then the join result Update once it is joining. Its steps are trivial activities: admit
(which signals the cluster), render, publish DNS. Per cluster one workflow answering admissions
in order with a trivial rules activity each: the first machine is the master-prime, the others
wait until it is ready (as Tempered's held machines do), and each answer is a signal back.
Admission here is signal + reply, the shape that does not hit the per-workflow in-flight Update
limit: the anchor is what the engine can do with this shape, not a copy of a bottleneck.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

QUEUE = "fleet-anchor"
SHORT = timedelta(seconds=30)


@activity.defn(name="anchor_step")
async def anchor_step(what: str) -> str:
    return what


@activity.defn(name="anchor_admit")
async def anchor_admit(cluster: str, machine: str) -> None:
    """The machine asks its cluster for a role (a signal; the answer comes back as one)."""
    await activity.client().get_workflow_handle(f"anchor-cluster:{cluster}").signal("admit", machine)


@workflow.defn(name="AnchorCluster")
class AnchorCluster:
    def __init__(self) -> None:
        self.queue: list[str] = []
        self.prime: str | None = None
        self.prime_ready = False
        self.held: list[str] = []

    @workflow.signal
    def admit(self, machine: str) -> None:
        self.queue.append(machine)

    @workflow.signal
    def member_ready(self, machine: str) -> None:
        if machine == self.prime:
            self.prime_ready = True

    async def answer(self, machine: str, role: str) -> None:
        await workflow.get_external_workflow_handle(f"anchor-machine:{machine}").signal("admitted", role)

    @workflow.run
    async def run(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.queue) or (self.prime_ready and bool(self.held)))
            if self.prime_ready and self.held:
                held, self.held = self.held, []
                await asyncio.gather(*(self.answer(m, "worker") for m in held))
                continue
            machine = self.queue.pop(0)
            await workflow.execute_activity(anchor_step, "rules", start_to_close_timeout=SHORT)
            if self.prime is None:
                self.prime = machine
                await self.answer(machine, "master-prime")
            elif self.prime_ready:
                await self.answer(machine, "worker")
            else:
                self.held.append(machine)


@workflow.defn(name="AnchorMachine")
class AnchorMachine:
    def __init__(self) -> None:
        self.state = "new"
        self.boot = 0
        self.role = ""
        self.events: list[str] = []

    @workflow.update
    def pxe_boot(self) -> int:
        self.boot += 1
        self.state = "boot-1" if self.boot == 1 else "boot-2"
        return self.boot

    @workflow.update
    def facts_reported(self) -> str:
        self.state = "discover"
        return self.state

    @workflow.update
    def phoned_home(self) -> str:
        self.state = "post-boot-2"
        return self.state

    @workflow.update
    def join_finished(self) -> str:
        self.events.append("joined")
        return self.state

    @join_finished.validator
    def _joining(self) -> None:
        if self.state != "join-cluster":
            raise ValueError(f"not joining: {self.state}")

    @workflow.signal
    def admitted(self, role: str) -> None:
        self.role = role

    @workflow.query
    def status(self) -> str:
        return self.state

    @workflow.run
    async def run(self, cluster: str, machine: str) -> str:
        await workflow.wait_condition(lambda: self.state == "discover")
        await workflow.execute_activity(anchor_admit, args=[cluster, machine], start_to_close_timeout=SHORT)
        await workflow.wait_condition(lambda: bool(self.role))
        await workflow.execute_activity(anchor_step, "render", start_to_close_timeout=SHORT)
        self.state = "post-discover"
        await workflow.wait_condition(lambda: self.state == "post-boot-2")
        self.state = "join-cluster"
        await workflow.wait_condition(lambda: "joined" in self.events)
        await workflow.execute_activity(anchor_step, "dns", start_to_close_timeout=SHORT)
        self.state = "ready"
        await workflow.get_external_workflow_handle(f"anchor-cluster:{cluster}").signal("member_ready", machine)
        return self.role


@dataclass
class AnchorResult:
    machines: int
    ready: int
    seconds: float  # from the first arrival to the last machine ready

    @property
    def per_minute(self) -> float:
        return self.ready / self.seconds * 60 if self.seconds else 0.0


async def _machine(client: Client, cluster: str, machine: str, delay: float, poll_s: float) -> float:
    await asyncio.sleep(delay)
    wid = f"anchor-machine:{machine}"
    start = WithStartWorkflowOperation(
        AnchorMachine.run, args=[cluster, machine], id=wid, task_queue=QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await client.execute_update_with_start_workflow(AnchorMachine.pxe_boot, start_workflow_operation=start)
    handle = client.get_workflow_handle(wid)
    await handle.execute_update(AnchorMachine.facts_reported)
    while await handle.query(AnchorMachine.status) != "post-discover":
        await asyncio.sleep(poll_s)
    await handle.execute_update(AnchorMachine.pxe_boot)
    await handle.execute_update(AnchorMachine.phoned_home)
    while await handle.query(AnchorMachine.status) != "join-cluster":
        await asyncio.sleep(poll_s)
    await handle.execute_update(AnchorMachine.join_finished)
    await handle.result()
    return time.monotonic()


async def run(client: Client, machines: int, clusters: int, window_s: float, poll_s: float, timeout_s: float) -> AnchorResult:
    """Run the anchor once on `client`'s server with its own worker; the same arrivals as the fleet."""
    tag = uuid.uuid4().hex[:6]
    names = [f"{tag}-c{c}" for c in range(clusters)]
    async with Worker(client, task_queue=QUEUE, workflows=[AnchorCluster, AnchorMachine],
                      activities=[anchor_step, anchor_admit]):
        for name in names:
            await client.start_workflow(AnchorCluster.run, id=f"anchor-cluster:{name}", task_queue=QUEUE)
        spread = window_s / max(1, machines - 1)
        t0 = time.monotonic()
        tasks = [asyncio.create_task(_machine(client, names[i % clusters], f"{tag}-m{i}", i * spread, poll_s))
                 for i in range(machines)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        ends = [t.result() for t in done if not t.cancelled() and t.exception() is None]
        for name in names:
            await client.get_workflow_handle(f"anchor-cluster:{name}").terminate("the anchor run is over")
    return AnchorResult(machines, len(ends), (max(ends) - t0) if ends else 0.0)
