"""Machine-facing routes, reached through the machine's boot edge with its per-boot token.

Every route answers only the token of the boot the machine is on now: a token seen on an old
boot (or on another machine) is refused with 403 and nothing is stored. The runtime OS's
cloud-init reads `meta-data`, `user-data` and `vendor-data` (its NoCloud seed) and posts its phone
home here until the machine is `ready`; from then on its runtime token (which sits in
/proc/cmdline, readable by every container on the node) reads nothing.

Every call is idempotent per boot, because an answer can be lost (the edge's relay gives up
while the worker is slow, yet the Update still applies): a repeat of this boot's facts (same
digest) or phone home (same host key) answers what the first one did, never a 409.

Facts intake checks, in order: the token (401 without a valid one, 403 for another machine's),
the size (413 past 1 MiB, before parsing), the boot (403 for an earlier boot's token), the
schema (422). Only then is anything stored:
one facts version per boot, the machine's identity reconciled, preflight and drift worked out,
and the workflow told with a digest. The facts themselves never enter workflow history.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs

import anyio
import yaml
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from activities import userdata
from activities.domain import hardware
from activities.domain.cluster import ClusterSpec
from activities.domain.facts import MAX_POLL_WAIT_S, AgentInstruction, Facts
from activities.domain.lifecycle import (
    AGENT_POWERS_OFF,
    AGENT_REBOOTS,
    OPERATOR_RESETS,
    READY,
    RUNTIME_TOKEN,
    TAKES_FACTS,
)
from activities.domain.machine import FactsReport, MachineStatus
from activities.domain.power import discovered_bmc
from activities.storage import db, machinestate
from activities.storage.models import Cluster, HostKey, Machine, utcnow
from activities.storage.models import Facts as FactsRow
from activities.storage.power import record_discovered_address
from activities.storage.settings import Settings
from api import identity, temporal
from api.boot_views import BootView, BootViews, Recorded
from api.held_polls import HeldPolls
from api.auth import BootToken
from api.metrics import STATUS_READS
from api.requests import read_body

MAX_FACTS_BYTES = 1 << 20
POLL_AFTER_S = 1  # what a long poll's answer tells the agent to sleep before asking again
MAX_PHONE_HOME_BYTES = 64 << 10
_HOST_KEY = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]{68}={0,2}( [\x21-\x7e]{1,128})?$")
EDGE_URL_HEADER = "x-tempered-edge-url"  # the edge's own base URL, sent when it relays
_EDGE_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
router = APIRouter(prefix="/v1/boot", tags=["machine-facing"])
log = logging.getLogger("tempered.api.boot")


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """A model's JSON schema with its `$defs` written in place: an operation's own schema cannot
    point into `$defs` (in OpenAPI `#` is the whole document), and facts nest no model in itself."""
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:  # the model's schema, with what the field adds (its description)
        siblings = {key: value for key, value in schema.items() if key != "$ref"}
        return _inline(defs[schema["$ref"].rsplit("/", 1)[1]], defs) | _inline(siblings, defs)
    return {key: _inline(value, defs) for key, value in schema.items() if key != "$defs"}


_FACTS_SCHEMA = Facts.model_json_schema(by_alias=True)
# The facts route reads its body itself (streamed against MAX_FACTS_BYTES, parsed off the event
# loop), so FastAPI sees no body parameter: the OpenAPI document gets the Facts model's schema here.
FACTS_BODY = {
    "required": True,
    "description": f"schema 1, at most {MAX_FACTS_BYTES} bytes; unknown keys are kept",
    "content": {"application/json": {"schema": _inline(_FACTS_SCHEMA, _FACTS_SCHEMA.get("$defs", {}))}},
}


def _own(token, machine_id: str) -> None:
    if token.machine_id != machine_id:
        raise HTTPException(403, "this boot token belongs to another machine")


async def _body(request: Request, limit: int = MAX_FACTS_BYTES, what: str = "facts") -> bytes:
    """The request body, refused with 413 as soon as it passes the limit (never read whole)."""
    return await read_body(request, limit, what)


def _parse(body: bytes) -> Facts:
    try:
        return Facts.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HTTPException(422, f"facts do not match schema 1: {where}: {first['msg']}") from None


def _digest(facts: Facts) -> str:
    return hashlib.sha256(json.dumps(facts.model_dump(mode="json", by_alias=True), sort_keys=True).encode()).hexdigest()


def _store(settings: Settings, machine_id: str, boot: int, facts: Facts, digest: str) -> FactsReport:
    data = facts.model_dump(mode="json", by_alias=True)
    with db.session(settings.database_url) as s:
        machine = s.get(Machine, machine_id) or Machine(id=machine_id)
        notes, conflict = identity.reconcile(s, machine, facts)
        previous = s.exec(
            select(FactsRow).where(FactsRow.machine_id == machine_id, FactsRow.boot < boot).order_by(FactsRow.boot.desc())
        ).first()
        row = s.exec(select(FactsRow).where(FactsRow.machine_id == machine_id, FactsRow.boot == boot)).first()
        row = row or FactsRow(machine_id=machine_id, boot=boot, digest=digest, data=data)
        row.digest, row.data = digest, data
        s.add(row)
        cluster = s.get(Cluster, machine.cluster) if machine.cluster else None
        preflight = ClusterSpec.model_validate(cluster.spec).preflight if cluster else ClusterSpec(name="x").preflight
        s.commit()
        if (bmc := discovered_bmc(facts.bmc)) is not None:
            record_discovered_address(settings, machine_id, bmc.driver, bmc.address)
        changes = hardware.drift(Facts.model_validate(previous.data), facts) if previous else []
        return FactsReport(
            boot=boot, facts_id=row.id, digest=digest, below_preflight=hardware.below_preflight(facts, preflight),
            drift=changes + notes, conflict=conflict,
        )


@router.post(
    "/{machine_id}/facts", status_code=202, summary="The discovery agent reports this boot's facts",
    openapi_extra={"requestBody": FACTS_BODY},
)
async def report_facts(machine_id: str, request: Request, token: BootToken) -> FactsReport:
    """Store this boot's facts and tell the workflow. A repeat (same boot, same digest: the
    agent retrying after a lost answer) stores the same row again and the workflow answers it
    without acting twice, so the agent gets the same report."""
    _own(token, machine_id)
    body = await _body(request)  # read before waiting on the workflow: a relay that gives up must not lose it
    view = await _view(request, machine_id, token)  # kept from the edge's answer to this boot
    facts = await asyncio.to_thread(_parse, body)
    digest = _digest(facts)
    if view.state not in TAKES_FACTS:  # past discovery (or moving): a repeat of this boot's facts is answered
        status = await _current(request, machine_id, token)
        if status.state not in TAKES_FACTS and status.facts_digest != digest:  # refused before anything is stored
            raise HTTPException(409, f"not expecting facts while {status.state}: this boot is past discovery")
    settings: Settings = request.app.state.settings
    report = await asyncio.to_thread(_store, settings, machine_id, token.boot or 0, facts, digest)
    handle = temporal.machine(request.app.state.temporal, machine_id)
    # one Update per boot and digest: the agent's retry after a 504 rides on the first one
    update_id = f"facts-{token.boot or 0}-{digest}"
    await temporal.update_machine(handle, "facts_reported", report, database_url=settings.database_url,
                                  update_id=update_id)
    return report


@router.get("/{machine_id}/instruction", summary="The discovery agent asks whether to reboot")
async def instruction(
    machine_id: str, request: Request, token: BootToken,
    wait: int = Query(0, ge=0, le=MAX_POLL_WAIT_S, description=(
        "Hold a `wait` answer up to this many seconds, until the machine moves (a long poll); "
        "the answer then says when to ask again (`poll_after`)")),
) -> AgentInstruction:
    _own(token, machine_id)
    recorded = await _recorded(request, machine_id)
    told = _instruct(await _view_at(request, machine_id, token, recorded, OPERATOR_RESETS))
    if not wait:
        return told
    views: BootViews = request.app.state.boot_views
    # Held only on a settled answer: while a move is under way the row may already show it
    # (it is written just before or after the workflow moves), and would never move again.
    if told.action == "wait" and views.kept(machine_id, recorded) is not None:
        held: HeldPolls = request.app.state.held_polls
        moved = await held.until_moved(machine_id, recorded, wait)
        told = _instruct(await _view_at(request, machine_id, token, moved, OPERATOR_RESETS))
    return told.model_copy(update={"poll_after": POLL_AFTER_S})


def _instruct(view: BootView) -> AgentInstruction:
    if view.state in AGENT_REBOOTS:
        return AgentInstruction(action="reboot", reason=view.reason or "reboot into the next image")
    if view.state in AGENT_POWERS_OFF:
        return AgentInstruction(action="poweroff", reason="this machine is being decommissioned")
    return AgentInstruction(action="wait", reason=view.reason or f"waiting ({view.state})")


async def _current(request: Request, machine_id: str, token) -> MachineStatus:
    """The machine's status, asked of its workflow, if `token` is for it and for the boot it
    is on now; 403 otherwise (nothing about the machine is revealed), before anything is read
    or stored."""
    _own(token, machine_id)
    status = await _workflow_status(request, machine_id)
    _same_boot(token, status.boot, status.state)
    return status


async def _workflow_status(request: Request, machine_id: str) -> MachineStatus:
    """The workflow's `status` query."""
    return await temporal.query(temporal.machine(request.app.state.temporal, machine_id), MachineStatus)


