"""Operator routes for a cluster's day-2 operations (workflows/operation.py): start a rolling
reboot, an upgrade or a scale down; see the current (or last) one; pause, resume or abort it.

The cluster workflow's `start_operation` Update starts it (one at a time); pause, resume and abort
are Updates of the operation's own workflow (`operation:<cluster>:<n>`). A refusal answers 409
when the cluster is busy (another operation, a deletion) and 422 when the request cannot be done
as asked (a quorum breach, a version that skips a minor, a machine that is not a member).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import ConfigDict, Field
from temporalio.client import Client, WorkflowUpdateFailedError

from activities.domain.cluster import ClusterStatus
from activities.domain.operations import OperationRequest, OperationStatus
from activities.storage.settings import Settings
from api import temporal
from api.auth import Operator, Viewer
from api.clusters import _row_or_404
from workflows.operation_plan import ENDED, REFUSED

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
    """The cluster's current or last operation (404: it never had one)."""
    _row_or_404(request.app.state.settings, name)
    cluster = await temporal.query(temporal.cluster(request.app.state.temporal, name), ClusterStatus)
    if cluster.operation is None:
        raise HTTPException(404, f"cluster {name!r} has had no operation: start one with "
                                 f"POST /v1/clusters/{name}/operations")
    return cluster.operation


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
    _row_or_404(settings, name)
    handle = temporal.cluster(request.app.state.temporal, name)
    try:
        op = await temporal.update(handle, "start_operation", body, result_type=OperationStatus)
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        message = getattr(cause, "message", None) or str(cause or err)
        code = 422 if getattr(cause, "type", "") == REFUSED else 409
        raise HTTPException(code, message) from None
    return _view(settings, op)


@router.get("/{name}/operations", summary="The cluster's current operation, or its last one")
async def get_operation(name: str, request: Request, _: Viewer) -> OperationView:
    return _view(request.app.state.settings, await _current(request, name))


@router.post(
    "/{name}/operations/{action}",
    summary="Pause (after the node in hand), resume (the failed node again) or abort the current operation",
    responses={409: {"description": "the operation is not in a state that allows it (e.g. already ended)"}},
)
async def act_on_operation(name: str, action: Action, request: Request, _: Operator) -> OperationView:
    """An abort cancels the node in hand and uncordons every node the operation cordoned."""
    op = await _current(request, name)
    if op.state in ENDED:  # its workflow has completed: it takes no Update
        raise HTTPException(409, f"{op.workflow_id} is {op.state}: nothing to {action}; "
                                 f"start another with POST /v1/clusters/{name}/operations")
    client: Client = request.app.state.temporal
    handle = client.get_workflow_handle(op.workflow_id)
    return _view(request.app.state.settings, await temporal.update(handle, action, result_type=OperationStatus))
