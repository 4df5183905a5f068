"""proxyDHCP answers to real PXE clients: the DISCOVERs captured from QEMU's BIOS and UEFI iPXE
(shared/testdata/pxe-clients), the 4011 REQUEST those clients send to a boot server, and the
firmware clients derived from them. Every field of every answer is checked."""

from __future__ import annotations


import pytest
from scapy.all import rdpcap
from scapy.layers.dhcp import BOOTP, DHCP

from bootedge import packets
from bootedge.packets import ClientKind, EdgeAddress
from tests.testdata import CAPTURES

EDGE = EdgeAddress(ip="10.213.0.3", http_port=8080)
UUID_97 = b"\x00\x1e\x1co\x8dz;.L\x9f\x00\x00\x00\x00\x00\x00\xa1"


def _requests(name: str) -> list[BOOTP]:
    return [p[BOOTP] for p in rdpcap(str(CAPTURES / name)) if BOOTP in p and p[BOOTP].op == 1]


def _discover(name: str) -> bytes:
    return bytes(_requests(name)[0])


def _options(packet: BOOTP) -> dict:
    return {o[0]: o[1] for o in packet[DHCP].options if isinstance(o, tuple)}


def _with_options(data: bytes, drop=(), replace: dict | None = None, flags: int | None = None) -> bytes:
    """A captured request with some options dropped or replaced (a different firmware client)."""
    packet = BOOTP(data)
    kept = [o for o in packet[DHCP].options if not (isinstance(o, tuple) and o[0] in drop)]
    replace = replace or {}
    kept = [(o[0], replace.pop(o[0])) if isinstance(o, tuple) and o[0] in replace else o for o in kept]
    kept = kept[:-1] + list(replace.items()) + ["end"] if replace else kept
    packet[DHCP].options = kept
    if flags is not None:
        packet.flags = flags
    return bytes(packet)


def assert_well_formed_reply(answer: bytes) -> BOOTP:
    """`answer` is a well-formed proxyDHCP reply, byte by byte: a BOOTP header with the magic
    cookie, then options that are each a code + length + value fitting in the packet, ended by
    END with nothing but zero padding after it; no PAD between options (the replies are built
    without any, so a PAD means a shifted option); the options a PXE client reads have their
    RFC lengths (53: 1, 54: 4, 97: type 0 + 16 bytes) and option 43's sub-options end in its
    own END. scapy reads it back to the same bytes, with nothing left over."""
    assert len(answer) > 240 and answer[236:240] == packets.MAGIC_COOKIE, "no BOOTP header and magic cookie"
    seen: dict[int, bytes] = {}
    at = 240
    while answer[at] != 255:
        code = answer[at]
        assert code != 0, f"PAD inside the options at byte {at}: an option was shifted"
        assert at + 2 <= len(answer) and at + 2 + answer[at + 1] < len(answer), f"option {code} runs past the packet"
        assert code not in seen, f"option {code} twice"
        seen[code] = answer[at + 2 : at + 2 + answer[at + 1]]
        at += 2 + answer[at + 1]
    assert set(answer[at + 1 :]) <= {0}, "bytes after END"
    assert len(seen[53]) == 1 and seen[53][0] in (packets.OFFER, packets.ACK)
    assert len(seen[54]) == 4
    if 97 in seen:
        assert len(seen[97]) == 17 and seen[97][0] == 0, seen[97]
    if 43 in seen:
        sub, i = seen[43], 0
        while sub[i] != 255:
            assert i + 2 + sub[i + 1] < len(sub), f"option 43 sub-option {sub[i]} runs past option 43"
            i += 2 + sub[i + 1]
        assert i == len(sub) - 1, "option 43 does not end with its END"
    reply = BOOTP(answer)
    assert reply.op == 2 and reply.htype == 1 and reply.hlen == 6
    assert DHCP in reply and reply[DHCP].options[-1] == "end"
    assert all(isinstance(o, tuple) for o in reply[DHCP].options[:-1]), reply[DHCP].options
    assert bytes(reply) == answer and not bytes(reply[DHCP].payload).strip(b"\0")
    return reply


