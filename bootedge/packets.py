"""The proxyDHCP conversation, read and written with scapy. Pure functions: no sockets here.

A proxyDHCP server never hands out addresses (yiaddr stays 0); it only tells PXE clients what
to boot. Facts about the clients come from captures of real ones (shared/reference/pxe-lab.md):
option 93 is the architecture (0 BIOS, 7/9 EFI x64, 16 HTTP boot), option 77 is the raw bytes
`iPXE` once iPXE runs, `undionly.kpxe` sends only `PXEClient` in option 60 (so decide by 93, not
by the text of 60), and option 97 is the SMBIOS UUID with its first three fields little-endian.
We answer in one packet: siaddr + file + option 43 {6: 0x08} ("use the file in this packet, no
boot server discovery"), which both iPXE and EDK2 boot from, and we also answer the 4011
REQUEST that clients following the PXE boot-server protocol send.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from enum import Enum

from scapy.layers.dhcp import BOOTP, DHCP

DHCP_SERVER_PORT = 67
PXE_PORT = 4011
DISCOVER, OFFER, REQUEST, ACK, INFORM = 1, 2, 3, 5, 8
# Option 43, PXE vendor options: PXE_DISCOVERY_CONTROL (6) = 0x08, "boot the file given here".
USE_BOOTFILE = b"\x06\x01\x08\xff"


class ClientKind(str, Enum):
    IPXE = "ipxe"  # already iPXE: give it the HTTP script
    BIOS = "bios"  # firmware PXE on BIOS: iPXE for BIOS by TFTP
    EFI = "efi"  # firmware PXE on x86-64 UEFI: iPXE for EFI by TFTP
    HTTP = "http"  # UEFI HTTP Boot: iPXE for EFI by HTTP


@dataclass(frozen=True)
class PxeRequest:
    """What a PXE client asked, reduced to the fields an answer depends on."""

    message_type: int
    xid: int
    flags: int
    ciaddr: str
    giaddr: str
    chaddr: bytes
    mac: str
    arch: int | None
    vendor_class: str
    ipxe: bool
    uuid_option: bytes | None
    server_id: str | None

    @property
    def uuid(self) -> str | None:
        """The SMBIOS UUID from option 97 (type 0 + 16 bytes, first fields little-endian)."""
        raw = self.uuid_option
        if raw is None or len(raw) != 17 or raw[0] != 0:
            return None
        return str(uuidlib.UUID(bytes_le=raw[1:17]))


@dataclass(frozen=True)
class EdgeAddress:
    """Where this edge serves TFTP and HTTP, and which iPXE builds it hands out."""

    ip: str
    http_port: int = 8080
    bios_file: str = "undionly.kpxe"
    efi_file: str = "snponly.efi"

    @property
    def http(self) -> str:
        return f"http://{self.ip}:{self.http_port}"


def _options(packet: DHCP) -> dict:
    return {opt[0]: opt[1] for opt in packet.options if isinstance(opt, tuple) and len(opt) >= 2}


def parse(data: bytes) -> PxeRequest | None:
    """A PXE or HTTP-boot client's request, or None for anything else (including garbage)."""
    try:
        packet = BOOTP(data)
    except Exception:  # scapy raises many kinds on truncated or hostile input
        return None
    if packet.op != 1 or DHCP not in packet or packet.hlen != 6:
        return None
    options = _options(packet[DHCP])
    vendor = options.get("vendor_class_id", b"")
    message_type = options.get("message-type")
    if not isinstance(vendor, bytes) or not isinstance(message_type, int):
        return None
    vendor_class = vendor.decode("ascii", "replace")
    if not vendor_class.startswith(("PXEClient", "HTTPClient")):
        return None
    arch_raw = options.get("pxe_client_architecture")
    arch = int.from_bytes(arch_raw[:2], "big") if isinstance(arch_raw, bytes) and len(arch_raw) >= 2 else None
    uuid_option = options.get("pxe_client_machine_identifier")
    server_id = options.get("server_id")
    chaddr = bytes(packet.chaddr)[:16].ljust(16, b"\0")
    return PxeRequest(
        message_type=message_type,
        xid=packet.xid,
        flags=int(packet.flags),
        ciaddr=packet.ciaddr,
        giaddr=packet.giaddr,
        chaddr=chaddr,
        mac=":".join(f"{b:02x}" for b in chaddr[:6]),
        arch=arch,
        vendor_class=vendor_class,
        ipxe=options.get("user_class") == b"iPXE",
        uuid_option=uuid_option if isinstance(uuid_option, bytes) else None,
        server_id=server_id if isinstance(server_id, str) else None,
    )


def client_kind(request: PxeRequest) -> ClientKind | None:
    """What kind of client this is, or None for one we have no iPXE build for."""
    if request.ipxe:
        return ClientKind.IPXE
    if request.vendor_class.startswith("HTTPClient"):
        return ClientKind.HTTP if request.arch == 16 else None
    if request.arch == 0:
        return ClientKind.BIOS
    if request.arch in (7, 9):
        return ClientKind.EFI
    return None


def bootfile(kind: ClientKind, edge: EdgeAddress) -> str:
    return {
        ClientKind.IPXE: f"{edge.http}/boot.ipxe",
        ClientKind.BIOS: edge.bios_file,
        ClientKind.EFI: edge.efi_file,
        ClientKind.HTTP: f"{edge.http}/ipxe/{edge.efi_file}",
    }[kind]


def answers(request: PxeRequest, port: int) -> bool:
    """Which requests a proxyDHCP answers: DISCOVERs on 67, REQUEST/INFORM sent to us on 4011.
    REQUESTs on 67 belong to the site's DHCP server."""
    if port == DHCP_SERVER_PORT:
        return request.message_type == DISCOVER
    return request.message_type in (REQUEST, INFORM)


def reply(request: PxeRequest, kind: ClientKind, edge: EdgeAddress) -> bytes:
    """The proxy OFFER (to a DISCOVER) or ACK (to a 4011 REQUEST): never an address."""
    http_boot = kind is ClientKind.HTTP
    options: list = [
        ("message-type", OFFER if request.message_type == DISCOVER else ACK),
        ("server_id", edge.ip),
        ("vendor_class_id", b"HTTPClient" if http_boot else b"PXEClient"),
    ]
    if request.uuid_option is not None:
        options.append((97, request.uuid_option))
    if not http_boot:
        options.append(("vendor_specific", USE_BOOTFILE))
    options.append("end")
    packet = BOOTP(
        op=2,
        htype=1,
        hlen=6,
        xid=request.xid,
        flags=request.flags,
        ciaddr=request.ciaddr if request.message_type != DISCOVER else "0.0.0.0",
        yiaddr="0.0.0.0",
        siaddr=edge.ip,
        giaddr=request.giaddr,
        chaddr=request.chaddr,
        file=bootfile(kind, edge).encode(),
    ) / DHCP(options=options)
    return bytes(packet)


def destination(request: PxeRequest, source: tuple[str, int], port: int) -> tuple[str, int]:
    """Where the answer goes: through the relay when relayed, back to the sender on 4011,
    else broadcast (the client has no address yet)."""
    if request.giaddr != "0.0.0.0":
        return (request.giaddr, DHCP_SERVER_PORT)
    if port == PXE_PORT:
        return source
    return ("255.255.255.255", 68)
