"""Heartbeating around work that may wait: a worker that dies mid-wait is noticed by Temporal
within the activity's heartbeat timeout (seconds), not its start-to-close timeout (minutes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
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
