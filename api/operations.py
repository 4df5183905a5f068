"""Operator routes for a cluster's day-2 operations (workflows/operation.py): start a rolling
reboot, an upgrade or a scale down; see the current (or last) one; pause, resume or abort it.

The cluster workflow's `start_operation` Update starts it (one at a time); pause, resume and abort
are Updates of the operation's own workflow (`operation:<cluster>:<n>`). A refusal answers 409
when the cluster is busy (another operation, a deletion) and 422 when the request cannot be done
as asked (a quorum breach, a version that skips a minor, a machine that is not a member).

The cluster keeps a compact copy of its operation (no nodes); GET asks the operation's own workflow
for the whole status (a query answers on a closed workflow too). An operation whose workflow ended
without telling the cluster (terminated in the Web UI, its last signal lost) would leave the cluster
busy forever: `settle_if_closed` sees its workflow closed and tells the cluster it was aborted.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import ConfigDict, Field
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.service import RPCError

from activities.domain.cluster import ClusterStatus
from activities.domain.operations import OperationRequest, OperationStatus
from activities.storage import db
from activities.storage.models import Cluster
from activities.storage.settings import Settings
from api import temporal
from api.auth import Operator, Viewer
from api.clusters import _row_or_404
from workflows.operation_plan import BUSY, ENDED, REFUSED, compact, running

router = APIRouter(prefix="/v1/clusters", tags=["operations"])
Action = Literal["pause", "resume", "abort"]


class OperationView(OperationStatus):
    """An operation as it stands, with its workflow's page in the Temporal Web UI."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "workflow_id": "operation:prod:2", "kind": "rolling-reboot", "request": {"kind": "rolling-reboot", "batch": 2},
        "state": "running", "progress": "draining node-525400123457 (master, 2 of 5)",
        "nodes": [
            {"machine_id": "52:54:00:12:34:56", "node_name": "node-525400123456", "role": "master-prime",
             "step": "done", "reason": ""},
            {"machine_id": "52:54:00:12:34:57", "node_name": "node-525400123457", "role": "master",
             "step": "draining", "reason": ""},
        ],
        "started_at": "2026-12-06T15:00:00Z", "error": "",
        "temporal_url": "http://127.0.0.1:8233/namespaces/default/workflows/operation:prod:2",
    }]})

    temporal_url: str = Field(description="the operation's workflow in the Temporal Web UI")


def _view(settings: Settings, op: OperationStatus) -> OperationView:
    return OperationView(**op.model_dump(), temporal_url=settings.workflow_url(op.workflow_id))


async def _current(request: Request, name: str) -> OperationStatus:
    """The cluster's current or last operation, its compact copy (404: it never had one)."""
    await asyncio.to_thread(_row_or_404, request.app.state.settings, name)
    cluster = await temporal.query(temporal.cluster(request.app.state.temporal, name), ClusterStatus)
    if cluster.operation is None:
        raise HTTPException(404, f"cluster {name!r} has had no operation: start one with "
                                 f"tempered cluster reboot|upgrade|scale-down {name} "
                                 f"(POST /v1/clusters/{name}/operations)")
    return cluster.operation


async def _full(client: Client, op: OperationStatus) -> OperationStatus:
    """The whole status (every node) from the operation's own workflow; the cluster's compact copy
    if it cannot answer (no worker, its history gone past retention)."""
    try:
        full = await temporal.query(client.get_workflow_handle(op.workflow_id), OperationStatus)
    except Exception:  # noqa: BLE001 (any failure to answer: show what the cluster knows)
        return op
    if op.state in ENDED and full.state not in ENDED:  # its workflow was terminated: the cluster's word is last
        full.state, full.progress, full.error = op.state, op.progress, op.error
    return full


