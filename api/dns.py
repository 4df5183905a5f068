"""Operator routes for DNS settings: the global default and each cluster's own.

Answers never carry a TSIG secret: they are write-only, shown as '**********'."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import ValidationError

from activities.domain.dns import DnsSettings
from activities.storage import db, dnsconfig
from api.auth import Admin, Viewer
from activities.storage.models import Cluster
from activities.storage.settings import Settings

router = APIRouter(prefix="/v1", tags=["dns"])
# The answer is the settings as stored with every TSIG secret shown as '**********': documented as
# DnsSettings, but not validated against it on the way out (response_model=None: a redacted secret
# is not base64).
REDACTED = {200: {"model": DnsSettings, "description": "the settings, each TSIG secret shown as '**********'"}}


def _redacted(dns: DnsSettings) -> dict[str, Any]:
    return dns.model_dump(mode="json")  # SecretStr fields serialise as '**********'


def _scope(settings: Settings, cluster: str | None) -> str:
    if cluster is None:
        return dnsconfig.GLOBAL
    with db.session(settings.database_url) as s:
        if s.get(Cluster, cluster) is None:
            raise HTTPException(404, f"no cluster named {cluster!r}")
    return cluster


def _put(request: Request, cluster: str | None, dns: DnsSettings) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    dnsconfig.store(settings, _scope(settings, cluster), dns)
    return _redacted(dns)


def _get(request: Request, cluster: str | None) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    try:
        dns = dnsconfig.load(settings, _scope(settings, cluster))
    except ValidationError:  # stored before settings were checked when saved: never quote them
        raise HTTPException(409, "the stored DNS settings are no longer valid: PUT corrected ones") from None
    if dns is None:
        where = f"cluster {cluster!r}" if cluster else "the global default"
        raise HTTPException(404, f"no DNS settings for {where}")
    return _redacted(dns)


def _delete(request: Request, cluster: str | None) -> Response:
    settings: Settings = request.app.state.settings
    if not dnsconfig.delete(settings, _scope(settings, cluster)):
        raise HTTPException(404, "no DNS settings there")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/dns", summary="Set the global default DNS settings (secrets are write-only)",
    response_model=None, responses=REDACTED,
)
def put_global_dns(body: DnsSettings, request: Request, _: Admin) -> dict[str, Any]:
    return _put(request, None, body)


@router.get(
    "/dns", summary="The global default DNS settings, secrets redacted",
    response_model=None, responses=REDACTED,
)
def get_global_dns(request: Request, _: Viewer) -> dict[str, Any]:
    return _get(request, None)


@router.delete("/dns", status_code=204, summary="Remove the global default DNS settings")
def delete_global_dns(request: Request, _: Admin) -> Response:
    return _delete(request, None)


@router.put(
    "/clusters/{name}/dns", summary="Set a cluster's own DNS settings (over the global default)",
    response_model=None, responses=REDACTED,
)
def put_cluster_dns(name: str, body: DnsSettings, request: Request, _: Admin) -> dict[str, Any]:
    return _put(request, name, body)


@router.get(
    "/clusters/{name}/dns", summary="A cluster's own DNS settings, secrets redacted",
    response_model=None, responses=REDACTED,
)
def get_cluster_dns(name: str, request: Request, _: Viewer) -> dict[str, Any]:
    return _get(request, name)


@router.delete("/clusters/{name}/dns", status_code=204, summary="Remove a cluster's own DNS settings")
def delete_cluster_dns(name: str, request: Request, _: Admin) -> Response:
    return _delete(request, name)
