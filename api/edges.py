"""Boot edges: registered by operators, and the routes an edge calls with its own token.

An edge answers DHCP from a cached `EdgeConfig`, so the control plane refuses any policy that
would let two edges on one L2 segment answer the same machine. When a machine's iPXE asks the
edge what to boot, the edge forwards it here: the machine is identified and recorded, its
workflow answers (update-with-start), and a per-boot token is minted for discovery or runtime
boots. The token goes back to the edge only; it never enters workflow history.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from functools import partial
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exists, or_
from sqlmodel import Session, delete, select
from temporalio.client import WorkflowUpdateFailedError

from activities.domain import logfields
from activities.domain.edge import EdgeBootAnswer, EdgeBootRequest, EdgeConfig, EdgePolicy
from activities.domain.ids import DnsLabel
from activities.domain.machine import BootInstruction, BootRequest, MachineStatus
from activities.storage import db, machinestate, versions
from api import audit, identity, pages, temporal
from api.auth import Admin, Edge, Viewer, issue_token
from api.boot_questions import BootQuestions
from api.boot_views import BootView
from activities.storage.models import BootEdge, Cluster, Machine, MachineMac, Token, utcnow
from activities.storage.settings import Settings

BOOT_TOKEN_TTL = timedelta(hours=6)
CONFIG_FORMAT = 1  # in the config's ETag: raise it when the config's shape or its policy rules change
log = logging.getLogger("tempered.api.edges")
operator_router = APIRouter(prefix="/v1/edges", tags=["edges"])
edge_router = APIRouter(prefix="/v1/edge", tags=["edge-facing"])


class EdgeRegistration(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "rack-a", "policy": {"mode": "catch-all", "cluster": "prod", "mac_prefixes": ["52:54:00"],
                                      "segment": "rack-a"}},
    ]})

    name: DnsLabel = Field(description="the edge's name (a DNS label); its token names it")
    policy: EdgePolicy = Field(default_factory=EdgePolicy, description="which machines it answers; default: preregistered")


_EDGE_EXAMPLE = {"name": "rack-a", "policy": {"mode": "catch-all", "cluster": "prod", "mac_prefixes": ["52:54:00"],
                                               "segment": "rack-a"}}


class EdgeView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EDGE_EXAMPLE | {"last_seen_at": "2026-12-06T09:00:00+00:00"}]})

    name: str = Field(description="the edge's name")
    policy: EdgePolicy = Field(description="which machines it answers")
    last_seen_at: str | None = Field(None, description="when the edge last fetched its config (ISO 8601)")


class EdgeCreated(EdgeView):
    model_config = ConfigDict(json_schema_extra={"examples": [_EDGE_EXAMPLE | {"token": "q3Jx…(shown once)"}]})

    token: str = Field(description="the edge's token: shown only here, give it to `tempered bootedge`")


def _view(row: BootEdge) -> EdgeView:
    seen = row.last_seen_at.isoformat() if row.last_seen_at else None
    return EdgeView(name=row.name, policy=EdgePolicy.model_validate(row.policy), last_seen_at=seen)


def _refuse_overlap(s: Session, name: str, policy: EdgePolicy) -> None:
    for other in s.exec(select(BootEdge).where(BootEdge.name != name)):
        if policy.overlaps(EdgePolicy.model_validate(other.policy)):
            raise HTTPException(
                409,
                f"edge {other.name!r} on segment {policy.segment!r} could answer the same machines: "
                "give the edges disjoint mac_prefixes or different segments",
            )


def _refuse_missing_cluster(s: Session, policy: EdgePolicy) -> None:
    """The cluster an edge takes machines into must exist now, not when its first machine boots."""
    if policy.cluster is not None and s.get(Cluster, policy.cluster) is None:
        raise HTTPException(422, f"policy.cluster: no cluster named {policy.cluster!r}: create it first (POST /v1/clusters)")


# ---- operator routes -------------------------------------------------------------------------


@operator_router.post("", status_code=status.HTTP_201_CREATED, summary="Register an edge; its token is shown once")
def create_edge(body: EdgeRegistration, request: Request, _: Admin) -> EdgeCreated:
    audit.subject(request, name=body.name)
    settings: Settings = request.app.state.settings
    with db.session(settings.database_url) as s:
        if s.get(BootEdge, body.name) is not None:
            raise HTTPException(409, f"edge {body.name!r} already exists")
        _refuse_missing_cluster(s, body.policy)
        _refuse_overlap(s, body.name, body.policy)
        s.add(BootEdge(name=body.name, policy=body.policy.model_dump()))
        s.commit()
    token = issue_token(settings, "edge", edge=body.name, name=f"edge {body.name}")
    return EdgeCreated(name=body.name, policy=body.policy, token=token)


@operator_router.get(
    "", summary="List edges with their policies and when each last checked in, by name, a page at a time",
    responses={200: {"description": "a page; the next page's cursor in X-Next-Cursor and Link (absent on the last)"}},
)
def list_edges(
    request: Request, response: Response, _: Viewer, page_: Annotated[pages.Page, Depends(pages.page)]
) -> list[EdgeView]:
    query = select(BootEdge).order_by(BootEdge.name).limit(page_.limit + 1)
    if page_.after is not None:
        query = query.where(BootEdge.name > page_.after)
    with db.session(request.app.state.settings.database_url) as s:
        rows = [_view(row) for row in s.exec(query)]
    pages.link_next(request, response, rows[page_.limit - 1].name if len(rows) > page_.limit else None)
    return rows[: page_.limit]


def _edge_or_404(s: Session, name: str) -> BootEdge:
    row = s.get(BootEdge, name)
    if row is None:
        raise HTTPException(404, f"no edge named {name!r}: see GET /v1/edges")
    return row


@operator_router.get("/{name}", summary="One edge")
def get_edge(name: str, request: Request, _: Viewer) -> EdgeView:
    with db.session(request.app.state.settings.database_url) as s:
        return _view(_edge_or_404(s, name))


@operator_router.put("/{name}/policy", summary="Change an edge's policy (it picks it up within seconds)")
def set_edge_policy(name: str, policy: EdgePolicy, request: Request, _: Admin) -> EdgeView:
    with db.session(request.app.state.settings.database_url) as s:
        row = _edge_or_404(s, name)
        _refuse_missing_cluster(s, policy)
        _refuse_overlap(s, name, policy)
        row.policy = policy.model_dump()
        s.add(row)
        s.commit()
        return _view(row)


@operator_router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove an edge and revoke its token")
def delete_edge(name: str, request: Request, _: Admin) -> Response:
    with db.session(request.app.state.settings.database_url) as s:
        s.delete(_edge_or_404(s, name))
        s.exec(delete(Token).where(Token.kind == "edge", Token.edge == name))
        s.commit()
    return Response(status_code=204)


# ---- edge-facing routes ----------------------------------------------------------------------


def outside_policy(policy: EdgePolicy, machine: Machine, macs: list[str]) -> str | None:
    """Why an edge with `policy` may not touch this existing machine (known by `macs`), or None.

    An edge's own machines are those its mac_prefixes hold (edges sharing a segment have
    disjoint prefixes): one of the machine's MACs is within them, or it has none yet (it was
    registered by UUID or serial, and is claimed by the NIC it boots from, if it is not placed in
    another cluster than the edge's). An edge without prefixes owns the machines of its cluster
    and unplaced ones; one with neither, all."""
    return _outside(policy, machine.id, machine.cluster, macs)


def _outside(policy: EdgePolicy, machine_id: str, cluster: str | None, macs: list[str]) -> str | None:
    """`outside_policy` on plain values: the edge's config checks every machine with it."""
    if policy.mac_prefixes and macs:
        if not any(policy.matches(mac) for mac in macs):
            return f"machine {machine_id} has no MAC within this edge's mac_prefixes ({', '.join(policy.mac_prefixes)})"
    elif policy.cluster is not None and cluster not in (None, policy.cluster):
        return f"machine {machine_id} belongs to cluster {cluster!r}, this edge serves {policy.cluster!r}"
    return None


