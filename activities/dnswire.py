"""RFC 2136 UPDATE messages written straight in wire format, TSIG-signed by dnspython.

Why not `dns.update.UpdateMessage`: for a 1,000-node batch, building 2,000 RRsets out of
dnspython's objects (Names, Rdatas hashed into sets, a compression table keyed by Name) and
rendering them cost about 0.25 s of CPU, two to three times `nsupdate`'s whole round trip. An
UPDATE that replaces A and PTR RRsets is a simple shape: this module writes its update section
with a compression table of plain label tuples, sizes each message as it grows (a new message
before one would pass `MAX_UPDATE_BYTES`), and leaves TSIG (signing here, checking the server's
signed answer in `dns.asyncquery.receive_tcp`) to dnspython.

Names are built as dnspython would read them: plain host names (`node-1`, `api.demo`) take a
fast path; anything else goes through `dns.name.from_text`, so a name that cannot be built
raises the same `LabelTooLong`/`NameTooLong`/`SyntaxError`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import time
from dataclasses import dataclass, field

import dns.asyncbackend
import dns.asyncquery
import dns.entropy
import dns.inet
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tsig
from dns.rdtypes.ANY.TSIG import TSIG

MAX_UPDATE_BYTES = 60_000  # under the 64 KB a DNS message over TCP may carry (TSIG added after)
TSIG_FUDGE = 300

Labels = tuple[bytes, ...]  # an absolute name's labels, without the root's empty one

_A, _PTR, _SOA, _TSIG = dns.rdatatype.A, dns.rdatatype.PTR, dns.rdatatype.SOA, dns.rdatatype.TSIG
_IN, _ANY, _NONE = dns.rdataclass.IN, dns.rdataclass.ANY, dns.rdataclass.NONE
_UPDATE_FLAGS = 5 << 11  # opcode UPDATE, a query
_HOST = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\Z")


def labels(name: dns.name.Name) -> Labels:
    return tuple(name.labels[:-1])


def size(name: Labels) -> int:
    """Its length in wire format, uncompressed."""
    return len(b".".join(name)) + 2


def owner(relative: str, zone: dns.name.Name, zone_labels: Labels) -> Labels:
    """`relative` under `zone`, exactly as `dns.name.from_text(relative, zone)` reads it."""
    if _HOST.match(relative):
        found = tuple(relative.encode().split(b".")) + zone_labels
        if size(found) > 255:
            raise dns.name.NameTooLong
        return found
    return labels(dns.name.from_text(relative, zone))


def reverse_owner(address: str) -> Labels:
    """The in-addr.arpa (or ip6.arpa) name of an address; ValueError if it is none."""
    if address.count(".") == 3:
        a_rdata(address)  # checks it
        return (*reversed(address.encode().split(b".")), b"in-addr", b"arpa")
    return tuple(ipaddress.ip_address(address).reverse_pointer.encode().split(b"."))


def is_within(name: Labels, zone: Labels) -> bool:
    """Case-insensitively, is `name` at or under `zone`?"""
    return len(name) >= len(zone) and tuple(l.lower() for l in name[len(name) - len(zone):]) == tuple(
        l.lower() for l in zone
    )


def a_rdata(address: str) -> bytes:
    """An A record's 4 octets; ValueError for anything but a dotted-quad IPv4 address."""
    try:
        return socket.inet_pton(socket.AF_INET, address)
    except OSError:
        raise ValueError(f"{address!r} is not an IPv4 address") from None


@dataclass(frozen=True)
class Item:
    """One RRset to write: its owner, what goes in it (packed A addresses, or a PTR target), and
    the record's name for messages."""

    owner: Labels
    data: tuple
    record: str

    @property
    def bound(self) -> int:
        """Bytes it takes at most (uncompressed): to start a new UPDATE before one outgrows 64 KB."""
        return (size(self.owner) + 10) * (1 + len(self.data)) + sum(
            len(d) if isinstance(d, bytes) else size(d) for d in self.data
        )


def batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """`batch_size` RRsets per UPDATE at most, and a new UPDATE before one would pass 60 KB."""
    found: list[list[Item]] = []
    size_ = MAX_UPDATE_BYTES
    for item in items:
        if not found or len(found[-1]) >= batch_size or size_ + item.bound > MAX_UPDATE_BYTES:
            found.append([])
            size_ = 12 + 256  # the header and zone section
        found[-1].append(item)
        size_ += item.bound
    return found


