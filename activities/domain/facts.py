"""Discovery facts: the hardware report the discovery agent posts (open: unknown keys are kept),
and what the agent is told to do next."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from activities.domain.ids import Mac, smbios_uuid


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

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"schema": 1, "boot": 1, "architecture": "x86_64", "firmware": "uefi",
         "processors": {"count": 8, "model": "Intel(R) Xeon(R) Silver 4208 CPU @ 2.10GHz"},
         "memory": {"total_bytes": 33554432000},
         "disks": [{"name": "nvme0n1", "size_bytes": 960197124096, "model": "SAMSUNG MZ7L3960", "rotational": False}],
         "nics": [{"name": "eno1", "mac": "52:54:00:12:34:56", "driver": "ixgbe", "speed_mbps": 10000, "link": True}],
         "pci": [{"slot": "0000:3b:00.0", "vendor": "0x10de", "device": "0x20b5", "class": "0x030200", "driver": "nvidia"}],
         "dmi": {"uuid": "4c4c4544-0042-3510-8052-b4c04f4e3132", "serial": "CZ2024X1", "vendor": "Dell Inc.",
                 "product": "PowerEdge R650"}},
    ]})

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

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"action": "reboot", "reason": "reboot into the runtime image"}, {"action": "wait", "reason": "waiting (holding)"},
    ]})

    action: Literal["wait", "reboot", "poweroff"]
    reason: str = ""
