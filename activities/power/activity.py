"""The power activities: where a machine's power is (`power_target`, on the main queue) and one
command to its BMC (`power_machine`, on the queue of the machine's site when it has one).

The settings are read per call, so a changed password applies to the next command. Drivers are
blocking (sushy, pyghmi), so the call runs in a thread while the activity heartbeats: a worker
that dies mid-command is noticed in the POWER policy's heartbeat timeout. Failures become what
a workflow can act on: a BMC that answered no is final (`PowerRefused`, its answer); one that did
not answer is retried (`BmcUnreachable`). The password is in no message and no log line.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.exceptions import ApplicationError

from activities.domain.power import (
    PowerRequest,
    PowerResult,
    PowerSettings,
    PowerState,
    PowerTarget,
    manual_answer,
    no_site_worker,
    site_queue,
)
from activities.heartbeat import heartbeating
from activities.power import BmcRefused, BmcUnreachable, PowerDriver
from activities.storage.power import load_power
from activities.storage.settings import Settings

NEEDS_CREDENTIALS = ("redfish", "ipmi")


async def _served(site: str) -> bool:
    """Whether a worker polled the site's queue lately (Temporal keeps pollers of the last
    minutes): a site nobody serves is said at once, not after the command's wait for a worker
    (which still catches a worker that stopped since)."""
    client = activity.client()
    described = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=site_queue(site)),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    ))
    return bool(described.pollers)


def manual_error(machine_id: str, action: str) -> ApplicationError:
    """What a power command to a machine without a BMC answers: a person must act."""
    return ApplicationError(manual_answer(action), machine_id, type="ManualPower", non_retryable=True)


def run_action(driver: PowerDriver, action: str) -> tuple[PowerState, str]:
    """One command on a (blocking) driver: the power state the BMC reports after it, and what the
    BMC said the command did (pxe-once changes no power state: `unknown`, without asking)."""
    if action == "on":
        driver.power_on()
    elif action == "off":
        driver.power_off()
    elif action == "cycle":
        driver.cycle()
    elif action == "pxe-once":
        driver.pxe_once()
    said = getattr(driver, "answer", "")  # each driver words its last command (not in the Protocol)
    if action == "pxe-once":
        return "unknown", said or "next boot from the network (once)"
    state = driver.status()
    if action == "status" or not said:
        said = getattr(driver, "answer", "")
    return state, said or f"{action}: done, power {state}"


class PowerActivities:
    """The power steps, bound to the settings (the database with the sealed passwords)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name="power_target")
    async def power_target(self, machine_id: str) -> PowerTarget:
        """The driver and site of a machine's power: the workflow schedules `power_machine` on
        the site's queue, or answers at once for a manual machine."""
        power = await asyncio.to_thread(load_power, self.settings, machine_id)
        if missing := _missing_credentials(machine_id, power):  # a discovered address: a person acts until set
            return PowerTarget(machine_id=machine_id, driver="manual", reason=missing)
        if power.site and power.driver != "manual" and not await _served(power.site):
            raise ApplicationError(no_site_worker(power.site), type="NoSiteWorker", non_retryable=True)
        return PowerTarget(machine_id=machine_id, driver=power.driver, site=power.site)

    @activity.defn(name="power_machine")
    async def power_machine(self, request: PowerRequest) -> PowerResult:
        power = await asyncio.to_thread(load_power, self.settings, request.machine_id)
        if power.driver == "manual":
            raise manual_error(request.machine_id, request.action)
        if missing := _missing_credentials(request.machine_id, power):
            raise ApplicationError(missing, type="PowerSettingsIncomplete", non_retryable=True)
        try:
            driver = _driver(power)
            state, answer = await heartbeating(asyncio.to_thread(run_action, driver, request.action))
        except BmcRefused as err:
            raise ApplicationError(_clean(str(err), power), type="PowerRefused", non_retryable=True) from None
        except BmcUnreachable as err:
            raise ApplicationError(
                f"BMC {power.address} unreachable: {_clean(str(err), power)}", type="BmcUnreachable"
            ) from None
        activity.logger.info("%s %s through %s at %s: %s", request.action, request.machine_id, power.driver,
                             power.address, state)
        return PowerResult(machine_id=request.machine_id, action=request.action, driver=power.driver,
                           state=state, answer=_clean(answer, power))


def _driver(power: PowerSettings) -> PowerDriver:
    """The driver for these settings (activities/power/drivers.py); a driver that cannot be
    built from them (a bad address) is the operator's to fix, said so."""
    from activities.power.drivers import driver_for  # the drivers' libraries load only where power runs

    try:
        return driver_for(power)
    except (ValueError, TypeError) as err:
        raise ApplicationError(
            f"the {power.driver} settings cannot be used ({_clean(str(err), power)}): fix them with "
            "'tempered machine power ID set'", type="PowerSettingsInvalid", non_retryable=True,
        ) from None


def _missing_credentials(machine_id: str, power: PowerSettings) -> str:
    """Why a BMC on record cannot be used yet (an address reported by discovery, no credentials),
    with the command that fixes it; empty when nothing is missing."""
    if power.driver in NEEDS_CREDENTIALS and not (power.username and power.password.get_secret_value()):
        return (f"machine {machine_id}'s {power.driver} BMC at {power.address} has no credentials: set them with "
                f"'tempered machine power {machine_id} set --driver {power.driver} --address {power.address} "
                "--username USER --password-stdin'")
    return ""


def _clean(message: str, power: PowerSettings) -> str:
    """A driver's message with the password cut out, should a library have quoted it."""
    secret = power.password.get_secret_value()
    return message.replace(secret, "**********") if secret else message
