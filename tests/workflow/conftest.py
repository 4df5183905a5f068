"""The real workflows with fake activities, on the session's Temporal dev server.

`fake_site` runs an in-process `temporalio.worker.Worker` on a task queue of its own, with the
real MachineWorkflow and ClusterWorkflow and one fake per activity the workflows call, under
the real name (workflows/calls.py). A fake is a small in-memory object a test sets up: what it
answers, how many attempts fail (retryably or not), whether it blocks until released, and every
argument it was called with. The workflows are driven the way the outside world drives them:
update-with-start on PXE, Updates for facts, phone home and join results, Signals, queries.

No database, no Ansible, no DNS server: each test takes seconds. Tests here go through the
workflows' public surface only (workflow types, Update/Signal/query names, domain messages).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest_asyncio
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.domain.cluster import ClusterSpec, ClusterStatus, CredentialsRequest, JoinCredentials
from activities.domain.dns import ApiNameDns, NodeDns
from activities.domain.ids import cluster_workflow_id, machine_workflow_id
from activities.domain.machine import (
    Admission,
    AdmitRequest,
    BootInstruction,
    BootRequest,
    DecommissionRequest,
    FactsReport,
    JoinOutcome,
    JoinPlan,
    JoinPlanRequest,
    JoinRequest,
    MachineStatus,
    RenderRequest,
    RenderResult,
    StateRecord,
)
from activities.domain.operations import MachineWait, NodeRef
from activities.domain.power import PowerRequest, PowerResult, PowerTarget
from activities.domain.rules import RulesBatch, RulesRequest, RulesVerdict
from activities.heartbeat import heartbeating
from activities.inventory import decommission_member
from activities.rules import admitted_members
from activities.domain.terraform import TerraformResult, TerraformRun
from activities.storage.settings import Settings
from api.worker import WORKFLOWS
from tests.conftest import eventually
from tests.lifecycle import MachineDriver
from workflows import calls

# What each activity takes (workflows/calls.py names each with its result type; the worker
# decodes an activity's argument by its annotation, so every fake is annotated with these).
# tests/workflow/test_machine_steps.py checks them against the real implementations.
ARGUMENTS: dict[str, type] = {
    "admit_machine": AdmitRequest,
    "render_user_data": RenderRequest,
    "join_plan": JoinPlanRequest,
    "kubeadm_join": JoinRequest,
    "kubeadm_decommission": DecommissionRequest,
    "publish_node_dns": NodeDns,
    "remove_node_dns": NodeDns,
    "retire_machine": str,
    "record_state": StateRecord,
    "evaluate_rules": RulesRequest,
    "evaluate_rules_batch": RulesBatch,
    "record_roles": dict[str, str],
    "mint_join_credentials": CredentialsRequest,
    "publish_api_name": ApiNameDns,
    "decommission_member": str,
    "forget_cluster": str,
    "cluster_machines": str,
    "run_terraform": TerraformRun,
    "power_target": str,
    "power_machine": PowerRequest,
    "drain_node": NodeRef,
    "uncordon_node": NodeRef,
    "node_version": NodeRef,
    "reboot_member": str,
    "await_machine": MachineWait,
}

Behaviour = Callable[[Any], Any]  # takes the activity's argument; returns its answer (or an awaitable of it)


@dataclass
class Fake:
    """One fake activity. Each attempt is recorded, then waits while the fake is held, then
    raises the next queued failure if there is one, else answers with `behaviour`."""

    name: str
    behaviour: Behaviour
    calls: list[Any] = field(default_factory=list)  # every attempt's argument, in order
    accepted: list[Any] = field(default_factory=list)  # requests a cluster Update accepted (forwarders)
    waiting: int = 0  # attempts blocked by `hold` right now
    _failures: list[ApplicationError] = field(default_factory=list)
    _gate: asyncio.Event | None = None

    def answer(self, behaviour: Behaviour | Any) -> None:
        """Answer every later attempt with `behaviour(arg)`, or with this value."""
        self.behaviour = behaviour if callable(behaviour) else (lambda _arg: behaviour)

    def fail(self, times: int = 1, message: str = "fake failure", non_retryable: bool = False) -> None:
        """The next `times` attempts fail (a non-retryable failure ends the step at once)."""
        self._failures += [
            ApplicationError(message, type="FakeFailure", non_retryable=non_retryable) for _ in range(times)
        ]

    def hold(self) -> None:
        """Block every attempt from now on (heartbeating) until `release`."""
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    def calls_for(self, machine_id: str) -> list[Any]:
        return [arg for arg in self.calls if _machine_of(arg) == machine_id]

    async def wait_waiting(self, count: int, timeout: float = 30.0) -> None:
        async def blocked() -> bool:
            return self.waiting >= count

        await eventually(blocked, timeout, what=f"{count} attempts of {self.name} held")

    async def __call__(self, arg: Any) -> Any:
        return await heartbeating(self._attempt(arg))

    async def _attempt(self, arg: Any) -> Any:
        self.calls.append(arg)
        if (gate := self._gate) is not None:
            self.waiting += 1
            try:
                await gate.wait()
            finally:
                self.waiting -= 1
        if self._failures:
            raise self._failures.pop(0)
        answer = self.behaviour(arg)
        return await answer if inspect.isawaitable(answer) else answer


def _machine_of(arg: Any) -> str | None:
    return arg if isinstance(arg, str) else getattr(arg, "machine_id", None)


def to_cluster(update: str, result: type, fake: Callable[[], Fake]) -> Behaviour:
    """What the real admit_machine and join_plan do: run an Update on the request's cluster
    workflow (one Update id per activity, so a retry is answered by the first run)."""

    async def forward(request: AdmitRequest | JoinPlanRequest) -> Any:
        info = activity.info()
        handle = activity.client().get_workflow_handle(cluster_workflow_id(request.cluster))
        try:
            started = await handle.start_update(
                update, request, id=f"{update}:{info.workflow_run_id}:{info.activity_id}", result_type=result,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
            fake().accepted.append(request)
            return await started.result()
        except WorkflowUpdateFailedError as err:
            raise ApplicationError(f"cluster refused: {err.cause}", non_retryable=True) from err

    return forward


class Fakes:
    """One fake per activity the workflows call. By default they let a machine through: the
    cluster is asked for real (admission, join plan), every other step succeeds."""

    def __init__(self) -> None:
        self.admit_machine = Fake("admit_machine", to_cluster("admit", Admission, lambda: self.admit_machine))
        self.join_plan = Fake("join_plan", to_cluster("join_plan", JoinPlan, lambda: self.join_plan))
        self.render_user_data = Fake(
            "render_user_data", lambda r: RenderResult(digest=f"user-data-of-{r.machine_id}", size=1)
        )
        self.kubeadm_join = Fake(
            "kubeadm_join", lambda r: JoinOutcome(summary=f"kubeadm {r.plan.action} ran (fake)", changed=True)
        )
        self.kubeadm_decommission = Fake("kubeadm_decommission", lambda r: f"node {r.node_name} deleted (fake)")
        self.publish_node_dns = Fake("publish_node_dns", lambda n: f"{n.name} published (fake)")
        self.remove_node_dns = Fake("remove_node_dns", lambda n: f"{n.name} removed (fake)")
        self.retire_machine = Fake("retire_machine", lambda _id: None)
        self.record_state = Fake("record_state", lambda _record: None)
        self.evaluate_rules = Fake("evaluate_rules", lambda _r: RulesVerdict(has_rules=False))
        # What the real batch does, each machine's verdict from the evaluate_rules fake (so a test sets
        # up, holds or counts one machine's rules there); every candidate is asked, rules or not.
        self.evaluate_rules_batch = Fake("evaluate_rules_batch", self._evaluate_batch)
        self.record_roles = Fake("record_roles", lambda _roles: None)
        self.mint_join_credentials = Fake("mint_join_credentials", self._mint)
        self.publish_api_name = Fake("publish_api_name", lambda r: f"api.{r.cluster} -> {len(r.machine_ids)} (fake)")
        # The real one talks only to the machine workflows (Updates, queries): it runs as is.
        self.decommission_member = Fake("decommission_member", decommission_member)
        self.forget_cluster = Fake("forget_cluster", lambda _name: None)
        self.cluster_machines = Fake("cluster_machines", lambda _name: [])  # (tests set the registered ones)
        self.run_terraform = Fake("run_terraform", lambda r: TerraformResult(action=r.action, summary="(fake)"))
        # Power: manual (no BMC) on the main queue; a command answers as a BMC that obeys.
        self.power_target = Fake("power_target", lambda i: PowerTarget(machine_id=i, driver="manual"))
        self.power_machine = Fake("power_machine", lambda r: PowerResult(
            machine_id=r.machine_id, action=r.action, driver="manual", state="on", answer="(fake)"))
        # Cluster operations (workflows/operation.py): kubectl on the nodes, and the machines they
        # reboot (each reboot_member answers the boot the machine was on: 1, 2, ... per machine).
        self.drain_node = Fake("drain_node", lambda r: f"{r.node_name} drained (fake)")
        self.uncordon_node = Fake("uncordon_node", lambda r: f"{r.node_name} uncordoned (fake)")
        self.node_version = Fake("node_version", lambda _r: "v1.31.0")
        self._boots: dict[str, int] = {}
        self.reboot_member = Fake("reboot_member", self._reboot)
        self.await_machine = Fake("await_machine", lambda w: f"{w.machine_id} ready after boot {w.after_boot} (fake)")
        self._ids = itertools.count(1)

    def all(self) -> list[Fake]:
        return [value for value in vars(self).values() if isinstance(value, Fake)]

    def activities(self) -> list[Callable]:
        """Each fake as an activity under its real name, annotated with the real types."""
        by_name = {fake.name: fake for fake in self.all()}
        called = {call.name: call for call in calls.ALL}
        assert set(by_name) == set(called) == set(ARGUMENTS), "a fake for every activity the workflows call"
        return [_activity(by_name[name], ARGUMENTS[name], call.result) for name, call in called.items()]

    async def _evaluate_batch(self, batch: RulesBatch) -> list[RulesVerdict]:
        members, verdicts = list(batch.members), []
        for candidate in batch.candidates:
            verdict = await self.evaluate_rules(candidate.model_copy(update={"members": members}))
            verdicts.append(verdict)
            if verdict.has_rules:  # (without rules the workflow's built-in policy gives the roles)
                members = admitted_members(members, candidate, verdict)
        return verdicts

    def _reboot(self, machine_id: str) -> int:
        self._boots[machine_id] = self._boots.get(machine_id, 0) + 1
        return self._boots[machine_id]

    def _mint(self, request: CredentialsRequest) -> JoinCredentials:
        minted = next(self._ids)
        expires = datetime.now(timezone.utc) + timedelta(seconds=request.token_ttl_s)
        return JoinCredentials(
            token_id=minted if request.token else None,
            token_expires_at=expires if request.token else None,
            certificate_key_id=minted if request.certificate_key else None,
            minted_on=request.control_plane[0] if request.control_plane else "",
        )


def _activity(fake: Fake, argument: type, result: type | None) -> Callable:
    async def run(arg):
        return await fake(arg)

    run.__name__ = fake.name
    run.__annotations__ = {"arg": argument, "return": result}
    return activity.defn(name=fake.name)(run)


@dataclass
class FakeMachine(MachineDriver):
    """tests/lifecycle.py's driver, on the fake site's task queue; facts are not stored (the
    workflow only sees the report)."""

    task_queue: str = ""

    async def pxe(self) -> BootInstruction:
        status = MachineStatus(machine_id=self.machine_id, cluster=self.cluster, mac=self.mac)
        start = WithStartWorkflowOperation(
            "MachineWorkflow", status, id=machine_workflow_id(self.machine_id), task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE, result_type=MachineStatus,
        )
        return await self.client.execute_update_with_start_workflow(
            "pxe_boot", BootRequest(mac=self.mac, ip=self.ip), start_workflow_operation=start,
            result_type=BootInstruction,
        )

    async def report_facts(self, boot: int, facts: dict | None = None, **findings: Any) -> MachineStatus:
        digest = hashlib.sha256(repr(facts or {"boot": boot}).encode()).hexdigest()
        report = FactsReport(boot=boot, facts_id=boot, digest=digest, **findings)
        return await self.handle.execute_update("facts_reported", report, result_type=MachineStatus)

    async def ansible_to_ready(self) -> MachineStatus:
        """new -> ... -> ready in a cluster whose joins Tempered runs (kubeadm_join)."""
        await self.discover()
        await self.wait_state("post-discover")
        await self.pxe()
        await self.phone_home()
        return await self.wait_state("ready")

    async def update(self, name: str, *args: Any) -> MachineStatus:
        """An operator Update (retry, decommission, reprovision, assign)."""
        return await self.handle.execute_update(name, *args, result_type=MachineStatus)


@dataclass
class FakeSite:
    """What a test drives: clusters and machines on a worker whose activities are `fakes`."""

    client: Client
    settings: Settings
    task_queue: str
    fakes: Fakes
    unique: Callable[[str], str]
    _macs: itertools.count = field(default_factory=lambda: itertools.count(1))
    _workflows: asyncio.Task | None = None
    _workflow_worker: Worker | None = None

    async def start_workflows(self) -> None:
        """The workflow worker (the fakes run on a worker of their own, on the same task queue)."""
        self._workflow_worker = Worker(self.client, task_queue=self.task_queue, workflows=WORKFLOWS)
        self._workflows = asyncio.create_task(self._workflow_worker.run())

    async def stop_workflows(self) -> None:
        await self._workflow_worker.shutdown()
        await self._workflows

    @asynccontextmanager
    async def workflows_paused(self) -> AsyncIterator[None]:
        """No workflow task runs inside the block: whatever happens meanwhile (an activity's
        result, an Update) reaches the workflow together, in its first task after the block."""
        await self.stop_workflows()
        try:
            yield
        finally:
            await self.start_workflows()

    async def cluster(self, quorum: int = 1, join_method: str = "ansible", **spec: Any) -> str:
        name = self.unique("c")
        status = ClusterStatus(spec=ClusterSpec(name=name, quorum_count=quorum, join_method=join_method, **spec))
        await self.client.start_workflow(
            "ClusterWorkflow", status, id=cluster_workflow_id(name), task_queue=self.task_queue
        )
        return name

    def cluster_handle(self, name: str) -> WorkflowHandle:
        return self.client.get_workflow_handle(cluster_workflow_id(name))

    async def cluster_status(self, name: str) -> ClusterStatus:
        return await self.cluster_handle(name).query("status", result_type=ClusterStatus)

    async def wait_cluster(
        self, name: str, check: Callable[[ClusterStatus], bool], what: str, timeout: float = 30.0
    ) -> ClusterStatus:
        async def holds() -> bool:
            return check(await self.cluster_status(name))

        await eventually(holds, timeout, what=f"cluster {name}: {what}")
        return await self.cluster_status(name)

    def machine(self, cluster: str | None) -> FakeMachine:
        n = next(self._macs)
        return FakeMachine(
            self.client, self.settings, self.unique("m"), cluster, mac=f"52:54:00:77:00:{n:02x}",
            ip=f"10.77.0.{n}", task_queue=self.task_queue,
        )


@pytest_asyncio.fixture
async def fake_site(client: Client, settings: Settings, unique) -> AsyncIterator[FakeSite]:
    """A worker with the real workflows and fresh fakes, on a task queue of its own."""
    fakes = Fakes()
    queue = unique("fakes")
    site = FakeSite(client, settings, queue, fakes, unique)
    async with Worker(client, task_queue=queue, activities=fakes.activities()):
        await site.start_workflows()
        try:
            yield site
        finally:
            for fake in fakes.all():
                fake.release()  # a held attempt ends before the workers shut down
            await site.stop_workflows()


# ---- reading a workflow's history ------------------------------------------------------------


async def step_result_taken(handle: WorkflowHandle, activity_name: str, timeout: float = 30.0) -> None:
    """Wait until the latest `activity_name` attempt closed and the workflow ran a task after it:
    from then on its status shows whatever that result did (or did not do)."""

    async def taken() -> bool:
        events = [event async for event in handle.fetch_history_events()]
        scheduled = {
            event.event_id for event in events
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and event.activity_task_scheduled_event_attributes.activity_type.name == activity_name
        }
        closed = [i for i, event in enumerate(events) if _closes(event, scheduled)]
        return bool(closed) and any(
            event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for event in events[closed[-1]:]
        )

    await eventually(taken, timeout, what=f"{handle.id} to take the result of {activity_name}")


def _closes(event, scheduled: set[int]) -> bool:
    for kind, attributes in (
        (EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, "activity_task_completed_event_attributes"),
        (EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED, "activity_task_failed_event_attributes"),
    ):
        if event.event_type == kind:
            return getattr(event, attributes).scheduled_event_id in scheduled
    return False


async def took_signal(handle: WorkflowHandle, name: str, machine_id: str) -> bool:
    """The workflow took Signal `name` sent for `machine_id` (an ask by Signal): a workflow task
    completed after it, so the handler has run."""
    events = [event async for event in handle.fetch_history_events()]
    for i, event in enumerate(events):
        attributes = event.workflow_execution_signaled_event_attributes
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED and attributes.signal_name == name:
            if any(machine_id.encode() in p.data for p in attributes.input.payloads) and any(
                later.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for later in events[i:]
            ):
                return True
    return False


async def patch_markers(handle: WorkflowHandle) -> set[str]:
    """The patch ids a run recorded (`workflow.patched` is True in a new run, and says so)."""
    found = set()
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == "core_patch":
                found.add(json.loads(marker.details["patch-data"].payloads[0].data)["id"])
    return found


def states_passed(status: MachineStatus) -> list[str]:
    """The states a machine went through, a repeat of the same state counted once."""
    passed: list[str] = []
    for transition in status.history:
        if not passed or passed[-1] != transition.state:
            passed.append(transition.state)
    return passed

