"""`tempered lab timings`: where a lab machine's time from power-on to `ready` goes.

Three records, all of what really happened (no estimates):

- the power-on: when `lab up` or `lab power on|cycle` pressed the VM's button (`Vm.record_power_on`);
- the state entries: the machine's history as the API shows it (`machine show`), each transition
  stamped by the workflow;
- the control plane's work for the machine, as intervals: from the machine workflow's Temporal
  history, every activity from its scheduling to its close (rendering, Ansible's kubeadm join,
  DNS; admission and the join plan in histories from before they were asked by Signal), every
  ask to the cluster from its Signal sent to its answer's Signal received (admission with the
  cluster's rules, the join plan), and every workflow task from its scheduling to its completion; from the edge's log, every answer it relayed from the control plane
  (boot scripts, facts, seeds, phone home), from its start to its end.

The control plane's seconds are the union of those intervals between power-on and `ready` (an
edge answer that waits on a workflow task counts once); the seconds in `holding` (waiting for the
cluster, e.g. a worker for its master-prime) are held, neither's; the VM's seconds are the rest: firmware,
iPXE downloads, kernels, the discovery agent, cloud-init. Ansible is its own column: its wall time
is the control plane's process, but it is mostly spent waiting on the VM (TCG) running modules,
so the share is shown with and without it. Everything but `fetch_*` is a pure function.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from rich.table import Table

from activities.domain.lifecycle import HOLDING, LIFECYCLE, READY
from api.cli.watch import parse_time  # one parser for the API's and Temporal's times

ACTIVITY_KINDS = {
    "admit_machine": "admission", "join_plan": "admission", "render_user_data": "render",
    "kubeadm_join": "ansible", "publish_node_dns": "dns",
}
# Admission and the join plan by Signal (workflows/admission_ask.py, since `admission-by-signal`
# and `join-plan-by-signal`): the machine signals its cluster an ask and waits for the answer's
# Signal; the interval runs from the ask sent to its answer received. Older histories have the
# `admit_machine` and `join_plan` activities above instead.
ASKS = {"request_admission": "admitted", "request_join_plan": "join_plan_answered"}
KINDS = ("edge", "workflow", "admission", "render", "ansible", "dns", "other")
CAPTION = (
    "counted: power-on to ready (to the failure, or so far, if not ready). CP: the union of its kinds, overlaps "
    "once (an edge answer waits on a workflow task). ansible waits mostly on the VM (TCG): CP % -ansible counts it as the VM's. "
    "held: waiting in `holding` for the cluster (the master-prime's join), neither side's work."
)
_CLOSES = ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELED")
_EDGE_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO tempered\.bootedge\.http: "
    r"(?:boot script for \S+: \S+ \(machine (?P<booted>[^,\s]+),.*\)|relayed \S+ /v1/boot/(?P<relayed>[^/\s]+)/\S+)"
    r" in (?P<seconds>\d+(?:\.\d+)?)s$"
)


@dataclass(frozen=True)
class Interval:
    kind: str
    start: datetime
    end: datetime


@dataclass
class Timing:
    """One machine's figures, in seconds from its power-on."""

    machine: str
    state: str
    reached: dict[str, float]  # state -> seconds from power-on to its first entry
    to_ready: float | None  # None: not ready (failed, or still on its way)
    window: float  # the seconds the split covers: to `ready`, to the failure, or so far
    by_kind: dict[str, float] = field(default_factory=dict)
    control_plane: float = 0.0
    control_plane_without_ansible: float = 0.0  # the union of every other kind's intervals
    held: float = 0.0  # in `holding`, waiting for the cluster (no control-plane work meanwhile)

    @property
    def vm(self) -> float:
        return self.window - self.control_plane - self.held

    @property
    def share(self) -> float | None:
        return 100 * self.control_plane / self.window if self.window > 0 else None

    @property
    def share_without_ansible(self) -> float | None:
        """The control plane's share if Ansible's wait on the VM is counted as the VM's."""
        if self.window <= 0:
            return None
        return 100 * self.control_plane_without_ansible / self.window

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"vm": self.vm, "share": self.share, "share_without_ansible": self.share_without_ansible}


