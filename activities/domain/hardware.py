"""What a machine's facts mean: preflight, drift between boots, and the views rules read.

Pure functions over the `Facts` the discovery agent reports; no I/O. The intake route uses
them to decide whether a machine may be admitted and what changed since its previous boot;
rules read `lspci` (devices grouped by PCI class name, as `lspci` names them) and the counts.
"""

from __future__ import annotations

from activities.domain.cluster import Preflight
from activities.domain.facts import Facts

# PCI class and subclass names (PCI Code and ID Assignment spec; pci.ids spells them so).
PCI_CLASSES = {
    0x0000: "Non-VGA unclassified device", 0x0001: "VGA compatible unclassified device",
    0x0100: "SCSI storage controller", 0x0101: "IDE interface", 0x0104: "RAID bus controller",
    0x0105: "ATA controller", 0x0106: "SATA controller", 0x0107: "Serial Attached SCSI controller",
    0x0108: "Non-Volatile memory controller", 0x0180: "Mass storage controller",
    0x0200: "Ethernet controller", 0x0207: "Infiniband controller", 0x0280: "Network controller",
    0x0300: "VGA compatible controller", 0x0301: "XGA compatible controller", 0x0302: "3D controller",
    0x0380: "Display controller",
    0x0400: "Multimedia video controller", 0x0401: "Multimedia audio controller", 0x0403: "Audio device",
    0x0480: "Multimedia controller",
    0x0500: "RAM memory", 0x0580: "Memory controller",
    0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0604: "PCI bridge", 0x0680: "Bridge",
    0x0700: "Serial controller", 0x0780: "Communication controller",
    0x0880: "System peripheral", 0x0c03: "USB controller", 0x0c05: "SMBus", 0x0c80: "Serial bus controller",
    0x1080: "Encryption controller", 0x1200: "Processing accelerators", 0xff00: "Unassigned class",
}
GPU_CLASSES = ("VGA compatible controller", "3D controller", "Display controller")
# The agent reports usable memory (MemTotal), which firmware and kernel reservations keep a few
# percent below what is installed: a 3 GiB machine reports about 2.9 GiB. Preflight allows that.
USABLE_MEMORY = 0.95


def pci_class_name(class_code: str) -> str:
    """'0x030000' -> 'VGA compatible controller' (class and subclass; the interface is ignored)."""
    try:
        value = int(class_code, 16) >> 8
    except ValueError:
        return "Unknown class"
    return PCI_CLASSES.get(value, f"Class {value:04x}")


def lspci(facts: Facts) -> dict[str, list[dict]]:
    """PCI devices grouped by class name: facts.lspci["VGA compatible controller"]."""
    grouped: dict[str, list[dict]] = {}
    for device in facts.pci:
        entry = {"slot": device.slot, "vendor": device.vendor, "device": device.device, "driver": device.driver}
        grouped.setdefault(pci_class_name(device.class_), []).append(entry)
    return grouped


def gpus(grouped: dict[str, list[dict]]) -> list[dict]:
    """The GPUs among PCI devices already grouped by `lspci` (what rules see as candidate.gpus)."""
    return [device for name in GPU_CLASSES for device in grouped.get(name, [])]


def below_preflight(facts: Facts, preflight: Preflight) -> list[str]:
    """Why this machine may not join (empty when it may)."""
    problems = []
    if facts.architecture not in preflight.architectures:
        problems.append(f"architecture {facts.architecture}, needs {' or '.join(preflight.architectures)}")
    if facts.processors.count < preflight.min_cores:
        problems.append(f"{facts.processors.count} CPU cores, needs {preflight.min_cores}")
    if facts.memory.total_bytes < preflight.min_memory_bytes * USABLE_MEMORY:
        problems.append(f"{_gib(facts.memory.total_bytes)} of memory, needs {_gib(preflight.min_memory_bytes)}")
    largest = max((d.size_bytes for d in facts.disks), default=0)
    if largest < preflight.min_disk_bytes:
        problems.append(f"largest disk {largest / 1e9:.1f} GB, needs one of {preflight.min_disk_bytes / 1e9:.0f} GB")
    return problems


def drift(previous: Facts, current: Facts) -> list[str]:
    """What changed in the hardware since the previous boot, in words an operator reads."""
    changes = []
    if previous.processors.count != current.processors.count:
        changes.append(f"CPU cores {previous.processors.count} -> {current.processors.count}")
    if (previous.processor0 or previous.processors.model) != (current.processor0 or current.processors.model):
        changes.append(f"CPU {previous.processor0 or previous.processors.model} -> {current.processor0 or current.processors.model}")
    if previous.memory.total_bytes != current.memory.total_bytes:
        changes.append(f"memory {_gib(previous.memory.total_bytes)} -> {_gib(current.memory.total_bytes)}")
    before = {(d.serial or d.name, d.size_bytes) for d in previous.disks}
    after = {(d.serial or d.name, d.size_bytes) for d in current.disks}
    changes += [f"disk {name} ({size / 1e9:.1f} GB) gone" for name, size in sorted(before - after)]
    changes += [f"disk {name} ({size / 1e9:.1f} GB) new" for name, size in sorted(after - before)]
    old_macs, new_macs = {n.mac for n in previous.nics}, {n.mac for n in current.nics}
    changes += [f"NIC {mac} gone" for mac in sorted(old_macs - new_macs)]
    changes += [f"NIC {mac} new" for mac in sorted(new_macs - old_macs)]
    return changes


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.1f} GiB"
