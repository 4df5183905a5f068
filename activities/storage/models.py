"""The control plane's tables (sqlmodel), shared by the API and the activities.

The database holds what is too large or too long-lived for workflow history (facts, rules,
fragments, tokens) and the identities by which machines are found. Lifecycle state lives in the
workflows themselves; `MachineState` is the copy lists read (activities/storage/machinestate.py
says who writes it and what can lag).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Cluster(SQLModel, table=True):
    name: str = Field(primary_key=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Machine(SQLModel, table=True):
    """A machine by its identity: SMBIOS UUID when trustworthy, else its first MAC."""

    # GET /v1/machines?cluster= pages by id within a cluster: one range scan of this index.
    __table_args__ = (Index("ix_machine_cluster_id", "cluster", "id"),)
    id: str = Field(primary_key=True)
    uuid: str | None = Field(default=None, index=True)
    serial: str | None = Field(default=None, index=True)
    cluster: str | None = Field(default=None, index=True)  # may name a cluster not created yet
    created_at: datetime = Field(default_factory=utcnow)
    decommissioned_at: datetime | None = None


class MachineState(SQLModel, table=True):
    """A machine's state, role and MAC as last recorded, for lists (GET /v1/machines): the
    workflow is the authority (GET /v1/machines/{id} asks it); this copy is written where the
    control plane already learns a move (activities/storage/machinestate.py)."""

    # GET /v1/machines?state=...&role=... pages by id within a state or role: one range scan.
    __table_args__ = (Index("ix_machinestate_state_id", "state", "machine_id"),
                      Index("ix_machinestate_role_id", "role", "machine_id"))
    machine_id: str = Field(primary_key=True, foreign_key="machine.id")
    state: str | None = None
    role: str | None = None
    mac: str | None = None
    moved_at: datetime = Field(default_factory=utcnow)  # no later than the move `state` records


class MachineMac(SQLModel, table=True):
    """The set of MACs a machine is known by; a MAC belongs to at most one machine."""

    mac: str = Field(primary_key=True)
    machine_id: str = Field(index=True, foreign_key="machine.id")


class Facts(SQLModel, table=True):
    """One version of a machine's hardware facts per boot."""

    __table_args__ = (UniqueConstraint("machine_id", "boot"),)
    id: int | None = Field(default=None, primary_key=True)
    machine_id: str = Field(index=True, foreign_key="machine.id")
    boot: int
    digest: str
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=utcnow)


class Attribute(SQLModel, table=True):
    """An attribute a machine holds (role, label, taint, include, variable, karg), in order."""

    id: int | None = Field(default=None, primary_key=True)
    machine_id: str = Field(index=True, foreign_key="machine.id")
    type: str
    value: str
    position: int = 0


class Rule(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    cluster: str = Field(index=True, foreign_key="cluster.name")
    position: int
    name: str
    expression: str
    attributes: list[dict[str, str]] = Field(sa_column=Column(JSON, nullable=False))
    enabled: bool = True


class Fragment(SQLModel, table=True):
    """A cloud-init fragment that `include` attributes name."""

    name: str = Field(primary_key=True)
    body: str
    updated_at: datetime = Field(default_factory=utcnow)


class UserData(SQLModel, table=True):
    """The cloud-config rendered for a machine's next runtime boot, sealed: fragments may carry
    secrets. Replaced on every rendering; served only to that boot's token."""

    machine_id: str = Field(primary_key=True, foreign_key="machine.id")
    digest: str
    sealed: str
    hostname: str
    rendered_at: datetime = Field(default_factory=utcnow)


class HostKey(SQLModel, table=True):
    """The SSH host key a node's runtime OS generated on its current boot, as its phone home
    posted it: what Ansible pins instead of trusting whatever answers."""

    machine_id: str = Field(primary_key=True, foreign_key="machine.id")
    boot: int
    key: str
    received_at: datetime = Field(default_factory=utcnow)


class JoinSecret(SQLModel, table=True):
    """A kubeadm bootstrap token or certificate key, sealed. The cluster workflow holds only the
    id and expiry; the join activity unseals it into the run's private directory."""

    id: int | None = Field(default=None, primary_key=True)
    cluster: str = Field(index=True)
    kind: str  # token | certificate-key
    sealed: str
    expires_at: datetime
    created_at: datetime = Field(default_factory=utcnow)


class MintStamp(SQLModel, table=True):
    """When the newest credentials mint of a cluster began (ns since the epoch). An attempt that
    finds a newer one stops before it uploads certificates under its own, older key."""

    cluster: str = Field(primary_key=True)
    stamp: int = Field(sa_type=BigInteger)


class BootEdge(SQLModel, table=True):
    name: str = Field(primary_key=True)
    policy: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime | None = None


class Version(SQLModel, table=True):
    """A counter bumped in every transaction that changes what it names (activities/storage/
    versions.py): `edges` covers what an edge's config is made of (machines' ids, UUIDs,
    clusters and retirement, their MACs, the edges' policies), so its ETag is one row read.
    `epoch` is drawn when the row is first made: a database made again never repeats a tag."""

    name: str = Field(primary_key=True)
    version: int = Field(default=0, sa_type=BigInteger)
    epoch: str = Field(default_factory=lambda: secrets.token_hex(8))


# Operator tokens (kind = their role) have unique names; the bootstrap rows named "admin" are
# exempt: each API home that ever wrote an admin-token file added one (api/auth.py).
_NAMED = "kind IN ('viewer', 'operator', 'admin') AND name <> 'admin'"


class Token(SQLModel, table=True):
    """A bearer token, stored only as its SHA-256; `kind` says what it may do: an operator
    role (viewer, operator, admin), or the edge and per-boot tokens of machine-facing routes."""

    __table_args__ = (
        Index("ux_token_operator_name", "name", unique=True, sqlite_where=text(_NAMED), postgresql_where=text(_NAMED)),
    )
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)  # viewer | operator | admin | edge | boot
    digest: str = Field(unique=True, index=True)
    name: str = ""
    machine_id: str | None = Field(default=None, index=True)
    boot: int | None = None
    edge: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None


