"""Operator routes for one machine: register, show, and the commands its workflow takes.

A machine's identity, MACs and facts are in the database; its lifecycle state is its workflow's,
which these routes ask (a query) or change (an Update). The answer of each is also recorded for
lists (activities/storage/machinestate.py); the list itself is api/machine_list.py.
"""

from __future__ import annotations

import re
import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlmodel import select
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.domain import hardware
from activities.domain.facts import Facts as FactsModel
from activities.domain.ids import Mac, machine_workflow_id
from activities.domain.machine import JoinResult, MachineStatus, Transition
from activities.storage import db, machinestate
from activities.storage.models import (
    Attribute,
    Cluster,
    Facts,
    HostKey,
    Machine,
    MachineMac,
    utcnow,
)
from activities.storage.settings import Settings
from api import audit, identity, temporal
from api.auth import Operator, Viewer

router = APIRouter(prefix="/v1/machines", tags=["machines"])
_SERIAL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_EXAMPLE_ID = "4c4c4544-0042-3510-8052-b4c04f4e3132"  # a machine's id in the examples: its SMBIOS UUID


class MachineRegistration(BaseModel):
    """Pre-register a machine into a cluster by any identifier it will later boot with."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"cluster": "prod", "mac": "52:54:00:12:34:56"},
        {"cluster": "prod", "serial": "CZ2024X1"},
        {"cluster": "prod", "uuid": "4c4c4544-0042-3510-8052-b4c04f4e3132"},
    ]})

    cluster: str = Field(description="the cluster it joins (it must exist)")
    mac: Mac | None = Field(default=None, description="a NIC's MAC, any case, : or - separated")
    uuid: str | None = Field(default=None, description="its SMBIOS UUID (firmware placeholders are refused)")
    serial: str | None = Field(default=None, description="its SMBIOS serial number")

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str | None) -> str | None:
        return identity.normalize_uuid(v) if v else None

    @field_validator("serial")
    @classmethod
    def _serial(cls, v: str | None) -> str | None:
        if v and not _SERIAL.match(v):
            raise ValueError("letters, digits, '.', '_' and '-' only, at most 64")
        return v

    @model_validator(mode="after")
    def _something(self) -> "MachineRegistration":
        if not (identity.trusted_uuid(self.uuid) or self.mac or self.serial):
            raise ValueError("give a mac, a serial, or a uuid that is not a firmware placeholder")
        return self


class MachineView(BaseModel):
    """One machine: its workflow's status plus what the database keeps (MACs, attributes, facts)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": _EXAMPLE_ID, "node_name": "node-525400123456", "cluster": "prod", "state": "ready",
        "role": "worker", "is_new": False, "boot": 3, "reason": "", "failed_step": None,
        "uuid": "4c4c4544-0042-3510-8052-b4c04f4e3132", "serial": "CZ2024X1", "macs": ["52:54:00:12:34:56"],
        "attributes": [{"type": "role", "value": "worker"}, {"type": "label", "value": "node-role/storage=true"}],
        "facts": {"processors": {"count": 8}, "memory": {"total_bytes": 33554432000}, "disks": 2, "nics": 1,
                  "boot": 3, "digest": "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b",
                  "lspci": {"Ethernet controller": 1}},
        "drift": [], "status": {"attributes": {"var": {}}}, "ssh_host_key": None,
        "history": [{"at": "2026-12-06T09:00:00Z", "state": "discovering", "reason": ""},
                    {"at": "2026-12-06T09:12:00Z", "state": "ready", "reason": ""}],
        "temporal_url": f"http://127.0.0.1:8233/namespaces/default/workflows/machine:{_EXAMPLE_ID}",
    }]})

    id: str = Field(description="a trusted SMBIOS UUID, else its first MAC, else serial-<serial>")
    node_name: str = Field(
        description="its one name: cloud-init hostname, Kubernetes node, DNS record, rules' hostname"
    )
    cluster: str | None = Field(description="its cluster (none: not placed yet)")
    state: str = Field(description="its lifecycle state (README, The machine lifecycle)")
    role: str = Field(description="master-prime, master or worker, once admitted")
    is_new: bool = Field(description="its disks are wiped on its next provisioning")
    boot: int = Field(description="the boot it is on")
    reason: str = Field(description="why it is in this state")
    failed_step: str | None = Field(None, description="the step that failed, in a failed:<step> state")
    uuid: str | None = Field(description="its SMBIOS UUID, if trusted")
    serial: str | None = Field(description="its SMBIOS serial number")
    macs: list[str] = Field(description="every MAC it booted from")
    attributes: list[dict[str, str]] = Field(description="what its rules gave it: {type, value}, in order")
    facts: dict[str, Any] | None = Field(description="summary of the latest facts version")
    drift: list[str] = Field(default_factory=list, description="hardware changes between the last two boots")
    status: dict[str, Any] = Field(
        default_factory=dict, description="status.attributes.var.<name>: the machine's variables"
    )
    ssh_host_key: str | None = Field(None, description="the SSH host key its runtime OS posted on its last phone home")
    history: list[Transition] = Field(description="its last transitions")
    temporal_url: str = Field(description="its workflow in the Temporal Web UI")