async def _recorded(request: Request, machine_id: str) -> Recorded | None:
    """The machine's row in the copy of states (blocking read, on the boot threads)."""
    return await anyio.to_thread.run_sync(machinestate.recorded, request.app.state.settings.database_url,
                                          machine_id, limiter=request.app.state.boot_threads)


async def _view(request: Request, machine_id: str, token, resets: frozenset[str] = frozenset()) -> BootView:
    """`_current`'s answer, kept while the machine has not moved (api/boot_views.py): the reads
    a machine repeats (the agent's polls, the seed) ask the workflow once per move. In `resets`
    states an operator bumped the boot (reprovision, decommission) without a new boot
    beginning: the token of the boot the machine is still on is taken."""
    _own(token, machine_id)
    return await _view_at(request, machine_id, token, await _recorded(request, machine_id), resets)


async def _view_at(request: Request, machine_id: str, token, recorded: Recorded | None,
                   resets: frozenset[str] = frozenset()) -> BootView:
    """`_view`, with the machine's row already read."""
    views: BootViews = request.app.state.boot_views
    view = views.kept(machine_id, recorded)
    STATUS_READS.labels(source="kept" if view else "workflow").inc()
    if view is None:
        status = await _workflow_status(request, machine_id)
        view = BootView(boot=status.boot, state=status.state, reason=status.reason, node_name=status.node_name)
        views.keep(machine_id, recorded, view)
    _same_boot(token, view.boot, view.state, resets)
    return view


