"""The lifecycle table (activities/domain/lifecycle.py) against what follows it: the README's copy,
the moves the machine workflow's code names, and the moves its recorded histories made."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path

import pytest

from activities.domain import lifecycle
from activities.domain.lifecycle import BY_NAME, STATES, allowed, failed

ROOT = Path(__file__).parents[2]
HISTORIES = sorted((ROOT / "tests" / "histories").glob("*.json"))


def _readme_table() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("-->\n", readme.index("<!-- lifecycle table")) + len("-->\n")
    return readme[start : readme.index("<!-- end of the lifecycle table -->")]


def test_the_readme_lifecycle_table_is_the_rendered_table():
    assert _readme_table() == lifecycle.markdown(), "regenerate it: python -m activities.domain.lifecycle"


def test_every_state_is_one_row_and_every_move_names_a_row():
    assert len(BY_NAME) == len(STATES)
    for state in STATES:
        assert all(target in BY_NAME for target in state.to), state.name
        assert state.stage.then is None or state.stage.then in BY_NAME
    assert {failed(step) for step in lifecycle.STEPS} <= set(BY_NAME)
    assert all(BY_NAME[failed(s.step)].step == s.step for s in STATES if s.step)


def test_the_state_sets_are_the_ones_the_workflow_and_api_relied_on():
    """The sets as they were written out by hand before the table (their exact membership)."""
    assert lifecycle.TAKES_FACTS == {"boot-1", "discover", "holding"}
    runtime_boot = {"boot-2", "post-boot-2", "join-cluster", "failed:join-cluster", "failed:dns"}
    assert lifecycle.RUNTIME_STAGE == runtime_boot | {"post-discover"}
    assert lifecycle.RUNTIME_TOKEN == runtime_boot  # post-discover still runs discovery; ready is not served
    assert lifecycle.PHONED_HOME == (runtime_boot - {"boot-2"}) | {"ready"}
    assert lifecycle.RETIRING == {"decommissioning", "failed:decommission"}
    # failed:power after a reprovision or a decommission (which bumped the boot): the old boot's agent still asks
    assert lifecycle.OPERATOR_RESETS == {"new", "decommissioning", "decommissioned", "failed:power"}
    assert lifecycle.AGENT_REBOOTS == {"post-discover", "new"}
    assert lifecycle.AGENT_POWERS_OFF == {"decommissioning", "decommissioned"}
    assert lifecycle.LIFECYCLE == (
        "new", "boot-1", "discover", "post-discover", "boot-2", "post-boot-2", "join-cluster", "ready"
    )


def test_a_pxe_contact_boots_what_its_stage_says():
    assert lifecycle.stage("ready") is lifecycle.REBOOT
    assert lifecycle.stage("holding") is lifecycle.HELD
    assert lifecycle.stage("failed:decommission") is lifecycle.REFUSE
    assert lifecycle.stage("post-discover").boots == "runtime"
    assert lifecycle.stage("not-a-state") is lifecycle.DISCOVERY  # as the workflow always did


def test_allowed_moves():
    assert allowed("boot-2", "post-boot-2") and allowed("ready", "boot-1") and allowed("holding", "holding")
    assert allowed("failed:dns", "new") and allowed("ready", "decommissioning")
    assert not allowed("boot-1", "ready")
    assert not allowed("decommissioning", "new")
    assert not allowed("new", "post-boot-2")


def test_failed_power_moves_and_boots_as_the_state_its_power_step_began_in():
    for before in ("ready", "new", "decommissioning", "holding", "join-cluster", "failed:dns"):
        assert allowed(before, "failed:power") and allowed("failed:power", before), before
    assert not allowed("boot-1", "failed:power") and not allowed("discover", "failed:power")
    assert allowed("failed:power", "boot-1") and allowed("failed:power", "decommissioned")  # a PXE contact; a retried off
    assert not allowed("failed:power", "discover")  # only admission moves a machine there
    assert lifecycle.stage("failed:power", "ready") is lifecycle.REBOOT
    assert lifecycle.stage("failed:power", "new") is lifecycle.DISCOVERY
    assert lifecycle.stage("failed:power", "decommissioning") is lifecycle.REFUSE
    assert lifecycle.stage("failed:power", "holding") is lifecycle.HELD
    assert lifecycle.stage("failed:power", "failed:join-cluster") is lifecycle.RUNTIME
    assert lifecycle.stage("failed:power") is lifecycle.DISCOVERY  # power_from unknown: as an unknown state
    assert lifecycle.REBOOTS == {
        "ready", "holding", "post-discover", "boot-2", "post-boot-2", "join-cluster",
        "failed:admit", "failed:render", "failed:join-cluster", "failed:dns", "failed:power",
    }


def _move_targets() -> set[str]:
    """Every state the machine workflow's code moves to (`self._move(X, ...)` with a constant)."""
    tree = ast.parse((ROOT / "workflows" / "machine.py").read_text())
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_move":
            first = node.args[0]
            if isinstance(first, ast.Name):
                targets.add(getattr(lifecycle, first.id))
    return targets


