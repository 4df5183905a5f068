"""Boot edges: the policy an edge acts on, its cached config, and its boot question and answer."""

from __future__ import annotations

import re
import uuid as uuidlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from activities.domain.ids import DnsLabel, IpAddress, Mac
from activities.domain.machine import BootInstruction


EdgeMode = Literal["preregistered", "catch-all", "discovery-pool"]
_MAC_PREFIX = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){0,5}$")


class EdgePolicy(BaseModel):
    """Which machines an edge answers, and where the ones it does not know go.

    `preregistered`: only machines registered in the control plane; `catch-all`: any machine,
    unknown ones into `cluster`; `discovery-pool`: any machine, unknown ones held until an
    operator places them. `mac_prefixes` (OUIs or whole MACs) narrow it further, so several
    clusters or edges can share one L2 `segment` without two edges answering one machine.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"mode": "catch-all", "cluster": "prod", "mac_prefixes": ["52:54:00"], "segment": "rack-a"},
        {"mode": "preregistered", "segment": "default"},
    ]})

    mode: EdgeMode = Field(default="preregistered", description="which machines it answers (see above)")
    cluster: DnsLabel | None = Field(default=None, description="where unknown machines go (catch-all); whose it serves")
    mac_prefixes: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=256, description="OUIs or whole MACs it answers; empty: any"
    )
    segment: str = Field(default="default", min_length=1, max_length=128, description="the L2 segment it serves")

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

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "rack-a", "policy": {"mode": "preregistered", "mac_prefixes": ["52:54:00"], "segment": "rack-a"},
        "known_macs": ["52:54:00:12:34:56"], "known_uuids": ["4c4c4544-0042-3510-8052-b4c04f4e3132"],
    }]})

    name: str = Field(description="the edge's name")
    policy: EdgePolicy = Field(description="which machines it answers")
    known_macs: list[str] = Field(default_factory=list, description="MACs of the machines it may answer")
    known_uuids: list[str] = Field(default_factory=list, description="SMBIOS UUIDs of the machines it may answer")

    def admits(self, mac: str, uuid: str | None) -> bool:
        if not self.policy.matches(mac):
            return False
        if self.policy.mode != "preregistered":
            return True
        return mac in self.known_macs or (uuid is not None and uuid in self.known_uuids)


class EdgeBootRequest(BaseModel):
    """An iPXE client asking its edge what to boot, with what iPXE knows about it."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"mac": "52:54:00:12:34:56", "uuid": "4c4c4544-0042-3510-8052-b4c04f4e3132", "serial": "CZ2024X1",
         "platform": "efi", "buildarch": "x86_64", "ip": "10.0.0.21"},
    ]})

    mac: Mac = Field(description="the booting NIC's MAC")
    uuid: str | None = Field(default=None, max_length=64, description="SMBIOS UUID as iPXE read it (garbage: dropped)")
    serial: str | None = Field(default=None, max_length=128, description="SMBIOS serial number")
    platform: str = Field(default="pcbios", pattern=r"^[a-z0-9_-]{1,16}$", description="iPXE ${platform}: pcbios, efi")
    buildarch: str = Field(default="x86_64", pattern=r"^[a-z0-9_-]{1,16}$", description="iPXE ${buildarch}")
    ip: IpAddress | None = Field(default=None, description="the address the request came from, as the edge saw it")

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

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "instruction": {"action": "discovery", "machine_id": "4c4c4544-0042-3510-8052-b4c04f4e3132", "boot": 1,
                        "state": "discovering", "is_new": True, "reason": "", "kargs": []},
        "token": "Zt9…(this boot's token)",
    }]})

    instruction: BootInstruction = Field(description="the workflow's answer, rendered by the edge as an iPXE script")
    token: str | None = Field(
        default=None, description="this boot's token (discovery and runtime boots), for the kernel line"
    )
