"""The discovery agent's instruction poll, held until its machine moves (a long poll).

The agent used to ask every 10 s. At 1,000 machines powering on together those polls became
the API's main load (issue 18: 10,800-13,300 a run, each a token lookup and a read of the
machine's recorded row), and a reboot was seen up to 10 s late. Now the agent asks
`instruction?wait=20`: a poll whose answer is `wait` is held here until the machine's recorded
row (activities/storage/machinestate.py) moves or the wait runs out. One task per API process
reads the rows of every held machine in one query a second and wakes the polls whose row
moved; the route then answers again from that row (api/boot.py). The answer says `poll_after`,
so the agent asks again at once instead of sleeping its 10 s. An API without this ignores
`wait` and answers without `poll_after`: the agent keeps its 10 s.

A held poll that the row cannot wake (a hold's reason changing, which the row never records)
is answered when its wait runs out, as the kept answer ages (api/boot_views.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import anyio

from api.boot_views import Recorded
from api.metrics import HELD_POLLS

PERIOD_S = 1.0
log = logging.getLogger("tempered.api.held_polls")

ReadRows = Callable[[list[str]], dict[str, Recorded]]  # machine ids -> their recorded rows (blocking)


class HeldPolls:
    def __init__(self, read_rows: ReadRows, period_s: float = PERIOD_S) -> None:
        self._read_rows, self._period_s = read_rows, period_s
        self._held: dict[str, list[tuple[Recorded | None, asyncio.Future]]] = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def until_moved(self, machine_id: str, recorded: Recorded | None, wait_s: float) -> Recorded | None:
        """The machine's row once it differs from `recorded` (the row the answer was made
        from), or `recorded` after `wait_s` or when the API stops."""
        if self._stopping:
            return recorded
        self._loop = asyncio.get_running_loop()
        waiter = self._loop.create_future()
        entry = (recorded, waiter)
        self._held.setdefault(machine_id, []).append(entry)
        HELD_POLLS.inc()
        if self._task is None:
            self._task = asyncio.create_task(self._watch())
        try:
            await asyncio.wait([waiter], timeout=wait_s)
            return waiter.result() if waiter.done() else recorded
        finally:
            HELD_POLLS.dec()
            self._forget(machine_id, entry)

    def stop(self) -> None:
        """Answer every held poll now and hold no more: a stopping API (uvicorn waits for the
        requests in flight) must not wait out 20 s polls. Their agents ask again elsewhere."""
        self._stopping = True
        held = [(recorded, waiter) for entries in self._held.values() for recorded, waiter in entries
                if not waiter.done()]
        for recorded, waiter in held:
            waiter.set_result(recorded)
        if held:
            log.info("answered %d held instruction polls: the API is stopping", len(held))

    def stop_soon(self) -> None:
        """`stop`, from a signal handler (it runs between any two lines of the event loop)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stop)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._held.values())

    async def _watch(self) -> None:
        try:
            while self._held:
                await asyncio.sleep(self._period_s)
                if self._held:
                    await self._wake_moved()
        finally:
            self._task = None

    async def _wake_moved(self) -> None:
        try:
            rows = await anyio.to_thread.run_sync(self._read_rows, list(self._held))
        except Exception as err:  # the database is away: held polls run out their wait, and ask again
            log.warning("could not read the held machines' states (%s); retrying in %.0f s", err, self._period_s)
            return
        for machine_id, row in rows.items():
            for recorded, waiter in self._held.get(machine_id, ()):
                if row != recorded and not waiter.done():
                    waiter.set_result(row)

    def _forget(self, machine_id: str, entry: tuple[Recorded | None, asyncio.Future]) -> None:
        entries = self._held.get(machine_id, [])
        if entry in entries:
            entries.remove(entry)
        if not entries:
            self._held.pop(machine_id, None)
