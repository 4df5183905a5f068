"""Heartbeating around work that may wait: a worker that dies mid-wait is noticed by Temporal
within the activity's heartbeat timeout (seconds), not its start-to-close timeout (minutes).
A run that reports progress (Terraform's last line) heartbeats it, so the Web UI shows it."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")

# Long blocking runs (Terraform, Ansible) and their preparation get threads of their own: in
# asyncio's default executor (a handful of threads) a cluster delete's several playbooks would
# leave a run's context reads queued past their heartbeat timeout.
RUNS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="long-run")


async def in_runs_pool(work: Callable[..., T], *args: object) -> T:
    """`work(*args)` in the RUNS pool, in the activity's context (as asyncio.to_thread would)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(RUNS, lambda: context.run(work, *args))


async def heartbeating(work: Awaitable[T], every: float = 1.0) -> T:
    """Await `work`, heartbeating every `every` seconds meanwhile (it is cancelled with us).
    The first heartbeat waits `every` too: each one that reaches Temporal is a billed action, and
    work done within a second needs none (Temporal times a silent attempt from its start)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=every)
            if not task.done():
                activity.heartbeat()
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


@dataclass
class Progress:
    """Shared between a blocking run's thread and its activity: what the run is doing now, and
    the flag the activity sets when it is cancelled (the run polls it and stops its process)."""

    last: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)


async def heartbeating_run(work: Callable[[], T], progress: Progress, every: float = 5.0) -> T:
    """Run the blocking `work()` in the RUNS pool, heartbeating `progress.last` every `every` seconds.
    When the activity is cancelled, set `progress.cancel` and wait for `work` to wind down (it
    stops its process and removes its files) before the cancellation goes on: a thread cannot
    be cancelled from outside."""
    job = asyncio.ensure_future(in_runs_pool(work))
    try:
        while not job.done():
            activity.heartbeat(progress.last)
            await asyncio.wait({job}, timeout=every)
    except asyncio.CancelledError:
        progress.cancel.set()
        await asyncio.wait({job})
        job.exception()  # retrieved (the run's Interrupted): the cancellation is what goes on
        raise
    return job.result()
