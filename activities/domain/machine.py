"""The messages of one machine's life: its status, what its boot edge, agent and cloud-init
report, and what the machine workflow asks of its activities."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from activities.domain.cluster import JoinCredentials
from activities.domain import ids
from activities.domain.lifecycle import NEW
from activities.domain.power import PowerAction


class Transition(BaseModel):
    at: datetime = Field(description="when the machine entered the state")
    state: str = Field(description="the state it entered")
    reason: str = Field(default="", description="why, when there is more to say")


class StateRecord(BaseModel):
    """A move of the machine workflow that no Update's answer and no step's activity carries to
    the copy lists read (activities/storage/machinestate.py): a failed step."""

    machine_id: str
    state: str
    at: datetime = Field(description="the workflow's time of the move (a later-stamped state wins)")


class MachineStatus(BaseModel):
    """Everything the machine workflow knows; also what it carries across continue-as-new."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "machine_id": "4c4c4544-0042-3510-8052-b4c04f4e3132", "cluster": "prod", "mac": "52:54:00:12:34:56", "state": "joining",
        "role": "worker", "is_new": True, "boot": 2, "reason": "", "failed_step": None,
        "history": [{"at": "2026-12-06T09:10:00Z", "state": "joining", "reason": "cloud-init phoned home"}],
        "ip": "10.0.0.21", "hostname": "", "kargs": [], "kube_node": False,
    }]})

    machine_id: str = Field(description="a trusted SMBIOS UUID, else its first MAC, else serial-<serial>")
    cluster: str | None = Field(default=None, description="its cluster (none: not placed yet)")
    mac: str | None = Field(default=None, description="the MAC it first booted from")
    state: str = Field(default=NEW, description="its lifecycle state (README, The machine lifecycle)")
    role: str = Field(default="", description="master-prime, master or worker, once admitted")
    is_new: bool = Field(default=True, description="its disks are wiped on its next provisioning")
    boot: int = Field(default=0, description="the boot it is on; a boot token is good for one boot")
    reason: str = Field(default="", description="why it is in this state")
    failed_step: str | None = Field(default=None, description="the step that failed, in a failed:<step> state")
    facts_digest: str | None = Field(default=None, description="digest of this boot's facts")
    history: list[Transition] = Field(default_factory=list, description="its last transitions")
    ip: str | None = Field(default=None, description="the address it last booted from (what DNS publishes)")
    hostname: str = Field(default="", description="its hostname, if rules or the operator set one")
    kargs: list[str] = Field(default_factory=list, description="its karg attributes, for the runtime boot")
    user_data: str | None = Field(default=None, description="digest of the user-data rendered for its runtime boot")
    kube_node: bool = Field(default=False, description="kubeadm made it a node (and nothing has reset it since)")
    power_from: str | None = Field(
        default=None,
        description="the state its pending power step began in: a PXE contact while failed:power does what it does there",
    )
    power_actions: list[PowerAction] = Field(
        default_factory=list, description="the power actions of that step (pxe-once, cycle, off), run again on retry"
    )

    @property
    def node_name(self) -> str:
        """Its one name (cloud-init, Kubernetes, DNS, rules): see `ids.node_name`."""
        return ids.node_name(self.machine_id, self.mac, self.hostname)


BootAction = Literal["discovery", "runtime", "hold", "local", "refuse"]


class BootRequest(BaseModel):
    """What a boot edge learned from one PXE/iPXE contact."""

    mac: str
    uuid: str | None = None
    arch: str = "x86_64"
    client: str = "ipxe"
    edge: str | None = None
    ip: str | None = None


class BootInstruction(BaseModel):
    """The workflow's answer to a PXE contact; the edge renders it as an iPXE script."""

    action: BootAction = Field(description="what the edge's iPXE script boots")
    machine_id: str = Field(description="the machine's id")
    boot: int = Field(description="the boot number this contact starts")
    state: str = Field(description="the machine's state after the contact")
    is_new: bool = Field(description="its disks are wiped on this provisioning")
    reason: str = Field(default="", description="why (hold, refuse)")
    kargs: list[str] = Field(default_factory=list, description="the machine's karg attributes (runtime boots)")


