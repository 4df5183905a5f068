"""Operator routes for cloud-init fragments, the documents `include` attributes name.

A fragment is checked before it is stored: template syntax, YAML, its merge_how, and
cloud-init's schema (variables stand in as strings). A refusal is a 422 that says what is
wrong; nothing is stored. Machines pick a changed fragment up the next time their user-data is
rendered (their next boot, or a retry of `failed:render`).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path as PathParam, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select

from activities import cloudconfig
from activities.domain.ids import plural
from activities.domain.rules import FRAGMENT_NAME
from activities.storage import db
from api.auth import Operator
from api.requests import app_settings
from activities.storage.models import Attribute, Fragment, utcnow

router = APIRouter(prefix="/v1/cloud-init/fragments", tags=["cloud-init"])
Name = Annotated[str, PathParam(pattern=FRAGMENT_NAME.pattern, description="The name `include` attributes use")]


class FragmentBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"content": "write_files:\n  - path: /etc/motd\n    content: managed by Tempered on {{ machine.hostname }}\n"},
    ]})

    content: str = Field(
        max_length=cloudconfig.MAX_FRAGMENT_BYTES,
        description="cloud-config YAML; may set merge_how and use {{ var.NAME }} and {{ machine.hostname }}",
        examples=["merge_how:\n  - {name: list, settings: [append]}\n  - {name: dict, settings: [no_replace, recurse_list]}\n"
                  "write_files:\n  - path: /etc/motd\n    content: managed by Tempered\n"],
    )


class FragmentView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "motd", "content": "write_files:\n  - path: /etc/motd\n    content: managed by Tempered\n",
        "digest": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "updated_at": "2026-12-06T09:00:00", "included_by": 3,
    }]})

    name: str = Field(description="the name `include` attributes use")
    content: str = Field(description="the cloud-config YAML as stored")
    digest: str = Field(description="SHA-256 of the content")
    updated_at: datetime = Field(description="when it was last saved (UTC)")
    included_by: int = Field(description="machines whose current attributes include it")


_settings = app_settings


def _view(session, row: Fragment) -> FragmentView:
    users = session.exec(select(Attribute.machine_id).where(Attribute.type == "include", Attribute.value == row.name))
    return FragmentView(
        name=row.name, content=row.body, digest=hashlib.sha256(row.body.encode()).hexdigest(),
        updated_at=row.updated_at, included_by=len(set(users.all())),
    )


@router.get("", summary="List the fragments")
def list_fragments(request: Request, _: Operator) -> list[FragmentView]:
    with db.session(_settings(request).database_url) as s:
        return [_view(s, row) for row in s.exec(select(Fragment).order_by(Fragment.name))]


@router.get("/{name}", summary="Read one fragment")
def get_fragment(name: Name, request: Request, _: Operator) -> FragmentView:
    with db.session(_settings(request).database_url) as s:
        row = s.get(Fragment, name)
        if row is None:
            raise HTTPException(404, f"no fragment named {name!r}")
        return _view(s, row)


@router.put("/{name}", summary="Create or replace a fragment (checked against cloud-init's schema first)")
def put_fragment(name: Name, body: FragmentBody, request: Request, _: Operator) -> FragmentView:
    content = re.sub(r"\r\n?", "\n", body.content)
    try:
        cloudconfig.check_fragment(name, content)
    except cloudconfig.CloudConfigError as err:
        raise HTTPException(422, str(err)) from None
    with db.session(_settings(request).database_url) as s:
        row = s.get(Fragment, name) or Fragment(name=name, body=content)
        row.body, row.updated_at = content, utcnow()
        s.add(row)
        s.commit()
        s.refresh(row)
        return _view(s, row)


@router.delete("/{name}", status_code=204, summary="Delete a fragment")
def delete_fragment(
    name: Name, request: Request, _: Operator,
    force: bool = Query(False, description="delete even while machines include it (their next rendering fails)"),
) -> Response:
    with db.session(_settings(request).database_url) as s:
        row = s.get(Fragment, name)
        if row is None:
            raise HTTPException(404, f"no fragment named {name!r}")
        users = _view(s, row).included_by
        if users and not force:
            raise HTTPException(
                409, f"{name!r} is included by {plural(users, 'machine')}: change the rules first, or delete with ?force=true"
            )
        s.delete(row)
        s.commit()
    return Response(status_code=204)
