"""The messages that cross between the API, the boot edge, workflows and activities.

They are Pydantic models carried by Temporal's Pydantic data converter, so a malformed message
fails loudly at the boundary instead of deep inside a workflow. They stay small on purpose:
facts live in the database and only their digest travels through workflow history.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import uuid as uuidlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, SecretStr, field_validator, model_validator

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
TAKES_FACTS = (BOOT_1, DISCOVER, HOLDING)  # where a machine takes new facts (a repeat is taken anywhere)

ROLES = ("master-prime", "master", "worker")
CONTROL_PLANE_ROLES = ("master-prime", "master")

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{2}([:-]?[0-9a-f]{2}){5}$")


def normalize_mac(mac: str) -> str:
    """`52-54-00-AB-CD-EF`, `525400abcdef` -> `52:54:00:ab:cd:ef`; ValueError otherwise."""
    text = mac.strip().lower()
    if not _MAC.match(text):
        raise ValueError(f"not a MAC address: {mac[:40]!r}")
    digits = re.sub(r"[^0-9a-f]", "", text)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def dns_label(name: str) -> str:
    """Names of clusters and edges end up in DNS and URLs: keep them to one DNS label."""
    if not _DNS_LABEL.match(name):
        raise ValueError("must be a DNS label: lower-case letters, digits and '-', at most 63")
    return name


_DNS_NAME_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def dns_name(name: str) -> str:
    """A zone or key name that dnspython can build names under: LDH labels (and '_'), each 1..63,
    at most 253 in all. Refused when saved, not six minutes later inside an activity."""
    text = name[:-1] if name.endswith(".") else name
    if not text or len(text) > 253 or not all(_DNS_NAME_LABEL.match(label) for label in text.split(".")):
        raise ValueError("must be a DNS name: dot-separated labels of letters, digits, '-' and '_', each at most 63, 253 in all")
    return name


def host_or_address(value: str) -> str:
    """A server given by IP address or DNS name."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return dns_name(value)


def ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def ip_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip()))
    except ValueError:
        raise ValueError("must be a network in CIDR notation, e.g. 10.244.0.0/16") from None


def smbios_uuid(value: str | None) -> str | None:
    """An SMBIOS UUID as the kernel prints it; empty means the firmware has none."""
    if value is None or not value.strip():
        return None
    try:
        return str(uuidlib.UUID(value.strip()))
    except ValueError:
        raise ValueError("must be a UUID like 4c4c4544-0042-3510-8052-b7c04f4e3232") from None


DnsLabel = Annotated[str, AfterValidator(dns_label)]
DnsName = Annotated[str, Field(max_length=254), AfterValidator(dns_name)]
HostOrAddress = Annotated[str, Field(max_length=254), AfterValidator(host_or_address)]
IpAddress = Annotated[str, Field(max_length=64), AfterValidator(ip_address)]
IpNetwork = Annotated[str, Field(max_length=64), AfterValidator(ip_network)]
Mac = Annotated[str, AfterValidator(normalize_mac)]


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
    ip: str | None = None  # the address it last booted from (what DNS publishes)
    hostname: str = ""
    kargs: list[str] = Field(default_factory=list)  # its karg attributes, for the runtime boot
    user_data: str | None = None  # digest of the user-data rendered for its runtime boot
    kube_node: bool = False  # kubeadm made it a node (and nothing has reset it since)

    @property
    def node_name(self) -> str:
        """Its DNS and Kubernetes node name: the hostname, else one derived from its MAC or id."""
        if self.hostname:
            return self.hostname
        source = (self.mac or self.machine_id).replace(":", "").replace("-", "")
        return f"node-{re.sub(r'[^a-z0-9]', '', source.lower())[-12:]}"


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

    action: BootAction
    machine_id: str
    boot: int
    state: str
    is_new: bool
    reason: str = ""
    kargs: list[str] = Field(default_factory=list)  # the machine's karg attributes (runtime boots)


class FactsReport(BaseModel):
    """A reference to one stored facts version (the facts themselves stay in the database), with
    what the control plane concluded from them."""

    boot: int
    facts_id: int
    digest: str
    below_preflight: list[str] = Field(default_factory=list)  # why it may not join, if so
    drift: list[str] = Field(default_factory=list)  # what changed since the previous boot
    conflict: str | None = None  # an identity conflict an operator must resolve


class JoinResult(BaseModel):
    ok: bool
    reason: str = ""


class Preflight(BaseModel):
    """The least hardware a machine needs to join (the seeds' requirements by default)."""

    architectures: list[Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,16}$")]] = Field(
        default_factory=lambda: ["x86_64"], min_length=1, max_length=16
    )
    min_cores: int = Field(default=2, ge=1, le=65536)  # the facts' own bound on processors.count
    min_memory_bytes: int = Field(default=3 << 30, ge=0, le=1 << 50)  # 1 PiB
    min_disk_bytes: int = Field(default=10 * 10**9, ge=0, le=10**17)  # 100 PB


