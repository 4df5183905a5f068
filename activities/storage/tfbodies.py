"""The Terraform state store's refusals and the bodies it checks (activities/storage/tfstate.py).

Refusals carry what the routes answer (an HTTP status, a message that never quotes a body);
the checks parse a state or Terraform's lock info only as far as the store needs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

MAX_STATE_BYTES = 16 << 20  # a state body; Terraform states of thousands of resources stay far below
MAX_LOCK_BYTES = 64 << 10  # a lock info body (a few hundred bytes in practice)


class StoreError(Exception):
    """A refusal the routes turn into an HTTP status; its message never holds a body."""

    status = 400


class InvalidBody(StoreError):
    status = 400


class NotFound(StoreError):
    status = 404


class Locked(StoreError):
    """The state is locked by someone else; `info` is the holder's lock info, as Terraform sent
    it (Terraform prints it to the user who is refused)."""

    status = 423

    def __init__(self, info: dict[str, Any], message: str = "") -> None:
        super().__init__(message or f"state locked by {info.get('Who') or 'someone'} (lock ID {info.get('ID')})")
        self.info = info


class LockLost(StoreError):
    """A write named a lock that is no longer held (it was force-unlocked)."""

    status = 409


class Busy(StoreError):
    """Writers kept taking the next version number first: try again (Terraform's client retries a 503)."""

    status = 503


def parse_state(body: bytes) -> dict[str, Any]:
    """The state as JSON, or InvalidBody saying why without quoting it."""
    try:
        state = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise InvalidBody(f"the state is not JSON{where}") from None
    if not isinstance(state, dict):
        raise InvalidBody("the state is not a JSON object")
    return state


class LockInfo(BaseModel):
    """Terraform's lock info (statemgr.LockInfo), as its http backend client sends it. Checked
    field by field before it is stored: the operator routes show it back as strings, so a lock
    holding a number there would break every listing of states."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ID: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    Operation: str = ""
    Info: str = ""
    Who: str = ""
    Version: str = ""
    Created: str = ""
    Path: str = ""


def parse_lock(body: bytes) -> dict[str, Any]:
    """Terraform's lock info (ID, Operation, Info, Who, Version, Created, Path), every field a
    string; it must carry an ID, the one later writes and the UNLOCK name. InvalidBody names the
    fields that are wrong, never their values."""
    if len(body) > MAX_LOCK_BYTES:
        raise InvalidBody(f"the lock info is larger than {MAX_LOCK_BYTES} bytes")
    try:
        info = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidBody("the lock info is not JSON") from None
    if not isinstance(info, dict) or not isinstance(info.get("ID"), str) or not info["ID"].strip():
        raise InvalidBody("the lock info has no ID: send Terraform's lock info JSON, with its ID")
    try:
        return LockInfo.model_validate(info).model_dump(exclude_unset=True)
    except ValidationError as err:
        wrong = ", ".join(sorted({".".join(map(str, e["loc"])) or "(body)" for e in err.errors()}))
        raise InvalidBody(f"the lock info is not Terraform's: {wrong} must be absent or a string "
                          "(fields: ID, Operation, Info, Who, Version, Created, Path)") from None


def md5_hex(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()
