"""Malformed and hostile packets never crash the proxyDHCP responder.

Seeded mutations of the captured client packets (bit flips, truncation, extension, option
lengths that lie, random bytes) go through the same `Responder.handle` the socket loop calls:
it must never raise, and whatever it answers must be a well-formed proxy reply (no address).
"""

from __future__ import annotations

import random

from scapy.all import rdpcap
from scapy.layers.dhcp import BOOTP

from activities.contracts import EdgeConfig, EdgePolicy
from bootedge.dhcp import Responder
from bootedge.packets import EdgeAddress
from tests.testdata import CAPTURES

CONFIG = EdgeConfig(name="fuzz", policy=EdgePolicy(mode="catch-all", cluster="fuzz"))


def _seeds() -> list[bytes]:
    return [bytes(p[BOOTP]) for f in sorted(CAPTURES.glob("*.pcap")) for p in rdpcap(str(f)) if BOOTP in p]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    choice = rng.randrange(7)
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
    else:  # op, htype or hlen nonsense
        buf[rng.randrange(4)] = rng.randrange(256)
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
                reply = BOOTP(answer[0])
                assert reply.op == 2 and reply.yiaddr == "0.0.0.0" and reply.siaddr == "10.213.0.3"
    assert sum(responder.stats.values()) == 20_000
    assert answered > 0  # mutations that stay valid PXE requests are still answered
    assert responder.stats["not-pxe"] > 1_000
