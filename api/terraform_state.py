"""Terraform's `http` backend: `/v1/terraform/state/{cluster}/{name}`, as Terraform's own client
(internal/backend/remote-state/http/client.go) speaks it.

    GET     200 + the state (and Content-MD5), 204 when there is none
    POST    the new state; Content-MD5 checked; `?ID=<lock id>` while Terraform holds the lock
    DELETE  the state (a tombstone version: earlier versions stay)
    LOCK    body: Terraform's lock info JSON; 200, or 423 + the holder's lock info (Terraform prints it)
    UNLOCK  body: the same lock info; 200, or 423 + the holder's when its ID is not the holder's.
            An empty body is `terraform force-unlock` (its client sends no lock info): it releases
            whoever holds the lock, and is logged with the holder.

The lock and unlock addresses are the state's address (`lock_address = unlock_address =
address`). Terraform authenticates with HTTP basic auth: the cluster's own credentials
(activities/storage/tfcredentials.py), never an operator token, which would end up in a site's
backend config or environment. The custom methods LOCK and UNLOCK cannot be described in
OpenAPI, so they are left out of /docs and documented in the README. Bodies are read here
against their own limit (MAX_STATE_BYTES: 413 beyond), never logged, never echoed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field

from activities.domain.ids import DnsLabel
from activities.storage import tfcredentials, tfstate
from api.requests import app_settings, read_body

PREFIX = "/v1/terraform/state"
log = logging.getLogger("tempered.api.terraform")
router = APIRouter(prefix=PREFIX, tags=["terraform state backend"])
_basic = HTTPBasic(
    auto_error=False, realm="tempered terraform state",
    description="The cluster's Terraform state credentials ('tempered terraform state credentials CLUSTER'), "
    "as the http backend's username/password (TF_HTTP_USERNAME / TF_HTTP_PASSWORD)",
)
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="tempered terraform state"'}


class TerraformStateBody(BaseModel):
    """A Terraform state as Terraform writes it (format version 4); the store keeps it as sent."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "version": 4, "terraform_version": "1.15.5", "serial": 3, "lineage": "3f0b8c2e-7a71-4d5e-9d43-0c1c5e8a9b12",
        "outputs": {"endpoint": {"value": "192.0.2.10:6443", "type": "string"}}, "resources": [], "check_results": None,
    }]})

    version: int = Field(description="the state format version (4)")
    terraform_version: str = Field(description="the Terraform that wrote it")
    serial: int = Field(description="increases with every write of this lineage")
    lineage: str = Field(description="a UUID fixed when the state was first created")
    outputs: dict[str, Any] = Field(default_factory=dict, description="the root module's outputs")
    resources: list[dict[str, Any]] = Field(default_factory=list, description="the resources it tracks")
    check_results: Any = Field(default=None, description="results of check blocks, if any")


# Written in place (no route returns the model itself): what GET answers and POST takes.
_STATE_CONTENT = {"application/json": {"schema": TerraformStateBody.model_json_schema()}}
_REFUSALS = {
    401: {"description": "no or wrong basic-auth credentials"},
    403: {"description": "another cluster's credentials"},
    404: {"description": "no such cluster"},
    413: {"description": "the body is larger than the store takes"},
}


_settings = app_settings


async def state_access(
    request: Request, cluster: str, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> str:
    """The basic-auth user, once its credentials are the path cluster's: 401 without valid
    credentials (a bearer token is none), 404 for a cluster never heard of, 403 for another
    cluster's credentials."""
    settings = _settings(request)
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send the cluster's Terraform state credentials "
                            "with HTTP basic auth ('tempered terraform state credentials CLUSTER')", headers=_CHALLENGE)
    owner = await anyio.to_thread.run_sync(
        tfcredentials.credentials_cluster, settings, credentials.username, credentials.password
    )
    if owner is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password", headers=_CHALLENGE)
    if owner != cluster:
        if not await anyio.to_thread.run_sync(tfcredentials.cluster_known, settings, cluster):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no cluster named {cluster!r}")
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"these credentials open the states of cluster {owner!r} only")
    return credentials.username


StateUser = Annotated[str, Depends(state_access)]


async def _check_md5(request: Request, body: bytes) -> None:
    """Content-MD5 (base64 of the MD5, RFC 1864), when sent, must match the body. Hashed in a
    worker thread: a state may be 16 MiB, too long to hold the event loop."""
    sent = request.headers.get("content-md5")
    if sent is None:
        return
    try:
        digest = base64.b64decode(sent, validate=True)
    except binascii.Error:
        raise HTTPException(400, "Content-MD5 is not base64") from None
    if digest != await anyio.to_thread.run_sync(_md5, body):
        raise HTTPException(400, "Content-MD5 does not match the body: it was damaged on the way; nothing stored")


def _md5(body: bytes) -> bytes:
    return hashlib.md5(body, usedforsecurity=False).digest()