def test_every_state_the_workflow_moves_to_is_a_move_of_the_table():
    targets = _move_targets()
    assert targets >= {"boot-1", "discover", "holding", "post-discover", "post-boot-2", "join-cluster", "ready"}
    reachable = {t for s in STATES for t in s.to} | {s.stage.then for s in STATES} | set(lifecycle.OPERATOR_MOVES)
    reachable |= {failed(lifecycle.POWER)}  # from every state a power step runs in (`allowed`, below)
    assert targets <= reachable
    # and every failed:<step> the table knows is one the workflow can park in (via _fail(step))
    assert {s.name for s in STATES if s.name.startswith("failed:")} <= reachable


def _visited(history: Path) -> list[str]:
    """The states a recorded machine workflow run moved through, from its search-attribute upserts."""
    states: list[str] = []
    for event in json.loads(history.read_text())["events"]:
        fields = event.get("upsertWorkflowSearchAttributesEventAttributes", {}).get("searchAttributes", {})
        encoded = fields.get("indexedFields", {}).get("TemperedState")
        if encoded is not None:
            state = json.loads(base64.b64decode(encoded["data"]))
            if not states or states[-1] != state:
                states.append(state)
    return states


@pytest.mark.parametrize("history", HISTORIES, ids=[h.stem for h in HISTORIES])
def test_every_move_a_recorded_history_made_is_allowed(history: Path):
    states = _visited(history)
    for source, target in zip(states, states[1:]):
        assert allowed(source, target), f"{history.name}: {source} → {target} is not in the lifecycle table"


def test_the_recorded_histories_cover_the_main_path():
    moves = {pair for h in HISTORIES for pair in zip(_visited(h), _visited(h)[1:])}
    path = lifecycle.LIFECYCLE
    assert set(zip(path, path[1:])) <= moves
    assert ("join-cluster", "failed:join-cluster") in moves and ("discover", "failed:admit") in moves


def test_one_node_name_derived_once():
    """The name cloud-init, kubeadm, DNS and rules use: the hostname, else from the boot MAC,
    else from the id (the workflow's status and the rules activity both call ids.node_name)."""
    from activities.domain.ids import node_name
    from activities.domain.machine import MachineStatus
    from activities.rules import hostname

    uuid = "8d6f1c1e-3b7a-4c2e-9f00-0000000000e4"
    assert node_name(uuid, "52:54:00:AB:cd:01") == "node-525400abcd01"
    assert node_name(uuid) == "node-0000000000e4"
    assert node_name("serial-SN-42") == "node-serialsn42"
    assert node_name(uuid, "52:54:00:ab:cd:01", hostname="edge-7") == "edge-7"
    status = MachineStatus(machine_id=uuid, mac="52:54:00:ab:cd:01")
    assert status.node_name == node_name(uuid, "52:54:00:ab:cd:01")
    assert hostname(uuid, ["52:54:00:ab:cd:01"]) == status.node_name  # what the database knows
    assert hostname(uuid, ["52:54:00:ab:cd:02", "52:54:00:ab:cd:01"], rendered=status.node_name) == status.node_name
    mac_id = "52:54:00:ab:cd:01"  # a machine identified by its MAC is named by it either way
    assert node_name(mac_id) == MachineStatus(machine_id=mac_id, mac=mac_id).node_name
