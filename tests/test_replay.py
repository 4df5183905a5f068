"""Replay tests: workflow code must replay the histories it has already written.

`tests/histories/` holds histories recorded from an earlier version of the code; a change that
makes the workflows non-deterministic for them fails here before it reaches a running fleet.
Record a new set beside the old ones when the workflows gain new paths (keep the old sets:
every version still running somewhere must replay) with
`TEMPERED_RECORD_HISTORIES=v4 pytest tests/test_replay.py tests/test_join.py` (test_join.py adds the
histories of real Ansible joins).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities.contracts import MachineStatus
from api.worker import WORKFLOWS
from tests.lifecycle import MachineDriver, create_cluster

HISTORIES = Path(__file__).parent / "histories"


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


async def test_recorded_histories_replay():
    files = sorted(HISTORIES.glob("*.json"))
    assert files, f"no recorded histories in {HISTORIES}: record them (see this module's docstring)"
    for path in files:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure}"
