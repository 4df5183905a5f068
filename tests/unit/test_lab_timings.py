"""`tempered lab timings` as pure functions: state entries after the power-on, the control plane's
intervals from a recorded machine workflow history and the edge's log, and the split of power-on
to `ready` into the control plane's seconds and the VM's, for machines ready, failed and on their way."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console

from api.lab.timings import (
    Interval, Timing, edge_intervals, parse_time, render, runs_intervals, state_entries, temporal_address, timing,
    union_seconds, workflow_intervals,
)
from api.lab.vm import Vm, specs

ON = datetime(2026, 12, 6, 4, 0, 0, tzinfo=timezone.utc)  # the power-on
HISTORIES = Path(__file__).parents[1] / "histories"
LIFE = [("new", 2), ("boot-1", 2), ("discover", 11), ("post-discover", 12), ("boot-2", 24), ("post-boot-2", 80),
        ("join-cluster", 80), ("ready", 200)]


def _at(seconds: float) -> str:
    return (ON + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _view(path: list[tuple[str, float]]) -> dict:
    history = [{"at": _at(s), "state": state, "reason": ""} for state, s in path]
    return {"id": "m-1", "state": path[-1][0], "macs": ["52:54:00:7e:00:01"], "history": history,
            "temporal_url": "http://127.0.0.1:8300/namespaces/default/workflows/machine:m-1"}


def _iv(kind: str, start: float, end: float) -> Interval:
    return Interval(kind, ON + timedelta(seconds=start), ON + timedelta(seconds=end))


def test_state_entries_are_the_first_entries_since_the_power_on():
    history = [{"at": _at(-50), "state": "ready", "reason": "before this power-on"},
               {"at": _at(3), "state": "boot-1", "reason": ""}, {"at": _at(9), "state": "discover", "reason": ""},
               {"at": _at(10), "state": "discover", "reason": "again"}]
    assert state_entries(history, ON) == {"boot-1": ON + timedelta(seconds=3), "discover": ON + timedelta(seconds=9)}


def test_temporals_nanoseconds_parse():
    assert parse_time("2026-12-06T03:06:07.754702890Z") == datetime(2026, 12, 6, 3, 6, 7, 754702, tzinfo=timezone.utc)


def test_a_recorded_machine_history_gives_each_activity_and_workflow_task_as_an_interval():
    events = json.loads((HISTORIES / "v6-join-prime.json").read_text())["events"]
    intervals = workflow_intervals(events)
    kinds = [i.kind for i in intervals if i.kind != "workflow"]
    # admit_machine, render_user_data, join_plan, kubeadm_join, publish_node_dns, in that order
    assert kinds == ["admission", "render", "admission", "ansible", "dns"]
    tasks = sum(e["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_COMPLETED" for e in events)
    assert sum(i.kind == "workflow" for i in intervals) == tasks
    assert all(i.start <= i.end for i in intervals)
    ansible = next(i for i in intervals if i.kind == "ansible")
    assert ansible.end - ansible.start == max((i.end - i.start for i in intervals), key=lambda d: d)


def test_admission_and_the_join_plan_by_signal_are_intervals_from_the_ask_to_its_answer():
    """Since admission by Signal (workflows/admission_ask.py) the machine has no admit_machine
    nor join_plan activity: each ask Signal sent to the cluster opens an admission interval that
    its answer's Signal closes (a master held, released, asking again: two admissions)."""
    events = json.loads((HISTORIES / "v10-join-master.json").read_text())["events"]
    intervals = workflow_intervals(events)
    assert [i.kind for i in intervals if i.kind != "workflow"] == [
        "admission", "admission", "render", "admission", "ansible", "dns"]
    sent = [parse_time(e["eventTime"]) for e in events if e["eventType"] == "EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_"
            "INITIATED" and e["signalExternalWorkflowExecutionInitiatedEventAttributes"]["signalName"].startswith("request_")]
    answered = [parse_time(e["eventTime"]) for e in events if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"
                and e["workflowExecutionSignaledEventAttributes"]["signalName"] in ("admitted", "join_plan_answered")]
    admissions = [i for i in intervals if i.kind == "admission"]
    assert [(i.start, i.end) for i in admissions] == list(zip(sent, answered))
    # an ask not answered yet counts until now
    cut = next(n for n, e in enumerate(events) if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED")
    now = parse_time(events[cut]["eventTime"]) + timedelta(seconds=5)
    waiting = [i for i in workflow_intervals(events[:cut], now) if i.kind == "admission"]
    assert len(waiting) == 1 and waiting[0].start == sent[0] and waiting[0].end == now


def test_an_activity_still_running_counts_until_now():
    events = json.loads((HISTORIES / "v6-join-prime.json").read_text())["events"]
    cut = next(n for n, e in enumerate(events) if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_STARTED"
               and n > 0 and "kubeadm_join" in json.dumps(events[n - 1]))
    now = parse_time(events[cut]["eventTime"]) + timedelta(seconds=30)
    assert [i.kind for i in workflow_intervals(events[:cut])].count("ansible") == 0
    running = [i for i in workflow_intervals(events[:cut], now) if i.kind == "ansible"]
    assert len(running) == 1 and running[0].end == now


def test_the_edge_log_gives_this_machines_answers_and_nothing_else():
    lines = [
        "2026-12-06 05:59:44,516 INFO tempered.bootedge.http: boot script for 52:54:00:7e:00:01: discovery "
        "(machine m-1, boot 1, boot-1) in 0.077s",
        "2026-12-06 05:59:53,109 INFO tempered.bootedge.http: relayed POST /v1/boot/m-1/facts in 0.039s",
        "2026-12-06 05:59:53,200 INFO tempered.bootedge.http: relayed GET /v1/boot/m-2/instruction in 0.020s",
        "2026-12-06 05:59:54,000 INFO tempered.bootedge.dhcp: answered 52:54:00:7e:00:01 (ipxe) with http://x/boot.ipxe",
        "2026-12-06 05:59:55,000 INFO tempered.bootedge.http: boot script for 52:54:00:7e:00:01: discovery "
        "(machine m-1, boot 1, boot-1)",  # an edge from before the durations: not counted
    ]
    found = edge_intervals(lines, "m-1")
    assert [round((i.end - i.start).total_seconds(), 3) for i in found] == [0.077, 0.039]
    assert found[0].end == datetime(2026, 12, 6, 5, 59, 44, 516000).astimezone()  # the log's local time


def test_overlapping_intervals_count_once_and_only_inside_the_window():
    intervals = [_iv("edge", 1, 3), _iv("workflow", 2, 4), _iv("render", 10, 12), _iv("dns", -5, 1)]
    assert union_seconds(intervals, ON, ON + timedelta(seconds=11)) == 5.0  # 0..4 and 10..11


def test_a_ready_machine_splits_power_on_to_ready():
    intervals = [_iv("edge", 2, 2.5), _iv("workflow", 2.2, 2.4), _iv("admission", 11, 12), _iv("render", 12, 12.5),
                 _iv("ansible", 80, 190), _iv("dns", 190, 191), _iv("workflow", 300, 301)]  # after ready: not counted
    t = timing("lab-1", _view(LIFE), ON, intervals, now=ON + timedelta(seconds=400))
    assert (t.state, t.to_ready, t.window) == ("ready", 200.0, 200.0)
    assert t.reached["boot-2"] == 24.0 and list(t.reached)[0] == "new"
    assert t.by_kind["edge"] == 0.5 and t.by_kind["workflow"] == 0.2 and t.by_kind["ansible"] == 110.0
    assert t.control_plane == 0.5 + 1 + 0.5 + 110 + 1
    assert t.vm == 200 - t.control_plane
    assert round(t.share, 2) == round(100 * 113 / 200, 2)
    assert round(t.share_without_ansible, 2) == round(100 * 3 / 200, 2)


def test_a_worker_holding_for_its_master_prime_is_held_not_the_vms_work():
    """A worker waits in `holding` until the master-prime has joined: those seconds are neither
    side's work. A workflow task inside the hold counts once, as the control plane's."""
    path = [("new", 2), ("boot-1", 2), ("discover", 11), ("holding", 12), ("post-discover", 150), ("boot-2", 160),
            ("post-boot-2", 220), ("join-cluster", 220), ("ready", 300)]
    intervals = [_iv("admission", 11, 12), _iv("workflow", 100, 101), _iv("ansible", 220, 280)]
    t = timing("lab-2", _view(path), ON, intervals, now=ON + timedelta(seconds=400))
    assert t.control_plane == 1 + 1 + 60
    assert t.held == 138 - 1
    assert t.vm == 300 - t.control_plane - t.held
    assert " held " in f" {_text([t])} "


def test_a_failed_machine_is_counted_to_its_failure_and_shown_as_not_ready():
    path = [*LIFE[:6], ("join-cluster", 80), ("failed:join-cluster", 150)]
    t = timing("lab-2", _view(path), ON, [_iv("ansible", 80, 150)], now=ON + timedelta(seconds=900))
    assert (t.state, t.to_ready, t.window, t.control_plane) == ("failed:join-cluster", None, 150.0, 70.0)
    text = _text([t])
    assert "no: failed:join-cluster" in text


def test_a_machine_on_its_way_is_counted_so_far_and_one_never_seen_is_all_vm():
    booting = timing("lab-1", _view(LIFE[:5]), ON, [_iv("admission", 11, 12)], now=ON + timedelta(seconds=60))
    assert (booting.state, booting.to_ready, booting.window, booting.control_plane) == ("boot-2", None, 60.0, 1.0)
    unseen = timing("lab-3", None, ON, [], now=ON + timedelta(seconds=30))
    assert (unseen.state, unseen.window, unseen.vm, unseen.share) == ("-", 30.0, 30.0, 0.0)
    text = _text([booting, unseen])
    assert "no: boot-2" in text and "no: -" in text


def test_the_tables_show_each_state_reached_and_each_kind_with_time():
    ready = timing("lab-1", _view(LIFE), ON, [_iv("ansible", 80, 190)], now=ON + timedelta(seconds=400))
    text = _text([ready])
    for header in ("boot-1", "post-boot-2", "ready", "ansible", "CP %", "VM"):
        assert header in text
    assert "render" not in text.split("power-on to ready")[1].split("counted:")[0]  # no time: no column


def test_a_vm_remembers_its_last_power_on(tmp_path):
    vm = Vm(specs(1)[0], tmp_path)
    assert vm.powered_on() is None
    vm.record_power_on()
    assert abs((datetime.now(timezone.utc) - vm.powered_on()).total_seconds()) < 60


def test_the_labs_own_temporal_is_a_thousand_below_its_web_ui():
    assert temporal_address("http://127.0.0.1:8374", external=False) == "127.0.0.1:7374"


def _text(timings: list[Timing]) -> str:
    console = Console(record=True, width=250)
    for table in render(timings):
        console.print(table)
    return console.export_text()


def test_cp_without_ansible_is_the_union_of_the_other_kinds_not_a_difference():
    """An edge answer that overlaps Ansible's run stays the control plane's: subtracting
    Ansible's seconds from CP would take the overlap away twice."""
    intervals = [_iv("workflow", 80, 90), _iv("ansible", 85, 100), _iv("edge", 95, 105)]
    t = timing("lab-1", _view(LIFE), ON, intervals, now=ON + timedelta(seconds=400))
    assert (t.control_plane, t.by_kind["ansible"]) == (25.0, 15.0)
    assert t.share_without_ansible == 100 * 20 / 200  # 80..90 and 95..105, not (25 - 15) / 200


def _event(event_id: int, kind: str, seconds: float, **attributes: object) -> dict:
    name = "".join(w.capitalize() for w in kind.lower().split("_"))
    return {"eventId": str(event_id), "eventType": f"EVENT_TYPE_{kind}", "eventTime": _at(seconds),
            f"{name[0].lower()}{name[1:]}EventAttributes": attributes}


def test_each_run_of_a_continued_workflow_is_read_on_its_own():
    """Event ids start again in every run: the first run's activity left open when it continued
    as new counts until that run ended, not as the second run's activity of the same id."""
    first = [_event(1, "WORKFLOW_EXECUTION_STARTED", 0), _event(2, "WORKFLOW_TASK_SCHEDULED", 1),
             _event(3, "WORKFLOW_TASK_COMPLETED", 2, scheduledEventId="2"),
             _event(4, "ACTIVITY_TASK_SCHEDULED", 2, activityType={"name": "kubeadm_join"}),
             _event(5, "WORKFLOW_EXECUTION_CONTINUED_AS_NEW", 6)]
    second = [_event(1, "WORKFLOW_EXECUTION_STARTED", 7), _event(2, "WORKFLOW_TASK_SCHEDULED", 7),
              _event(3, "WORKFLOW_TASK_COMPLETED", 8, scheduledEventId="2"),
              _event(4, "ACTIVITY_TASK_SCHEDULED", 8, activityType={"name": "render_user_data"}),
              _event(5, "ACTIVITY_TASK_COMPLETED", 9, scheduledEventId="4")]
    found = runs_intervals([first, second], now=ON + timedelta(seconds=50))
    spans = sorted((i.kind, (i.start - ON).total_seconds(), (i.end - ON).total_seconds()) for i in found)
    assert spans == [("ansible", 2, 6), ("render", 8, 9), ("workflow", 1, 2), ("workflow", 7, 8)]
