"""activities/heartbeat.py: long blocking runs (Terraform, Ansible) have a pool of their own
(issue 16 review, item 4): a full default executor does not hold them up."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from temporalio.testing import ActivityEnvironment

from activities.heartbeat import Progress, heartbeating_run


async def test_a_run_goes_through_while_the_default_executor_is_full():
    loop = asyncio.get_running_loop()
    default = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(default)
    release = threading.Event()
    blocker = loop.run_in_executor(None, release.wait)  # the default pool's only thread, busy
    progress = Progress(last="working")

    async def activity_body() -> int:
        return await heartbeating_run(lambda: 42, progress, every=0.1)

    running = asyncio.ensure_future(ActivityEnvironment().run(activity_body))
    done, _ = await asyncio.wait({running}, timeout=20)  # a deadline for the condition, not a measure
    release.set()
    await blocker
    await running
    assert running in done, "the run waited for the default executor"
    assert running.result() == 42
