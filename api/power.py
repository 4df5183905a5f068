"""Operator routes for a machine's power: its settings (the BMC and how to reach it) and power
commands.

Settings are admin-only to write (they carry a BMC password, like DNS settings carry TSIG
secrets); the password is write-only: answers are `PowerView`s, which have none. A command runs
as the workflow `power:<machine_id>` (workflows/power.py), so that it runs on the worker of the
machine's site and a second command on one machine while the first runs is a 409. What the BMC
answered decides the status: a refusal is a 502 with its answer, no answer a 504.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from activities.domain.power import (
    POWER_ACTIONS, PowerAction, PowerRequest, PowerResult, PowerSettings, PowerView, problems,
)
from activities.storage import db
from activities.storage.models import Machine
from activities.storage.power import forget_power, power_view, save_power
from activities.storage.settings import TASK_QUEUE, Settings
from api.auth import Admin, Operator
from workflows.power import PowerCommandWorkflow, workflow_id

router = APIRouter(prefix="/v1/machines", tags=["power"])
# Longest a command may take: a queue without a worker (2 min), then two attempts of a slow BMC.
COMMAND_TIMEOUT = timedelta(minutes=10)
# The status of each failure the workflow reports, by its type (activities/power/activity.py).
STATUS_OF = {
    "PowerRefused": 502, "BmcUnreachable": 504, "NoSiteWorker": 504,
    "PowerSettingsIncomplete": 409, "PowerSettingsInvalid": 409, "ManualPower": 409,
}
_ACTION = Annotated[PowerAction, Path(description=f"one of {', '.join(POWER_ACTIONS)}")]
ANSWERS = {
    404: {"description": "no such machine"},
    409: {"description": "another power command on this machine is running, or its settings are incomplete"},
    502: {"description": "the BMC refused: its answer (wrong credentials, an error)"},
    504: {"description": "the BMC did not answer, or no worker serves the machine's site"},
}


def _known(settings: Settings, machine_id: str) -> None:
    with db.session(settings.database_url) as s:
        if s.get(Machine, machine_id) is None:
            raise HTTPException(404, f"no machine {machine_id!r}: see GET /v1/machines")


def _complete(body: PowerSettings) -> None:
    """A BMC driver needs an address (and a user for Redfish and IPMI), with no credentials in
    it; `manual` needs nothing and takes nothing (422 naming each field)."""
    if found := problems(body):
        raise HTTPException(422, [{"loc": ["body", field], "type": "value_error", "msg": why} for field, why in found])


@router.get("/{machine_id}/power", summary="A machine's power settings (never the password)")
async def get_power(machine_id: str, request: Request, _: Operator) -> PowerView:
    settings: Settings = request.app.state.settings
    await asyncio.to_thread(_known, settings, machine_id)
    return await asyncio.to_thread(power_view, settings, machine_id)


@router.put("/{machine_id}/power", summary="Set how a machine's power is reached: its BMC (the password is write-only)")
async def put_power(machine_id: str, body: PowerSettings, request: Request, _: Admin) -> PowerView:
    """Without a password, the stored one stays as long as the driver and address do."""
    settings: Settings = request.app.state.settings
    _complete(body)
    await asyncio.to_thread(_known, settings, machine_id)
    return await asyncio.to_thread(save_power, settings, machine_id, body)


@router.delete("/{machine_id}/power", status_code=204, summary="Forget a machine's power settings: back to manual power")
async def delete_power(machine_id: str, request: Request, _: Admin) -> Response:
    settings: Settings = request.app.state.settings
    await asyncio.to_thread(_known, settings, machine_id)
    await asyncio.to_thread(forget_power, settings, machine_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{machine_id}/power/{action}", summary="A power command (on, off, cycle, status, pxe-once) through the machine's BMC",
    responses=ANSWERS,
)
async def power_command(machine_id: str, action: _ACTION, request: Request, _: Operator) -> PowerResult:
    """Runs on the worker of the machine's site; a manual machine answers at once that a person
    must power-cycle it (state unknown)."""
    settings: Settings = request.app.state.settings
    client: Client = request.app.state.temporal
    await asyncio.to_thread(_known, settings, machine_id)
    try:
        return await client.execute_workflow(
            PowerCommandWorkflow.run, PowerRequest(machine_id=machine_id, action=action),
            id=workflow_id(machine_id), task_queue=TASK_QUEUE, execution_timeout=COMMAND_TIMEOUT,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"power {action} {machine_id}",
        )
    except WorkflowAlreadyStartedError:
        raise HTTPException(409, f"a power command on machine {machine_id} is still running: wait for its answer") from None
    except WorkflowFailureError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError):
            raise HTTPException(STATUS_OF.get(cause.type or "", 502), cause.message) from None
        raise HTTPException(502, f"the power command failed: {cause or err}") from None
