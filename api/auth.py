"""Bearer tokens: the admin token created at first start, and the check on operator routes.

Tokens are random, shown once (the admin token lives only in `$TEMPERED_HOME/admin-token`, mode
0600) and stored as SHA-256 digests, so a copy of the database does not hand out access. Expired
tokens are purged as new ones are issued (a bounded batch each time), so the table does not grow
with every boot.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import col, delete, select

from activities.storage import db
from activities.storage.models import Token
from activities.storage.settings import Settings

OPERATOR_KINDS = ("admin", "operator")
PURGE_BATCH = 500  # expired tokens removed per token issued: bounded work, more than are ever issued
_bearer = HTTPBearer(auto_error=False, description="The admin token from $TEMPERED_HOME/admin-token")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_admin_token(settings: Settings) -> str:
    """Return the admin token, creating it (file and digest) on the very first start."""
    path = settings.admin_token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        token = secrets.token_urlsafe(32)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    token = path.read_text().strip()
    with db.session(settings.database_url) as s:
        if s.exec(select(Token).where(Token.digest == digest(token))).first() is None:
            s.add(Token(kind="admin", digest=digest(token), name="admin"))
            s.commit()
    return token


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


def bearer(kinds: tuple[str, ...], what: str):
    """A FastAPI dependency admitting live tokens of `kinds`; `what` names the token in errors."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Token:
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
                status.HTTP_401_UNAUTHORIZED, "invalid or expired token", headers={"WWW-Authenticate": "Bearer"}
            )
        return row

    return dependency


Operator = Annotated[Token, Depends(bearer(OPERATOR_KINDS, "token"))]
Edge = Annotated[Token, Depends(bearer(("edge",), "edge token"))]
BootToken = Annotated[Token, Depends(bearer(("boot",), "this boot's token from the kernel command line"))]
