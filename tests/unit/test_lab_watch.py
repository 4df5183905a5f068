"""The lab's live table as a pure function of the API's machine views and the VMs' specs, and
when the watch stops (all ready: 0; one failed or one that never PXE booted: 1, with its reason
and console)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console

from api.lab.vm import Vm, specs
from api.lab.watch import NOT_SEEN, STANDIN_CAPTION, never_booted, outcome, render, rows, seconds_in_state, watch

NOW = datetime(2026, 12, 6, 4, 0, 0, tzinfo=timezone.utc)
LAB = specs(3)


def _at(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def _view(n: int, state: str, role: str = "worker", reason: str = "", history: list | None = None) -> dict:
    return {
        "id": f"id-{n}", "node_name": f"node-{n}", "state": state, "role": role, "reason": reason,
        "macs": [LAB[n - 1].mac], "temporal_url": f"http://127.0.0.1:8233/namespaces/default/workflows/machine:id-{n}",
        "history": history if history is not None else [{"at": _at(30), "state": "new", "reason": ""},
                                                          {"at": _at(12), "state": state, "reason": reason}],
    }


def test_each_vm_is_a_row_matched_by_mac_with_its_time_in_state_and_web_ui_link():
    made = rows([_view(2, "boot-1", "", "discovery image served"), _view(1, "join-cluster", "master-prime")], LAB, NOW)
    assert [r.machine for r in made] == ["lab-1", "lab-2", "lab-3"]
    first = made[0]
    assert (first.mac, first.firmware, first.state, first.role, first.seconds_in_state) == (
        "52:54:00:7e:00:01", "bios", "join-cluster", "master-prime", 12
    )
    assert first.web_ui.endswith("/workflows/machine:id-1")
    assert (made[1].firmware, made[1].reason) == ("uefi", "discovery image served")
    assert (made[2].state, made[2].seconds_in_state, made[2].reason) == (NOT_SEEN, None, "no PXE contact yet")


def test_time_in_state_counts_from_the_latest_entry_into_it():
    history = [{"at": _at(100), "state": "ready"}, {"at": _at(60), "state": "boot-1"}, {"at": _at(5), "state": "ready"}]
    assert seconds_in_state({"state": "ready", "history": history}, NOW) == 5
    assert seconds_in_state({"state": "ready", "history": []}, NOW) is None


def test_a_machine_of_the_cluster_that_is_no_lab_vm_is_shown_too():
    stranger = _view(1, "holding") | {"macs": ["52:54:00:aa:bb:cc"], "id": "id-x", "node_name": "stranger"}
    made = rows([stranger], LAB[:1], NOW)
    assert [(r.machine, r.mac, r.state) for r in made] == [("lab-1", LAB[0].mac, NOT_SEEN), ("stranger", "52:54:00:aa:bb:cc", "holding")]


def test_the_watch_ends_when_all_are_ready_or_one_failed():
    ready = rows([_view(n, "ready") for n in (1, 2, 3)], LAB, NOW)
    assert outcome(ready) == 0
    assert outcome(rows([_view(1, "ready"), _view(2, "ready")], LAB, NOW)) is None  # lab-3 not seen yet
    assert outcome(rows([_view(1, "failed:join-cluster", reason="no route"), _view(2, "ready")], LAB, NOW)) == 1
    assert outcome([]) is None


def test_the_table_names_the_kubeadm_stand_in():
    console = Console(record=True, width=200)
    console.print(render(rows([_view(1, "join-cluster", reason="kubeadm init running")], LAB, NOW)))
    text = console.export_text()
    assert STANDIN_CAPTION in text and "kubeadm here is Tempered's stand-in (tests only)" in text
    for column in ("machine", "MAC", "firmware", "state", "role", "s in state", "reason", "Web UI"):
        assert column in text
    assert "lab-1" in text and "join-cluster" in text and "machine:id-1" in text


def test_a_failed_machine_stops_the_watch_with_its_reason_and_console(tmp_path: Path):
    vms = [Vm(spec, tmp_path / spec.name) for spec in LAB]
    vms[1].dir.mkdir()
    vms[1].serial_log.write_text("\x1b[2Jearly line\r\nTempered: booting the runtime image\r\ncloud-init failed here\r\n")
    answers = iter([
        [_view(1, "boot-1")],
        [_view(1, "ready"), _view(2, "failed:render", reason="fragment 'x' does not exist"), _view(3, "boot-1")],
    ])
    console = Console(record=True, width=200)
    assert watch(vms, lambda: next(answers), console, interval_s=0) == 1
    text = console.export_text()
    assert "lab-2 failed:render: fragment 'x' does not exist" in text
    assert "cloud-init failed here" in text and "\x1b" not in text.split("serial console")[-1]


def test_all_ready_exits_zero(tmp_path: Path):
    vms = [Vm(spec, tmp_path / spec.name) for spec in LAB]
    answers = iter([[_view(n, "ready") for n in (1, 2, 3)]])
    assert watch(vms, lambda: next(answers), Console(record=True), interval_s=0) == 0


class Clock:
    """The watch's clock, moved on by each test instead of sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_vm_with_no_pxe_contact_is_named_only_once_the_bound_has_passed():
    made = rows([_view(1, "boot-1")], LAB, NOW)
    assert never_booted(made, waited_s=180, bound_s=180) == []
    assert [r.machine for r in never_booted(made, waited_s=181, bound_s=180)] == ["lab-2", "lab-3"]
    assert never_booted(made, waited_s=10_000, bound_s=None) == []