class ClusterSpec(BaseModel):
    name: DnsLabel
    # A release as kubeadm's config takes it ("v" + this): 1.31.0, v1.31.0, 1.31.0-rc.1
    kubernetes_version: str = Field(default="1.31.0", pattern=r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,64})?$")
    control_plane_endpoint: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.:\[\]_-]{1,261}$")  # host[:port]
    quorum_count: int = Field(default=3, ge=1, le=7)
    pod_cidr: IpNetwork = "10.244.0.0/16"
    service_cidr: IpNetwork = "10.96.0.0/12"
    ntp_servers: list[HostOrAddress] = Field(
        default_factory=lambda: ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org"], max_length=16
    )
    preflight: Preflight = Field(default_factory=Preflight)
    # "ansible": Tempered runs kubeadm through Ansible. "external": another tool joins the node
    # and reports the outcome (POST /v1/machines/{id}/join-result).
    join_method: Literal["ansible", "external"] = "ansible"
    join_token_ttl_s: int = Field(default=24 * 3600, ge=30, le=30 * 24 * 3600)
    join_token_renew_before_s: int = Field(default=3600, ge=10)  # mint a new token this long before expiry

    @model_validator(mode="after")
    def _renewal_fits(self) -> "ClusterSpec":
        if self.join_token_renew_before_s >= self.join_token_ttl_s:
            raise ValueError("join_token_renew_before_s must be shorter than join_token_ttl_s")
        return self

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


class JoinCredentials(BaseModel):
    """References to the secrets a join needs, sealed in the database (table JoinSecret); the
    workflow history holds only ids and expiry."""

    token_id: int | None = None
    token_expires_at: datetime | None = None
    certificate_key_id: int | None = None
    ca_cert_hash: str = ""
    minted_on: str = ""  # the control-plane machine that registered them


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


class AdmitRequest(BaseModel):
    machine_id: str
    cluster: str
    is_new: bool
    role: str = ""


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


class CredentialsRequest(BaseModel):
    """Mint and register a join token (and a certificate key for a control-plane join) on one
    of the ready control-plane machines."""

    cluster: str
    control_plane: list[str]
    token: bool = True
    certificate_key: bool = False
    token_ttl_s: int = 24 * 3600


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


# ---- boot edges --------------------------------------------------------------------------

EdgeMode = Literal["preregistered", "catch-all", "discovery-pool"]
_MAC_PREFIX = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){0,5}$")


class EdgePolicy(BaseModel):
    """Which machines an edge answers, and where the ones it does not know go.

    `preregistered`: only machines registered in the control plane; `catch-all`: any machine,
    unknown ones into `cluster`; `discovery-pool`: any machine, unknown ones held until an
    operator places them. `mac_prefixes` (OUIs or whole MACs) narrow it further, so several
    clusters or edges can share one L2 `segment` without two edges answering one machine.
    """

    mode: EdgeMode = "preregistered"
    cluster: DnsLabel | None = None
    mac_prefixes: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list, max_length=256)
    segment: str = Field(default="default", min_length=1, max_length=128)

    @field_validator("mac_prefixes")
    @classmethod
    def _prefixes(cls, prefixes: list[str]) -> list[str]:
        normalized = [p.strip().lower().replace("-", ":") for p in prefixes]
        for prefix in normalized:
            if not _MAC_PREFIX.match(prefix):
                raise ValueError(f"{prefix!r} is not a MAC prefix like 52:54:00")
        return normalized

    @model_validator(mode="after")
    def _catch_all_has_a_cluster(self) -> "EdgePolicy":
        if self.mode == "catch-all" and not self.cluster:
            raise ValueError("a catch-all edge needs the cluster its unknown machines join")
        return self

    def matches(self, mac: str) -> bool:
        return not self.mac_prefixes or any(mac.startswith(p) for p in self.mac_prefixes)

    def overlaps(self, other: "EdgePolicy") -> bool:
        """Could both edges answer one machine? Only edges on the same segment can."""
        if self.segment != other.segment:
            return False
        if not self.mac_prefixes or not other.mac_prefixes:
            return True
        return any(a.startswith(b) or b.startswith(a) for a in self.mac_prefixes for b in other.mac_prefixes)


class EdgeConfig(BaseModel):
    """What an edge fetches from the control plane and caches, to answer DHCP on its own."""

    name: str
    policy: EdgePolicy
    known_macs: list[str] = Field(default_factory=list)
    known_uuids: list[str] = Field(default_factory=list)

    def admits(self, mac: str, uuid: str | None) -> bool:
        if not self.policy.matches(mac):
            return False
        if self.policy.mode != "preregistered":
            return True
        return mac in self.known_macs or (uuid is not None and uuid in self.known_uuids)


