"""Operator tokens: named, with a role and an optional expiry; created, listed and revoked by admins.

A token is shown once, in the answer that creates it; the database keeps its SHA-256 only
(api/auth.py). Revoking deletes it, so the next call made with it is a 401. Names are unique
(a partial unique index on the token table, so two admins racing for one name cannot both win).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from activities.domain.ids import DnsLabel
from activities.storage import db
from activities.storage.models import Token
from activities.storage.settings import Settings
from api import audit
from api.auth import BOOTSTRAP, ROLES, Admin, find_token, issue_token

MAX_LIFETIME = 10 * 365 * 86400  # seconds: a token that should outlive this should not expire at all
router = APIRouter(prefix="/v1/tokens", tags=["tokens and audit"])
Role = Literal["viewer", "operator", "admin"]


class TokenRequest(BaseModel):
    """A named operator token to issue."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "ci-deploy", "role": "operator", "expires_in_seconds": 2592000},
    ]})

    name: DnsLabel = Field(description="unique; 'admin' is the bootstrap token's", examples=["ci-deploy"])
    role: Role = Field(description="viewer: reads; operator: also clusters, machines, rules, fragments; "
                       "admin: also tokens, DNS settings, edges")
    expires_in_seconds: int | None = Field(None, ge=60, le=MAX_LIFETIME, description="none: it never expires",
                                           examples=[2592000])


_TOKEN_EXAMPLE = {
    "name": "ci-deploy", "role": "operator", "created_at": "2026-12-06T09:00:00Z",
    "expires_at": "2027-01-05T09:00:00Z", "expired": False,
}


class TokenView(BaseModel):
    """A token as listed: never the token itself (only its digest is kept)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_TOKEN_EXAMPLE]})

    name: str = Field(description="unique name; 'admin' is the bootstrap token")
    role: Role = Field(description="viewer, operator or admin")
    created_at: datetime = Field(description="when it was issued (UTC)")
    expires_at: datetime | None = Field(description="when it stops working; null: never")
    expired: bool = Field(description="true once expires_at has passed (it admits nothing)")


class TokenCreated(TokenView):
    """A token just issued: the only answer that carries the token."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {**_TOKEN_EXAMPLE, "token": "q8Yc1vM2kR7uZ0tH4xNw3eLp9sJd6fBa5gVi2oUy1Tc"},
    ]})

    token: str = Field(description="the token itself, shown this once")


def _view(row: Token) -> TokenView:
    expires = row.expires_at.replace(tzinfo=timezone.utc) if row.expires_at else None
    created = row.created_at.replace(tzinfo=timezone.utc)
    expired = expires is not None and expires < datetime.now(timezone.utc)
    return TokenView(name=row.name, role=row.kind, created_at=created, expires_at=expires, expired=expired)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a named token with a role; it is shown once")
def create_token(body: TokenRequest, request: Request, _: Admin) -> TokenCreated:
    audit.subject(request, name=body.name)
    settings: Settings = request.app.state.settings
    taken = f"a token named {body.name!r} already exists: revoke it first, or choose another name"
    if body.name == BOOTSTRAP:
        raise HTTPException(409, taken)
    ttl = timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    try:
        token = issue_token(settings, body.role, ttl=ttl, name=body.name)
    except IntegrityError:
        raise HTTPException(409, taken) from None
    row = find_token(settings, token, ROLES)
    if row is None:  # an admin revoked it in the instant between
        raise HTTPException(409, f"token {body.name!r} was revoked as it was created")
    return TokenCreated(**_view(row).model_dump(), token=token)


@router.get("", summary="The operator tokens: name, role, expiry (never the tokens themselves)")
def list_tokens(request: Request, _: Admin) -> list[TokenView]:
    with db.session(request.app.state.settings.database_url) as s:
        rows = s.exec(select(Token).where(col(Token.kind).in_(ROLES)).order_by(Token.name, Token.created_at))
        return [_view(row) for row in rows]


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke a token: its next call is a 401")
def revoke_token(name: str, request: Request, _: Admin) -> Response:
    if name == BOOTSTRAP:
        raise HTTPException(
            409, "the bootstrap admin token is not revoked through the API: it is the credential of last resort, "
            "kept in $TEMPERED_HOME/admin-token on the API's host",
        )
    with db.session(request.app.state.settings.database_url) as s:
        gone = s.exec(delete(Token).where(col(Token.kind).in_(ROLES), Token.name == name))
        s.commit()
    if gone.rowcount == 0:
        raise HTTPException(404, f"no token named {name!r}: see GET /v1/tokens")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
