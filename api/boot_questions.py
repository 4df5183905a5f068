"""The edge's boot questions not yet answered, by machine, and the Update ID each one asks with.

A boot question is an update-with-start of the machine's workflow (api/temporal.py `pxe_boot`).
When it is not answered within the edge's wait the API answers 504 and the edge asks again; each
new ask used to be a new Update, admitted beside the first one, each another workflow task and
more work for Temporal, and each one a boot of its own to the workflow. At 1,000 machines booting
together, 5,700 asks for about 1,000 boots kept Temporal too busy to answer any of them in time
(issue 18). A machine whose question is unanswered is still asking that question, so an ask
again reuses the first one's Update ID: Temporal attaches it to the Update already admitted (or
hands back the answer it already gave), and the workflow sees one boot.

Per API process (another process's asks have their own IDs: at worst one Update each). An entry
ends when its question is answered or refused, or after KEEP_S (a machine that stopped asking).
"""

from __future__ import annotations

import time
import uuid

KEEP_S = 300.0  # an unanswered question older than this is asked afresh


class BootQuestions:
    def __init__(self, keep_s: float = KEEP_S) -> None:
        self._keep_s = keep_s
        self._open: dict[str, tuple[str, float]] = {}  # machine id -> (Update ID, first asked)

    def update_id(self, machine_id: str) -> str:
        """The Update ID of this machine's unanswered question, or a new one."""
        now = time.monotonic()
        found = self._open.get(machine_id)
        if found is None or now - found[1] > self._keep_s:
            found = (f"pxe-boot-{uuid.uuid4()}", now)
            self._open[machine_id] = found
        return found[0]

    def done(self, machine_id: str, update_id: str) -> None:
        """The question was answered or refused: the machine's next one is a new question."""
        if self._open.get(machine_id, ("",))[0] == update_id:
            del self._open[machine_id]

    def __len__(self) -> int:
        return len(self._open)
