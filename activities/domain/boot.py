"""The kernel command line of a PXE boot: what the edge puts on iPXE's `kernel` line.

It lives in the domain, not beside the image builders, because two sides need it: the edge
renders it for every boot, and the runtime image's own tests boot QEMU with it. The edge must
not load the builders (they pull in apt, mmdebstrap and rich) just to write a line of text.
"""

from __future__ import annotations

from activities.domain.machine import BootInstruction
from activities.domain.rules import KARG

# Kernel and boot messages on the screen and on the first serial port (the BMC's
# serial-over-LAN); the last one is /dev/console.
CONSOLE_ARGS = ("console=tty0", "console=ttyS0,115200n8")


def runtime_image_args(image_url: str) -> list[str]:
    """The kernel arguments the runtime image needs to boot from RAM, root.squashfs at image_url.

    - `boot=live`: initramfs-tools runs live-boot's `scripts/live` instead of mounting a disk.
    - `fetch=URL`: live-boot takes a DHCP lease (klibc ipconfig) on the boot NIC, downloads the
      squashfs with wget into a ramfs, loop-mounts it read-only and puts a tmpfs overlay on top
      (no `persistence` argument: nothing is written to disk). The boot NIC is the one whose MAC
      BOOTIF=01-aa-bb-.. names (iPXE adds it; live-boot looks it up in /sys/class/net); without
      BOOTIF, live-boot tries every NIC with a link, in turn, until one gets a lease.
    - `ip=frommedia`: live-boot keeps the image's /etc/network/interfaces (otherwise it writes a
      DHCP stanza for every NIC, dropping the `source interfaces.d` line cloud-init relies on).
      Any `ip=` also makes cloud-init use the initramfs's lease (/run/net-NIC.conf) as the
      network configuration: DHCP on the boot NIC only, by ifupdown. Do not pass `ip=dhcp`:
      live-boot would read "dhcp" as a static address.
    - `ethdevice-timeout=60`: seconds live-boot's DHCP waits for a lease (15 by default), for
      switch ports that are slow to forward after the NIC driver resets the link.
    - `panic=30`: if the root cannot be fetched, the initramfs (and the kernel, on a panic)
      reboots after 30 s, so the machine goes back to PXE instead of waiting at a shell.
    - CONSOLE_ARGS, so the image boots visibly even without the edge's arguments (the QEMU tests).

    Not included: BOOTIF and cloud-init's `ds=nocloud-net;s=SEED_URL` (per machine, added by
    `kernel_args`); live-config's options (live-config is not in the image: cloud-init configures).
    """
    return ["boot=live", f"fetch={image_url}", "ip=frommedia", "ethdevice-timeout=60", "panic=30", *CONSOLE_ARGS]


def kernel_args(edge_url: str, instruction: BootInstruction, token: str) -> list[str]:
    """Every argument of the boot's kernel line, each once: the image's own, the machine's
    identity for the agent or cloud-init, and (runtime boots) the seed and the machine's kargs.

    The machine's kargs are split at spaces (a karg attribute may hold several) and dropped
    where they repeat one already on the line; the rest keep their order, last.
    """
    machine = [
        f"tempered.url={edge_url}",
        f"tempered.machine={instruction.machine_id}",
        f"tempered.boot={instruction.boot}",
        f"tempered.token={token}",
        "BOOTIF=01-${netX/mac:hexhyp}",
    ]
    if instruction.action == "discovery":
        return [*machine, *CONSOLE_ARGS]
    seed = f"{edge_url}/machines/{instruction.machine_id}/{token}/"
    own = [*runtime_image_args(f"{edge_url}/images/runtime/root.squashfs"), *machine, f"ds=nocloud-net;s={seed}"]
    extra = [arg for karg in instruction.kargs if KARG.match(karg) for arg in karg.split()]
    # An argument given twice is kept once, at its last place: the kernel takes the last
    # `console=` as /dev/console, so a machine's own karg still overrides the image's.
    return list(reversed(dict.fromkeys(reversed([*own, *extra]))))
