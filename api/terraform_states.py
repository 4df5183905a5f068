"""The state store for operators (bearer tokens): states and their versions, rollback,
force-unlock, and the per-cluster credentials a site's own `terraform` uses.

Listing states and versions needs a viewer (no bodies); showing a version's body needs an admin
(a state holds the secrets of its resources), as do the credentials; both reads go in the
audit trail (`audit.reads_secret`: who read which, never what). Rolling back and
force-unlocking are operator calls, in the audit trail (api/audit.py) with the released lock's
holder. Terraform itself never calls these routes: it speaks the http backend
(api/terraform_state.py) with the cluster's basic-auth credentials.
"""

from __future__ import annotations

from datetime import datetime
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from activities.domain.ids import DnsLabel
from activities.storage import tfcredentials, tfstate
from activities.storage.settings import Settings
from api import audit
from api.auth import Admin, Operator, Viewer
from api.requests import app_settings
from api.terraform_state import PREFIX as BACKEND_PREFIX

router = APIRouter(prefix="/v1/terraform", tags=["terraform states"])
_T = TypeVar("_T")

_LOCK_EXAMPLE = {
    "ID": "0b6f0c53-41d4-2b4c-1f7e-5a3d2c9e8f10", "Operation": "OperationTypeApply", "Info": "",
    "Who": "tempered@worker-1", "Version": "1.15.5", "Created": "2026-12-06T12:00:00.123456Z", "Path": "",
}
_VERSION_EXAMPLE = {
    "cluster": "prod", "name": "vip", "version": 3, "size": 1873, "md5": "9e107d9d372bb6826bd81d3542a419d6",
    "serial": 4, "lineage": "3f0b8c2e-7a71-4d5e-9d43-0c1c5e8a9b12", "deleted": False,
    "written_by": "tfstate-prod (tempered@worker-1)", "note": "", "created_at": "2026-12-06T12:00:03Z",
}


class LockView(BaseModel):
    """Who holds a state's lock: the lock info Terraform sent with its LOCK."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [_LOCK_EXAMPLE]})

    ID: str = Field(description="the lock ID (what `terraform force-unlock` takes)")
    Operation: str = Field(default="", description="what Terraform was doing, e.g. OperationTypeApply")
    Who: str = Field(default="", description="user@host of the Terraform run")
    Created: str = Field(default="", description="when Terraform took the lock")
    Info: str = Field(default="", description="extra information Terraform attached")
    Version: str = Field(default="", description="the Terraform version that took it")
    Path: str = Field(default="", description="the state path, when Terraform sets one")


class VersionView(BaseModel):
    """One version of a state, without its body."""

    model_config = ConfigDict(json_schema_extra={"examples": [_VERSION_EXAMPLE]})

    cluster: str = Field(description="the cluster the state belongs to")
    name: str = Field(description="the state's name (the Terraform task's)")
    version: int = Field(description="1, 2, ...: every write adds one")
    size: int = Field(description="bytes of the state body")
    md5: str = Field(description="hex MD5 of the body (Content-MD5 carries it in base64)")
    serial: int | None = Field(default=None, description="the state's own serial")
    lineage: str | None = Field(default=None, description="the state's lineage (fixed when it was first created)")
    deleted: bool = Field(description="a DELETE of the state: it had no body from here on")
    written_by: str = Field(description="the basic-auth user (and Terraform's user@host), or token:<name> for a rollback")
    note: str = Field(description="e.g. 'rollback to version 2'")
    created_at: datetime = Field(description="when it was written (UTC)")


class VersionBody(VersionView):
    """One version with its body: the state as Terraform wrote it (it holds secrets)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**_VERSION_EXAMPLE, "state": '{"version": 4, ...}'}]})

    state: str = Field(description="the state body, exactly as stored (JSON text; empty for a deletion)")


class StateView(BaseModel):
    """A state: its current version, how many it has, and its lock."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "cluster": "prod", "name": "vip", "versions": 3, "current": _VERSION_EXAMPLE, "lock": _LOCK_EXAMPLE,
    }]})

    cluster: str = Field(description="the cluster the state belongs to")
    name: str = Field(description="the state's name (the Terraform task's)")
    versions: int = Field(description="how many versions it has")
    current: VersionView = Field(description="its newest version")
    lock: LockView | None = Field(default=None, description="who holds its lock; null when unlocked")


class Credentials(BaseModel):
    """The basic-auth credentials that open one cluster's states, and where they are."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "cluster": "prod", "username": "tfstate-prod", "password": "Jw9c0q2bT1y8xV4kP7rN3aE6sD5fG0hL2mZ8uQ1iO4c",
        "address": "https://tempered.example:8000/v1/terraform/state/prod/",
    }]})

    cluster: str = Field(description="the cluster whose states they open (no other's)")
    username: str = Field(description="the http backend's username (TF_HTTP_USERNAME)")
    password: str = Field(description="the http backend's password (TF_HTTP_PASSWORD)")
    address: str = Field(description="the states' address prefix: append the state's name")


