"""The audit trail: every mutating operator call, who made it and what it was answered.

One ASGI middleware records them all, so that no route can forget to: a POST, PUT, PATCH or
DELETE on a route that requires an operator role (api/auth.py `requires`) is written with the
caller's token name and role (none when the call was refused before its token was checked),
the method, the route template and its path parameters, and the status, refusals included. The row is written
before the answer leaves, so a client that has its answer finds the call in `GET /v1/audit`.
A route that creates a resource named in its body (POST /v1/tokens, /v1/clusters, ...) names it
with `subject()`: its params then say which one. Bodies, query strings and tokens are never
recorded: what a call carried may be a secret. A GET that answers a secret (a password, a
Terraform state's body) is recorded too, like a mutating call: its route is marked with
`reads_secret`, so that who read which secret when is in the trail. A call no route answers with that method (a 404,
a 405) was no operator call. Machine- and edge-facing routes need no operator role, so they are
not operator calls here.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, delete, select

from activities.storage import db
from activities.storage.models import AuditEntry
from activities.storage.settings import Settings
from api import pages
from api.auth import Operator

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READS = frozenset({"GET"})  # recorded only on routes marked `reads_secret`
RETENTION = timedelta(days=365)  # older entries are purged, a bounded batch per entry written
PURGE_BATCH = 500
MAX_PARAM = 200  # a path parameter is recorded up to this many characters

log = logging.getLogger("tempered.api.audit")
router = APIRouter(prefix="/v1/audit", tags=["tokens and audit"])


def route_role(route: Any) -> str | None:
    """The operator role a route requires, found on its dependencies; None for routes that are
    not operator routes (health, machine- and edge-facing)."""
    dependant = getattr(route, "dependant", None)
    pending = list(dependant.dependencies) if dependant is not None else []
    while pending:
        dependency = pending.pop()
        if role := getattr(dependency.call, "role", None):
            return role
        pending.extend(dependency.dependencies)
    return None


def subject(request: Request, **names: str | None) -> None:
    """Name what a create route made (`name="ci-deploy"`), as its path parameters would: the
    audit entry's params. Only names and ids go here, never a body's other fields."""
    request.state.audit_subject = {key: value for key, value in names.items() if value}


def reads_secret(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a GET route that answers a secret: its calls go in the audit trail (put it below
    the route decorator, so the route's endpoint carries the mark)."""
    endpoint.reads_secret = True  # type: ignore[attr-defined]
    return endpoint


def _audited(scope) -> bool:
    """A mutating call, or a read of a secret (known once routed: its endpoint is marked)."""
    return scope["method"] in MUTATING or getattr(getattr(scope.get("route"), "endpoint", None), "reads_secret", False)


class AuditTrail:
    """ASGI middleware writing one `AuditEntry` per mutating operator call or read of a secret."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING | READS:
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})  # where the role check leaves the caller (api/auth.py)
        recorded = False

        async def recording_send(message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                await _record(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except Exception:
            if not recorded:  # the server answers 500 outside this middleware
                recorded = True
                await _record(scope, 500)
            raise


async def _record(scope, status: int) -> None:
    route = scope.get("route")
    if not _audited(scope) or route_role(route) is None or scope["method"] not in route.methods:  # a 405: the router's
        return  # partial match on a route of another method; it called nothing
    name, role = scope["state"].get("actor", (None, None))
    if name is None and status == 401:  # no token, or a wrong one: anyone can send those, so they
        return  # are counted (tempered_api_requests_total{code="401"}), not stored for a year
    params = scope.get("path_params", {}) | scope["state"].get("audit_subject", {})
    entry = AuditEntry(
        actor=name, role=role, method=scope["method"], route=route.path, status=status,
        params={key: str(value)[:MAX_PARAM] for key, value in params.items()},
    )
    settings: Settings = scope["app"].state.settings
    try:
        await anyio.to_thread.run_sync(_write, settings, entry)
    except Exception:  # the call itself happened: answer it, and say loudly that its record is missing
        log.exception("could not record %s %s (%s) in the audit trail", entry.method, entry.route, status)


def _write(settings: Settings, entry: AuditEntry) -> None:
    with db.session(settings.database_url) as s:
        old = select(AuditEntry.id).where(col(AuditEntry.at) < entry.at - RETENTION).limit(PURGE_BATCH)
        s.exec(delete(AuditEntry).where(col(AuditEntry.id).in_(old.scalar_subquery())))
        s.add(entry)
        s.commit()


class AuditView(BaseModel):
    """One mutating operator call (or read of a secret): who made it, what it asked, when, and the answer's status."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "at": "2026-12-06T09:12:03Z", "actor": "ci-deploy", "role": "operator", "method": "POST",
        "route": "/v1/machines/{machine_id}/retry", "params": {"machine_id": "6f1c0f6e-3d0b-4c55-9c39-7a0e8f1d2b44"},
        "status": 202,
    }]})

    at: datetime = Field(description="when the call was answered (UTC)")
    actor: str | None = Field(description="the token's name; null when refused before the token was checked")
    role: str | None = Field(description="the token's role, if known")
    method: str = Field(description="POST, PUT, PATCH or DELETE; GET for a read of a secret")
    route: str = Field(description="the route template, e.g. /v1/clusters/{name}")
    params: dict[str, str] = Field(
        description="the route's path parameters, and what a create route made (e.g. {\"name\": \"ci-deploy\"})"
    )
    status: int = Field(description="the HTTP status of the answer")


@router.get(
    "", summary="Mutating operator calls, newest first: who, what, when and the answer, a page at a time",
    responses={200: {"description": "a page; the next page's cursor in X-Next-Cursor and Link (absent on the last)"}},
)
def list_audit(
    request: Request,
    response: Response,
    _: Operator,
    page_: Annotated[pages.Page, Depends(pages.page)],
    since: Annotated[datetime | None, Query(description="only calls at or after this time (ISO 8601)")] = None,
    actor: Annotated[str | None, Query(max_length=63, description="only calls made with this token name")] = None,
) -> list[AuditView]:
    """Newest first by id: the cursor is the last entry's id, the next page the older ones."""
    query = select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(page_.limit + 1)
    if (before := pages.int_key(page_)) is not None:
        query = query.where(col(AuditEntry.id) < before)
    if since is not None:
        query = query.where(AuditEntry.at >= _utc(since))
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    with db.session(request.app.state.settings.database_url) as s:
        rows = list(s.exec(query))
    pages.link_next(request, response, rows[page_.limit - 1].id if len(rows) > page_.limit else None)
    return [AuditView.model_validate(row, from_attributes=True) for row in rows[: page_.limit]]


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC, as entries are stored (a time without an offset is taken as UTC)."""
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
