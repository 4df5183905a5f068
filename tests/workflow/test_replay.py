"""Replay tests: workflow code must replay the histories it has already written.

`tests/histories/` holds histories recorded from an earlier version of the code; a change that
makes the workflows non-deterministic for them fails here before it reaches a running fleet.
Record a new set beside the old ones when the workflows gain new paths (keep the old sets:
every version still running somewhere must replay) with
`TEMPERED_RECORD_HISTORIES=v12 pytest tests/workflow/test_replay.py tests/lab/test_join.py
tests/lab/test_terraform_cluster.py tests/workflow/test_cluster_terraform.py tests/workflow/test_cluster_delete.py
tests/workflow/test_machine_power.py tests/workflow/test_cluster_operations.py tests/workflow/test_admission_batches.py`
(test_join.py adds the histories of real Ansible joins; the next three, clusters with Terraform
tasks, a failed task retried, and deletions; the next two, machines through their power step
(a retried `failed:power`, a PXE contact in it, a retried power-off) and cluster operations (an
upgrade resumed after a failed check, an abort mid-drain); the last, admission in batches by
signal and reply).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from sqlmodel import delete
from temporalio.api.enums.v1 import EventType

from activities.domain.machine import FactsReport, MachineStatus
from activities.domain.rules import Rule
from activities.storage import db
from activities.storage.models import Rule as RuleRow
from api.worker import WORKFLOWS
from tests.lifecycle import MachineDriver, create_cluster
from tests.api.test_discovery_api import facts

HISTORIES = Path(__file__).parents[1] / "histories"


def replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)


async def _scenario(client: Client, settings, unique) -> list[tuple[str, WorkflowHistory]]:
    """One run that passes through every handler: holding and release, a failed step and its
    retry, a failed join, a reboot (continue-as-new), reprovision and decommission."""
    name = unique("replay")
    late = MachineDriver(client, settings, unique("late"), name, mac="52:54:00:00:09:09")
    await late.discover()
    await late.wait_state("failed:admit")
    cluster = await create_cluster(client, settings, name, quorum=3)
    await late.handle.execute_update("retry", result_type=MachineStatus)
    await late.wait_state("post-discover")  # the first machine to be admitted: master-prime

    other = MachineDriver(client, settings, unique("other"), name, mac="52:54:00:00:09:0a")
    await other.discover()
    await other.wait_state("holding")

    await late.boot_runtime()
    await late.join(ok=False, reason="kubeadm failed")
    await late.wait_state("failed:join-cluster")
    await late.handle.execute_update("retry", result_type=MachineStatus)
    await late.wait_state("join-cluster")
    await late.join(ok=True)
    await late.wait_state("ready")
    await other.wait_state("post-discover")

    first_run = (await late.handle.describe()).run_id
    await late.pxe()  # reboot: continue-as-new
    await late.report_facts(3)
    await late.wait_state("post-discover")
    await other.handle.execute_update("reprovision", result_type=MachineStatus)
    await other.handle.execute_update("decommission", result_type=MachineStatus)
    await other.handle.result()

    histories = [
        ("machine-first-run", await client.get_workflow_handle(late.handle.id, run_id=first_run).fetch_history()),
        ("machine-after-reboot", await late.handle.fetch_history()),
        ("machine-decommissioned", await other.handle.fetch_history()),
        ("cluster", await cluster.fetch_history()),
    ]
    return histories


def _set_rules(settings, cluster: str, rules: list[Rule]) -> None:
    with db.session(settings.database_url) as s:
        s.exec(delete(RuleRow).where(RuleRow.cluster == cluster))
        for position, rule in enumerate(rules):
            s.add(RuleRow(cluster=cluster, position=position, **rule.model_dump(mode="json")))
        s.commit()


async def _seams_scenario(client: Client, settings, unique) -> list[tuple[str, WorkflowHistory]]:
    """The paths of the seams work: a failed render retried through the rules (evaluated
    outside the admission lock), repeated facts, phone home and join result answered without
    acting twice, and an external-join cluster that mints no credentials."""
    name = unique("seams")
    cluster = await create_cluster(client, settings, name, join_method="external")
    prime = [{"type": "role", "value": "master-prime"}]
    missing = [*prime, {"type": "include", "value": unique("no-such-fragment")}]
    _set_rules(settings, name, [Rule(name="prime", expression="true", attributes=missing)])
    m = MachineDriver(client, settings, unique("seams"), name, mac="52:54:00:00:09:0b")
    await m.report_facts((await m.pxe()).boot, facts(m.mac))
    await m.wait_state("failed:render")
    _set_rules(settings, name, [Rule(name="prime", expression="true", attributes=prime)])
    await m.handle.execute_update("retry", result_type=MachineStatus)
    status = await m.wait_state("post-discover")
    report = FactsReport(boot=status.boot, facts_id=0, digest=status.facts_digest)
    await m.handle.execute_update("facts_reported", report, result_type=MachineStatus)  # a lost answer, asked again
    await m.boot_runtime()
    await m.phone_home()
    await m.join(ok=True)
    await m.wait_state("ready")
    await m.join(ok=True)
    return [("seams-machine", await m.handle.fetch_history()), ("seams-cluster", await cluster.fetch_history())]


async def replay_and_record(histories: list[tuple[str, WorkflowHistory]]) -> None:
    """Replay fresh histories; with TEMPERED_RECORD_HISTORIES=<version> also keep them."""
    for name, history in histories:
        await replayer().replay_workflow(history)
        version = os.environ.get("TEMPERED_RECORD_HISTORIES")
        if version:  # a version label, e.g. v2: each set stays, so every version must replay
            HISTORIES.mkdir(exist_ok=True)
            (HISTORIES / f"{version}-{name}.json").write_text(history.to_json())


@pytest.mark.usefixtures("worker")
async def test_fresh_histories_replay(client, settings, unique):
    await replay_and_record(await _scenario(client, settings, unique))


@pytest.mark.usefixtures("worker")
async def test_fresh_seams_histories_replay(client, settings, unique):
    await replay_and_record(await _seams_scenario(client, settings, unique))


# Activities that only touch the database or render a template: done in well under a second.
# Database work (and power_target: a row and one look at the site queue's pollers), done in well under a second.
SHORT_ACTIVITIES = {"render_user_data", "retire_machine", "cluster_machines", "forget_cluster", "power_target", "record_roles", "record_state"}


def test_every_activity_that_can_wait_has_a_heartbeat_timeout():
    """In the newest recorded set, every activity but the short ones was scheduled with a
    heartbeat timeout: a worker that dies under it is noticed in seconds, not minutes."""
    newest = max((path.name.split("-", 1)[0] for path in HISTORIES.glob("v*.json")), key=lambda v: int(v[1:]))
    missing = set()
    for path in HISTORIES.glob(f"{newest}-*.json"):
        for event in WorkflowHistory.from_json(path.stem, path.read_text()).events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled = event.activity_task_scheduled_event_attributes
                if not scheduled.heartbeat_timeout.ToTimedelta() and scheduled.activity_type.name not in SHORT_ACTIVITIES:
                    missing.add(f"{scheduled.activity_type.name} ({path.name})")
    assert not missing, f"scheduled without a heartbeat timeout: {sorted(missing)}"


async def test_recorded_histories_replay():
    files = sorted(HISTORIES.glob("*.json"))
    assert files, f"no recorded histories in {HISTORIES}: record them (see this module's docstring)"
    for path in files:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure}"
