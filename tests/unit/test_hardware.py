"""What facts mean: PCI devices by class name, GPU count, preflight (per cluster), drift."""

from __future__ import annotations

from activities.domain import hardware as rules
from activities.domain.cluster import Preflight
from activities.domain.facts import Facts
from tests.api.test_discovery_api import VM_FACTS


def _facts(**changes) -> Facts:
    return Facts.model_validate(VM_FACTS | changes)


def test_pci_devices_are_grouped_by_lspci_class_name():
    grouped = rules.lspci(_facts())
    assert grouped["VGA compatible controller"] == [{"slot": "0000:00:02.0", "vendor": "0x1234", "device": "0x1111", "driver": None}]
    assert [d["vendor"] for d in grouped["Ethernet controller"]] == ["0x1af4"]
    assert rules.pci_class_name("0x030200") == "3D controller" and rules.pci_class_name("0xabcd00") == "Class abcd"
    gpus = [{"slot": f"0000:0{i}:00.0", "vendor": "0x10de", "device": "0x2330", "class": "0x030200"} for i in range(4)]
    assert len(rules.gpus(rules.lspci(_facts(pci=VM_FACTS["pci"] + gpus)))) == 5


def test_preflight_defaults_to_the_seed_requirements_and_is_configurable():
    assert rules.below_preflight(_facts(), Preflight()) == []
    tiny = _facts(architecture="aarch64", disks=[{"name": "vda", "size_bytes": 8 * 10**9}])
    assert rules.below_preflight(tiny, Preflight()) == [
        "architecture aarch64, needs x86_64", "largest disk 8.0 GB, needs one of 10 GB",
    ]
    strict = Preflight(min_cores=16, min_memory_bytes=64 << 30)
    assert rules.below_preflight(_facts(), strict) == ["2 CPU cores, needs 16", "4.0 GiB of memory, needs 64.0 GiB"]
    assert rules.below_preflight(_facts(disks=[]), Preflight(min_disk_bytes=0)) == []
    installed_3gib = _facts(memory={"total_bytes": int(2.93 * (1 << 30))})  # MemTotal of a 3 GiB machine
    assert rules.below_preflight(installed_3gib, Preflight()) == []
    assert rules.below_preflight(_facts(memory={"total_bytes": int(2.8 * (1 << 30))}), Preflight()) == [
        "2.8 GiB of memory, needs 3.0 GiB"
    ]


def test_drift_names_what_changed_between_boots():
    before = _facts()
    after = _facts(
        memory={"total_bytes": 8 << 30},
        disks=[*VM_FACTS["disks"], {"name": "vdb", "size_bytes": 10**12, "serial": "d2"}],
        nics=[{"name": "eth0", "mac": "52:54:00:00:00:99"}],
    )
    assert rules.drift(before, after) == [
        "memory 4.0 GiB -> 8.0 GiB", "disk d2 (1000.0 GB) new", "NIC 52:54:00:00:00:00 gone", "NIC 52:54:00:00:00:99 new",
    ]
    assert rules.drift(before, _facts()) == []
