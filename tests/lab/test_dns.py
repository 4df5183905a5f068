"""RFC 2136 updates against a real BIND on a loopback port: every TSIG algorithm, split horizon
with per-view keys and address mapping, refusals with the server's answer, a server that is
down and comes back, and 1,000 nodes in batches."""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.message
import dns.rdatatype
import dns.reversename
import dns.tsigkeyring
import pytest
from prometheus_client import REGISTRY

from activities.domain.dns import DnsRecord, DnsSettings, DnsView, TsigKey
from activities.dns import DnsRefused, DnsUnavailable, Publisher
from tests.bind import ALGORITHMS, CORP_REVERSE, REVERSE, ZONE, Bind, named_binary

pytestmark = pytest.mark.skipif(named_binary() is None, reason="BIND (named) is not installed")


@pytest.fixture(scope="module")
def bind(tmp_path_factory):
    server = Bind(tmp_path_factory.mktemp("bind")).start()
    yield server
    server.stop()


async def lookup(bind: Bind, name: str, rdtype: str = "A", key: TsigKey | None = None) -> set[str]:
    query = dns.message.make_query(name, rdtype)
    if key is not None:
        query.use_tsig(dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret.get_secret_value())}), keyname=key.name)
    response = await dns.asyncquery.tcp(query, "127.0.0.1", port=bind.port, timeout=5)
    return {rr.to_text() for rrset in response.answer for rr in rrset if rrset.rdtype == dns.rdatatype.from_text(rdtype)}


def default_view(bind: Bind, algorithm: str = "hmac-sha256", **extra) -> DnsSettings:
    return DnsSettings(**{"zone": ZONE, "servers": [bind.server], "key": bind.default_keys[algorithm], "reverse_zone": REVERSE, **extra})


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_every_tsig_algorithm_publishes_a_and_ptr(bind, algorithm):
    name = f"node-{algorithm.replace('hmac-', '')}"
    sent = await Publisher(default_view(bind, algorithm)).publish([DnsRecord(name=name, addresses=["10.213.1.7"])])
    assert sent == 2  # one UPDATE for the zone, one for the reverse zone
    assert await lookup(bind, f"{name}.{ZONE}") == {"10.213.1.7"}
    assert await lookup(bind, dns.reversename.from_address("10.213.1.7").to_text(), "PTR") == {f"{name}.{ZONE}."}


async def test_publishing_is_idempotent_and_replaces_old_addresses(bind):
    publisher = Publisher(default_view(bind))
    for address in ("10.213.2.1", "10.213.2.1", "10.213.2.2"):
        await publisher.publish([DnsRecord(name="again", addresses=[address])])
    assert await lookup(bind, f"again.{ZONE}") == {"10.213.2.2"}
    await publisher.publish([DnsRecord(name="api.demo", addresses=["10.213.2.1", "10.213.2.2", "10.213.2.3"])], ptr=False)
    assert await lookup(bind, f"api.demo.{ZONE}") == {"10.213.2.1", "10.213.2.2", "10.213.2.3"}


async def test_removal_deletes_the_name_and_its_ptr(bind):
    publisher = Publisher(default_view(bind))
    record = DnsRecord(name="leaving", addresses=["10.213.3.9"])
    await publisher.publish([record])
    await publisher.remove([record])
    assert await lookup(bind, f"leaving.{ZONE}") == set()
    assert await lookup(bind, dns.reversename.from_address("10.213.3.9").to_text(), "PTR") == set()


async def test_split_horizon_views_each_get_their_own_addresses(bind):
    settings = DnsSettings(
        zone=ZONE,
        servers=[bind.server],
        reverse_zone=REVERSE,
        update_default_view=False,
        views=[
            DnsView(name="native", key=bind.native),
            DnsView(name="corp", key=bind.corp, mappings=[("10.213.0.0/16", "172.20.0.0/16")]),
        ],
    )
    await Publisher(settings).publish([DnsRecord(name="split", addresses=["10.213.4.5"])])
    assert await lookup(bind, f"split.{ZONE}", key=bind.native) == {"10.213.4.5"}
    assert await lookup(bind, f"split.{ZONE}", key=bind.corp) == {"172.20.4.5"}
    assert await lookup(bind, f"split.{ZONE}") == set()  # the default view was left alone
    # The corp PTR lives in the corp view's reverse zone for the mapped address, if configured.
    corp_ptr = dns.reversename.from_address("172.20.4.5").to_text()
    assert await lookup(bind, corp_ptr, "PTR", key=bind.corp) == set()  # 172.20/16 is not REVERSE
    with_corp_reverse = settings.model_copy(update={"reverse_zone": CORP_REVERSE})
    await Publisher(with_corp_reverse).publish([DnsRecord(name="split", addresses=["10.213.4.5"])])
    assert await lookup(bind, corp_ptr, "PTR", key=bind.corp) == {f"split.{ZONE}."}


