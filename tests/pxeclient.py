"""A scapy PXE client for lab tests, run inside a client namespace:

    python -m tests.pxeclient discover --mac M [--firmware bios|efi] [--not-pxe]
    python -m tests.pxeclient request --mac M --server IP

It replays a captured DISCOVER from shared/testdata with the given MAC (as firmware does:
L2 broadcast from 0.0.0.0:68), or sends the 4011 REQUEST a PXE client sends to a boot server,
and prints every answer it hears as one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import time

from scapy.all import AsyncSniffer, Ether, IP, UDP, conf, rdpcap, sendp
from scapy.layers.dhcp import BOOTP, DHCP
from tests.testdata import CAPTURES



def captured_discover(firmware: str) -> BOOTP:
    name = "uefi-ipxe-dnsmasq-proxy.pcap" if firmware.startswith("efi") else "bios-ipxe-dnsmasq-proxy.pcap"
    return next(p[BOOTP] for p in rdpcap(str(CAPTURES / name)) if BOOTP in p and p[BOOTP].op == 1)


def make_request(mac: str, firmware: str = "ipxe-bios", not_pxe: bool = False, message_type: int = 1) -> BOOTP:
    """The captured client's request with our MAC; `efi`/`bios` drop iPXE's option 77."""
    packet = captured_discover(firmware).copy()
    packet.chaddr = bytes.fromhex(mac.replace(":", "")) + b"\0" * 10
    packet.xid = random.getrandbits(32)
    options = []
    for opt in packet[DHCP].options:
        if not isinstance(opt, tuple):
            continue
        key = opt[0]
        if key == "message-type":
            opt = (key, message_type)
        if key == "vendor_class_id" and not_pxe:
            opt = (key, b"discovery-agent")
        if key in ("user_class", 175) and firmware in ("bios", "efi"):
            continue
        if key == "client_id":
            opt = (key, b"\x01" + bytes.fromhex(mac.replace(":", "")))
        options.append(opt)
    packet[DHCP].options = [*options, "end"]
    return packet


def describe(packet: BOOTP) -> dict:
    options = {}
    for opt in packet[DHCP].options:
        if isinstance(opt, tuple):
            value = opt[1]
            options[str(opt[0])] = value.hex() if isinstance(value, bytes) and opt[0] in (97, "pxe_client_machine_identifier", "vendor_specific") else (value.decode(errors="replace") if isinstance(value, bytes) else value)
    return {
        "op": packet.op, "xid": packet.xid, "flags": int(packet.flags), "yiaddr": packet.yiaddr,
        "siaddr": packet.siaddr, "ciaddr": packet.ciaddr, "file": packet.file.rstrip(b"\0").decode(),
        "chaddr": bytes(packet.chaddr)[:6].hex(":"), "options": options,
    }


def discover(interface: str, mac: str, firmware: str, not_pxe: bool, timeout: float) -> list[dict]:
    conf.verb = 0
    request = make_request(mac, firmware, not_pxe)
    frame = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / request
    sniffer = AsyncSniffer(
        iface=interface, store=True,
        lfilter=lambda p: BOOTP in p and p[BOOTP].op == 2 and p[BOOTP].xid == request.xid,
    )
    sniffer.start()
    import time

    time.sleep(0.3)
    sendp(frame, iface=interface)
    time.sleep(timeout)
    return [describe(p[BOOTP]) for p in sniffer.stop()]


def request_4011(mac: str, server: str, client_ip: str, timeout: float) -> list[dict]:
    packet = make_request(mac, "efi", message_type=3)
    packet.ciaddr = client_ip
    packet[DHCP].options = [o for o in packet[DHCP].options if o != "end"] + [
        ("vendor_specific", b"\x47\x04\x80\x02\x00\x00\xff"), "end"
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((client_ip, 0))
        sock.sendto(bytes(packet), (server, 4011))
        try:
            data, _ = sock.recvfrom(4096)
        except TimeoutError:
            return []
    return [describe(BOOTP(data))]


def tftp_get(server: str, filename: str, timeout: float) -> dict:
    """A TFTP read (RFC 1350, 512-byte blocks) as firmware does it; or the server's error."""
    import hashlib
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(b"\x00\x01" + filename.encode() + b"\x00octet\x00", (server, 69))
        data, expected, peer = b"", 1, None
        while True:
            try:
                packet, peer = sock.recvfrom(65536)
            except TimeoutError:
                return {"error": "timeout"}
            opcode, number = struct.unpack("!HH", packet[:4])
            if opcode == 5:
                return {"error": packet[4:].rstrip(b"\0").decode(errors="replace"), "code": number}
            if opcode == 3 and number == expected:
                data += packet[4:]
                sock.sendto(struct.pack("!HH", 4, number), peer)
                expected += 1
                if len(packet) - 4 < 512:
                    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def garbage(server: str, count: int, seed: int) -> dict:
    """Hostile datagrams at ports 67 (broadcast) and 4011: random bytes, and captured requests
    truncated or with their option lengths lying."""
    rng = random.Random(seed)
    seed_packet = bytes(make_request("52:54:00:ff:00:01"))
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, 25, b"eth0")  # SO_BINDTODEVICE: broadcast on the lab link
        for i in range(count):
            if i % 3 == 0:
                data = rng.randbytes(rng.randrange(0, 1400))
            elif i % 3 == 1:
                data = seed_packet[: rng.randrange(len(seed_packet))]
            else:
                buf = bytearray(seed_packet)
                buf[rng.randrange(240, len(buf))] = rng.randrange(256)
                data = bytes(buf)
            sock.sendto(data, ("255.255.255.255", 67) if i % 2 else (server, 4011))
            sent += 1
            if i % 50 == 49:
                time.sleep(0.01)  # hostile, not a load test: let every datagram be handled
    return {"sent": sent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["discover", "request", "tftp", "garbage"])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--file")
    parser.add_argument("--interface", default="eth0")
    parser.add_argument("--mac", default="52:54:00:00:00:01")
    parser.add_argument("--firmware", default="ipxe-bios", choices=["ipxe-bios", "ipxe-efi", "bios", "efi"])
    parser.add_argument("--not-pxe", action="store_true")
    parser.add_argument("--server")
    parser.add_argument("--client-ip")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    if args.mode == "discover":
        answers = discover(args.interface, args.mac, args.firmware, args.not_pxe, args.timeout)
    elif args.mode == "garbage":
        answers = [garbage(args.server, args.count, seed=7)]
    elif args.mode == "tftp":
        answers = [tftp_get(args.server, args.file, args.timeout)]
    else:
        answers = request_4011(args.mac, args.server, args.client_ip, args.timeout)
    for answer in answers:
        print(json.dumps(answer))


if __name__ == "__main__":
    main()
