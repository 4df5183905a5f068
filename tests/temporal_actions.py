"""Temporal Cloud actions in a workflow history, counted the way Temporal Cloud bills them.

Why: Temporal Cloud charges per action, and a fleet of thousands of machines multiplies every
action a machine workflow takes; the issue's goal is at most 25 per machine lifecycle
(new -> ready). Benchmarks and tests import `count_actions` to print and bound it.

Definition (source: Temporal's documentation, "Temporal Cloud Actions",
https://docs.temporal.io/cloud/actions, read 2026-12): one action for each of these events
- `WORKFLOW_EXECUTION_STARTED` (a client start, update- or signal-with-start, continue-as-new's
  new run, a child's start);
- `ACTIVITY_TASK_SCHEDULED`, plus one per retry: an `ACTIVITY_TASK_STARTED`'s `attempt - 1`
  (intermediate attempts write no events; the last attempt's started event carries the count);
- `TIMER_STARTED`;
- `WORKFLOW_EXECUTION_SIGNALED` (a signal received) and `SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_
  INITIATED` (a signal this workflow sent; Cloud bills it once, shown in the receiver's history:
  counted here on the sender, so that a machine's count includes what it tells its cluster);
- `WORKFLOW_EXECUTION_UPDATE_ACCEPTED` (rejected Updates are billed too but never written);
- `UPSERT_WORKFLOW_SEARCH_ATTRIBUTES` (one per command, however many attributes it sets;
  attributes given at start are free; an upsert of `TemporalChangeVersion` alone, which the
  Python SDK writes beside each new patch marker, is exempt and counted in its own kind);
- `START_CHILD_WORKFLOW_EXECUTION_INITIATED`: two (the intent and the start attempt);
- `MARKER_RECORDED`: local-activity and side-effect markers, all those of one workflow task
  counted as one. Patch markers (`core_patch`, `workflow.patched`) are counted in their own
  kind, `patch markers`, and NOT in the total: Cloud meters versioning through the
  `TemporalChangeVersion` search attribute, which is exempt, and its table bills markers as
  "Record Activity Markers" only;
- `WORKFLOW_EXECUTION_CONTINUED_AS_NEW` is not counted here: its action is the next run's start.
Not in any history, so not counted: activity heartbeats that reach the server (throttled to 80%
of the heartbeat timeout), queries (every `status` query the API or a test makes), rejected
Updates, the workflow-task heartbeats of long local activities.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

_ONE = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "workflow started",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activity scheduled",
    EventType.EVENT_TYPE_TIMER_STARTED: "timer started",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signal received",
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "signal sent",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update accepted",
}
PATCH_MARKERS = "patch markers"  # shown, not billed (see the module's docstring)
VERSION_UPSERTS = "TemporalChangeVersion upserts"  # shown, not billed
UNBILLED = (PATCH_MARKERS, VERSION_UPSERTS)
VERSIONING = "TemporalChangeVersion"  # the SDK upserts it beside each new patch marker


@dataclass
class Actions:
    """Billable actions in one history (or several added together), by kind."""

    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(count for kind, count in self.by_kind.items() if kind not in UNBILLED)

    def __add__(self, other: Actions) -> Actions:
        return Actions(self.by_kind + other.by_kind)

    def breakdown(self) -> str:
        """One line: the total, then each kind's count, largest first."""
        billed = ", ".join(f"{kind} {n}" for kind, n in self.by_kind.most_common() if kind not in UNBILLED)
        free = ", ".join(f"{kind} {n}" for kind, n in self.by_kind.most_common() if kind in UNBILLED)
        return f"{self.total} actions ({billed}; not billed: {free or 'none'})"


def count_actions(events: Iterable[HistoryEvent]) -> Actions:
    """The billable actions of a history's events (`WorkflowHistory.events`, or
    `handle.fetch_history_events()` collected into a list)."""
    counted: Counter[str] = Counter()
    task_markers: set[int] = set()  # workflow tasks whose (non-patch) markers are counted already
    for event in events:
        kind = event.event_type
        if kind in _ONE:
            counted[_ONE[kind]] += 1
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and event.activity_task_started_event_attributes.attempt > 1:
            counted["activity retried"] += event.activity_task_started_event_attributes.attempt - 1
        elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            counted[VERSION_UPSERTS if set(fields) == {VERSIONING} else "search attributes upserted"] += 1
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            counted["child workflow started"] += 2
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == "core_patch":
                counted[PATCH_MARKERS] += 1
            elif marker.workflow_task_completed_event_id not in task_markers:
                task_markers.add(marker.workflow_task_completed_event_id)
                counted["markers (per workflow task)"] += 1
    return Actions(counted)


def patch_ids(events: Iterable[HistoryEvent]) -> list[str]:
    """The patch ids a history recorded, in order (to say which code paths it took)."""
    found = []
    for event in events:
        marker = event.marker_recorded_event_attributes
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and marker.marker_name == "core_patch":
            found.append(json.loads(marker.details["patch-data"].payloads[0].data)["id"])
    return found