class EdgeBootRequest(BaseModel):
    """An iPXE client asking its edge what to boot, with what iPXE knows about it."""

    mac: Mac
    uuid: str | None = Field(default=None, max_length=64)
    serial: str | None = Field(default=None, max_length=128)
    platform: str = Field(default="pcbios", pattern=r"^[a-z0-9_-]{1,16}$")  # iPXE ${platform}
    buildarch: str = Field(default="x86_64", pattern=r"^[a-z0-9_-]{1,16}$")
    ip: IpAddress | None = None  # the address the request came from, as the edge saw it (DNS publishes it)

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        """Firmware reports garbage UUIDs often enough: an unreadable one is simply absent."""
        try:
            return str(uuidlib.UUID(value)) if value else None
        except ValueError:
            return None


class EdgeBootAnswer(BaseModel):
    """The control plane's answer: the workflow's instruction plus this boot's token."""

    instruction: BootInstruction
    token: str | None = None


# ---- DNS (RFC 2136) ------------------------------------------------------------------------

TsigAlgorithm = Literal["hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"]


class DnsServer(BaseModel):
    host: HostOrAddress
    port: int = Field(default=53, ge=1, le=65535)


class TsigKey(BaseModel):
    """A TSIG key. The secret never appears in logs, reprs or API answers."""

    name: DnsName
    secret: SecretStr = Field(max_length=1024)
    algorithm: TsigAlgorithm = "hmac-sha256"

    @field_validator("secret")
    @classmethod
    def _base64(cls, secret: SecretStr) -> SecretStr:
        try:
            base64.b64decode(secret.get_secret_value(), validate=True)
        except ValueError:
            raise ValueError("must be base64 (as dnssec-keygen / tsig-keygen print it)") from None
        return secret


class DnsView(BaseModel):
    """One horizon of a split-horizon zone: the server picks the view by the key that signs."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,63}$")
    key: TsigKey
    servers: list[DnsServer] = Field(default_factory=list, max_length=16)  # empty: the settings' servers
    mappings: list[tuple[IpNetwork, IpNetwork]] = Field(default_factory=list, max_length=256)  # (native, mapped)

    @field_validator("mappings")
    @classmethod
    def _prefixes(cls, mappings: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for native, mapped in mappings:
            a, b = ipaddress.ip_network(native), ipaddress.ip_network(mapped)
            if a.prefixlen != b.prefixlen or a.version != b.version:
                raise ValueError(f"{native} and {mapped} must have the same length to map host by host")
        return mappings

    def address(self, ip: str) -> str:
        """The address this view publishes for a native `ip`."""
        native_ip = ipaddress.ip_address(ip)
        for native, mapped in self.mappings:
            net = ipaddress.ip_network(native)
            if native_ip in net:
                offset = int(native_ip) - int(net.network_address)
                return str(ipaddress.ip_network(mapped).network_address + offset)
        return ip


class DnsSettings(BaseModel):
    """Where and how Tempered writes DNS: per cluster, or the global default."""

    zone: DnsName
    servers: list[DnsServer] = Field(min_length=1, max_length=16)
    key: TsigKey | None = None  # the default view's key
    reverse_zone: DnsName | None = None  # e.g. 0.213.10.in-addr.arpa: PTR records too
    ttl: int = Field(default=300, ge=0, le=86400)
    views: list[DnsView] = Field(default_factory=list, max_length=16)
    update_default_view: bool = True
    max_in_flight: int = Field(default=32, ge=1, le=100)  # BIND drops updates past its quota of 100
    batch_size: int = Field(default=500, ge=1, le=3000)  # RRsets per UPDATE (also kept < 64 KB)
    verify: bool = True

    @model_validator(mode="after")
    def _somewhere_to_write(self) -> "DnsSettings":
        if self.update_default_view and self.key is None:
            raise ValueError("updating the default view needs its TSIG key (or set update_default_view false)")
        if not self.update_default_view and not self.views:
            raise ValueError("nothing to update: add views or set update_default_view")
        return self


class DnsRecord(BaseModel):
    """One name's addresses (an A RRset), given in native addresses; views map them."""

    name: str  # relative to the zone, e.g. node-1 or api.demo
    addresses: list[str] = Field(default_factory=list)  # empty: delete the name


class NodeDns(BaseModel):
    cluster: str | None
    name: str
    ip: str


class ApiNameDns(BaseModel):
    """The cluster's API name: one A record per ready control-plane machine."""

    cluster: str
    machine_ids: list[str]


# ---- discovery facts -----------------------------------------------------------------------


class _Open(BaseModel):
    model_config = {"extra": "allow"}


