"""The UPDATEs activities/dnswire.py writes, read back by dnspython's own parser (with the TSIG
checked): the same RRsets `dns.update.UpdateMessage.replace` would send, names compressed,
messages sized under 60 KB, and names that cannot be built refused as dnspython refuses them."""

from __future__ import annotations

import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from activities import dnswire as wire

ZONE = dns.name.from_text("Tempered.test")
KEYRING = dns.tsigkeyring.from_text({"k": ("hmac-sha256", "c2VjcmV0LXNlY3JldC1zZWNyZXQ=")})
KEY = next(iter(KEYRING.values()))


def read(update: wire.Update) -> dns.message.Message:
    """Parse a signed UPDATE as a server would, checking its signature."""
    signed, ident, mac = update.signed(KEY)
    message = dns.message.from_wire(signed, keyring=KEYRING)
    assert message.id == ident and message.mac == mac
    return message


def test_a_replace_is_the_rrsets_dnspython_would_send():
    zone = wire.labels(ZONE)
    update = wire.Update(zone)
    for i, addresses in enumerate((["10.213.0.1"], ["10.213.0.2", "10.213.0.3"], [])):
        owner = wire.owner(f"node-{i}", ZONE, zone)
        update.delete_rrset(owner, dns.rdatatype.A)
        for ip in addresses:
            update.add_a(owner, 300, wire.a_rdata(ip))
    expected = dns.update.UpdateMessage(ZONE)
    expected.replace("node-0", 300, "A", "10.213.0.1")
    expected.replace("node-1", 300, "A", "10.213.0.2", "10.213.0.3")
    expected.delete("node-2", "A")
    expected = dns.message.from_wire(expected.to_wire())
    got = read(update)
    assert got.opcode() == dns.opcode.UPDATE and got.zone[0].name == ZONE
    assert [rrset.to_text() for rrset in got.update] == [rrset.to_text() for rrset in expected.update]


def test_ptrs_and_their_removal_point_at_the_node_names():
    reverse_zone = wire.labels(dns.name.from_text("213.10.in-addr.arpa"))
    update = wire.Update(reverse_zone)
    target = wire.owner("node-7", ZONE, wire.labels(ZONE))
    update.delete_rrset(wire.reverse_owner("10.213.0.7"), dns.rdatatype.PTR)
    update.ptr(wire.reverse_owner("10.213.0.7"), target, 300)
    update.ptr(wire.reverse_owner("10.213.0.8"), target, 0, dns.rdataclass.NONE)
    texts = [rrset.to_text() for rrset in read(update).update]
    assert texts == [
        "7.0.213.10.in-addr.arpa. ANY PTR",
        "7.0.213.10.in-addr.arpa. 300 IN PTR node-7.Tempered.test.",
        "8.0.213.10.in-addr.arpa. 0 NONE PTR node-7.Tempered.test.",
    ]
    assert wire.is_within(wire.reverse_owner("10.213.0.7"), reverse_zone)
    assert not wire.is_within(wire.reverse_owner("172.20.0.7"), reverse_zone)
    assert wire.reverse_owner("fd00::1")[-2:] == (b"ip6", b"arpa")


def test_batches_stay_under_the_message_limit_and_parse_whole():
    zone = wire.labels(ZONE)
    items = [
        wire.Item(
            wire.owner(f"host-{i}.rack-{i % 40}", ZONE, zone), (wire.a_rdata(f"10.213.{i // 250}.{i % 250 + 1}"),), f"host-{i}"
        )
        for i in range(3000)
    ]
    batches = wire.batches(items, batch_size=3000)
    assert len(batches) > 1 and sum(map(len, batches)) == 3000
    assert [len(b) for b in wire.batches(items[:10], batch_size=4)] == [4, 4, 2]
    for batch in batches:
        update = wire.Update(zone)
        for item in batch:
            update.delete_rrset(item.owner, dns.rdatatype.A)
            update.add_a(item.owner, 300, item.data[0])
        assert len(update) <= wire.MAX_UPDATE_BYTES  # compression past 16 KB offsets still points back
        message = read(update)
        assert len(message.update) == 2 * len(batch)
        last = int(batch[-1].record.removeprefix("host-"))
        assert message.update[-1].name == dns.name.from_text(f"host-{last}.rack-{last % 40}", ZONE)


@pytest.mark.parametrize(
    "name, error",
    [
        ("x" * 64, dns.name.LabelTooLong),
        (".".join(["y" * 63] * 4), dns.name.NameTooLong),
        ("a..b", dns.name.EmptyLabel),
    ],
)
def test_names_that_cannot_be_built_fail_as_in_dnspython(name, error):
    with pytest.raises(error):
        dns.name.from_text(name, ZONE)
    with pytest.raises(error):
        wire.owner(name, ZONE, wire.labels(ZONE))


def test_names_beyond_host_names_are_read_by_dnspython():
    zone = wire.labels(ZONE)
    assert wire.owner("elsewhere.example.", ZONE, zone) == (b"elsewhere", b"example")
    assert wire.owner(r"odd\.dot", ZONE, zone) == (b"odd.dot", b"Tempered", b"test")
    for bad in ("10.213.0", "10.213.0.256", "fd00::1", "node-1"):
        with pytest.raises(ValueError):
            wire.a_rdata(bad)