def _summarize_facts(data: dict[str, Any]) -> dict[str, Any]:
    """The few facts an operator scans for; the full document stays in the database."""
    keys = ("processors", "memory", "disks", "nics", "dmi", "firmware")
    summary: dict[str, Any] = {}
    for key in keys:
        value = data.get(key)
        if isinstance(value, list):
            summary[key] = len(value)
        elif value is not None:
            summary[key] = value
    return summary


def _pci_classes(data: dict[str, Any]) -> dict[str, int]:
    """How many PCI devices of each class (as lspci names them): rules read facts.lspci."""
    try:
        grouped = hardware.lspci(FactsModel.model_validate(data))
    except ValueError:  # facts stored under an older schema
        return {}
    return {name: len(devices) for name, devices in sorted(grouped.items())}


def _view(settings: Settings, status_: MachineStatus) -> MachineView:
    with db.session(settings.database_url) as s:
        row = s.get(Machine, status_.machine_id)
        macs = s.exec(select(MachineMac.mac).where(MachineMac.machine_id == status_.machine_id)).all()
        attributes = s.exec(
            select(Attribute)
            .where(Attribute.machine_id == status_.machine_id)
            .order_by(Attribute.type, Attribute.position)
        ).all()
        versions = s.exec(
            select(Facts).where(Facts.machine_id == status_.machine_id).order_by(Facts.boot.desc()).limit(2)
        ).all()
        host_key = s.get(HostKey, status_.machine_id)
    facts = versions[0] if versions else None
    drift = hardware.drift(*(FactsModel.model_validate(v.data) for v in reversed(versions))) if len(versions) == 2 else []
    return MachineView(
        id=status_.machine_id,
        node_name=status_.node_name,
        cluster=status_.cluster,
        state=status_.state,
        role=status_.role,
        is_new=status_.is_new,
        boot=status_.boot,
        reason=status_.reason,
        failed_step=status_.failed_step,
        uuid=row.uuid if row else None,
        serial=row.serial if row else None,
        macs=sorted(macs),
        attributes=[{"type": a.type, "value": a.value} for a in attributes],
        facts=_summarize_facts(facts.data) | {
            "boot": facts.boot, "digest": facts.digest, "lspci": _pci_classes(facts.data)
        } if facts else None,
        drift=drift,
        status={"attributes": {"var": dict(a.value.split("=", 1) for a in attributes if a.type == "variable")}},
        ssh_host_key=host_key.key if host_key else None,
        history=status_.history,
        temporal_url=settings.workflow_url(machine_workflow_id(status_.machine_id)),
    )


def _placing(settings: Settings, body: MachineRegistration, machine_id: str) -> bool:
    """Whether registering places a live machine PXE found without a cluster (else it is new);
    404/409 when it cannot be registered. Read-only: nothing is written before Temporal takes it."""
    with db.session(settings.database_url) as s:
        if s.get(Cluster, body.cluster) is None:
            raise HTTPException(404, f"no cluster named {body.cluster!r}: create it first")
        if body.mac and (owner := s.get(MachineMac, body.mac)) and owner.machine_id != machine_id:
            raise HTTPException(409, f"MAC {body.mac} already belongs to machine {owner.machine_id}")
        existing = s.get(Machine, machine_id)
        if existing is None or existing.decommissioned_at is not None:
            return False
        if existing.cluster is not None:
            raise HTTPException(409, f"machine {machine_id} is already in cluster {existing.cluster}")
        return True


