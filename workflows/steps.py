"""Steps that a workflow's handlers name and its main loop runs.

Handlers validate an event, record it and name the step it needs: `ask` when the handler owes
an answer (it waits until the step has given it), `tell` when nobody waits. The loop in
`run()` (`run_until`) starts every named step as its own task, so steps are the only code that
calls activities, and many run side by side (each machine's rules, say); what must not overlap
is serialised by locks inside the steps.

`inline` keeps runs recorded before a workflow had the loop: their handlers ran the steps
themselves, and Temporal replays the order of commands (Update acceptances and completions
included), which only the same inline calls reproduce.

Deterministic code only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from temporalio import workflow

Answer = TypeVar("Answer")


@dataclass(eq=False)
class _Step:
    run: Callable[[], Awaitable[Any]]
    awaited: bool = False  # a handler waits for its answer
    done: bool = False
    answer: Any = None
    error: Exception | None = None


class Steps:
    def __init__(self, inline: bool) -> None:
        self.inline = inline
        self._named: list[_Step] = []  # not started yet
        self._running: set[asyncio.Task[None]] = set()
        self._broken: Exception | None = None  # a step nobody waited on failed: a bug, fail the task

    async def ask(self, run: Callable[[], Awaitable[Answer]]) -> Answer:
        """Name a step and wait for its answer (or its error)."""
        if self.inline:
            return await run()
        step = _Step(run, awaited=True)
        self._named.append(step)
        await workflow.wait_condition(lambda: step.done)
        if step.error is not None:
            raise step.error
        return step.answer

    async def tell(self, run: Callable[[], Awaitable[None]]) -> None:
        """Name a step nobody waits for."""
        if self.inline:
            await run()
        else:
            self.name(run)

    def name(self, run: Callable[[], Awaitable[None]]) -> None:
        """Name a step from code that cannot wait (a timer's callback); the loop must be running."""
        self._named.append(_Step(run))

    async def run_until(self, stop: Callable[[], bool]) -> None:
        """The main loop: start every named step until `stop()` holds and every step and
        handler is done (a step named while stopping still runs)."""
        while not (stop() and self._drained()):
            await workflow.wait_condition(
                lambda: bool(self._named) or self._broken is not None or (stop() and self._drained())
            )
            if self._broken is not None:  # a bug: fail the workflow task (retried), never the workflow
                raise RuntimeError(f"a step nobody waited on failed: {self._broken!r}") from self._broken
            named, self._named = self._named, []
            for step in named:
                task = asyncio.create_task(self._run(step))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    def _drained(self) -> bool:
        return not self._named and not self._running and workflow.all_handlers_finished()

    async def _run(self, step: _Step) -> None:
        try:
            step.answer = await step.run()
        except Exception as err:  # the waiting handler raises it; with none waiting it is a bug
            step.error = err
            if not step.awaited:
                self._broken = err
        step.done = True