def _assert_answer(answer: bytes, request: BOOTP, message_type: int, file: str, vendor: bytes, option_43: bool | bytes):
    reply = assert_well_formed_reply(answer)
    assert reply.op == 2 and reply.htype == 1 and reply.hlen == 6
    assert reply.xid == request.xid
    assert reply.flags == request.flags
    assert reply.yiaddr == "0.0.0.0"  # a proxy never offers an address
    assert reply.siaddr == EDGE.ip
    assert reply.giaddr == request.giaddr
    assert bytes(reply.chaddr)[:6] == bytes(request.chaddr)[:6]
    assert reply.file.rstrip(b"\0").decode() == file
    options = _options(reply)
    assert options["message-type"] == message_type
    assert options["server_id"] == EDGE.ip
    assert options["vendor_class_id"] == vendor
    assert options["pxe_client_machine_identifier"] == UUID_97
    assert ("vendor_specific" in options) == bool(option_43)
    if option_43:
        assert options["vendor_specific"] == (packets.USE_BOOTFILE if option_43 is True else option_43)
    assert "yiaddr" not in options and "lease_time" not in options and "subnet_mask" not in options
    return reply


@pytest.mark.parametrize(
    "capture, arch",
    [("bios-ipxe-dnsmasq-proxy.pcap", 0), ("uefi-ipxe-dnsmasq-proxy.pcap", 7), ("bios-undionly-chainload.pcap", 0)],
)
def test_ipxe_discover_gets_the_http_script(capture, arch):
    data = _discover(capture)
    request = packets.parse(data)
    assert request is not None
    assert (request.arch, request.ipxe, request.mac) == (arch, True, "52:54:00:12:34:56")
    assert request.uuid == "8d6f1c1e-3b7a-4c2e-9f00-0000000000a1"
    kind = packets.client_kind(request)
    assert kind is ClientKind.IPXE
    assert packets.answers(request, 67)
    answer = packets.reply(request, kind, EDGE)
    _assert_answer(answer, BOOTP(data), packets.OFFER, "http://10.213.0.3:8080/boot.ipxe", b"PXEClient", True)
    assert packets.destination(request, ("0.0.0.0", 68), 67) == ("255.255.255.255", 68)


def test_the_uuid_is_decoded_in_smbios_byte_order():
    request = packets.parse(_discover("bios-ipxe-dnsmasq-proxy.pcap"))
    # raw 1e1c6f8d-7a3b-2e4c-9f00-...: first three fields little-endian on the wire
    assert request.uuid == "8d6f1c1e-3b7a-4c2e-9f00-0000000000a1"


@pytest.mark.parametrize(
    "capture, arch, file, kind",
    [
        ("bios-ipxe-dnsmasq-proxy.pcap", 0, "undionly.kpxe", ClientKind.BIOS),
        ("uefi-ipxe-dnsmasq-proxy.pcap", 7, "snponly.efi", ClientKind.EFI),
        ("uefi-ipxe-dnsmasq-proxy.pcap", 9, "snponly.efi", ClientKind.EFI),
    ],
)
def test_firmware_pxe_gets_ipxe_by_tftp(capture, arch, file, kind):
    """The firmware's own PXE client: no option 77; EDK2 also sets the broadcast flag."""
    data = _with_options(
        _discover(capture), drop=("user_class", 175), replace={"pxe_client_architecture": arch.to_bytes(2, "big")},
        flags=0x8000,
    )
    request = packets.parse(data)
    assert packets.client_kind(request) is kind
    _assert_answer(packets.reply(request, kind, EDGE), BOOTP(data), packets.OFFER, file, b"PXEClient", True)


def test_undionly_kpxe_says_only_pxeclient_and_is_recognised_by_option_77():
    data = _with_options(_discover("bios-undionly-chainload.pcap"), replace={"vendor_class_id": b"PXEClient"})
    request = packets.parse(data)
    assert request.vendor_class == "PXEClient" and packets.client_kind(request) is ClientKind.IPXE


def test_uefi_http_boot_gets_efi_ipxe_over_http():
    data = _with_options(
        _discover("uefi-ipxe-dnsmasq-proxy.pcap"), drop=("user_class", 175),
        replace={"vendor_class_id": b"HTTPClient:Arch:00016:UNDI:003000", "pxe_client_architecture": b"\x00\x10"},
    )
    request = packets.parse(data)
    assert packets.client_kind(request) is ClientKind.HTTP
    _assert_answer(
        packets.reply(request, ClientKind.HTTP, EDGE), BOOTP(data), packets.OFFER,
        "http://10.213.0.3:8080/ipxe/snponly.efi", b"HTTPClient", False,
    )


