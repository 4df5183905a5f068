"""Malformed and hostile packets never crash the proxyDHCP responder.

Seeded mutations of the captured client packets (bit flips, truncation, extension, option
lengths that lie, random bytes) go through the same `Responder.handle` the socket loop calls:
it must never raise, and whatever it answers must be a well-formed proxy reply (no address):
each answer is checked byte by byte (`assert_well_formed_reply`), which is what catches a
client option echoed with a length the reply was not laid out for.
"""

from __future__ import annotations

import random

from scapy.all import rdpcap
from scapy.layers.dhcp import BOOTP, DHCP

from activities.domain.edge import EdgeConfig, EdgePolicy
from bootedge.dhcp import Responder
from bootedge.packets import EdgeAddress
from tests.unit.test_bootedge_packets import assert_well_formed_reply
from tests.testdata import CAPTURES

CONFIG = EdgeConfig(name="fuzz", policy=EdgePolicy(mode="catch-all", cluster="fuzz"))


def _seeds() -> list[bytes]:
    return [bytes(p[BOOTP]) for f in sorted(CAPTURES.glob("*.pcap")) for p in rdpcap(str(f)) if BOOTP in p]


def _resize_option_97(rng: random.Random, data: bytes) -> bytes:
    """The request with its client machine identifier (option 97) of another length or type."""
    packet = BOOTP(data)
    if DHCP not in packet:
        return data
    identifier = rng.choice([0, 255]).to_bytes(1, "big") + rng.randbytes(rng.choice([0, 15, 16, 17, rng.randrange(255)]))
    options = [o for o in packet[DHCP].options if not (isinstance(o, tuple) and o[0] == "pxe_client_machine_identifier")]
    packet[DHCP].options = [o for o in options if o != "end"] + [("pxe_client_machine_identifier", identifier), "end"]
    return bytes(packet)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    choice = rng.randrange(8)
    if choice == 0:  # flip bits
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate, often inside the options
        buf = buf[: rng.randrange(len(buf))]
    elif choice == 2:  # an option whose length byte lies
        i = rng.randrange(240, len(buf)) if len(buf) > 241 else rng.randrange(len(buf))
        buf[i] = rng.choice([0, 1, 255, rng.randrange(256)])
    elif choice == 3:  # garbage appended, up to a jumbo datagram
        buf += rng.randbytes(rng.randrange(1, 9000))
    elif choice == 4:  # random bytes of any length
        buf = bytearray(rng.randbytes(rng.randrange(0, 1500)))
    elif choice == 5:  # the magic cookie broken
        if len(buf) > 239:
            buf[236:240] = rng.randbytes(4)
    elif choice == 6:  # op, htype or hlen nonsense
        buf[rng.randrange(4)] = rng.randrange(256)
    else:  # a client machine identifier of any length or type
        buf = bytearray(_resize_option_97(rng, data))
    return bytes(buf)


def test_ten_thousand_mutated_packets_never_crash_the_responder():
    responder = Responder("fuzz0", EdgeAddress(ip="10.213.0.3"), lambda: CONFIG)
    rng = random.Random(20261121)
    seeds = _seeds()
    answered = 0
    for _ in range(10_000):
        data = _mutate(rng, rng.choice(seeds))
        for port in (67, 4011):
            answer = responder.handle(data, ("10.213.0.50", 68), port)
            if answer is not None:
                answered += 1
                reply = assert_well_formed_reply(answer[0])
                assert reply.op == 2 and reply.yiaddr == "0.0.0.0" and reply.siaddr == "10.213.0.3"
    assert sum(responder.stats.values()) == 20_000
    assert answered > 0  # mutations that stay valid PXE requests are still answered
    assert responder.stats["not-pxe"] > 1_000
