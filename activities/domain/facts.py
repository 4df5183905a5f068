"""Discovery facts: the hardware report the discovery agent posts (open: unknown keys are kept),
and what the agent is told to do next."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from activities.domain.ids import Mac, smbios_uuid


class _Open(BaseModel):
    model_config = {"extra": "allow"}


class ProcessorFacts(_Open):
    count: int = Field(ge=1, le=65536, description="logical CPUs")
    model: str | None = Field(default=None, description="the first CPU's model name")


class MemoryFacts(_Open):
    total_bytes: int = Field(ge=0, description="usable memory (MemTotal)")


class DiskFacts(_Open):
    name: str = Field(max_length=64, description="the kernel's name: sda, nvme0n1")
    size_bytes: int = Field(ge=0, description="its size")
    model: str | None = Field(default=None, description="as sysfs reports it")
    serial: str | None = Field(default=None, description="as sysfs reports it")
    rotational: bool | None = Field(default=None, description="a spinning disk")


class NicFacts(_Open):
    name: str = Field(max_length=64, description="the kernel's name: eno1, eth0")
    mac: Mac = Field(description="its MAC")
    driver: str | None = Field(default=None, description="its kernel driver")
    speed_mbps: int | None = Field(default=None, description="link speed")
    link: bool | None = Field(default=None, description="carrier up")
    ipv4: str | None = Field(default=None, description="its address during discovery")


class PciFacts(_Open):
    slot: str = Field(description="domain:bus:device.function")
    vendor: str = Field(description="PCI vendor id, 0x10de")
    device: str = Field(description="PCI device id")
    class_: str = Field(alias="class", description="PCI class code, 0x030200 (rules read it by name: facts.lspci)")
    driver: str | None = Field(default=None, description="its kernel driver")


class DmiFacts(_Open):
    uuid: Annotated[str | None, Field(max_length=64), AfterValidator(smbios_uuid)] = Field(
        default=None, description="SMBIOS system UUID; empty: the firmware has none"
    )
    serial: str | None = Field(default=None, description="SMBIOS system serial number")
    vendor: str | None = Field(default=None, description="SMBIOS system vendor")
    product: str | None = Field(default=None, description="SMBIOS product name")
    board_serial: str | None = Field(default=None, description="SMBIOS baseboard serial number")


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
                 "product": "PowerEdge R650"},
         "bmc": {"driver": "ipmi", "address": "10.0.9.22", "mac": "d0:94:66:1a:2b:3c"}},
    ]})

    schema_: int = Field(default=1, alias="schema", description="the facts schema's version")
    boot: int | None = Field(default=None, description="the boot the agent runs in")
    architecture: str = Field(default="x86_64", description="uname -m")
    firmware: Literal["bios", "uefi"] | None = Field(default=None, description="how the machine booted")
    processors: ProcessorFacts = Field(description="its CPUs")
    processor0: str | None = Field(default=None, description="the first CPU's model name (older agents)")
    memory: MemoryFacts = Field(description="its memory")
    disks: list[DiskFacts] = Field(default_factory=list, max_length=1024, description="its block devices")
    nics: list[NicFacts] = Field(default_factory=list, max_length=256, description="its network interfaces")
    pci: list[PciFacts] = Field(default_factory=list, max_length=4096, description="its PCI devices")
    dmi: DmiFacts = Field(default_factory=DmiFacts, description="SMBIOS identity")
    bmc: dict[str, Any] | None = Field(default=None, description=(
        "the BMC's LAN address as the BMC reports it ({driver: ipmi, address, mac}), kept as the machine's "
        "discovered power address; one that is not usable is ignored, never a reason to refuse the facts"
    ))


MAX_POLL_WAIT_S = 30  # the longest an instruction poll is held (the agent asks 20, waits 30 for the answer)


class AgentInstruction(BaseModel):
    """What the discovery agent is told when it polls."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"action": "reboot", "reason": "reboot into the runtime image"},
        {"action": "wait", "reason": "waiting (holding)", "poll_after": 1},
    ]})

    action: Literal["wait", "reboot", "poweroff"] = Field(description="what the agent does next")
    reason: str = Field(default="", description="why, for the console")
    poll_after: int | None = Field(default=None, description=(
        "seconds to sleep before asking again; only in the answer to a long poll (`wait`): "
        "without it the agent keeps its own interval"))
