"""Operator routes for clusters: each cluster is a database row plus its `cluster:<name>` workflow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated


from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.domain.cluster import ClusterSpec, ClusterStatus, DeletionStatus, JoinCredentials, Member
from activities.domain.operations import OperationStatus
from activities.domain.terraform import TaskStatus
from activities.domain.ids import cluster_workflow_id
from activities import tfvars
from activities.storage import db
from api import audit, pages, temporal
from api.auth import Operator, Viewer
from activities.storage.models import BootEdge, Cluster
from activities.storage.settings import Settings

router = APIRouter(prefix="/v1/clusters", tags=["clusters"])


class ClusterView(BaseModel):
    """A cluster as its workflow sees it now."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "spec": {"name": "prod", "kubernetes_version": "1.31.0", "quorum_count": 3, "join_method": "ansible"},
        "phase": "ready",
        "members": [
            {"machine_id": "4c4c4544-0042-3510-8052-b4c04f4e3132", "role": "master-prime", "ready": True,
             "node_name": "node-525400123456"},
        ],
        "held": [],
        "initialised_by": "4c4c4544-0042-3510-8052-b4c04f4e3132",
        "credentials": {"token_id": 7, "token_expires_at": "2026-12-07T09:00:00Z", "certificate_key_id": None,
                        "ca_cert_hash": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                        "minted_on": "4c4c4544-0042-3510-8052-b4c04f4e3132"},
        "credentials_error": "",
        "temporal_url": "http://127.0.0.1:8233/namespaces/default/workflows/cluster:prod",
        "tasks": [{"name": "vip", "stage": "before-bootstrap", "state": "applied",
                   "reason": "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.",
                   "outputs": {"address": "192.0.2.10", "endpoint": "192.0.2.10:6443"},
                   "last_plan": "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.", "runs": 1}],
        "endpoint": "192.0.2.10:6443",
        "failed": "",
    }]})

    spec: ClusterSpec = Field(description="what the operator asked for")
    phase: str = Field(description="forming, then ready once its master-prime ran kubeadm init; deleting")
    members: list[Member] = Field(description="admitted machines, with their roles")
    held: list[str] = Field(description="machines waiting in holding (a rule failed or the quorum is full)")
    initialised_by: str | None = Field(None, description="the master-prime that ran `kubeadm init`")
    credentials: JoinCredentials = Field(description="references only: the secrets stay sealed in the database")
    credentials_error: str = Field("", description="why the last join-token renewal failed, if it did")
    temporal_url: str = Field(description="the cluster workflow in the Temporal Web UI")
    deletion: DeletionStatus | None = Field(None, description="while it is being deleted: the step and its progress")
    tasks: list[TaskStatus] = Field(default_factory=list, description="its Terraform tasks: state, reason, "
                                    "outputs, last plan")
    endpoint: str = Field("", description="the control-plane endpoint members join: the spec's, "
                          "else a task's control_plane_endpoint output")
    failed: str = Field("", description="failed:<task> while a Terraform task waits for `tempered cluster retry`")
    operation: OperationStatus | None = Field(None, description="its day-2 operation now, else its last one "
                                              "(GET /v1/clusters/{name}/operations)")


def _view(settings: Settings, status_: ClusterStatus) -> ClusterView:
    return ClusterView(
        spec=status_.spec,
        phase=status_.phase,
        members=status_.members,
        held=status_.held,
        initialised_by=status_.initialised_by,
        credentials=status_.credentials,
        credentials_error=status_.credentials_error,
        temporal_url=settings.workflow_url(cluster_workflow_id(status_.spec.name)),
        deletion=status_.deletion,
        tasks=status_.tasks,
        endpoint=status_.spec.control_plane_endpoint or status_.endpoint or "",
        failed=next((f"failed:{t.name}" for t in status_.tasks if t.state == "failed"), ""),
        operation=status_.operation,
    )


async def _status(client: Client, name: str) -> ClusterStatus:
    return await temporal.query(temporal.cluster(client, name), ClusterStatus)


def _check_tasks(settings: Settings, spec: ClusterSpec) -> None:
    """422 before anything starts: each task's module is a directory under the module root, each
    string variable a Jinja2 template that parses (it is rendered only when the task runs)."""
    root = Path(settings.terraform_modules)
    for task in spec.terraform:
        if not (root / task.module).is_dir():
            raise HTTPException(422, f"task {task.name}: no module {task.module!r} under {root}")
        for key, value in task.variables.items():
            if isinstance(value, str) and (problem := tfvars.syntax_error(value)):
                raise HTTPException(422, f"task {task.name}: variable {key}: {problem}")