_settings = app_settings


def _version(meta: tfstate.VersionMeta) -> VersionView:
    return VersionView.model_validate(meta, from_attributes=True)


async def _run(request: Request, fn: Callable[..., _T], *args: Any) -> _T:
    """A store call off the event loop, its refusals as HTTP answers (409 names the holder)."""
    try:
        return await anyio.to_thread.run_sync(fn, _settings(request), *args)
    except tfstate.Locked as err:
        who = err.info.get("Who") or "someone"
        raise HTTPException(409, f"the state is locked by {who} (lock ID {err.info.get('ID')}): wait for it, "
                            "or force-unlock it if that run is gone") from None
    except tfstate.StoreError as err:
        raise HTTPException(err.status, str(err)) from None


@router.get("/states", summary="Every Terraform state: versions, current size and serial, lock holder")
async def list_states(request: Request, _: Viewer) -> list[StateView]:
    states = await _run(request, tfstate.list_states)
    return [StateView(cluster=s.cluster, name=s.name, versions=s.versions, current=_version(s.current),
                      lock=LockView.model_validate(s.lock) if s.lock else None) for s in states]


@router.get("/states/{cluster}/{name}/versions", summary="The versions of one state, oldest first (no bodies)")
async def list_versions(cluster: DnsLabel, name: DnsLabel, request: Request, _: Viewer) -> list[VersionView]:
    return [_version(meta) for meta in await _run(request, tfstate.versions, cluster, name)]


@router.get("/states/{cluster}/{name}/versions/{version}",
            summary="One version with its body (admin: a state holds its resources' secrets)")
@audit.reads_secret
async def show_version(cluster: DnsLabel, name: DnsLabel, version: int, request: Request, _: Admin) -> VersionBody:
    meta, body = await _run(request, tfstate.version_body, cluster, name, version)
    return VersionBody(**_version(meta).model_dump(), state=body.decode())


@router.post("/states/{cluster}/{name}/versions/{version}/rollback",
             summary="Make an earlier version current again, as a new version with a higher serial (409 while locked)")
async def rollback(cluster: DnsLabel, name: DnsLabel, version: int, request: Request, token: Operator) -> VersionView:
    return _version(await _run(request, tfstate.rollback, cluster, name, version, f"token:{token.name}"))


@router.post("/states/{cluster}/{name}/force-unlock",
             summary="Release a state's lock whoever holds it (a run that is gone); the holder goes in the audit")
async def force_unlock(cluster: DnsLabel, name: DnsLabel, request: Request, _: Operator) -> LockView:
    released = await _run(request, tfstate.unlock, cluster, name, None)
    if released is None:
        raise HTTPException(409, f"the state {cluster}/{name} is not locked")
    audit.subject(request, lock_id=released.get("ID"), holder=released.get("Who") or "(unknown)")
    return LockView.model_validate(released)


async def _credentials(request: Request, cluster: str, fn: Callable[[Settings, str], tuple[str, str]]) -> Credentials:
    settings = _settings(request)
    if not await anyio.to_thread.run_sync(tfcredentials.cluster_known, settings, cluster):
        raise HTTPException(404, f"no cluster named {cluster!r}")
    username, password = await _run(request, fn, cluster)
    address = f"{settings.api_url.rstrip('/')}{BACKEND_PREFIX}/{cluster}/"
    return Credentials(cluster=cluster, username=username, password=password, address=address)


@router.get("/credentials/{cluster}", summary="A cluster's state credentials, for a site's own terraform (admin)")
@audit.reads_secret
async def show_credentials(cluster: DnsLabel, request: Request, _: Admin) -> Credentials:
    return await _credentials(request, cluster, tfcredentials.cluster_credentials)


@router.post("/credentials/{cluster}/rotate", summary="A new password for a cluster's states; the old one stops at once")
async def rotate_credentials(cluster: DnsLabel, request: Request, _: Admin) -> Credentials:
    return await _credentials(request, cluster, tfcredentials.rotate_credentials)