def _refusal(err: tfstate.StoreError) -> Response:
    """A refused call: 423 (and 409 for a lost lock) answer the holder's lock info itself, which
    Terraform's client parses and prints; the rest say why in `detail`."""
    if isinstance(err, tfstate.Locked):
        return JSONResponse(err.info, status_code=err.status)
    return JSONResponse({"detail": str(err)}, status_code=err.status)


@router.get(
    "/{cluster}/{name}", summary="Terraform http backend: the current state (204 when none)",
    response_class=Response, responses={200: {"content": _STATE_CONTENT, "description": "the state, with Content-MD5"},
                                        204: {"description": "no state yet"}, **_REFUSALS},
)
async def get_state(cluster: DnsLabel, name: DnsLabel, request: Request, _: StateUser) -> Response:
    found = await anyio.to_thread.run_sync(tfstate.current, _settings(request), cluster, name)
    if found is None:
        return Response(status_code=204)
    body, md5 = found
    return Response(body, media_type="application/json",
                    headers={"Content-MD5": base64.b64encode(bytes.fromhex(md5)).decode()})


@router.post(
    "/{cluster}/{name}", summary="Terraform http backend: store a new state version",
    response_class=Response, openapi_extra={"requestBody": {"required": True, "content": _STATE_CONTENT}},
    responses={200: {"description": "stored (or identical to the current version)"},
               400: {"description": "not JSON, or Content-MD5 does not match"},
               409: {"description": "the lock named by ID is no longer held"},
               423: {"description": "locked by someone else: the holder's lock info"}, **_REFUSALS},
)
async def post_state(
    cluster: DnsLabel, name: DnsLabel, request: Request, user: StateUser,
    lock_id: Annotated[str | None, Query(alias="ID", max_length=256, description="the lock ID Terraform holds")] = None,
) -> Response:
    body = await read_body(request, tfstate.MAX_STATE_BYTES, "the state")
    await _check_md5(request, body)
    try:
        made = await anyio.to_thread.run_sync(tfstate.write, _settings(request), cluster, name, body, lock_id, user)
    except tfstate.StoreError as err:
        return _refusal(err)
    if made is not None:  # what was written, never what it holds
        log.info("terraform state %s/%s: version %d (serial %s, %d bytes) written by %s",
                 cluster, name, made.version, made.serial, made.size, made.written_by)
    return Response(status_code=200)


@router.delete(
    "/{cluster}/{name}", summary="Terraform http backend: delete the state (its versions are kept)",
    response_class=Response,
    responses={200: {"description": "deleted"}, 423: {"description": "locked: the holder's lock info"}, **_REFUSALS},
)
async def delete_state(cluster: DnsLabel, name: DnsLabel, request: Request, user: StateUser) -> Response:
    try:
        made = await anyio.to_thread.run_sync(tfstate.delete, _settings(request), cluster, name, user)
    except tfstate.StoreError as err:
        return _refusal(err)
    if made is not None:
        log.info("terraform state %s/%s deleted by %s (version %d; earlier versions kept)", cluster, name, user, made.version)
    return Response(status_code=200)


@router.api_route("/{cluster}/{name}", methods=["LOCK"], include_in_schema=False)
async def lock_state(cluster: DnsLabel, name: DnsLabel, request: Request, _: StateUser) -> Response:
    """LOCK: take the lock with Terraform's lock info; 423 with the holder's when it is taken."""
    try:
        body = await read_body(request, tfstate.MAX_LOCK_BYTES, "the lock info")
        await _check_md5(request, body)
        info = tfstate.parse_lock(body)
        await anyio.to_thread.run_sync(tfstate.lock, _settings(request), cluster, name, info)
    except tfstate.StoreError as err:
        return _refusal(err)
    return Response(status_code=200)


@router.api_route("/{cluster}/{name}", methods=["UNLOCK"], include_in_schema=False)
async def unlock_state(cluster: DnsLabel, name: DnsLabel, request: Request, user: StateUser) -> Response:
    """UNLOCK: release the lock this lock info holds. An empty body is `terraform force-unlock`
    (Terraform sends no lock info then): whoever holds the lock loses it, and the log says who."""
    try:
        body = await read_body(request, tfstate.MAX_LOCK_BYTES, "the lock info")
        await _check_md5(request, body)
        lock_id = tfstate.parse_lock(body)["ID"] if body.strip() else None
        released = await anyio.to_thread.run_sync(tfstate.unlock, _settings(request), cluster, name, lock_id)
    except tfstate.StoreError as err:
        return _refusal(err)
    if lock_id is None and released is not None:
        log.warning("terraform force-unlock of %s/%s by %s: released lock %s held by %s", cluster, name, user,
                    released.get("ID"), released.get("Who") or "(unknown)")
    return Response(status_code=200)
