"""What the machine-facing routes read of a machine, without asking its workflow every time.

The discovery agent asks for its instruction every 10 s until it is told to reboot, and
cloud-init reads three seed files then phones home; each read used to be a `status` query, a
round trip through Temporal to the worker. At 1,000 machines booting together that was 6,600
queries in five minutes for the instruction alone (issue 18). What these routes answer changes
only with a move that the database's copy of states records (activities/storage/machinestate.py):
a new boot (the edge's answer, whose token makes the old one stale), the move to `post-discover`
(reboot), the phone home, a failure, a reprovision or a decommission.

So the workflow's answer is kept with the copy's row (state and the time of its move) read
before asking, if the two agree on the state, and reused while that row has not changed, for at
most MAX_AGE_S: a move the copy shows late (a hold and its reason) is seen within it. They
disagree while a move is under way (the copy is written just before or after the workflow
moves): such an answer is not kept, and the next read asks again. A held machine's row still
says `discover` (the copy never records a hold), and its answer is kept all the same (BEHIND).

The one answer a kept view can give that the workflow would not: in the moment between a new
boot's move and its row being written, the old boot's token is answered what it was answered
before (the new boot's token is issued only after the row is written).

Per API process; each keeps at most `size` machines (the least recently read go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from activities.domain.lifecycle import DISCOVER, HOLDING, PHONED_HOME

MAX_AGE_S = 60.0
SIZE = 20_000

Recorded = tuple[str | None, datetime]  # the copy's (state, moved_at) for a machine
# Once it phoned home a machine joins, and with no IP to publish becomes `ready`, without a write
# to the copy, and its token then reads nothing: from the phone home on, answers are never kept.
ALWAYS_ASKED = PHONED_HOME
# (row, workflow) pairs where the copy is behind by a move it never records and that changes
# nothing but the reason: a hold (the agent waits either way). Kept: at a fleet's power-on most
# machines are held until their cluster's first master is ready, each polling every 10 s.
BEHIND = frozenset({(DISCOVER, HOLDING)})


@dataclass(frozen=True)
class BootView:
    """What the machine-facing routes need of a machine's status."""

    boot: int
    state: str
    reason: str
    node_name: str


class BootViews:
    def __init__(self, max_age_s: float = MAX_AGE_S, size: int = SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age_s, self._size, self._clock = max_age_s, size, clock
        self._kept: OrderedDict[str, tuple[Recorded, BootView, float]] = OrderedDict()

    def kept(self, machine_id: str, recorded: Recorded | None) -> BootView | None:
        """The workflow's last answer for this machine, if it was asked under this same
        recorded row and not longer than MAX_AGE_S ago; None: ask the workflow."""
        found = self._kept.get(machine_id)
        if recorded is None or found is None or found[0] != recorded or self._clock() - found[2] > self._max_age_s:
            return None
        self._kept.move_to_end(machine_id)
        return found[1]

    def keep(self, machine_id: str, recorded: Recorded | None, view: BootView) -> None:
        """Keep the workflow's answer, asked after the copy's row `recorded` was read."""
        if recorded is None or view.state in ALWAYS_ASKED or not self._agree(recorded[0], view.state):
            self._kept.pop(machine_id, None)
            return
        self._kept[machine_id] = (recorded, view, self._clock())
        self._kept.move_to_end(machine_id)
        while len(self._kept) > self._size:
            self._kept.popitem(last=False)

    @staticmethod
    def _agree(row: str | None, state: str) -> bool:
        """The row and the workflow agree, or the row is behind by a move that changes nothing
        the machine reads; not while a move is under way (the row ahead, or behind by one that does)."""
        return row == state or (row, state) in BEHIND

    def __len__(self) -> int:
        return len(self._kept)