# ---- parsing ------------------------------------------------------------------------------


def state_entries(history: list[dict[str, Any]], powered_on: datetime) -> dict[str, datetime]:
    """When the machine first entered each state at or after its power-on."""
    entered: dict[str, datetime] = {}
    for transition in sorted(history, key=lambda t: parse_time(t["at"])):
        at = parse_time(transition["at"])
        if at >= powered_on:
            entered.setdefault(transition["state"], at)
    return entered


def workflow_intervals(events: list[dict[str, Any]], now: datetime | None = None) -> list[Interval]:
    """The control plane's work in a workflow history (Temporal's JSON form): each activity from
    scheduled to closed, each workflow task from scheduled to completed (or failed, timed out);
    one still open (Ansible running) until `now`, if given."""
    opened: dict[str, tuple[str, datetime]] = {}
    made: list[Interval] = []
    for event in events:
        kind_of_event = event["eventType"].removeprefix("EVENT_TYPE_")
        at = parse_time(event["eventTime"])
        if _ask_event(kind_of_event, event, opened, made, at):
            continue
        if kind_of_event == "ACTIVITY_TASK_SCHEDULED":
            name = event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
            opened[event["eventId"]] = (ACTIVITY_KINDS.get(name, "other"), at)
        elif kind_of_event == "WORKFLOW_TASK_SCHEDULED":
            opened[event["eventId"]] = ("workflow", at)
        elif kind_of_event.startswith(("ACTIVITY_TASK_", "WORKFLOW_TASK_")) and kind_of_event.endswith(_CLOSES):
            attributes = next(v for k, v in event.items() if k.endswith("EventAttributes"))
            if (start := opened.pop(str(attributes.get("scheduledEventId")), None)) is not None:
                made.append(Interval(start[0], start[1], at))
    if now is not None:
        made += [Interval(kind, start, max(start, now)) for kind, start in opened.values()]
    return made


def _ask_event(kind_of_event: str, event: dict[str, Any], opened: dict[str, tuple[str, datetime]],
               made: list[Interval], at: datetime) -> bool:
    """An ask to the cluster sent (opened, unless one is already waiting: a re-sent ask waits
    from the first) or its answer received (closed as an admission interval); whether it was one."""
    if kind_of_event == "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED":
        answer = ASKS.get(event["signalExternalWorkflowExecutionInitiatedEventAttributes"].get("signalName", ""))
        if answer is not None:
            opened.setdefault(f"ask:{answer}", ("admission", at))
        return answer is not None
    if kind_of_event == "WORKFLOW_EXECUTION_SIGNALED":
        name = event["workflowExecutionSignaledEventAttributes"].get("signalName", "")
        if (start := opened.pop(f"ask:{name}", None)) is not None:
            made.append(Interval(start[0], start[1], at))
        return True
    return False


def runs_intervals(runs: list[list[dict[str, Any]]], now: datetime | None = None) -> list[Interval]:
    """The intervals of a workflow's runs (continue-as-new), oldest first, each run on its own:
    event ids start again in every run, so one run's ids must not close another's tasks. A task
    an older run left open counts until that run's last event; one of the newest run, until `now`."""
    made: list[Interval] = []
    for n, events in enumerate(runs):
        newest = n == len(runs) - 1
        until = now if newest else (parse_time(events[-1]["eventTime"]) if events else None)
        made += workflow_intervals(events, until)
    return made


def edge_intervals(lines: Iterable[str], machine_id: str) -> list[Interval]:
    """The edge's answers for this machine from its log: each line is written when the answer came
    back (local time, as `logging` stamps it) and says how long it took."""
    made = []
    for line in lines:
        match = _EDGE_LINE.match(_as_text(line.rstrip("\n")))
        if not match or machine_id not in (match["booted"], match["relayed"]):
            continue
        end = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").astimezone()
        made.append(Interval("edge", end - timedelta(seconds=float(match["seconds"])), end))
    return made