def _config(s: Session, row: BootEdge) -> EdgeConfig:
    """The edge's policy and the machines it may answer: only those its policy admits
    (`outside_policy`, written as two queries). The edge polls this every few seconds, so the
    policy is applied in SQL and only plain columns come back, and the route answers an empty
    304 when nothing changed. The boot route never calls it."""
    policy = EdgePolicy.model_validate(row.policy)
    live = Machine.decommissioned_at.is_(None)
    in_cluster = or_(Machine.cluster.is_(None), Machine.cluster == policy.cluster)
    # Machines with MACs: with prefixes, those holding a MAC within them (and those MACs);
    # without, those of the edge's cluster or unplaced (every MAC).
    with_macs = select(MachineMac.mac, Machine.uuid).join(Machine, Machine.id == MachineMac.machine_id).where(live)
    if policy.mac_prefixes:
        with_macs = with_macs.where(or_(*(MachineMac.mac.startswith(p) for p in policy.mac_prefixes)))
    elif policy.cluster is not None:
        with_macs = with_macs.where(in_cluster)
    # Machines without a MAC yet (registered by UUID or serial): the cluster rule alone.
    bare = select(Machine.uuid).where(live, Machine.uuid.is_not(None), ~exists().where(MachineMac.machine_id == Machine.id))
    if policy.cluster is not None:
        bare = bare.where(in_cluster)
    macs, uuids = [], set()
    for mac, uuid in s.exec(with_macs):
        macs.append(mac)
        uuids.add(uuid)
    uuids.update(s.exec(bare))
    trusted = sorted(u for u in uuids if u is not None and identity.trusted_uuid(u))
    return EdgeConfig(name=row.name, policy=policy, known_macs=sorted(macs), known_uuids=trusted)


