"""The machine workflow's `power` step: power actions through the machine's BMC, on its site's
task queue, and what the machine's reason says before, during and after them.

A reboot runs `cycle`, a reprovision `pxe-once` then `cycle`, a decommission `off` after its
retire work. With the `manual` driver nothing is sent: the reason asks a person to act, and the
machine's next PXE contact moves it on as usual (a BMC found without credentials is manual too,
its target's reason naming them). Each command waits at most SCHEDULE_TO_START for a worker of
the machine's site, then fails naming the worker to start. `MachinePower` holds the machine
workflow's power helpers (a base class of MachineWorkflow). Deterministic code only (workflow code).
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError as ActivityTimeout, TimeoutType

from workflows import calls
from workflows.power import SCHEDULE_TO_START  # a site worker that stopped after power_target saw it

with workflow.unsafe.imports_passed_through():
    from activities.domain.lifecycle import DECOMMISSION as RETIRE
    from activities.domain.lifecycle import (
        BY_NAME, DECOMMISSIONED, DECOMMISSIONING, FAILED, HOLDING, NEW, POWER, REBOOTS, failed,
    )
    from activities.domain.machine import MachineStatus
    from activities.domain.power import (
        MANUAL_CYCLE, PowerAction, PowerRequest, PowerTarget, no_site_worker, site_queue,
    )

PATCH = "machine-power"  # reboot, reprovision and decommission use power (histories before it replay without)
REBOOT: tuple[PowerAction, ...] = ("cycle",)
REPROVISION: tuple[PowerAction, ...] = ("pxe-once", "cycle")
DECOMMISSION: tuple[PowerAction, ...] = ("off",)
MANUAL = "manual power: no BMC set"
_DOING = {"pxe-once": "setting a one-time PXE boot", "cycle": "power-cycling", "off": "powering off",
          "on": "powering on", "status": "reading the power state"}


async def run(machine_id: str, actions: list[PowerAction], say: Callable[[str], None],
              current: Callable[[], bool]) -> PowerTarget | None:
    """Run `actions` in order on the machine's power; its target when done, None as soon as
    `current()` says the machine moved on meanwhile (a PXE contact): a stale result is dropped.
    A manual target runs nothing. A BMC that refuses (or stays unreachable past the POWER
    policy) raises ActivityError, which parks the machine in `failed:power` with its answer."""
    try:
        target = await calls.power_target(machine_id)
    except ActivityError as err:
        raise PowerFailed(failure(err, None)) from None
    if not current():
        return None
    if target.manual:
        return target
    site = {"task_queue": site_queue(target.site)} if target.site else {}  # where the BMC is reachable from
    by = f" (on site {target.site}'s worker)" if target.site else ""  # it waits there for that worker
    for action in actions:
        say(f"{_DOING[action]} through {target.driver}{by}")
        try:
            await calls.power_machine(PowerRequest(machine_id=machine_id, action=action),
                                      schedule_to_start_timeout=SCHEDULE_TO_START, **site)
        except ActivityError as err:
            raise PowerFailed(failure(err, target.site)) from None
        if not current():
            return None
    return target


class PowerFailed(Exception):
    """The power step failed after its policy: the machine's `failed:power` reason."""


def failure(err: ActivityError, site: str | None) -> str:
    """Why a power activity failed, in the operator's terms: no worker took it from the queue
    (schedule-to-start), or the activity's own words (a BMC's answer) without their type."""
    cause = err.cause
    if isinstance(cause, ActivityTimeout) and cause.type == TimeoutType.SCHEDULE_TO_START:
        return no_site_worker(site)
    while cause is not None and cause.cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause or err)


def reboot_refused(where: str, state: str) -> str | None:
    """Why Update `reboot` is refused to a machine in `where` (in `failed:power`, the state its
    power step began in, `state` being failed:power), or None: the lifecycle's REBOOTS."""
    if where in (DECOMMISSIONING, DECOMMISSIONED, failed(RETIRE)):
        return f"the machine is being decommissioned ({state}): not rebooted"
    if where == NEW:
        return "the machine is new: nothing to reboot before its next PXE boot"
    if where not in REBOOTS:
        return f"the machine is in {where}, running discovery: reboot it once it is held, ready or failed"
    return None


def cycled(target: PowerTarget, reprovision: bool = False) -> str:
    """The reason of a machine whose power was cycled, or must be by a person."""
    done = f"power cycled through {target.driver}: waiting for it to PXE boot"
    done = f"{MANUAL_CYCLE} ({target.reason or MANUAL})" if target.manual else done
    return f"reprovision requested: {done}" if reprovision else done