def _as_text(line: str) -> str:
    """A JSON log line (TEMPERED_LOG_FORMAT=json) in the text format's shape, in local time."""
    if not line.startswith("{"):
        return line
    try:
        record = json.loads(line)
        at = datetime.fromisoformat(record["time"]).astimezone()
        return f"{at:%Y-%m-%d %H:%M:%S},{at.microsecond // 1000:03d} {record['level']} {record['logger']}: {record['message']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return line


# ---- the split ----------------------------------------------------------------------------


def union_seconds(intervals: Iterable[Interval], start: datetime, end: datetime) -> float:
    """Seconds covered by the intervals inside [start, end], overlaps counted once."""
    clipped = sorted((max(i.start, start), min(i.end, end)) for i in intervals)
    total, reach = 0.0, start
    for lo, hi in clipped:
        lo = max(lo, reach)
        if hi > lo:
            total += (hi - lo).total_seconds()
            reach = hi
    return total


def timing(
    machine: str, view: dict[str, Any] | None, powered_on: datetime, intervals: list[Interval], now: datetime
) -> Timing:
    """One machine's timing. The split covers power-on to `ready`; for a machine not ready, to its
    failure (`failed:*`, where it stopped) or to `now` (still on its way)."""
    if view is None:
        return Timing(machine, "-", {}, None, (now - powered_on).total_seconds())
    entered = state_entries(view.get("history") or [], powered_on)
    state = view.get("state") or ""
    end = _window_end(state, entered, now)
    made = Timing(
        machine, state, {s: (at - powered_on).total_seconds() for s, at in entered.items()},
        (entered[READY] - powered_on).total_seconds() if state == READY and READY in entered else None,
        (end - powered_on).total_seconds(),
    )
    made.by_kind = {kind: union_seconds([i for i in intervals if i.kind == kind], powered_on, end) for kind in KINDS}
    made.control_plane = union_seconds(intervals, powered_on, end)
    made.control_plane_without_ansible = union_seconds([i for i in intervals if i.kind != "ansible"], powered_on, end)
    held = holding_intervals(view.get("history") or [], now)
    made.held = union_seconds([*intervals, *held], powered_on, end) - made.control_plane
    return made


def holding_intervals(history: list[dict[str, Any]], now: datetime) -> list[Interval]:
    """When the machine sat in `holding` (until its next transition, or now): waiting for its
    cluster, e.g. a worker for the master-prime's join. Neither the VM's work nor the control plane's."""
    ordered = sorted(history, key=lambda t: parse_time(t["at"]))
    ends = [parse_time(t["at"]) for t in ordered[1:]] + [now]
    return [Interval("held", parse_time(t["at"]), end) for t, end in zip(ordered, ends) if t["state"] == HOLDING]


def _window_end(state: str, entered: dict[str, datetime], now: datetime) -> datetime:
    """Where the split stops: at `ready`, at the failure (nothing moves after it), else now."""
    if state == READY or state.startswith("failed:"):
        return entered.get(state, now)
    return now


# ---- showing ------------------------------------------------------------------------------


def state_columns(timings: list[Timing]) -> list[str]:
    """The lifecycle's states any machine reached, in lifecycle order, then any other (failed:*)."""
    reached = {s for t in timings for s in t.reached}
    return [s for s in LIFECYCLE if s in reached] + sorted(reached - set(LIFECYCLE))