def _edge_config(settings: Settings, edge: str, cached: str | None) -> tuple[str, EdgeConfig | None]:
    """The config's ETag, and the config unless `cached` is that tag (then None: a 304). The tag
    is the version counter of what a config is made of (activities/storage/versions.py), read
    before the rows: an unchanged config costs that one row, not the list of every MAC."""
    with db.session(settings.database_url) as s:
        row = s.get(BootEdge, edge)
        if row is None:
            raise HTTPException(404, "this edge was removed")
        row.last_seen_at = utcnow()
        s.add(row)
        s.commit()
        etag = '"' + hashlib.sha256(f"{CONFIG_FORMAT}:{edge}:{versions.current(s)}".encode()).hexdigest()[:32] + '"'
        if cached == etag:
            return etag, None
        return etag, _config(s, row)


@edge_router.get(
    "/config",
    summary="The calling edge's policy and the machines it may answer (304 with If-None-Match when unchanged)",
    response_model=EdgeConfig,
    responses={304: {"description": "unchanged since the ETag given in If-None-Match"}},
)
def edge_config(request: Request, edge: Edge) -> Response:
    """A sync route: FastAPI runs it in its thread pool, off the event loop. An edge polling
    with If-None-Match gets an empty 304, for one row read, while its cached config is current."""
    etag, config = _edge_config(request.app.state.settings, edge.edge, request.headers.get("if-none-match"))
    if config is None:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(config.model_dump_json().encode(), media_type="application/json", headers={"ETag": etag})


def _resolve(s: Session, mac: str, uuid: str | None, serial: str | None) -> Machine | None:
    """The live machine a trusted UUID, this MAC, or a trusted serial belongs to, if any. The
    MAC alone is not enough: a machine booting from its second NIC, or with a new NIC, is
    still found by its UUID or serial."""
    live = Machine.decommissioned_at.is_(None)
    trusted, serial = identity.trusted_uuid(uuid), identity.trusted_serial(serial)
    if trusted:
        found = s.exec(select(Machine).where(Machine.uuid == trusted, live)).all()
        same = [m for m in found if not (serial and m.serial and m.serial != serial)]  # a shared UUID
        if len(same) == 1:
            return same[0]
    owner = s.get(MachineMac, mac)
    machine = s.get(Machine, owner.machine_id) if owner else None
    if machine is not None and machine.decommissioned_at is None:
        return machine
    if serial:
        found = s.exec(select(Machine).where(Machine.serial == serial, live)).all()
        if len(found) == 1:
            return found[0]
    return None


def _refuse(edge: str, mac: str, reason: str) -> HTTPException:
    """A 403 for the edge, and a line for the operator naming the edge, the machine and why."""
    log.warning("edge %s refused for %s: %s", edge, mac, reason)
    return HTTPException(403, reason)


