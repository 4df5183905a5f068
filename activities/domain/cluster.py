"""A cluster: its spec (what the operator asks for), its status, members and join credentials."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from activities.domain.ids import DnsLabel, HostOrAddress, IpNetwork
from activities.domain.operations import OperationStatus
from activities.domain.terraform import OUTPUT_TARGETS, TaskStatus, TerraformTask


ROLES = ("master-prime", "master", "worker")
CONTROL_PLANE_ROLES = ("master-prime", "master")


class Preflight(BaseModel):
    """The least hardware a machine needs to join (the seeds' requirements by default)."""

    architectures: list[Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,16}$")]] = Field(
        default_factory=lambda: ["x86_64"], min_length=1, max_length=16, description="as the facts name them"
    )
    min_cores: int = Field(default=2, ge=1, le=65536, description="processors.count of the facts")
    min_memory_bytes: int = Field(default=3 << 30, ge=0, le=1 << 50, description="usable memory (5% slack allowed)")
    min_disk_bytes: int = Field(default=10 * 10**9, ge=0, le=10**17, description="the largest disk's size")


class ClusterSpec(BaseModel):
    """What an operator asks for: a Kubernetes cluster's version, networks and join policy."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "prod", "kubernetes_version": "1.31.0", "quorum_count": 3, "pod_cidr": "10.244.0.0/16",
         "service_cidr": "10.96.0.0/12", "ntp_servers": ["0.debian.pool.ntp.org"], "join_method": "ansible"},
        {"name": "edge-lab", "quorum_count": 1, "join_method": "external",
         "preflight": {"architectures": ["x86_64", "aarch64"], "min_cores": 4, "min_memory_bytes": 8589934592}},
    ]})

    name: DnsLabel = Field(description="the cluster's name: a DNS label, also its workflow's id (cluster:<name>)")
    # A release as kubeadm's config takes it ("v" + this): 1.31.0, v1.31.0, 1.31.0-rc.1
    kubernetes_version: str = Field(
        default="1.31.0", pattern=r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,64})?$",
        description="a release as kubeadm takes it: 1.31.0, v1.31.0, 1.31.0-rc.1",
    )
    control_plane_endpoint: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9.:\[\]_-]{1,261}$",
        description="host[:port] of the API server; none: the master-prime's address, port 6443",
    )
    quorum_count: int = Field(default=3, ge=1, le=7, description="control-plane machines (odd: etcd keeps a majority)")
    pod_cidr: IpNetwork = Field(default="10.244.0.0/16", description="kubeadm's podSubnet")
    service_cidr: IpNetwork = Field(default="10.96.0.0/12", description="kubeadm's serviceSubnet")
    ntp_servers: list[HostOrAddress] = Field(
        default_factory=lambda: ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org"], max_length=16,
        description="time servers the runtime OS uses",
    )
    preflight: Preflight = Field(default_factory=Preflight, description="the least hardware a machine needs to join")
    # "ansible": Tempered runs kubeadm through Ansible. "external": another tool joins the node
    # and reports the outcome (POST /v1/machines/{id}/join-result).
    join_method: Literal["ansible", "external"] = Field(
        default="ansible", description="ansible: Tempered runs kubeadm; external: another tool joins and reports"
    )
    join_token_ttl_s: int = Field(default=24 * 3600, ge=30, le=30 * 24 * 3600, description="join token lifetime")
    join_token_renew_before_s: int = Field(default=3600, ge=10, description="mint a new token this long before expiry")
    terraform: list[TerraformTask] = Field(
        default_factory=list, max_length=32,
        description="Terraform modules run at the cluster's stages, in this order within a stage",
    )

    @model_validator(mode="after")
    def _renewal_fits(self) -> "ClusterSpec":
        if self.join_token_renew_before_s >= self.join_token_ttl_s:
            raise ValueError("join_token_renew_before_s must be shorter than join_token_ttl_s")
        return self

    @model_validator(mode="after")
    def _tasks_fit(self) -> "ClusterSpec":
        names = [task.name for task in self.terraform]
        if len(set(names)) != len(names):
            raise ValueError("terraform task names must be unique in the cluster")
        for task in self.terraform:
            if unknown := set(task.outputs) - set(OUTPUT_TARGETS):
                raise ValueError(
                    f"terraform task {task.name}: outputs may set {', '.join(OUTPUT_TARGETS)}, not {', '.join(sorted(unknown))}"
                )
        return self

    @field_validator("quorum_count")
    @classmethod
    def _odd(cls, count: int) -> int:
        if count % 2 == 0:
            raise ValueError("must be odd (1, 3, 5 or 7) so etcd keeps a majority")
        return count


class Member(BaseModel):
    machine_id: str = Field(description="the member machine's id")
    role: str = Field(description="master-prime, master or worker")
    ready: bool = Field(default=False, description="it reached `ready`")
    node_name: str = Field(default="", description="its one hostname (empty: admitted before it was kept)")


class JoinCredentials(BaseModel):
    """References to the secrets a join needs, sealed in the database (table JoinSecret); the
    workflow history holds only ids and expiry."""

    token_id: int | None = Field(default=None, description="the sealed join token's id")
    token_expires_at: datetime | None = Field(default=None, description="when the join token expires")
    certificate_key_id: int | None = Field(default=None, description="the sealed certificate key's id (control-plane joins)")
    ca_cert_hash: str = Field(default="", description="kubeadm's --discovery-token-ca-cert-hash")
    minted_on: str = Field(default="", description="the control-plane machine that registered them")


DELETION_STEPS = ("decommissioning", "on-delete", "destroying", "removing-dns", "forgetting", "done")


class DeletionStatus(BaseModel):
    """Where a cluster's deletion stands (DELETE /v1/clusters/{name}); kept across a crash or a
    continue-as-new, so the sequence resumes at the step it was in."""

    step: str = Field(default="decommissioning", description="decommissioning, on-delete, destroying, "
                      "removing-dns, forgetting, done: the steps in order")
    progress: str = Field(default="", description="what the step is doing, e.g. 'decommissioning 2 of 3 members: a, b'")
    members_at_start: int = Field(default=0, description="how many members the cluster had when deletion began")
    machines: list[str] = Field(default_factory=list, description="the machines it decommissions (members and "
                                "machines registered into the cluster)")
    retired: list[str] = Field(default_factory=list, description="those of `machines` retired so far")
    failed: dict[str, str] = Field(
        default_factory=dict, description="machine id -> why its decommission failed (waits for a retry)"
    )
    dns: str = Field(default="", description="what removing api.<cluster> did (a failure does not stop deletion)")


class AdmissionAsk(BaseModel):
    """A machine asks its cluster for a role (the `request_admission` Signal); the cluster answers
    with the `admitted` Signal carrying the same `request_id` (a reply to an older ask is ignored)."""

    request_id: str
    machine_id: str
    cluster: str
    is_new: bool
    role: str = ""
    node_name: str = ""


class ClusterStatus(BaseModel):
    spec: ClusterSpec
    phase: str = "forming"
    members: list[Member] = Field(default_factory=list)
    held: list[str] = Field(default_factory=list)
    closing: bool = False
    continue_after_events: int = Field(default=2_000, ge=20)
    dns: str = ""  # the last result of publishing the API name
    initialised_by: str | None = None  # the master-prime whose `kubeadm init` made the cluster
    credentials: JoinCredentials = Field(default_factory=JoinCredentials)  # the current join token
    credentials_error: str = ""  # why the last renewal failed, if it did
    master_joining: str | None = None  # control-plane joins go one at a time (etcd membership)
    tasks: list[TaskStatus] = Field(default_factory=list)  # the spec's Terraform tasks, as they stand
    endpoint: str = ""  # control_plane_endpoint from a task's output (the spec's wins)
    deletion: DeletionStatus | None = None  # set once DELETE /v1/clusters/{name} started the deletion
    operation: OperationStatus | None = None  # the running day-2 operation, else the last one
    operations_started: int = 0  # numbers the operations' workflow ids (operation:<cluster>:<n>)
    admission_queue: list[AdmissionAsk] = Field(default_factory=list)  # asked, not yet answered (kept across runs)



class CredentialsRequest(BaseModel):
    """Mint and register a join token (and a certificate key for a control-plane join) on one
    of the ready control-plane machines."""

    cluster: str
    control_plane: list[str]
    token: bool = True
    certificate_key: bool = False
    token_ttl_s: int = 24 * 3600