def _same_boot(token, boot: int, state: str, resets: frozenset[str] = frozenset()) -> None:
    """403 unless `token` is for `boot` (or the machine is in one of `resets`)."""
    if token.boot != boot and state not in resets:
        raise HTTPException(403, f"this token is for boot {token.boot}; the machine has booted again since")


# ---- the runtime OS: cloud-init's NoCloud seed and phone home --------------------------------


async def _this_boot(request: Request, machine_id: str, token) -> BootView:
    """The machine's status, if `token` is for its current boot and that boot is a runtime
    boot not yet `ready` (a ready node's token is readable by its containers); 403 otherwise."""
    view = await _view(request, machine_id, token)
    if view.state == READY:
        raise HTTPException(403, f"the machine is ready: the token of boot {view.boot} no longer reads anything")
    if view.state not in RUNTIME_TOKEN:
        raise HTTPException(403, f"boot {view.boot} is not a runtime boot")
    return view


@router.get("/{machine_id}/meta-data", response_class=PlainTextResponse, summary="cloud-init's meta-data for this boot")
async def meta_data(machine_id: str, request: Request, token: BootToken) -> str:
    status = await _this_boot(request, machine_id, token)
    # A new instance id per boot: the RAM-resident OS configures itself from scratch every time.
    return yaml.safe_dump({"instance-id": f"{machine_id}-boot-{status.boot}", "local-hostname": status.node_name})