class ProcessorFacts(_Open):
    count: int = Field(ge=1, le=65536)
    model: str | None = None


class MemoryFacts(_Open):
    total_bytes: int = Field(ge=0)


class DiskFacts(_Open):
    name: str = Field(max_length=64)
    size_bytes: int = Field(ge=0)
    model: str | None = None
    serial: str | None = None
    rotational: bool | None = None


class NicFacts(_Open):
    name: str = Field(max_length=64)
    mac: Mac
    driver: str | None = None
    speed_mbps: int | None = None
    link: bool | None = None
    ipv4: str | None = None


class PciFacts(_Open):
    slot: str
    vendor: str
    device: str
    class_: str = Field(alias="class")
    driver: str | None = None


class DmiFacts(_Open):
    uuid: Annotated[str | None, Field(max_length=64), AfterValidator(smbios_uuid)] = None
    serial: str | None = None
    vendor: str | None = None
    product: str | None = None
    board_serial: str | None = None


class Facts(_Open):
    """What the discovery agent reports about a machine (schema 1); extra keys are kept."""

    schema_: int = Field(default=1, alias="schema")
    boot: int | None = None
    architecture: str = "x86_64"
    firmware: Literal["bios", "uefi"] | None = None
    processors: ProcessorFacts
    processor0: str | None = None
    memory: MemoryFacts
    disks: list[DiskFacts] = Field(default_factory=list, max_length=1024)
    nics: list[NicFacts] = Field(default_factory=list, max_length=256)
    pci: list[PciFacts] = Field(default_factory=list, max_length=4096)
    dmi: DmiFacts = Field(default_factory=DmiFacts)


class AgentInstruction(BaseModel):
    """What the discovery agent is told when it polls."""

    action: Literal["wait", "reboot", "poweroff"]
    reason: str = ""


# ---- rules and attributes (DESIGN.md section 5) --------------------------------------------

AttributeType = Literal["role", "label", "taint", "include", "variable", "karg"]
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FRAGMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Kubernetes label keys ([prefix/]name) and values; a taint is key[=value]:Effect.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}"
LABEL = re.compile(rf"^(?P<key>{_LABEL_KEY})=(?P<value>({_LABEL_NAME})?)$")
TAINT = re.compile(rf"^(?P<key>{_LABEL_KEY})(=(?P<value>{_LABEL_NAME}))?:(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$")
# A kernel argument goes into an iPXE script: no iPXE expansion ($), quoting or line breaks.
KARG = re.compile(r"^[A-Za-z0-9._,:/=+@%~-]+( [A-Za-z0-9._,:/=+@%~-]+)*$")


class RuleAttribute(BaseModel):
    type: AttributeType
    value: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _value_fits_type(self) -> "RuleAttribute":
        if self.type == "variable" and not _VARIABLE.match(self.value):
            raise ValueError(f"variable {self.value!r} is not of the form name=value")
        if self.type == "role" and self.value not in ROLES:
            raise ValueError(f"role {self.value!r} is not one of {', '.join(ROLES)}")
        if self.type == "karg" and not KARG.match(self.value):
            raise ValueError(
                f"karg {self.value!r} may hold only letters, digits, spaces and ._,:/=+@%~- (no $, quotes or newlines)"
            )
        if self.type == "label" and not LABEL.match(self.value):
            raise ValueError(f"label {self.value!r} is not key=value with a Kubernetes label key and value")
        if self.type == "taint" and not TAINT.match(self.value):
            raise ValueError(
                f"taint {self.value!r} is not key[=value]:effect with effect NoSchedule, PreferNoSchedule or NoExecute"
            )
        if self.type == "include" and not FRAGMENT_NAME.match(self.value):
            raise ValueError(f"include {self.value!r} is not a fragment name (letters, digits, . _ -)")
        return self


class Rule(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    expression: str = Field(min_length=1, max_length=16_384)
    attributes: list[RuleAttribute] = Field(default_factory=list, max_length=64)
    enabled: bool = True


class Attributes(BaseModel):
    """What a machine holds after its rules ran (DESIGN.md section 5)."""

    role: str = ""
    labels: list[str] = Field(default_factory=list)
    taints: list[str] = Field(default_factory=list)
    includes: list[str] = Field(default_factory=list)
    variables: dict[str, str] = Field(default_factory=dict)
    kargs: list[str] = Field(default_factory=list)


class RulesRequest(BaseModel):
    cluster: str
    machine_id: str
    is_new: bool
    role: str = ""
    members: list[Member] = Field(default_factory=list)


class RulesVerdict(BaseModel):
    """The rules' answer for one machine; `has_rules` False means the cluster has none."""

    has_rules: bool
    role: str = ""
    errors: list[str] = Field(default_factory=list)
