"""The held instruction polls (api/held_polls.py) on their own: who is woken, and what a
failing read of the rows does. Against the real API: tests/api/test_boot_views.py."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from api.held_polls import HeldPolls
from tests.conftest import eventually

T0 = datetime(2026, 12, 7, tzinfo=timezone.utc)
T1 = datetime(2026, 12, 7, 0, 1, tzinfo=timezone.utc)


def test_only_the_machines_whose_row_moved_are_woken_and_each_of_their_polls() -> None:
    rows = {"a": ("discover", T0), "b": ("discover", T0)}
    reads: list[list[str]] = []

    def read(ids: list[str]) -> dict:
        reads.append(sorted(ids))
        return dict(rows)

    async def scenario() -> None:
        held = HeldPolls(read, period_s=0.01)
        a1 = asyncio.create_task(held.until_moved("a", ("discover", T0), 60))
        a2 = asyncio.create_task(held.until_moved("a", ("discover", T0), 60))
        b = asyncio.create_task(held.until_moved("b", ("discover", T0), 60))
        async def all_held() -> bool:
            return bool(reads) and len(held) == 3

        await eventually(all_held, what="the three polls held and their rows read")
        assert reads[-1] == ["a", "b"]  # one read for every held machine
        rows["a"] = ("post-discover", T1)
        assert await a1 == await a2 == ("post-discover", T1)
        assert not b.done() and len(held) == 1
        held.stop()
        assert await b == ("discover", T0)  # answered at once with what it was held on
        assert await held.until_moved("b", ("discover", T0), 60) == ("discover", T0)  # held no more

    asyncio.run(scenario())


def test_a_failing_read_lets_the_polls_run_out_their_wait_and_the_watch_goes_on(caplog) -> None:
    failing = [True]

    def read(ids: list[str]) -> dict:
        if failing[0]:
            raise OSError("connection refused")
        return {"a": ("post-discover", T1)}

    async def scenario() -> None:
        held = HeldPolls(read, period_s=0.01)
        assert await held.until_moved("a", ("discover", T0), 0.1) == ("discover", T0)
        assert len(held) == 0
        failing[0] = False  # the database is back: a poll held now is woken
        assert await held.until_moved("a", ("discover", T0), 60) == ("post-discover", T1)

    with caplog.at_level(logging.WARNING, logger="tempered.api.held_polls"):
        asyncio.run(scenario())
    assert "could not read the held machines' states (connection refused)" in caplog.text