def _row_or_404(settings: Settings, name: str) -> Cluster:
    with db.session(settings.database_url) as s:
        row = s.get(Cluster, name)
    if row is None:
        raise HTTPException(404, f"no cluster named {name!r}: see GET /v1/clusters")
    return row


def _edges_into(settings: Settings, name: str) -> list[BootEdge]:
    """The edges whose policy names this cluster (an edge's cluster must exist)."""
    with db.session(settings.database_url) as s:
        return [edge for edge in s.exec(select(BootEdge)) if edge.policy.get("cluster") == name]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a cluster and start its workflow")
async def create_cluster(spec: ClusterSpec, request: Request, _: Operator) -> ClusterView:
    audit.subject(request, name=spec.name)
    settings: Settings = request.app.state.settings
    _check_tasks(settings, spec)
    client: Client = request.app.state.temporal
    if await asyncio.to_thread(_exists, settings, spec.name):
        raise HTTPException(409, f"cluster {spec.name!r} already exists")
    try:
        await temporal.start_cluster(client, ClusterStatus(spec=spec), settings.api_url)
    except WorkflowAlreadyStartedError:
        raise HTTPException(409, f"a workflow for cluster {spec.name!r} is already running") from None
    await asyncio.to_thread(_insert, settings, spec)  # only once Temporal took it
    return _view(settings, ClusterStatus(spec=spec))


def _exists(settings: Settings, name: str) -> bool:
    with db.session(settings.database_url) as s:
        return s.get(Cluster, name) is not None


def _insert(settings: Settings, spec: ClusterSpec) -> None:
    with db.session(settings.database_url) as s:
        s.add(Cluster(name=spec.name, spec=spec.model_dump()))
        s.commit()


def _names(settings: Settings, page_: pages.Page) -> list[str]:
    query = select(Cluster.name).order_by(Cluster.name).limit(page_.limit + 1)
    if page_.after is not None:
        query = query.where(Cluster.name > page_.after)
    with db.session(settings.database_url) as s:
        return list(s.exec(query).all())


@router.get("", summary="List clusters with their phase, by name, a page at a time (limit, after)",
            responses={200: {"description": "a page; the next page's cursor in X-Next-Cursor and Link (absent on the last)"}})
async def list_clusters(
    request: Request, response: Response, _: Viewer, page_: Annotated[pages.Page, Depends(pages.page)]
) -> list[ClusterView]:
    """Names from the database (off the event loop), each cluster's status from its workflow."""
    settings: Settings = request.app.state.settings
    names = await asyncio.to_thread(_names, settings, page_)
    more, names = len(names) > page_.limit, names[: page_.limit]
    client: Client = request.app.state.temporal
    statuses = await asyncio.gather(*(_status(client, name) for name in names))
    pages.link_next(request, response, names[-1] if more else None)
    return [_view(settings, s) for s in statuses]


@router.get("/{name}", summary="One cluster: spec, phase, members, held machines")
async def get_cluster(name: str, request: Request, _: Viewer) -> ClusterView:
    settings: Settings = request.app.state.settings
    await asyncio.to_thread(_row_or_404, settings, name)
    return _view(settings, await _status(request.app.state.temporal, name))


@router.delete(
    "/{name}",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Delete a cluster: decommission its members, run on-delete, destroy, remove DNS (202: under way)",
)
async def delete_cluster(name: str, request: Request, _: Operator) -> ClusterView:
    """Starts the deletion (workflows/deletion.py) and answers with the cluster as it is now
    (phase `deleting`, `deletion.progress`); a second DELETE answers the progress. The cluster
    is gone (404) once the deletion is done. 409 while a boot edge takes machines into it."""
    settings: Settings = request.app.state.settings
    await asyncio.to_thread(_row_or_404, settings, name)
    if edges := [e.name for e in await asyncio.to_thread(_edges_into, settings, name)]:
        raise HTTPException(409, f"edges {', '.join(edges)} take machines into cluster {name!r}: change their policy first")
    client: Client = request.app.state.temporal
    handle = temporal.cluster(client, name)
    try:
        return _view(settings, await temporal.update(handle, "delete", result_type=ClusterStatus))
    except WorkflowUpdateFailedError:
        from api.operations import settle_if_closed  # (api/operations imports this module)

        if not await settle_if_closed(client, name):  # refused for another reason, or the operation runs
            raise
    return _view(settings, await temporal.update(handle, "delete", result_type=ClusterStatus))