def render(timings: list[Timing]) -> list[Table]:
    """Two tables: power-on to each state; where the time to `ready` went."""
    states = state_columns(timings)
    reached = Table(title="seconds from power-on to each state")
    for column in ["machine", "state", *states]:
        reached.add_column(column, justify="left" if column in ("machine", "state") else "right")
    for t in timings:
        reached.add_row(t.machine, t.state, *(_s(t.reached.get(s)) for s in states))
    split = Table(title="power-on to ready: the control plane's seconds (CP) and the VM's", caption=CAPTION)
    kinds = [k for k in KINDS if any(t.by_kind.get(k) for t in timings)]
    for column in ["machine", "to ready", "counted", *kinds, "CP", "held", "VM", "CP %", "CP % -ansible"]:
        split.add_column(column, justify="left" if column == "machine" else "right")
    for t in timings:
        split.add_row(t.machine, _s(t.to_ready) if t.to_ready is not None else f"no: {t.state}", _s(t.window),
                      *(_s(t.by_kind.get(k)) for k in kinds), _s(t.control_plane), _s(t.held), _s(t.vm),
                      _s(t.share), _s(t.share_without_ansible))
    return [reached, split]


def _s(value: float | None) -> str:
    """Seconds, or a percentage: one decimal."""
    return "" if value is None else f"{value:.1f}"


# ---- fetching (the only I/O) --------------------------------------------------------------


def collect(lab_dir: Path, views: list[dict[str, Any]], temporal_address: str, now: datetime) -> list[Timing]:
    """Every lab VM's timing: its power-on, its machine (matched by MAC, as the live table does),
    its workflow's history since the power-on (one Temporal connection for all) and the edge's log."""
    from api.lab.vm import Vm

    by_mac = {mac: view for view in views for mac in view.get("macs") or []}
    log = lab_dir / "logs" / "edge.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    started = [(vm.spec.name, by_mac.get(vm.spec.mac), on) for vm in map(Vm.load, _vm_dirs(lab_dir))
               if (on := vm.powered_on()) is not None]  # a VM never started has nothing to time
    seen = [(view, on) for _, view, on in started if view is not None]
    histories = iter(asyncio.run(fetch_all_runs(temporal_address, seen)) if seen else [])
    made = []
    for name, view, on in started:
        intervals = (runs_intervals(next(histories), now) + edge_intervals(lines, view["id"])) if view else []
        made.append(timing(name, view, on, intervals, now))
    return made


def _vm_dirs(lab_dir: Path) -> list[Path]:
    return [spec_file.parent for spec_file in sorted((lab_dir / "vms").glob("*/spec.json"))]


def temporal_address(ui_url: str | None, external: bool) -> str:
    """The lab's own Temporal listens 1000 below its Web UI (control.Ports); a running stack's is
    TEMPORAL_ADDRESS, as for every other command."""
    from activities.storage import settings as settings_mod

    if external or not ui_url:
        return settings_mod.load().temporal_address
    from api.lab.control import UI_OFFSET

    parts = urlsplit(ui_url)
    return f"{parts.hostname}:{(parts.port or 0) - UI_OFFSET}"


async def fetch_all_runs(address: str, wanted: list[tuple[dict[str, Any], datetime]]) -> list[list[list[dict[str, Any]]]]:
    """Each (machine, since)'s workflow runs (`fetch_runs`), side by side over one connection."""
    from temporalio.client import Client

    view = wanted[0][0]
    namespace = urlsplit(view.get("temporal_url") or "").path.split("/namespaces/")[-1].split("/")[0] or "default"
    client = await Client.connect(address, namespace=namespace)
    return list(await asyncio.gather(*(fetch_runs(client, view, since) for view, since in wanted)))


async def fetch_runs(client: Any, view: dict[str, Any], since: datetime) -> list[list[dict[str, Any]]]:
    """The machine workflow's runs' events, oldest run first, back to the one running at `since`
    (a reboot from `ready` continues the workflow as new)."""
    from activities.domain.ids import machine_workflow_id

    runs: list[list[dict[str, Any]]] = []
    run_id: str | None = None
    while True:
        handle = client.get_workflow_handle(machine_workflow_id(view["id"]), run_id=run_id)
        run = (await handle.fetch_history()).to_json_dict()["events"]
        runs.insert(0, run)
        started = run[0]
        run_id = started["workflowExecutionStartedEventAttributes"].get("continuedExecutionRunId")
        if not run_id or parse_time(started["eventTime"]) <= since:
            return runs