def _save_registration(settings: Settings, body: MachineRegistration, machine_id: str, placing: bool) -> None:
    with db.session(settings.database_url) as s:
        if placing and (existing := s.get(Machine, machine_id)) is not None:
            existing.cluster = body.cluster
            s.add(existing)
        else:
            s.merge(Machine(id=machine_id, uuid=body.uuid, serial=body.serial, cluster=body.cluster))
            if body.mac:
                s.merge(MachineMac(mac=body.mac, machine_id=machine_id))
        s.commit()


@router.post("", status_code=status.HTTP_201_CREATED, summary="Pre-register a machine into a cluster")
async def register_machine(body: MachineRegistration, request: Request, _: Operator) -> MachineView:
    """Start a new machine's workflow in `new`, or place a machine PXE found without a cluster.
    The database is written only once Temporal took it (a refused start leaves no row behind),
    and read and written off the event loop."""
    settings: Settings = request.app.state.settings
    client: Client = request.app.state.temporal
    machine_id = identity.machine_id(body.uuid, body.mac, body.serial)
    audit.subject(request, machine_id=machine_id, cluster=body.cluster)
    placing = await asyncio.to_thread(_placing, settings, body, machine_id)
    sent_at = utcnow()
    if placing:
        handle = temporal.machine(client, machine_id)
        status_ = await temporal.update(handle, "assign", body.cluster, result_type=MachineStatus)
    else:
        status_ = MachineStatus(machine_id=machine_id, cluster=body.cluster, mac=body.mac)
        try:
            await temporal.start_machine(client, status_, settings.api_url)
        except WorkflowAlreadyStartedError:
            raise HTTPException(409, f"machine {machine_id} already has a running workflow") from None
    await asyncio.to_thread(_save_registration, settings, body, machine_id, placing)
    await asyncio.to_thread(machinestate.save_status, settings.database_url, status_, sent_at)
    return await asyncio.to_thread(_view, settings, status_)


@router.get("/{machine_id}", summary="One machine: state, role, attributes, facts, Web UI link")
async def get_machine(machine_id: str, request: Request, _: Viewer) -> MachineView:
    status_ = await temporal.query(temporal.machine(request.app.state.temporal, machine_id), MachineStatus)
    return await asyncio.to_thread(_view, request.app.state.settings, status_)


async def _operator_update(request: Request, machine_id: str, update: str, *args) -> MachineView:
    handle = temporal.machine(request.app.state.temporal, machine_id)
    try:
        status_ = await temporal.update_machine(handle, update, *args,
                                                database_url=request.app.state.settings.database_url)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # never seen, or its workflow completed (decommissioned)
            raise HTTPException(404, f"no machine {machine_id!r} with a running workflow (never seen, or "
                                     "decommissioned)") from None
        raise
    return await asyncio.to_thread(_view, request.app.state.settings, status_)


@router.post("/{machine_id}/retry", summary="Run the machine's failed step again (409 unless failed)")
async def retry_machine(machine_id: str, request: Request, _: Operator) -> MachineView:
    return await _operator_update(request, machine_id, "retry")


@router.post(
    "/{machine_id}/join-result",
    summary="Report the join of a machine whose cluster's join_method is external (409 unless it is joining)",
)
async def report_join(machine_id: str, body: JoinResult, request: Request, _: Operator) -> MachineView:
    return await _operator_update(request, machine_id, "join_finished", body)


@router.post(
    "/{machine_id}/reboot",
    summary="Power-cycle the machine (its BMC, or a person when its power is manual): it PXE boots and goes round "
    "again (409 while new, in discovery or being decommissioned)",
)
async def reboot_machine(machine_id: str, request: Request, _: Operator) -> MachineView:
    """Answered at once: the machine's reason then says what its power step did (or that a
    person must power-cycle it), and `failed:power` holds the BMC's answer."""
    return await _operator_update(request, machine_id, "reboot")


@router.post(
    "/{machine_id}/reprovision",
    summary="Mark the machine new: a one-time PXE boot and a power cycle; rediscovered and wiped on that boot",
)
async def reprovision_machine(machine_id: str, request: Request, _: Operator) -> MachineView:
    return await _operator_update(request, machine_id, "reprovision")


@router.post("/{machine_id}/decommission", summary="Take the machine out of its cluster, retire it and power it off")
async def decommission_machine(machine_id: str, request: Request, _: Operator) -> MachineView:
    return await _operator_update(request, machine_id, "decommission")