def powered_off(target: PowerTarget) -> str:
    """What a decommissioned machine's reason adds about its power."""
    return f"power it off by hand ({target.reason or MANUAL})" if target.manual else f"powered off through {target.driver}"


class MachinePower:
    """The machine workflow's power helpers (a base of MachineWorkflow, workflows/machine.py):
    the `power` step, and what operator requests make of a pending or failed one."""

    s: MachineStatus
    _step: str | None
    _epoch: int
    _retired: str
    _finished: bool
    _held_reason: str
    _powering: bool
    _say: Callable[[str], None]
    _move: Callable[..., None]

    async def _power(self, epoch: int) -> None:
        """Run the pending power actions; when done, the machine waits for its PXE contact (a
        decommission completes). A result that arrives after the machine rebooted is dropped."""
        self._powering = True
        try:
            target = await run(self.s.machine_id, list(self.s.power_actions), self._say, lambda: epoch == self._epoch)
        finally:
            self._powering = False
        if target is None:
            return
        if self.s.power_from == DECOMMISSIONING:
            self._clear_power()
            self._move(DECOMMISSIONED, f"{self._retired}; {powered_off(target)}")
            self._finished = True
            return
        reason = cycled(target, reprovision=self.s.power_from == NEW)
        if self.s.state == failed(POWER):  # retried: back where the power step began
            self.s.failed_step = BY_NAME[self.s.power_from].step if self.s.power_from in FAILED else None
            self._move(self.s.power_from or NEW, reason)
        else:
            self._say(reason)
        # power_from stays until the PXE contact: a held machine's then finds it held as before

    def _reboot_refused(self) -> str | None:
        """Why Update `reboot` is refused now, or None. A power step pending or running (a
        reprovision's, another reboot's) refuses it: two power actions at once would race at the
        BMC. Once the step is done (the machine waits for its PXE contact) a reboot is taken."""
        if self._step == POWER or self._powering:
            return f"a power action is already under way: {self.s.reason}"
        if refused := reboot_refused(self._where(), self.s.state):
            return refused + self._power_failed()
        return None

    def _reboot_power(self) -> None:
        """The reboot's power step: a cycle, from the state the machine is in (in `failed:power`,
        again from where the failed step began)."""
        if not workflow.patched(PATCH):  # this run took reprovision's older branch already
            self._say(f"{MANUAL_CYCLE} (this workflow run began before power control)")
            return
        self._epoch += 1  # a step still running (a join) was for the boot being left: its result is dropped
        if self.s.state == failed(POWER):
            self.s.failed_step = None  # the power step runs again, from where it began
        else:
            self.s.power_from = self.s.state
            self._held_reason = self.s.reason if self.s.state == HOLDING else ""
        self._power_step(REBOOT, "reboot requested: power-cycling it")

    def _where(self) -> str:
        """The state the machine is in for operator requests: in `failed:power`, the state its
        power step began in (a failed power-off still belongs to a decommission)."""
        return self.s.power_from if self.s.state == failed(POWER) and self.s.power_from else self.s.state

    def _power_failed(self) -> str:
        """What a refusal adds in `failed:power`: the way on."""
        if self.s.state != failed(POWER):
            return ""
        return f"; its power step failed: retry it (tempered machine retry {self.s.machine_id})"

    def _power_from(self, state: str, actions: tuple[PowerAction, ...], reason: str) -> bool:
        """Run `actions` next from `state` (a reprovision's, a decommission's), if this run has
        power control (runs from before it went on without)."""
        if not workflow.patched(PATCH):
            return False
        self.s.power_from = state
        self._power_step(actions, reason)
        return True

    def _power_step(self, actions: tuple[PowerAction, ...], reason: str) -> None:
        """Run `actions` next (the `power` step), from `power_from`, which the caller set."""
        self.s.power_actions = list(actions)
        self._step = POWER
        self._say(reason)

    def _clear_power(self) -> None:
        self.s.power_from, self.s.power_actions = None, []

    def _held_again(self) -> None:
        """A held machine rebooted as asked: held as it was (its new boot's facts may say otherwise)."""
        reason = self._held_reason or "held: its cluster cannot take it yet"
        if self.s.state == HOLDING:
            self._say(reason)
        else:
            self._move(HOLDING, reason)
