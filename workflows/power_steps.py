"""The machine workflow's `power` step: power actions through the machine's BMC, on its site's
task queue, and what the machine's reason says before, during and after them.

A reboot runs `cycle`, a reprovision `pxe-once` then `cycle`, a decommission `off` after its
retire work. With the `manual` driver nothing is sent: the reason asks a person to act, and the
machine's next PXE contact moves it on as usual. Deterministic code only (workflow code).
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio import workflow

from workflows import calls

with workflow.unsafe.imports_passed_through():
    from activities.domain.lifecycle import DECOMMISSION as RETIRE
    from activities.domain.lifecycle import DECOMMISSIONED, DECOMMISSIONING, NEW, REBOOTS, failed
    from activities.domain.power import MANUAL_CYCLE, PowerAction, PowerRequest, PowerTarget, site_queue

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
    target = await calls.power_target(machine_id)
    if not current():
        return None
    if target.manual:
        return target
    site = {"task_queue": site_queue(target.site)} if target.site else {}  # where the BMC is reachable from
    by = f" (on site {target.site}'s worker)" if target.site else ""  # it waits there for that worker
    for action in actions:
        say(f"{_DOING[action]} through {target.driver}{by}")
        await calls.power_machine(PowerRequest(machine_id=machine_id, action=action), **site)
        if not current():
            return None
    return target


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
    done = f"{MANUAL_CYCLE} ({MANUAL})" if target.manual else done
    return f"reprovision requested: {done}" if reprovision else done


def powered_off(target: PowerTarget) -> str:
    """What a decommissioned machine's reason adds about its power."""
    return f"power it off by hand ({MANUAL})" if target.manual else f"powered off through {target.driver}"