def _record(s: Session, edge: str, policy: EdgePolicy, request: EdgeBootRequest) -> Machine:
    """Find the booting machine, or create it as the edge's policy says; 403 (nothing changed)
    unless the policy admits it: an edge never claims another edge's or cluster's machine by
    posting its UUID or serial."""
    mac = request.mac
    uuid = identity.trusted_uuid(request.uuid)
    if not policy.matches(mac):
        raise _refuse(edge, mac, f"{mac} is outside this edge's mac_prefixes")
    machine = _resolve(s, mac, uuid, request.serial)
    if machine is not None:
        macs = s.exec(select(MachineMac.mac).where(MachineMac.machine_id == machine.id)).all()
        if (reason := outside_policy(policy, machine, list(macs))) is not None:
            raise _refuse(edge, mac, reason)
    if machine is None:
        if policy.mode == "preregistered":
            raise _refuse(edge, mac, f"machine {mac} is not registered: register it with POST /v1/machines")
        cluster = policy.cluster if policy.mode == "catch-all" else None
        if uuid and s.exec(select(Machine.id).where(Machine.uuid == uuid)).first():
            uuid = None  # another machine has this UUID: it identifies neither, the MAC does
        serial = identity.trusted_serial(request.serial)
        machine = s.merge(Machine(id=identity.machine_id(uuid, mac), uuid=uuid, serial=serial, cluster=cluster))
    if s.get(MachineMac, mac) is None:
        s.add(MachineMac(mac=mac, machine_id=machine.id))
    if s.new or s.dirty:  # a machine seen before costs no commit, nor the reload of its expired row after one
        s.commit()
    return machine


def _booting(settings: Settings, edge: str, request: EdgeBootRequest) -> MachineStatus:
    """The booting machine, found or created as the edge's policy admits (403 otherwise)."""
    with db.session(settings.database_url) as s:
        row = s.get(BootEdge, edge)
        if row is None:
            raise HTTPException(404, "this edge was removed")
        machine = _record(s, row.name, EdgePolicy.model_validate(row.policy), request)
        return MachineStatus(machine_id=machine.id, cluster=machine.cluster, mac=request.mac)


async def _ask(request: Request, status_: MachineStatus, boot: BootRequest) -> BootInstruction:
    """The workflow's answer; a question asked again while unanswered rides on the same Update
    (api/boot_questions.py). Answered or refused, the machine's next question is a new one."""
    questions: BootQuestions = request.app.state.boot_questions
    update_id = questions.update_id(status_.machine_id)
    try:
        instruction = await temporal.pxe_boot(request.app.state.temporal, status_, boot,
                                              request.app.state.settings.api_url, update_id=update_id)
    except WorkflowUpdateFailedError:
        questions.done(status_.machine_id, update_id)
        raise
    questions.done(status_.machine_id, update_id)
    return instruction


@edge_router.post("/boot", summary="A machine's iPXE asks what to boot (called by its edge)")
async def edge_boot(body: EdgeBootRequest, request: Request, edge: Edge) -> EdgeBootAnswer:
    settings: Settings = request.app.state.settings
    logfields.bind(edge=edge.edge, mac=body.mac)  # this request's log lines, a refusal's included
    # database work, off the event loop, in threads of its own (app.state.boot_threads)
    status_ = await anyio.to_thread.run_sync(_booting, settings, edge.edge, body, limiter=request.app.state.boot_threads)
    machine_id = status_.machine_id
    logfields.bind(machine=machine_id, cluster=status_.cluster)
    boot = BootRequest(
        mac=status_.mac, uuid=body.uuid, arch=body.buildarch, client=body.platform, edge=edge.edge, ip=body.ip
    )
    sent_at = utcnow()
    instruction = await _ask(request, status_, boot)
    recorded = await anyio.to_thread.run_sync(  # the copy lists read, as it stands after (machinestate.py)
        machinestate.save_and_read, settings.database_url, machine_id, status_.mac, sent_at, instruction.state,
        limiter=request.app.state.boot_threads,
    )
    if instruction.action == "discovery":  # the agent's facts and polls need not ask again (api/boot_views.py)
        view = BootView(boot=instruction.boot, state=instruction.state, reason=instruction.reason, node_name="")
        request.app.state.boot_views.keep(machine_id, recorded, view)
    token = None
    if instruction.action in ("discovery", "runtime"):
        token = await anyio.to_thread.run_sync(
            partial(issue_token, settings, "boot", ttl=BOOT_TOKEN_TTL, machine_id=machine_id, boot=instruction.boot,
                    edge=edge.edge),
            limiter=request.app.state.boot_threads,
        )
    return EdgeBootAnswer(instruction=instruction, token=token)