class FactsReport(BaseModel):
    """A reference to one stored facts version (the facts themselves stay in the database), with
    what the control plane concluded from them."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"boot": 1, "facts_id": 42, "digest": "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b",
         "below_preflight": [], "drift": [], "conflict": None},
        {"boot": 2, "facts_id": 43, "digest": "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c",
         "below_preflight": ["memory: 2.0 GiB, the cluster asks for 3.0 GiB"], "drift": ["disk sdb removed"],
         "conflict": None},
    ]})

    boot: int = Field(description="the boot these facts are of")
    facts_id: int = Field(description="the stored facts version")
    digest: str = Field(description="SHA-256 of the facts (a repeat with the same digest is answered alike)")
    below_preflight: list[str] = Field(default_factory=list, description="why it may not join, if so")
    drift: list[str] = Field(default_factory=list, description="what changed since the previous boot")
    conflict: str | None = Field(default=None, description="an identity conflict an operator must resolve")


class JoinResult(BaseModel):
    """What an external join tool reports for one machine (join_method external)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"ok": True, "reason": ""}, {"ok": False, "reason": "kubeadm join: timed out waiting for the kubelet"},
    ]})

    ok: bool = Field(description="the node joined")
    reason: str = Field(default="", description="why not, when it did not (shown as the machine's reason)")



class AdmitRequest(BaseModel):
    machine_id: str
    cluster: str
    is_new: bool
    role: str = ""
    node_name: str = ""  # what its rules see as `hostname` (empty from runs before it was sent)


class RenderRequest(BaseModel):
    """Render the user-data of a machine's next runtime boot."""

    machine_id: str
    cluster: str
    role: str
    is_new: bool
    hostname: str


class RenderResult(BaseModel):
    """What the workflow keeps of a rendering: the document itself stays in the database."""

    digest: str
    size: int
    includes: list[str] = Field(default_factory=list)
    kargs: list[str] = Field(default_factory=list)
    data_disk: str | None = None


class JoinPlanRequest(BaseModel):
    machine_id: str
    cluster: str
    is_new: bool


class JoinPlan(BaseModel):
    """The cluster's answer to a machine about to join: how, and with which credentials."""

    method: Literal["ansible", "external"] = "ansible"
    action: Literal["init", "join", "rejoin"] = "join"
    role: str = ""
    endpoint: str = ""  # controlPlaneEndpoint; empty: the master-prime's address, port 6443
    prime: str | None = None  # the master-prime's machine id
    # The version the cluster runs now (an upgrade operation sets it in the cluster workflow, so a
    # rejoin upgrades the node to it); empty in plans from before: the stored spec's.
    kubernetes_version: str = ""
    credentials: JoinCredentials = Field(default_factory=JoinCredentials)


class JoinRequest(BaseModel):
    machine_id: str
    cluster: str
    node_name: str
    ip: str | None
    boot: int
    plan: JoinPlan


class JoinOutcome(BaseModel):
    summary: str  # e.g. "kubeadm join ran", "already a node: kubelet started"
    changed: bool



class DecommissionRequest(BaseModel):
    machine_id: str
    cluster: str
    node_name: str
    ip: str | None
    control_plane: list[str] = Field(default_factory=list)  # filled by the activity when empty


class Admission(BaseModel):
    """The cluster's verdict: a role, and whether the machine must wait in holding."""

    role: str
    hold: bool = False
    reason: str = ""
    rule_errors: list[str] = Field(default_factory=list)
    # The cluster's join_method (fixed for its life), sent with admission by Signal so a machine
    # of an `external` cluster need not ask its cluster how to join (None: ask, as before).
    join_method: Literal["ansible", "external"] | None = None


class JoinPlanAsk(BaseModel):
    """A machine asks its cluster how to join (the `request_join_plan` Signal); answered with the
    `join_plan_answered` Signal carrying the same `request_id`."""

    request_id: str
    machine_id: str
    cluster: str
    is_new: bool


class JoinPlanReply(BaseModel):
    """The cluster's answer to one `request_join_plan`: a JoinPlan, or why it refused."""

    request_id: str
    plan: JoinPlan | None = None
    error: str = ""


class AdmissionReply(BaseModel):
    """The cluster's answer to one `request_admission` (the `admitted` Signal): an Admission, or
    why the cluster refused the machine (it parks in failed:admit with it)."""

    request_id: str
    admission: Admission | None = None
    error: str = ""
