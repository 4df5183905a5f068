"""Bearer tokens: the admin token created at first start, and the role check on operator routes.

Tokens are random, shown once (the admin token lives only in `$TEMPERED_HOME/admin-token`, mode
0600) and stored as SHA-256 digests, so a copy of the database does not hand out access. Expired
tokens are purged as new ones are issued (a bounded batch each time), so the table does not grow
with every boot.

Operator tokens carry a role, stored as the token's kind: viewer (reads), operator (clusters,
machines, rules, fragments), admin (tokens, DNS settings and their secrets, edges). Each route
names the least role it needs (`Viewer`, `Operator`, `Admin`); a higher role passes. The
bootstrap admin token is a token named "admin" with the admin role.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from activities.storage import db
from activities.storage.models import Token
from activities.storage.settings import Settings

ROLES = ("viewer", "operator", "admin")  # each role may do what the ones before it may
BOOTSTRAP = "admin"  # the name of the admin token in $TEMPERED_HOME/admin-token
PURGE_BATCH = 500  # expired tokens removed per token issued: bounded work, more than are ever issued
_bearer = HTTPBearer(
    auto_error=False,
    description="An operator token ('tempered token create'; the bootstrap admin token is in "
    "$TEMPERED_HOME/admin-token), or an edge's or a boot's own token on the routes they call",
)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_admin_token(settings: Settings) -> str:
    """Return the admin token, creating it (file and digest) on the very first start. Several
    processes may start on one fresh home at once (an API and its unix-socket twin): the file is
    linked into place (one of them wins, the others read its token) and the digest row is
    inserted once (a duplicate from a twin is the same token)."""
    path = settings.admin_token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _write_new_token(path)
    token = path.read_text().strip()
    with db.session(settings.database_url) as s:
        if s.exec(select(Token).where(Token.digest == digest(token))).first() is None:
            s.add(Token(kind="admin", digest=digest(token), name=BOOTSTRAP))
            try:
                s.commit()
            except IntegrityError:  # a twin process inserted the same digest first
                s.rollback()
    return token


def _write_new_token(path: Path) -> None:
    """A new admin token in `path` (0600), unless another process created it meanwhile."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)  # atomic, and fails if the file exists: the first one wins
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def issue_token(settings: Settings, kind: str, ttl: timedelta | None = None, **fields) -> str:
    """Create a random token of `kind`, store its digest, and return it (the only copy)."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    expires = now + ttl if ttl else None
    with db.session(settings.database_url) as s:
        _purge_expired(s, now)
        s.add(Token(kind=kind, digest=digest(token), expires_at=expires, **fields))
        s.commit()
    return token


def _purge_expired(s, now: datetime) -> None:
    """Delete up to PURGE_BATCH expired tokens (they admit nothing; a boot issues one each)."""
    expired = select(Token.id).where(col(Token.expires_at) < now).limit(PURGE_BATCH)  # NULL never expires
    s.exec(delete(Token).where(col(Token.id).in_(expired.scalar_subquery())))


def find_token(settings: Settings, token: str, kinds: tuple[str, ...]) -> Token | None:
    """The live token of one of `kinds` whose digest matches, if any."""
    wanted = digest(token)
    with db.session(settings.database_url) as s:
        row = s.exec(select(Token).where(Token.digest == wanted)).first()
    if row is None or row.kind not in kinds:
        return None
    if row.expires_at is not None and row.expires_at.replace(tzinfo=timezone.utc) < datetime.now(timezone.utc):
        return None
    return row


def _authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None,
                  kinds: tuple[str, ...], what: str) -> Token:
    """The live token of one of `kinds` the request carries, or a 401 that says what to send."""
    settings: Settings = request.app.state.settings
    if credentials is None or credentials.scheme.lower() != "bearer":
        hint = f" (the admin token is in {settings.admin_token_file})" if "admin" in kinds else ""
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"missing bearer token: send 'Authorization: Bearer <{what}>'{hint}",
            headers={"WWW-Authenticate": "Bearer"},
        )
    row = find_token(settings, credentials.credentials, kinds)
    if row is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid, revoked or expired token", headers={"WWW-Authenticate": "Bearer"}
        )
    return row


def bearer(kinds: tuple[str, ...], what: str):
    """A FastAPI dependency admitting live tokens of `kinds`; `what` names the token in errors."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Token:
        return _authenticate(request, credentials, kinds, what)

    return dependency


def requires(role: str):
    """A FastAPI dependency admitting operator tokens of `role` or above: 401 without a live
    token, 403 naming the role needed. It leaves the caller on `request.state.actor` for the
    audit trail (api/audit.py), which finds the route's role on the dependency's `role`."""
    needed = ROLES.index(role)

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Token:
        row = _authenticate(request, credentials, ROLES, "token")
        request.state.actor = (row.name, row.kind)
        if ROLES.index(row.kind) < needed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this needs the {role} role; token {row.name!r} has the {row.kind} role",
            )
        return row

    dependency.role = role  # type: ignore[attr-defined]
    return dependency


Viewer = Annotated[Token, Depends(requires("viewer"))]
Operator = Annotated[Token, Depends(requires("operator"))]
Admin = Annotated[Token, Depends(requires("admin"))]
Edge = Annotated[Token, Depends(bearer(("edge",), "edge token"))]
BootToken = Annotated[Token, Depends(bearer(("boot",), "this boot's token from the kernel command line"))]