async def settle_if_closed(client: Client, cluster: str) -> str:
    """If the cluster says an operation runs but it has ended, tell the cluster (`operation_progress`)
    and answer how ("done", "aborted", or how its workflow closed: "TERMINATED"); "" otherwise.
    An operation that ended by itself may still be delivering its last signal (an operator who
    saw it end and starts the next is quicker): the cluster gets the same last word from here.
    One whose workflow was closed behind its back (terminated in the Web UI) is marked aborted.
    Used wherever a running operation refuses something (start, pause/resume/abort, DELETE)."""
    status = await temporal.query(temporal.cluster(client, cluster), ClusterStatus)
    if (op := running(status)) is None:
        return ""
    handle = client.get_workflow_handle(op.workflow_id)
    own = await _own_status(handle)
    if own is not None and own.state in ENDED:
        await temporal.cluster(client, cluster).signal("operation_progress", compact(own))
        return own.state
    try:
        described = await handle.describe(rpc_timeout=temporal.ANSWER_TIMEOUT)
    except RPCError:
        return ""  # cannot tell: leave the cluster as it is
    if described.status in (None, WorkflowExecutionStatus.RUNNING):
        return ""
    how = described.status.name
    ended = op.model_copy(deep=True)
    ended.state, ended.error = "aborted", f"its workflow was {how} (e.g. terminated in the Web UI)"
    ended.progress = f"ended: {ended.error}; it was {op.progress or op.state}"
    await temporal.cluster(client, cluster).signal("operation_progress", compact(ended))
    return how


async def _own_status(handle) -> OperationStatus | None:
    """The operation's status from its own workflow, None if it cannot answer."""
    try:
        return await temporal.query(handle, OperationStatus)
    except Exception:  # noqa: BLE001 (no answer: the caller looks at how the workflow closed instead)
        return None


def _persist_version(settings: Settings, name: str, version: str) -> None:
    """An accepted upgrade's version into the Cluster row's spec too (the cluster workflow has it
    already): GET /v1/clusters/{name} and rendering read the row."""
    with db.session(settings.database_url) as s:
        row = s.get(Cluster, name)
        if row is None:
            return
        row.spec = {**row.spec, "kubernetes_version": version}
        s.add(row)
        s.commit()


@router.post(
    "/{name}/operations", status_code=status.HTTP_202_ACCEPTED,
    summary="Start a rolling reboot, an upgrade or a scale down of the cluster (202: under way)",
    responses={409: {"description": "another operation runs (named), or the cluster is being deleted"},
               422: {"description": "it would break quorum, skip a minor version, or names a non-member"}},
)
async def start_operation(name: str, body: OperationRequest, request: Request, _: Operator) -> OperationView:
    """Control-plane members first, one at a time and never below quorum, then workers `batch`
    at a time; an upgrade sets the cluster's kubernetes_version first. Follow it with GET."""
    settings: Settings = request.app.state.settings
    await asyncio.to_thread(_row_or_404, settings, name)
    client: Client = request.app.state.temporal
    handle = temporal.cluster(client, name)
    for last in (False, True):
        try:
            op = await temporal.update(handle, "start_operation", body, result_type=OperationStatus)
            break
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            kind = getattr(cause, "type", "")
            if not last and kind == BUSY and await settle_if_closed(client, name):
                continue  # the operation it named had ended unseen: the cluster knows now, try once more
            message = getattr(cause, "message", None) or str(cause or err)
            raise HTTPException(422 if kind == REFUSED else 409, message) from None
    if body.kind == "upgrade" and body.kubernetes_version:
        await asyncio.to_thread(_persist_version, settings, name, body.kubernetes_version)
    return _view(settings, op)


@router.get("/{name}/operations", summary="The cluster's current operation, or its last one")
async def get_operation(name: str, request: Request, _: Viewer) -> OperationView:
    """Every node's step, from the operation's own workflow (the cluster keeps a compact copy)."""
    op = await _full(request.app.state.temporal, await _current(request, name))
    return _view(request.app.state.settings, op)


@router.post(
    "/{name}/operations/{action}",
    summary="Pause (after the node in hand), resume (the failed node again) or abort the current operation",
    responses={409: {"description": "the operation is not in a state that allows it (e.g. already ended)"}},
)
async def act_on_operation(name: str, action: Action, request: Request, _: Operator) -> OperationView:
    """An abort cancels the node in hand and uncordons every node the operation cordoned."""
    op = await _current(request, name)
    client: Client = request.app.state.temporal
    if op.state not in ENDED and (how := await settle_if_closed(client, name)):
        ended = how if how in ENDED else f"ended: its workflow was {how} (e.g. terminated in the Web UI)"
        raise HTTPException(409, f"{op.workflow_id} is {ended}: nothing to {action}; "
                                 f"start another with POST /v1/clusters/{name}/operations")
    if op.state in ENDED:  # its workflow has completed: it takes no Update
        raise HTTPException(409, f"{op.workflow_id} is {op.state}: nothing to {action}; "
                                 f"start another with POST /v1/clusters/{name}/operations")
    handle = client.get_workflow_handle(op.workflow_id)
    return _view(request.app.state.settings, await temporal.update(handle, action, result_type=OperationStatus))