async def test_each_view_writes_its_ptr_in_its_own_reverse_zone(bind):
    """A mapped view's addresses have their own reverse zone: both horizons answer PTR queries."""
    corp = DnsView(name="corp", key=bind.corp, mappings=[("10.213.0.0/16", "172.20.0.0/16")], reverse_zone=CORP_REVERSE)
    settings = DnsSettings(zone=ZONE, servers=[bind.server], reverse_zone=REVERSE, update_default_view=False,
                           views=[DnsView(name="native", key=bind.native), corp])
    record = DnsRecord(name="both-ptr", addresses=["10.213.4.6"])
    await Publisher(settings).publish([record])
    native_ptr, corp_ptr = (dns.reversename.from_address(ip).to_text() for ip in ("10.213.4.6", "172.20.4.6"))
    assert await lookup(bind, native_ptr, "PTR", key=bind.native) == {f"both-ptr.{ZONE}."}
    assert await lookup(bind, corp_ptr, "PTR", key=bind.corp) == {f"both-ptr.{ZONE}."}
    await Publisher(settings).remove([record])
    assert await lookup(bind, native_ptr, "PTR", key=bind.native) == set()
    assert await lookup(bind, corp_ptr, "PTR", key=bind.corp) == set()


async def test_update_default_view_writes_it_beside_the_views(bind):
    settings = default_view(bind, views=[DnsView(name="corp", key=bind.corp, mappings=[("10.213.0.0/16", "172.20.0.0/16")])])
    await Publisher(settings).publish([DnsRecord(name="both", addresses=["10.213.5.6"])])
    assert await lookup(bind, f"both.{ZONE}") == {"10.213.5.6"}
    assert await lookup(bind, f"both.{ZONE}", key=bind.corp) == {"172.20.5.6"}


@pytest.mark.parametrize(
    "key, answer",
    [
        ("wrong-secret", "BADSIG"),
        ("unknown-key", "BADKEY"),
        ("not-allowed", "REFUSED"),
    ],
)
async def test_refusals_carry_the_server_answer(bind, key, answer):
    good = bind.default_keys["hmac-sha256"]
    keys = {
        "wrong-secret": TsigKey(name=good.name, secret="d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==", algorithm=good.algorithm),
        "unknown-key": TsigKey(name="nobody-knows-me", secret=good.secret.get_secret_value()),
        "not-allowed": bind.readonly,
    }
    settings = DnsSettings(zone=ZONE, servers=[bind.server], key=keys[key])
    with pytest.raises(DnsRefused) as refused:
        await Publisher(settings).publish([DnsRecord(name="refused", addresses=["10.213.6.1"])])
    assert answer in str(refused.value)
    assert good.secret.get_secret_value() not in str(refused.value)
    assert await lookup(bind, f"refused.{ZONE}") == set()


async def test_a_server_that_is_down_is_unavailable_then_works_when_back(tmp_path):
    server = Bind(tmp_path)
    settings = DnsSettings(zone=ZONE, servers=[server.server], key=server.default_keys["hmac-sha256"])
    with pytest.raises(DnsUnavailable):
        await Publisher(settings, timeout=1).publish([DnsRecord(name="later", addresses=["10.213.7.1"])])
    server.start()
    try:
        await Publisher(settings).publish([DnsRecord(name="later", addresses=["10.213.7.1"])])
        assert await lookup(server, f"later.{ZONE}") == {"10.213.7.1"}
        server.stop()  # and again after a restart on the same data
        server.start()
        assert await lookup(server, f"later.{ZONE}") == {"10.213.7.1"}
    finally:
        server.stop()


async def test_a_thousand_nodes_in_batches_within_the_update_quota(bind):
    records = [DnsRecord(name=f"bulk-{i}", addresses=[f"10.213.{100 + i // 250}.{i % 250 + 1}"]) for i in range(1000)]
    settings = default_view(bind, batch_size=300, max_in_flight=100)
    sent = await Publisher(settings).publish(records)
    assert sent == 4 + 4  # ceil(1000/300) UPDATEs for A, as many for PTR
    sample = [records[0], records[499], records[999]]
    for record in sample:
        assert await lookup(bind, f"{record.name}.{ZONE}") == set(record.addresses)
    # one RRset per UPDATE: 1,000 UPDATEs, never more than the quota in flight, none dropped
    single = default_view(bind, batch_size=1, max_in_flight=100, reverse_zone=None)
    moved = [DnsRecord(name=r.name, addresses=["10.213.99.1"]) for r in records]
    assert await Publisher(single).publish(moved) == 1000
    assert await lookup(bind, f"bulk-777.{ZONE}") == {"10.213.99.1"}


def test_settings_refuse_more_in_flight_than_bind_accepts():
    with pytest.raises(ValueError, match="less than or equal to 100"):
        DnsSettings(zone=ZONE, servers=[{"host": "127.0.0.1"}], key=TsigKey(name="k", secret="c2VjcmV0"), max_in_flight=140)
    with pytest.raises(ValueError, match="base64"):
        TsigKey(name="k", secret="not base64!")
    with pytest.raises(ValueError, match="same length"):
        DnsView(name="v", key=TsigKey(name="k", secret="c2VjcmV0"), mappings=[("10.0.0.0/16", "172.20.0.0/24")])