class DnsConfig(SQLModel, table=True):
    """DNS settings for one cluster, or the global default (scope "*"), sealed whole: they hold
    TSIG secrets."""

    scope: str = Field(primary_key=True)
    sealed: str
    updated_at: datetime = Field(default_factory=utcnow)


class AuditEntry(SQLModel, table=True):
    """One mutating operator call (api/audit.py): who, what, when and the answer. Never the
    body, the query string or a token: what a call carried stays out of the trail."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str | None = Field(default=None, index=True)  # the token's name; None when it was missing or invalid
    role: str | None = None  # the token's role
    method: str
    route: str  # the route template, e.g. /v1/machines/{machine_id}/retry
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: int


class TfStateVersion(SQLModel, table=True):
    """One version of a Terraform state (api/terraform_state.py), sealed whole: states hold the
    secrets of the resources they track. Never rewritten: a new write, a DELETE (a tombstone
    with `deleted`) or a rollback adds the next version, so every earlier one stays readable."""

    __table_args__ = (UniqueConstraint("cluster", "name", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    cluster: str = Field(index=True)
    name: str = Field(index=True)
    version: int  # 1, 2, ... per (cluster, name)
    sealed: str  # the state body as Terraform sent it ("" for a tombstone), sealed
    md5: str  # hex MD5 of the body: what Content-MD5 carries (base64 there)
    size: int  # bytes of the body
    serial: int | None = None  # the state's own serial and lineage (not secret), for listings
    lineage: str | None = None
    deleted: bool = False  # a tombstone: the state was deleted here (GET answers 204)
    written_by: str  # the basic-auth user, or the operator token's name for a rollback
    note: str = ""  # e.g. "rollback of version 3"
    created_at: datetime = Field(default_factory=utcnow)


class TfStateLock(SQLModel, table=True):
    """The lock a Terraform run holds on one state: the primary key makes a second LOCK fail
    in the database itself, whichever API process it reaches."""

    cluster: str = Field(primary_key=True)
    name: str = Field(primary_key=True)
    lock_id: str
    info: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # the lock info JSON Terraform sent
    created_at: datetime = Field(default_factory=utcnow)


class TfCredentials(SQLModel, table=True):
    """The HTTP basic-auth credentials that open one cluster's states and no other's; the
    password sealed (an admin may show it so that a site's own `terraform` can use the store)."""

    cluster: str = Field(primary_key=True)
    username: str = Field(unique=True, index=True)
    sealed_password: str
    rotated_at: datetime = Field(default_factory=utcnow)


class PowerConfig(SQLModel, table=True):
    """How one machine's power is reached (activities/storage/power.py): its BMC's driver and
    address, the user and the password (sealed), and the site whose worker reaches it. No row:
    manual power. `source` says who set it: an operator, or the discovery agent (address only)."""

    machine_id: str = Field(primary_key=True)
    driver: str = "manual"  # manual | redfish | ipmi | qmp
    address: str = ""
    username: str = ""
    sealed_password: str = ""  # "" when none was given
    system_id: str = ""
    verify_tls: bool = True
    site: str | None = Field(default=None, index=True)
    source: str = "operator"  # operator | discovery
    updated_at: datetime = Field(default_factory=utcnow)