@router.get("/{machine_id}/user-data", response_class=PlainTextResponse, summary="cloud-init's user-data for this boot")
async def user_data(machine_id: str, request: Request, token: BootToken) -> str:
    await _this_boot(request, machine_id, token)
    edge = request.headers.get(EDGE_URL_HEADER, "")
    if not _EDGE_URL.match(edge):
        raise HTTPException(400, f"fetch user-data through a boot edge (it sends {EDGE_URL_HEADER})")
    credential = request.headers["authorization"].split(" ", 1)[1].strip()
    url = f"{edge}/machines/{machine_id}/{credential}/phone-home"
    found = await asyncio.to_thread(userdata.served, request.app.state.settings, machine_id, url)
    if found is None:
        raise HTTPException(404, "no user-data was rendered for this machine")
    log.info("served user-data to %s (boot %d)", machine_id, token.boot)
    return found[0]


@router.get("/{machine_id}/vendor-data", response_class=PlainTextResponse, summary="cloud-init's vendor-data: none")
async def vendor_data(machine_id: str, request: Request, token: BootToken) -> str:
    await _this_boot(request, machine_id, token)
    return ""


@router.post("/{machine_id}/phone-home", summary="cloud-init reports that it ran the user-data")
async def phone_home(machine_id: str, request: Request, token: BootToken) -> MachineStatus:
    """cloud-init's phone_home form (instance_id, hostname, fqdn, pub_key_ed25519): the node's
    new SSH host key is kept for Ansible to pin. A repeat from this boot (cloud-init retrying
    after a lost answer) answers the status again; it cannot replace the key kept first (409)."""
    await _this_boot(request, machine_id, token)
    form = parse_qs((await _body(request, MAX_PHONE_HOME_BYTES, "a phone home")).decode("utf-8", "replace"))
    key = (form.get("pub_key_ed25519") or [""])[0].strip()
    if key:
        if not _HOST_KEY.match(key):
            raise HTTPException(422, "pub_key_ed25519 is not an OpenSSH ed25519 public key")
        if not await asyncio.to_thread(_keep_host_key, request.app.state.settings, machine_id, token.boot, key):
            raise HTTPException(409, f"boot {token.boot} already sent another host key; reboot to change it")
    handle = temporal.machine(request.app.state.temporal, machine_id)
    status = await temporal.update_machine(handle, "phoned_home", database_url=request.app.state.settings.database_url)
    log.info("%s phoned home from its runtime OS (boot %d)", machine_id, token.boot)
    return status


def _keep_host_key(settings: Settings, machine_id: str, boot: int, key: str) -> bool:
    """Keep the first host key a boot sends; False if this boot already sent another one. Two
    first phone homes racing (a retry while the first is in flight): the loser compares again."""
    try:
        return _write_host_key(settings, machine_id, boot, key)
    except IntegrityError:
        return _write_host_key(settings, machine_id, boot, key)


def _write_host_key(settings: Settings, machine_id: str, boot: int, key: str) -> bool:
    with db.session(settings.database_url) as s:
        row = s.get(HostKey, machine_id) or HostKey(machine_id=machine_id, boot=boot, key=key)
        if row.boot == boot and row.key != key:
            return False
        row.boot, row.key, row.received_at = boot, key, utcnow()
        s.add(row)
        s.commit()
    return True