async def test_every_server_of_a_view_is_written(bind, tmp_path):
    second = Bind(tmp_path, default_keys=bind.default_keys).start()
    try:
        settings = DnsSettings(zone=ZONE, servers=[bind.server, second.server], key=bind.default_keys["hmac-sha256"])
        assert await Publisher(settings).publish([DnsRecord(name="twice", addresses=["10.213.9.9"])]) == 2
        assert await lookup(bind, f"twice.{ZONE}") == {"10.213.9.9"}
        assert await lookup(second, f"twice.{ZONE}") == {"10.213.9.9"}
    finally:
        second.stop()


async def test_a_zone_the_server_does_not_serve_is_notauth(bind):
    settings = DnsSettings(zone="elsewhere.test", servers=[bind.server], key=bind.default_keys["hmac-sha256"], verify=False)
    with pytest.raises(DnsRefused, match="NOTAUTH"):
        await Publisher(settings).publish([DnsRecord(name="x", addresses=["10.213.9.10"])])


async def serial(bind: Bind, zone: str) -> int:
    response = await dns.asyncquery.tcp(dns.message.make_query(zone, "SOA"), "127.0.0.1", port=bind.port, timeout=5)
    return response.answer[0][0].serial


async def test_a_batch_past_one_message_is_split_and_fully_published(bind):
    """2,000 names outgrow one 64 KB UPDATE per zone even at the largest batch_size: every one lands
    (verify reads each name back through the view) and every PTR too."""
    records = [DnsRecord(name=f"split-{i}", addresses=[f"10.213.{150 + i // 250}.{i % 250 + 1}"]) for i in range(2000)]
    sent = await Publisher(default_view(bind, batch_size=3000)).publish(records)
    assert sent >= 4  # at least two UPDATEs for the zone, two for the reverse zone
    for record in (records[0], records[1234], records[1999]):
        ptr = dns.reversename.from_address(record.addresses[0]).to_text()
        assert await lookup(bind, ptr, "PTR") == {f"{record.name}.{ZONE}."}


async def test_a_refused_record_in_a_batch_is_named_and_the_others_land(bind):
    """BIND refuses a whole UPDATE when one owner name fails its check-names (an underscore in a
    host's A record): the error names that record alone, and the batch's other records are written."""
    records = [DnsRecord(name=f"mixed-{i}", addresses=[f"10.213.160.{i + 1}"]) for i in range(40)]
    records.insert(17, DnsRecord(name="bad_host", addresses=["10.213.160.99"]))
    with pytest.raises(DnsRefused) as refused:
        await Publisher(default_view(bind, batch_size=25)).publish(records)
    assert "REFUSED" in str(refused.value)
    assert "for 1 record: bad_host" in str(refused.value)
    assert "mixed-" not in str(refused.value)
    for record in (records[0], records[16], records[18], records[40]):
        assert await lookup(bind, f"{record.name}.{ZONE}") == set(record.addresses)
    assert await lookup(bind, f"bad_host.{ZONE}") == set()


def updates_sent() -> float:
    """Every DNS UPDATE this process has sent, whatever its answer (tempered_dns_updates_total)."""
    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "tempered_dns_updates"
               for sample in metric.samples if sample.name.endswith("_total"))


async def test_a_key_the_policy_refuses_costs_log_n_updates_not_one_per_record(bind):
    """The read-only key's UPDATE of 64 names is refused whole: halving finds every record refused,
    so it stops after about 2 log2(64) + 1 UPDATEs (one per record would be 127) and names them all."""
    records = [DnsRecord(name=f"policy-{i}", addresses=[f"10.213.180.{i + 1}"]) for i in range(64)]
    settings = DnsSettings(zone=ZONE, servers=[bind.server], key=bind.readonly, batch_size=64)
    before = updates_sent()
    with pytest.raises(DnsRefused) as refused:
        await Publisher(settings).publish(records, ptr=False)
    assert "REFUSED" in str(refused.value) and "for 64 records: policy-0, " in str(refused.value)
    assert updates_sent() - before <= 13
    assert await lookup(bind, f"policy-63.{ZONE}") == set()


async def test_republishing_a_batch_changes_nothing(bind):
    """Publishing what the zones already hold leaves them as they are: the same records, and no new
    serial for either zone (BIND applies no change, so secondaries transfer nothing)."""
    records = [DnsRecord(name=f"same-{i}", addresses=[f"10.213.170.{i + 1}"]) for i in range(100)]
    publisher = Publisher(default_view(bind))
    await publisher.publish(records)
    before = (await serial(bind, ZONE), await serial(bind, REVERSE))
    await publisher.publish(records)
    assert (await serial(bind, ZONE), await serial(bind, REVERSE)) == before
    assert await lookup(bind, f"same-42.{ZONE}") == {"10.213.170.43"}