def test_the_4011_request_gets_a_unicast_ack():
    """After its address from the site DHCP, a PXE client asks the boot server on 4011; as a PXE
    boot server, the ACK echoes the boot item (option 43, sub-option 71) it asked for."""
    discover = BOOTP(_discover("uefi-ipxe-dnsmasq-proxy.pcap"))
    discover.ciaddr = "10.213.0.111"
    options = [o for o in discover[DHCP].options if isinstance(o, tuple) and o[0] != "message-type"]
    discover[DHCP].options = [("message-type", 3), *options, ("vendor_specific", b"\x47\x04\x80\x02\x00\x00\xff"), "end"]
    data = bytes(discover)
    request = packets.parse(data)
    assert packets.answers(request, packets.PXE_PORT) and not packets.answers(request, 67)
    assert request.boot_item == b"\x80\x02\x00\x00"
    reply = _assert_answer(
        packets.reply(request, ClientKind.IPXE, EDGE), BOOTP(data), packets.ACK,
        "http://10.213.0.3:8080/boot.ipxe", b"PXEClient", b"\x47\x04\x80\x02\x00\x00\xff",  # item echoed
    )
    assert reply.ciaddr == "10.213.0.111"
    assert packets.destination(request, ("10.213.0.111", 4011), packets.PXE_PORT) == ("10.213.0.111", 4011)


def test_relayed_requests_are_answered_through_the_relay():
    packet = BOOTP(_discover("bios-ipxe-dnsmasq-proxy.pcap"))
    packet.giaddr = "10.9.0.1"
    data = bytes(packet)
    request = packets.parse(data)
    reply = _assert_answer(
        packets.reply(request, ClientKind.IPXE, EDGE), packet, packets.OFFER,
        "http://10.213.0.3:8080/boot.ipxe", b"PXEClient", True,
    )
    assert reply.giaddr == "10.9.0.1"
    assert packets.destination(request, ("10.9.0.1", 67), 67) == ("10.9.0.1", 67)


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.pcap")))
def test_requests_meant_for_others_get_no_answer(capture):
    """Every REQUEST to the site DHCP server, and the discovery OS's own DHCP: silence."""
    for request_packet in _requests(capture):
        request = packets.parse(bytes(request_packet))
        options = _options(request_packet)
        if options.get("vendor_class_id", b"").startswith(b"PXEClient") and options["message-type"] == 1:
            continue
        assert request is None or not packets.answers(request, 67), options


def test_unknown_architectures_are_left_alone():
    data = _with_options(
        _discover("uefi-ipxe-dnsmasq-proxy.pcap"), drop=("user_class",), replace={"pxe_client_architecture": b"\x00\x0b"}
    )
    assert packets.client_kind(packets.parse(data)) is None


@pytest.mark.parametrize(
    "identifier",
    [b"", b"\x00", b"\x00" + b"\xab" * 15, b"\x00" + b"\xab" * 17, b"\x00" + b"\xab" * 254, b"\x01" + b"\xab" * 16],
    ids=["length-0", "length-1", "length-16", "length-18", "length-255", "type-1"],
)
@pytest.mark.parametrize("kind", [ClientKind.IPXE, ClientKind.BIOS])
def test_a_malformed_option_97_is_not_echoed_and_the_reply_stays_intact(identifier, kind):
    """RFC 4578: option 97 is type 0 + a 16-byte UUID. Any other one is dropped where it enters
    (parse): the reply carries no option 97 and its option 43 and END are where they belong.
    Before, its bytes were pasted into the reply's 17-byte slot, overwriting option 43 or
    running past the packet."""
    drop = ("user_class", 175) if kind is ClientKind.BIOS else ()
    data = _with_options(
        _discover("bios-ipxe-dnsmasq-proxy.pcap"), drop=drop, replace={"pxe_client_machine_identifier": identifier}
    )
    assert _options(BOOTP(data))["pxe_client_machine_identifier"] == identifier  # the crafted client sends it
    request = packets.parse(data)
    assert packets.client_kind(request) is kind
    reply = assert_well_formed_reply(packets.reply(request, kind, EDGE))
    assert reply[DHCP].options == [
        ("message-type", packets.OFFER), ("server_id", EDGE.ip), ("vendor_class_id", b"PXEClient"),
        ("vendor_specific", packets.USE_BOOTFILE), "end",
    ]
    assert reply.file.rstrip(b"\0").decode() == packets.bootfile(kind, EDGE)
    assert request.uuid_option is None and request.uuid is None  # nor used to admit the client


def test_a_well_formed_option_97_is_still_echoed_after_a_malformed_one():
    """The reply templates are cached per shape: a malformed 97 must not change what a
    well-formed one gets (and the other way round)."""
    capture = _discover("bios-ipxe-dnsmasq-proxy.pcap")
    bad = packets.parse(_with_options(capture, replace={"pxe_client_machine_identifier": b"\x00" * 18}))
    good = packets.parse(capture)
    for request in (bad, good, bad):
        options = _options(assert_well_formed_reply(packets.reply(request, ClientKind.IPXE, EDGE)))
        assert options.get("pxe_client_machine_identifier") == (UUID_97 if request is good else None)
        assert options["vendor_specific"] == packets.USE_BOOTFILE
