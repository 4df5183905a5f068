"""GET /v1/machines: machines listed a page at a time, from the database alone.

A page is one indexed SQL query: machines (by id) left-joined to the state, role and MAC the
control plane last recorded for them (table `machinestate`, written where a move is learnt:
activities/storage/machinestate.py says where, and what a list can show late). Filters by
cluster, state and role are applied in that query, so a page is full (or the last) whatever
the filter. `GET /v1/machines/{id}` asks the workflow itself and is always current.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_
from sqlmodel import select

from activities.domain.ids import machine_workflow_id
from activities.storage import db
from activities.storage.models import Machine, MachineState
from activities.storage.settings import Settings
from api import pages
from api.auth import Viewer

router = APIRouter(prefix="/v1/machines", tags=["machines"])
_FILTER = re.compile(r"^[a-z0-9:-]+$")
_EXAMPLE_ID = "4c4c4544-0042-3510-8052-b4c04f4e3132"  # a machine's id in the examples: its SMBIOS UUID

Row = tuple[str, str | None, str | None, str | None, str | None]  # id, cluster, state, role, mac


class MachineSummary(BaseModel):
    """One line of the machine list: the database's machine and the state last recorded for it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": _EXAMPLE_ID, "cluster": "prod", "state": "ready", "role": "worker", "mac": "52:54:00:12:34:56",
        "temporal_url": f"http://127.0.0.1:8233/namespaces/default/workflows/machine:{_EXAMPLE_ID}",
    }]})

    id: str = Field(description="the machine's id")
    cluster: str | None = Field(description="its cluster (none: not placed yet)")
    state: str | None = Field(description="its lifecycle state as last recorded (none: never booted nor started); "
                                          "GET /v1/machines/{id} asks its workflow")
    role: str | None = Field(description="its role, once admitted")
    mac: str | None = Field(description="the MAC it first booted from")
    temporal_url: str = Field(description="its workflow in the Temporal Web UI")


def rows(settings: Settings, cluster: str | None, state: str | None, role: str | None,
         after: str | None, size: int) -> list[Row]:
    """Up to `size` live machines after `after`, by id, with their recorded state: one range
    scan of the primary key, of (cluster, id), or of (state, machine_id) / (role, machine_id)."""
    joined = MachineState.machine_id == Machine.id
    if after is not None:  # on both sides: PostgreSQL does not carry a range across the join
        joined = and_(joined, MachineState.machine_id > after)
    query = (
        select(Machine.id, Machine.cluster, MachineState.state, MachineState.role, MachineState.mac)
        .join(MachineState, joined, isouter=state is None and role is None)
        .where(Machine.decommissioned_at.is_(None))
    )
    for column, value in ((Machine.cluster, cluster), (MachineState.state, state), (MachineState.role, role)):
        if value is not None:
            query = query.where(column == value)
    if after is not None:
        query = query.where(Machine.id > after)
    with db.session(settings.database_url) as s:
        return list(s.exec(query.order_by(Machine.id).limit(size)).all())


def _check_filter(name: str, value: str | None) -> None:
    if value is not None and not _FILTER.match(value):
        raise HTTPException(422, [{"loc": ["query", name], "type": "value_error",
                                   "msg": "lower-case letters, digits, ':' and '-' only"}])


@router.get(
    "",
    summary="List machines by id, a page at a time (limit, after), optionally by cluster, state and role",
    response_model=list[MachineSummary],
    responses={200: {"description": "a page; the next page's cursor in X-Next-Cursor and Link (absent on the last)"}},
)
async def list_machines(
    request: Request,
    _: Viewer,
    page_: Annotated[pages.Page, Depends(pages.page)],
    cluster: str | None = Query(None, max_length=63, description="only machines of this cluster", examples=["prod"]),
    state: str | None = Query(None, max_length=64, description="only machines in this state, e.g. ready or failed:admit",
                              examples=["ready"]),
    role: str | None = Query(None, max_length=32, description="only machines with this role", examples=["worker"]),
) -> Response:
    """One SQL query per page, off the event loop: state, role and MAC are the ones last
    recorded (activities/storage/machinestate.py), not asked of Temporal. The page is written
    as JSON here, from plain rows (the fields of MachineSummary), not through a model per row
    and FastAPI's validation of the list: most of a page's CPU was that (issue 18)."""
    settings: Settings = request.app.state.settings
    for name, value in (("cluster", cluster), ("state", state), ("role", role)):
        _check_filter(name, value)
    found = await asyncio.to_thread(rows, settings, cluster, state, role, page_.after, page_.limit + 1)
    more, found = len(found) > page_.limit, found[: page_.limit]
    response = Response(json.dumps([_summary(settings, row) for row in found]), media_type="application/json")
    pages.link_next(request, response, found[-1][0] if more else None)
    return response


def _summary(settings: Settings, row: Row) -> dict[str, str | None]:
    """A MachineSummary as JSON-ready values (its fields, in its order)."""
    machine_id, cluster, state, role, mac = row
    return {"id": machine_id, "cluster": cluster, "state": state, "role": role, "mac": mac,
            "temporal_url": settings.workflow_url(machine_workflow_id(machine_id))}