def test_a_vm_that_never_pxe_boots_ends_the_watch_long_before_its_timeout(tmp_path: Path):
    """lab-3 never reaches the edge: the watch stops at the bound (not the 3600 s timeout) with
    one line naming it, its MAC and where to look, then its console."""
    vms = [Vm(spec, tmp_path / "vms" / spec.name) for spec in LAB]
    vms[2].dir.mkdir(parents=True)
    vms[2].serial_log.write_text("SeaBIOS (version 1.16)\r\niPXE initialising devices...\r\nNo more network devices\r\n")
    clock, polls = Clock(), []

    def fetch() -> list[dict]:
        polls.append(clock.now)
        clock.now += 60
        return [_view(1, "join-cluster"), _view(2, "boot-2")]

    console = Console(record=True, width=100)
    assert watch(vms, fetch, console, interval_s=0, timeout_s=3600, pxe_timeout_s=180, clock=clock) == 1
    assert polls == [0, 60, 120, 180]  # gave up at the first poll past 180 s
    lines = console.export_text().splitlines()
    named = [line for line in lines if "no PXE contact within" in line]
    assert named == [
        f"lab-3 (52:54:00:7e:00:03) made no PXE contact within 180s of power-on (its QEMU is not running): see its "
        f"console below (tempered lab console lab-3), the site DHCP's {tmp_path}/logs/site-dhcp.log and the "
        f"edge's {tmp_path}/logs/edge.log"
    ]
    assert "No more network devices" in lines[-1] and "lab-1" not in "".join(named)


def test_a_vm_that_reaches_the_edge_in_time_is_not_given_up_on(tmp_path: Path):
    vms = [Vm(spec, tmp_path / spec.name) for spec in LAB]
    clock = Clock()
    answers = iter([[_view(1, "boot-1")], [_view(1, "boot-1"), _view(2, "boot-1"), _view(3, "boot-1")],
                    [_view(n, "ready") for n in (1, 2, 3)]])

    def fetch() -> list[dict]:
        clock.now += 90  # lab-2 and lab-3 show up at 180 s, on the bound: still in time
        return next(answers)

    assert watch(vms, fetch, Console(record=True), interval_s=0, pxe_timeout_s=180, clock=clock) == 0


def _powered_on(vm: Vm, seconds_ago: float) -> None:
    vm.dir.mkdir(parents=True, exist_ok=True)
    (vm.dir / "powered-on").write_text((NOW - timedelta(seconds=seconds_ago)).isoformat() + "\n")


def test_a_machine_heard_from_only_before_its_vms_power_on_is_not_seen_yet():
    """After a plain `lab down` the API still says `ready` from the boot before: that is no
    contact from this boot."""
    before = _view(1, "ready", history=[{"at": _at(900), "state": "new"}, {"at": _at(800), "state": "ready"}])
    again = _view(2, "boot-1", history=[{"at": _at(900), "state": "ready"}, {"at": _at(20), "state": "boot-1"}])
    powered_on = {"lab-1": NOW - timedelta(seconds=30), "lab-2": NOW - timedelta(seconds=30), "lab-3": None}
    made = rows([before, again, _view(3, "ready")], LAB, NOW, powered_on)
    assert [(r.machine, r.state, r.seconds_in_state) for r in made] == [
        ("lab-1", NOT_SEEN, None), ("lab-2", "boot-1", 20), ("lab-3", "ready", 12)  # lab-3: no power-on recorded
    ]
    assert outcome(made) is None


def test_a_second_lab_up_waits_for_this_boot_instead_of_the_last_ones_ready(tmp_path: Path):
    """Every machine is `ready` from the boot before: the watch waits for this boot's
    transitions, and names a VM still silent past the bound."""
    vms = [Vm(spec, tmp_path / "vms" / spec.name) for spec in LAB]
    for vm in vms:
        _powered_on(vm, seconds_ago=5)
    old = [{"at": _at(900), "state": "new"}, {"at": _at(800), "state": "ready"}]
    this_boot = old + [{"at": _at(2), "state": "boot-1"}, {"at": _at(1), "state": "ready"}]
    clock = Clock()
    answers = iter([[_view(n, "ready", history=old) for n in (1, 2, 3)]] * 2
                   + [[_view(1, "ready", history=this_boot), _view(2, "ready", history=this_boot),
                       _view(3, "ready", history=old)]] * 2)

    def fetch() -> list[dict]:
        clock.now += 60
        return next(answers)

    console = Console(record=True, width=200)
    assert watch(vms, fetch, console, interval_s=0, pxe_timeout_s=180, clock=clock) == 1
    assert clock.now == 240  # it polled past the bound instead of ending at the first poll
    named = [line for line in console.export_text().splitlines() if "no PXE contact within" in line]
    assert [line.split()[0] for line in named] == ["lab-3"]
