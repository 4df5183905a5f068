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

import socket
import struct
import uuid as uuidlib
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from scapy.layers.dhcp import BOOTP, DHCP

DHCP_SERVER_PORT = 67
PXE_PORT = 4011
DISCOVER, OFFER, REQUEST, ACK, INFORM = 1, 2, 3, 5, 8
# Option 43, PXE vendor options: PXE_DISCOVERY_CONTROL (6) = 0x08, "boot the file given here".
USE_BOOTFILE = b"\x06\x01\x08\xff"
MAGIC_COOKIE = b"\x63\x82\x53\x63"
CLIENT_IDENTIFIER_LENGTH = 17  # option 97: type 0 + 16-byte UUID (RFC 4578 2.3)
# op htype hlen hops | xid | secs flags | ciaddr yiaddr siaddr giaddr | chaddr (RFC 2131 figure 1)
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s")


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
    uuid_option: bytes | None  # option 97, only when well-formed (see `_client_identifier`)
    server_id: str | None
    boot_item: bytes | None = None  # option 43 sub-option 71 (type + layer), sent on 4011

    @property
    def uuid(self) -> str | None:
        """The SMBIOS UUID from option 97 (type 0 + 16 bytes, first fields little-endian)."""
        raw = self.uuid_option
        return str(uuidlib.UUID(bytes_le=raw[1:17])) if raw is not None else None


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


def parse(data: bytes) -> PxeRequest | None:
    """A PXE or HTTP-boot client's request, or None for anything else (including garbage).

    This is the per-packet hot path of a boot storm, so it reads only what an answer needs: the
    fixed BOOTP header with `struct` and the options with the same bounds-checked TLV walk used
    for option 43 (a lying length ends the walk). Replies are still laid out by scapy."""
    if len(data) < 241 or data[236:240] != MAGIC_COOKIE:
        return None
    op, _htype, hlen, _hops, xid, _secs, flags, ciaddr, _yi, _si, giaddr, chaddr = _HEADER.unpack_from(data)
    if op != 1 or hlen != 6:
        return None
    options = dict(_suboptions(data[240:]))
    vendor, message_type = options.get(60, b""), options.get(53, b"")
    if len(message_type) != 1 or not vendor.startswith((b"PXEClient", b"HTTPClient")):
        return None
    arch, server_id, vendor_options = options.get(93, b""), options.get(54, b""), options.get(43)
    return PxeRequest(
        message_type=message_type[0],
        xid=xid,
        flags=flags,
        ciaddr=socket.inet_ntoa(ciaddr),
        giaddr=socket.inet_ntoa(giaddr),
        chaddr=chaddr,
        mac=chaddr[:6].hex(":"),
        arch=int.from_bytes(arch[:2], "big") if len(arch) >= 2 else None,
        vendor_class=vendor.decode("ascii", "replace"),
        ipxe=options.get(77) == b"iPXE",
        uuid_option=_client_identifier(options.get(97)),
        server_id=socket.inet_ntoa(server_id) if len(server_id) == 4 else None,
        boot_item=_boot_item(vendor_options) if vendor_options is not None else None,
    )


def _walk(data: bytes, start: int = 0):
    """(code, offset, length) of each option in a DHCP option area, or in an encapsulated
    option such as 43: skips PAD, stops at END or at a length that runs past the data."""
    i = start
    while i + 1 < len(data) and data[i] != 255:
        code, length = data[i], data[i + 1]
        if code == 0:
            i += 1
            continue
        if i + 2 + length > len(data):
            return
        yield code, i + 2, length
        i += 2 + length


def _suboptions(data: bytes):
    """(code, value) pairs of an option area."""
    for code, at, length in _walk(data):
        yield code, data[at : at + length]


def _client_identifier(value: bytes | None) -> bytes | None:
    """Option 97 if it is what RFC 4578 allows (type 0 + a 16-byte UUID), else None.

    The reply echoes it into a fixed 17-byte slot of a cached template; any other length would
    shift the options after it (option 43) or run past the packet, so a malformed one is dropped
    here, where it enters, and the client is answered as if it had sent none."""
    if value is None or len(value) != CLIENT_IDENTIFIER_LENGTH or value[0] != 0:
        return None
    return value


def _boot_item(vendor_options: bytes) -> bytes | None:
    return next((value for code, value in _suboptions(vendor_options) if code == 71 and len(value) == 4), None)


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
    """The proxy OFFER (to a DISCOVER) or ACK (to a 4011 REQUEST): never an address.

    The packet is laid out by scapy once per shape (client kind, message, whether a UUID and a
    boot item are echoed) and cached; each answer only patches in this client's fields. A boot
    storm then costs a copy per client instead of a scapy build."""
    message_type = OFFER if request.message_type == DISCOVER else ACK
    template, uuid_at, item_at = _template(kind, message_type, edge, request.uuid_option is not None, request.boot_item is not None)
    packet = bytearray(template)
    packet[4:8] = request.xid.to_bytes(4, "big")
    packet[10:12] = request.flags.to_bytes(2, "big")
    packet[12:16] = socket.inet_aton(request.ciaddr if message_type == ACK else "0.0.0.0")
    packet[24:28] = socket.inet_aton(request.giaddr)
    packet[28:44] = request.chaddr
    if uuid_at is not None:
        packet[uuid_at : uuid_at + CLIENT_IDENTIFIER_LENGTH] = request.uuid_option
    if item_at is not None:
        packet[item_at : item_at + 4] = request.boot_item
    return bytes(packet)


@lru_cache(maxsize=256)
def _template(
    kind: ClientKind, message_type: int, edge: EdgeAddress, with_uuid: bool, with_item: bool
) -> tuple[bytes, int | None, int | None]:
    """A reply of this shape with zeroed client fields, and where the UUID and boot item go."""
    http_boot = kind is ClientKind.HTTP
    options: list = [
        ("message-type", message_type),
        ("server_id", edge.ip),
        ("vendor_class_id", b"HTTPClient" if http_boot else b"PXEClient"),
    ]
    if with_uuid:
        options.append((97, bytes(CLIENT_IDENTIFIER_LENGTH)))
    if with_item:  # a boot server's ACK echoes the boot item the client asked for
        options.append(("vendor_specific", b"\x47\x04" + bytes(4) + b"\xff"))
    elif not http_boot:
        options.append(("vendor_specific", USE_BOOTFILE))
    options.append("end")
    packet = bytes(
        BOOTP(op=2, htype=1, hlen=6, siaddr=edge.ip, chaddr=bytes(16), file=bootfile(kind, edge).encode())
        / DHCP(options=options)
    )
    found = {code: at for code, at, _ in _walk(packet, 240)}  # after the header and magic cookie
    uuid_at = found[97] if with_uuid else None
    item_at = found[43] + 2 if with_item else None
    return packet, uuid_at, item_at


def destination(request: PxeRequest, source: tuple[str, int], port: int) -> tuple[str, int]:
    """Where the answer goes: through the relay when relayed, back to the sender on 4011,
    else broadcast (the client has no address yet)."""
    if request.giaddr != "0.0.0.0":
        return (request.giaddr, DHCP_SERVER_PORT)
    if port == PXE_PORT:
        return source
    return ("255.255.255.255", 68)
