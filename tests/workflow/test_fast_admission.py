"""Admission neither waits on a dead worker nor on a slow rule, and an external-join cluster
mints nothing: every long activity heartbeats, rules run outside the cluster's admission lock,
and `join_method: external` never schedules the SSH credentials activity."""

from __future__ import annotations

import asyncio
import signal
import time

from temporalio.api.enums.v1 import EventType, PendingActivityState

from activities.domain.rules import Rule
from activities.storage import db
from api import temporal
from activities.storage.models import Rule as RuleRow
from tests.conftest import eventually
from tests.lifecycle import MachineDriver, cluster_status, create_cluster
from tests.api.test_discovery_api import facts
from tests.workflow.test_durability import private_stack  # noqa: F401 (a fixture)

POLLING = "worker polling task queue"  # the worker's log line once it is back
RESUMED_WITHIN_S = 15.0  # the bound: admission resumes this soon after the worker returns
ADMITTED_WITHIN_S = 2.0  # the bound: a new machine beside nine held on a timing-out rule
BUSY = "(() => { const t = Date.now(); while (Date.now() - t < 800) {} return true })()"
ENDLESS_FOR_HELD = 'candidate.id.startsWith("held") && (() => { while (true) {} })()'
PRIME = Rule(name="prime", expression="members.length == 0", attributes=[{"type": "role", "value": "master-prime"}])
WORKER = Rule(name="worker", expression="true", attributes=[{"type": "role", "value": "worker"}])


async def _discover(m: MachineDriver) -> None:
    """PXE boot into discovery and report real facts (the rules read them)."""
    await m.report_facts((await m.pxe()).boot, facts(m.mac))


def _store_rules(settings, cluster: str, rules: list[Rule]) -> None:
    with db.session(settings.database_url) as s:
        for position, rule in enumerate(rules):
            s.add(RuleRow(cluster=cluster, position=position, **rule.model_dump(mode="json")))
        s.commit()


async def _evaluating(client, cluster: str) -> bool:
    """The cluster has an evaluate_rules (or evaluate_rules_batch) activity running on a worker."""
    described = await temporal.cluster(client, cluster).describe()
    return any(
        a.activity_type.name in ("evaluate_rules", "evaluate_rules_batch") and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        for a in described.raw_description.pending_activities
    )


async def test_admission_resumes_soon_after_the_worker_is_killed_mid_admission(private_stack, unique):  # noqa: F811
    client, settings, worker = private_stack.client, private_stack.settings, private_stack.worker
    name = unique("c")
    await create_cluster(client, settings, name)
    _store_rules(settings, name, [Rule(name="slow", expression=BUSY, attributes=[{"type": "role", "value": "master-prime"}])])
    m = MachineDriver(client, settings, unique("m"), name)
    await _discover(m)
    await eventually(lambda: _evaluating(client, name), 30, what="the rules to be evaluated")

    worker.stop(signal.SIGKILL)
    polling = worker.log.read_text().count(POLLING)
    worker.start()

    async def back_again() -> bool:
        return worker.log.read_text().count(POLLING) > polling

    await eventually(back_again, 60, what="the new worker to poll")
    back = time.monotonic()
    admitted = await m.wait_state("post-discover", timeout=120)
    took = time.monotonic() - back
    assert admitted.role == "master-prime"
    assert took < RESUMED_WITHIN_S, f"admitted {took:.1f} s after the worker came back"


async def test_a_new_machine_is_admitted_while_nine_held_ones_carry_a_timing_out_rule(
    api_server, client, settings, unique
):
    name = unique("c")
    await create_cluster(client, settings, name)
    rules = [Rule(name="endless", expression=ENDLESS_FOR_HELD), WORKER, PRIME]  # the last role matched wins
    _store_rules(settings, name, rules)
    held = [MachineDriver(client, settings, unique(f"held{i}"), name, mac=f"52:54:00:00:0a:{i:02x}") for i in range(9)]
    await asyncio.gather(*(_discover(m) for m in held))
    for m in held:
        status = await m.wait_state("holding")
        assert "took longer than" in status.reason, status.reason

    with api_server.client() as http:  # the save releases the nine: each is evaluated again
        http.put(f"/v1/clusters/{name}/rules", json=[r.model_dump(mode="json") for r in rules]).raise_for_status()
    await eventually(lambda: _evaluating(client, name), 30, what="the held machines to be evaluated again")
    fresh = MachineDriver(client, settings, unique("fresh"), name, mac="52:54:00:00:0a:ff")
    boot = (await fresh.pxe()).boot
    started = time.monotonic()
    await fresh.report_facts(boot, facts(fresh.mac))
    admitted = await fresh.wait_state("post-discover", "holding", timeout=60)
    took = time.monotonic() - started
    assert admitted.role == "master-prime", admitted.reason
    assert took < ADMITTED_WITHIN_S, f"the new machine took {took:.1f} s to be admitted"
    assert await _evaluating(client, name), "the held machines were no longer being evaluated: nothing was shown"
    for m in held:
        assert "took longer than" in (await m.wait_state("holding")).reason


async def test_an_external_join_cluster_never_mints_credentials(worker, client, settings, unique):
    name = unique("c")
    handle = await create_cluster(client, settings, name, join_method="external")
    prime = MachineDriver(client, settings, unique("prime"), name)
    await prime.to_ready()

    async def handled_ready() -> bool:
        """The member_ready signal is in the history and a workflow task completed after it."""
        events = [e async for e in handle.fetch_history_events()]
        signals = [i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
        return bool(signals) and any(
            e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in events[signals[-1]:]
        ) and not (await handle.describe()).raw_description.pending_activities

    await eventually(handled_ready, 30, what="the cluster to take its ready master-prime, with nothing pending")
    assert (await cluster_status(client, name)).phase == "ready"
    events = [e async for e in handle.fetch_history_events()]
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert "mint_join_credentials" not in scheduled, scheduled
    # Nothing is left to add to the history: no activity pending, no timer to wake the workflow.
    assert not any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in events)