@dataclass
class Update:
    """One UPDATE of one zone being filled: its bytes so far, its RR count and the names it carries
    (for messages that name the records of a refused UPDATE)."""

    zone: Labels
    buf: bytearray = field(default_factory=lambda: bytearray(12))
    compress: dict[Labels, int] = field(default_factory=dict)
    count: int = 0
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name(self.zone)  # the zone section: zone SOA IN
        self.buf += struct.pack("!HH", _SOA, _IN)

    def __len__(self) -> int:
        return len(self.buf)

    def name(self, name: Labels) -> None:
        """Write `name`, pointing at the longest suffix already written (RFC 1035 4.1.4). Suffixes
        match as written (not case-folded): a miss only costs a few bytes."""
        buf, compress = self.buf, self.compress
        for i in range(len(name)):
            key = name[i:]
            at = compress.get(key)
            if at is not None:
                buf += struct.pack("!H", 0xC000 | at)
                return
            if len(buf) < 0x3FFF:
                compress[key] = len(buf)
            buf.append(len(name[i]))
            buf += name[i]
        buf.append(0)

    def delete_rrset(self, name: Labels, rdtype: int) -> None:
        self.name(name)
        self.buf += struct.pack("!HHIH", rdtype, _ANY, 0, 0)
        self.count += 1

    def add_a(self, name: Labels, ttl: int, packed: bytes) -> None:
        self.name(name)
        self.buf += struct.pack("!HHIH", _A, _IN, ttl, 4) + packed
        self.count += 1

    def ptr(self, name: Labels, target: Labels, ttl: int, rdclass: int = _IN) -> None:
        """Add a PTR (or, with class NONE and ttl 0, delete that one PTR)."""
        self.name(name)
        self.buf += struct.pack("!HHI", _PTR, rdclass, ttl)
        start = len(self.buf)
        self.buf += b"\0\0"
        self.name(target)
        struct.pack_into("!H", self.buf, start, len(self.buf) - start - 2)
        self.count += 1

    def signed(self, key: dns.tsig.Key) -> tuple[bytes, int, bytes]:
        """The message signed with `key`: (wire, id, MAC); the MAC checks the server's answer."""
        ident = dns.entropy.random_16()
        header = struct.pack("!HHHHH", ident, _UPDATE_FLAGS, 1, 0, self.count)
        unsigned = header + b"\0\0" + bytes(self.buf[12:])
        blank = TSIG(_ANY, _TSIG, key.algorithm, 0, TSIG_FUDGE, b"", ident, 0, b"")
        tsig, _ = dns.tsig.sign(unsigned, key, blank, int(time.time()))
        rdata = tsig.to_wire()
        record = key.name.to_wire() + struct.pack("!HHIH", _TSIG, _ANY, 0, len(rdata)) + rdata
        return header + b"\0\1" + unsigned[12:] + record, ident, tsig.mac


class Connection:
    """One TCP connection to a server, opened on first use and reused for every UPDATE sent through
    it one after another (BIND keeps a TCP client open between messages)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._socket = None

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._socket is not None:
            await self._socket.close()
            self._socket = None

    async def exchange(self, update: Update, key: dns.tsig.Key, keyring: dict) -> int:
        """Send `update` signed with `key`; the server's rcode (its signature checked with `keyring`).
        Raises dnspython's TSIG errors, Timeout, OSError or EOFError as they come."""
        wire, ident, mac = update.signed(key)
        expiration = time.time() + self.timeout
        if self._socket is None:
            backend = dns.asyncbackend.get_default_backend()
            family = dns.inet.af_for_address(self.host)
            self._socket = await backend.make_socket(
                family, socket.SOCK_STREAM, 0, None, (self.host, self.port), self.timeout
            )
        try:
            await dns.asyncquery.send_tcp(self._socket, wire, expiration)
            response, _ = await dns.asyncquery.receive_tcp(self._socket, expiration, keyring=keyring, request_mac=mac)
        except BaseException:
            await self.__aexit__()  # a half-read stream cannot carry the next message
            raise
        if response.id != ident:
            await self.__aexit__()
            raise EOFError(f"answer {response.id} to UPDATE {ident}")
        return response.rcode()
