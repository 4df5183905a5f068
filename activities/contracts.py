"""The messages that cross between the API, the boot edge, workflows and activities.

They are Pydantic models carried by Temporal's Pydantic data converter, so a malformed message
fails loudly at the boundary instead of deep inside a workflow. They stay small on purpose:
facts live in the database and only their digest travels through workflow history.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

# Machine states (DESIGN.md section 3). `failed:<step>` is built with `failed()`.
NEW = "new"
BOOT_1 = "boot-1"
DISCOVER = "discover"
POST_DISCOVER = "post-discover"
BOOT_2 = "boot-2"
POST_BOOT_2 = "post-boot-2"
JOIN_CLUSTER = "join-cluster"
READY = "ready"
HOLDING = "holding"
DECOMMISSIONING = "decommissioning"
DECOMMISSIONED = "decommissioned"
LIFECYCLE = (NEW, BOOT_1, DISCOVER, POST_DISCOVER, BOOT_2, POST_BOOT_2, JOIN_CLUSTER, READY)

ROLES = ("master-prime", "master", "worker")
PHASES = ("forming", "bootstrapping", "ready")

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def failed(step: str) -> str:
    return f"failed:{step}"


def machine_workflow_id(machine_id: str) -> str:
    return f"machine:{machine_id}"


def cluster_workflow_id(name: str) -> str:
    return f"cluster:{name}"


class Transition(BaseModel):
    at: datetime
    state: str
    reason: str = ""


class MachineStatus(BaseModel):
    """Everything the machine workflow knows; also what it carries across continue-as-new."""

    machine_id: str
    cluster: str | None = None
    mac: str | None = None
    state: str = NEW
    role: str = ""
    is_new: bool = True
    boot: int = 0
    reason: str = ""
    failed_step: str | None = None
    facts_digest: str | None = None
    history: list[Transition] = Field(default_factory=list)


BootAction = Literal["discovery", "runtime", "hold", "local", "refuse"]


class BootRequest(BaseModel):
    """What a boot edge learned from one PXE/iPXE contact."""

    mac: str
    uuid: str | None = None
    arch: str = "x86_64"
    client: str = "ipxe"
    edge: str | None = None


class BootInstruction(BaseModel):
    """The workflow's answer to a PXE contact; the edge renders it as an iPXE script."""

    action: BootAction
    machine_id: str
    boot: int
    state: str
    is_new: bool
    reason: str = ""
    retry_after_s: int = 0


class FactsReport(BaseModel):
    """A reference to one stored facts version: the facts themselves stay in the database."""

    boot: int
    facts_id: int
    digest: str


class JoinResult(BaseModel):
    ok: bool
    reason: str = ""


class ClusterSpec(BaseModel):
    name: str
    kubernetes_version: str = "1.31.0"
    control_plane_endpoint: str | None = None
    quorum_count: int = Field(default=3, ge=1, le=7)
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if not _DNS_LABEL.match(name):
            raise ValueError("must be a DNS label: lower-case letters, digits and '-', at most 63")
        return name

    @field_validator("quorum_count")
    @classmethod
    def _odd(cls, count: int) -> int:
        if count % 2 == 0:
            raise ValueError("must be odd (1, 3, 5 or 7) so etcd keeps a majority")
        return count


class Member(BaseModel):
    machine_id: str
    role: str
    ready: bool = False


class ClusterStatus(BaseModel):
    spec: ClusterSpec
    phase: str = "forming"
    members: list[Member] = Field(default_factory=list)
    held: list[str] = Field(default_factory=list)
    closing: bool = False
    continue_after_events: int = Field(default=2_000, ge=20)


class AdmitRequest(BaseModel):
    machine_id: str
    cluster: str
    is_new: bool
    role: str = ""


class Admission(BaseModel):
    """The cluster's verdict: a role, and whether the machine must wait in holding."""

    role: str
    hold: bool = False
    reason: str = ""
