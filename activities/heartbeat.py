"""Heartbeating around work that may wait: a worker that dies mid-wait is noticed by Temporal
within the activity's heartbeat timeout (seconds), not its start-to-close timeout (minutes)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")


async def heartbeating(work: Awaitable[T], every: float = 1.0) -> T:
    """Await `work`, heartbeating every `every` seconds meanwhile (it is cancelled with us)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            activity.heartbeat()
            await asyncio.wait({task}, timeout=every)
    finally:
        task.cancel()
    return task.result()


@contextmanager
def heartbeating_thread(every: float = 1.0) -> Iterator[None]:
    """For a sync activity's blocking call (waiting for a sandbox worker, say): heartbeat from a
    side thread, in the activity's context, until the call returns."""
    stop = threading.Event()
    context = contextvars.copy_context()  # the activity's; entered by the ticker thread only

    def tick() -> None:
        while not stop.wait(every):
            context.run(activity.heartbeat)

    ticker = threading.Thread(target=tick, name="heartbeat", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
