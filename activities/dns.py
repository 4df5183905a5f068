"""DNS: RFC 2136 dynamic updates signed with TSIG, for every view of a split-horizon zone.

Each view is a TSIG key (the server picks the view by the key that signs), its servers, and
an optional mapping of native prefixes to the prefixes that view publishes. Writes are
idempotent (an RRset is replaced, never appended), batched (many RRsets per UPDATE, over TCP,
each UPDATE under 64 KB), and bounded: never more UPDATEs in flight to one server than
`max_in_flight`, because BIND silently drops updates past its update quota. After writing,
every view is read back with a query signed with that view's own key.

Failures come in two kinds. A server that does not answer is `DnsUnavailable`: worth retrying
with backoff. A server that answers no (BADKEY, BADSIG, REFUSED, NOTAUTH, ...) is `DnsRefused`,
carrying the server's answer for the operator: retrying will not help.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.tsig
import dns.tsigkeyring
import dns.update
from dns.rdataclass import IN
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.IN.A import A
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.domain.dns import (
    ApiNameDns,
    DnsRecord,
    DnsServer,
    DnsSettings,
    NodeDns,
    TsigKey,
)
from activities.domain.ids import machine_workflow_id
from activities.domain.machine import MachineStatus
from activities import metrics
from activities.heartbeat import heartbeating
from activities.storage import dnsconfig
from activities.storage.settings import Settings

MAX_UPDATE_BYTES = 60_000  # under the 64 KB a DNS message over TCP may carry
VERIFY_CONCURRENCY = 64


class DnsUnavailable(Exception):
    """No answer (down, unreachable, timed out): retry later."""


class DnsRefused(Exception):
    """The server answered no; the message says what it answered."""


UPDATE_RESULTS = {DnsRefused: "refused", DnsUnavailable: "unavailable"}  # tempered_dns_updates_total


# A zone, key or record name dnspython cannot build (bad syntax, a label past 63, a name past
# 255), or an address that is none: no retry fixes these, the settings or the name must change.
UNBUILDABLE = (dns.exception.SyntaxError, dns.name.LabelTooLong, dns.name.NameTooLong, ValueError)


@dataclass(frozen=True)
class View:
    """Where one horizon is written: a key, its servers, and how it maps addresses."""

    name: str
    key: TsigKey
    servers: tuple[DnsServer, ...]
    address: Callable[[str], str]
    reverse_zone: dns.name.Name | None  # where this view's PTRs go; None: no PTRs

    @cached_property
    def keyring(self) -> dict:
        return dns.tsigkeyring.from_text(
            {self.key.name: (self.key.algorithm, self.key.secret.get_secret_value())}
        )


def views(settings: DnsSettings) -> list[View]:
    def reverse(zone: str | None) -> dns.name.Name | None:
        zone = zone or settings.reverse_zone
        return dns.name.from_text(zone) if zone else None

    found = []
    if settings.update_default_view and settings.key is not None:
        found.append(View("default", settings.key, tuple(settings.servers), lambda ip: ip, reverse(None)))
    for view in settings.views:
        servers = tuple(view.servers or settings.servers)
        found.append(View(view.name, view.key, servers, view.address, reverse(view.reverse_zone)))
    return found


class Publisher:
    """Publishes DnsRecords in every view of the settings' zone (and each view's reverse zone)."""

    def __init__(self, settings: DnsSettings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.zone = dns.name.from_text(settings.zone)
        self._in_flight: dict[tuple[str, int], asyncio.Semaphore] = {}

    async def publish(self, records: list[DnsRecord], ptr: bool = True) -> int:
        """Write `records` (A, and PTR when a reverse zone is set and `ptr`) in every view;
        a record with no addresses is deleted. Returns the number of UPDATE messages sent."""
        counts = await asyncio.gather(*(self._publish_view(v, records, ptr) for v in views(self.settings)))
        if self.settings.verify:
            await asyncio.gather(*(self.verify(v, records) for v in views(self.settings)))
        return sum(counts)

    async def remove(self, records: list[DnsRecord]) -> int:
        """Delete the names, and the PTRs of the addresses they had."""
        gone = [DnsRecord(name=r.name, addresses=[]) for r in records]
        sent = await asyncio.gather(*(self._remove_view(v, records) for v in views(self.settings)))
        if self.settings.verify:
            await asyncio.gather(*(self.verify(v, gone) for v in views(self.settings)))
        return sum(sent)

    # ---- building UPDATEs ------------------------------------------------------------------

    def _forward(self, view: View, records: list[DnsRecord]) -> Iterator[tuple]:
        for record in records:
            name = dns.name.from_text(record.name, self.zone)
            addresses = [view.address(ip) for ip in record.addresses]
            yield (name, addresses)

    def _reverse(self, view: View, records: list[DnsRecord]) -> Iterator[tuple]:
        for record in records:
            target = dns.name.from_text(record.name, self.zone).to_text()
            for ip in record.addresses:
                reverse = dns.reversename.from_address(view.address(ip))
                if view.reverse_zone is not None and reverse.is_subdomain(view.reverse_zone):
                    yield (reverse, target)

    async def _publish_view(self, view: View, records: list[DnsRecord], ptr: bool) -> int:
        ttl = self.settings.ttl

        def forward(update: dns.update.UpdateMessage, item: tuple) -> None:
            name, addresses = item
            if addresses:
                update.replace(name, ttl, *(A(IN, dns.rdatatype.A, ip) for ip in addresses))
            else:
                update.delete(name, "A")

        def reverse(update: dns.update.UpdateMessage, item: tuple) -> None:
            name, target = item
            update.replace(name, ttl, PTR(IN, dns.rdatatype.PTR, dns.name.from_text(target)))

        jobs = [self._send_all(view, self.zone, list(self._forward(view, records)), forward)]
        if ptr and view.reverse_zone is not None:
            jobs.append(self._send_all(view, view.reverse_zone, list(self._reverse(view, records)), reverse))
        return sum(await asyncio.gather(*jobs))

    async def _remove_view(self, view: View, records: list[DnsRecord]) -> int:
        def forward(update: dns.update.UpdateMessage, item: tuple) -> None:
            update.delete(item[0], "A")

        def reverse(update: dns.update.UpdateMessage, item: tuple) -> None:
            update.delete(item[0], "PTR", item[1])

        jobs = [self._send_all(view, self.zone, list(self._forward(view, records)), forward)]
        if view.reverse_zone is not None:
            jobs.append(self._send_all(view, view.reverse_zone, list(self._reverse(view, records)), reverse))
        return sum(await asyncio.gather(*jobs))

    async def _send_all(self, view: View, zone: dns.name.Name, items: list[tuple], add) -> int:
        """Send `items` to every server of the view, `batch_size` RRsets per UPDATE."""
        if not items:
            return 0
        size = self.settings.batch_size
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        jobs = [self._send_batch(view, zone, server, batch, add) for server in view.servers for batch in batches]
        return sum(await asyncio.gather(*jobs))

    async def _send_batch(self, view: View, zone: dns.name.Name, server: DnsServer, batch: list[tuple], add) -> int:
        update = dns.update.UpdateMessage(zone, keyring=view.keyring, keyname=view.key.name)
        for item in batch:
            add(update, item)
        wire = update.to_wire()  # rendered (and TSIG-signed) once: measured, then sent as is
        if len(batch) > 1 and len(wire) > MAX_UPDATE_BYTES:
            half = len(batch) // 2
            return await self._send_batch(view, zone, server, batch[:half], add) + await self._send_batch(
                view, zone, server, batch[half:], add
            )
        with metrics.counted(metrics.DNS_UPDATES, UPDATE_RESULTS, view=view.name):
            async with self._slot(server):
                response = await self._exchange_wire(update, wire, server, view)
            rcode = response.rcode()
            if rcode != dns.rcode.NOERROR:
                raise DnsRefused(
                    f"{server.host}:{server.port} answered {dns.rcode.to_text(rcode)} to an UPDATE of "
                    f"{zone} in view {view.name} (key {view.key.name})"
                )
        return 1

    def _slot(self, server: DnsServer) -> asyncio.Semaphore:
        key = (server.host, server.port)
        if key not in self._in_flight:
            self._in_flight[key] = asyncio.Semaphore(self.settings.max_in_flight)
        return self._in_flight[key]

    async def _exchange_wire(self, message: dns.message.Message, wire: bytes, server: DnsServer, view: View):
        """Send an already rendered message over TCP and read the signed answer."""

        async def exchange():
            backend = dns.asyncbackend.get_default_backend()
            expiration = time.time() + self.timeout
            address = (server.host, server.port)
            family = dns.inet.af_for_address(server.host)
            async with await backend.make_socket(family, socket.SOCK_STREAM, 0, None, address, self.timeout) as sock:
                await dns.asyncquery.send_tcp(sock, wire, expiration)
                response, _ = await dns.asyncquery.receive_tcp(
                    sock, expiration, keyring=message.keyring, request_mac=message.mac
                )
            return response

        return await self._answer(exchange(), server, view)

    async def _exchange(self, message: dns.message.Message, server: DnsServer, view: View, tcp: bool):
        if tcp:
            query = dns.asyncquery.tcp(message, server.host, port=server.port, timeout=self.timeout)
        else:
            query = dns.asyncquery.udp(message, server.host, port=server.port, timeout=self.timeout)
        return await self._answer(query, server, view)

    async def _answer(self, exchange, server: DnsServer, view: View):
        """Run one exchange, turning TSIG refusals and silence into DnsRefused/DnsUnavailable."""
        where = f"{server.host}:{server.port}"
        try:
            return await exchange
        except dns.tsig.PeerBadKey:
            raise DnsRefused(f"{where} answered BADKEY: it does not know key {view.key.name} (view {view.name})") from None
        except dns.tsig.PeerBadSignature:
            raise DnsRefused(f"{where} answered BADSIG: the secret of key {view.key.name} is wrong (view {view.name})") from None
        except dns.tsig.PeerBadTime:
            raise DnsRefused(f"{where} answered BADTIME: clocks differ by more than the TSIG fudge") from None
        except (dns.exception.Timeout, OSError, EOFError) as err:
            raise DnsUnavailable(f"{where} did not answer ({type(err).__name__}: {err})") from err

    # ---- verifying -------------------------------------------------------------------------

    async def verify(self, view: View, records: list[DnsRecord]) -> None:
        """Read every name back through this view (its key) from its first server."""
        server = view.servers[0]
        limit = asyncio.Semaphore(VERIFY_CONCURRENCY)

        async def check(name: dns.name.Name, expected: set[str]) -> None:
            query = dns.message.make_query(name, "A")
            query.use_tsig(view.keyring, keyname=view.key.name)
            async with limit:
                response = await self._exchange(query, server, view, tcp=False)
                if response.flags & dns.flags.TC:
                    response = await self._exchange(query, server, view, tcp=True)
            got = {rr.address for rrset in response.answer for rr in rrset if rrset.rdtype == dns.rdatatype.A}
            if got != expected:
                raise DnsRefused(
                    f"view {view.name} serves {sorted(got) or 'nothing'} for {name}, expected "
                    f"{sorted(expected) or 'nothing'}: is another writer changing the zone?"
                )

        await asyncio.gather(*(check(name, set(addresses)) for name, addresses in self._forward(view, records)))


# ---- activities ------------------------------------------------------------------------------


class DnsActivities:
    """The DNS steps of the workflows; settings (sealed in the database) are read per call so a
    change applies to the next record without restarting anything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def _publisher(self, cluster: str | None) -> Publisher | None:
        try:
            dns_settings = await asyncio.to_thread(dnsconfig.for_cluster, self.settings, cluster)
            return Publisher(dns_settings) if dns_settings else None
        except UNBUILDABLE as err:  # settings saved before they were validated, or unusable ones
            where = f"cluster {cluster}'s" if cluster else "the global"
            raise ApplicationError(
                f"{where} DNS settings cannot be used ({_describe(err)}): fix them with PUT .../dns",
                type="DnsSettingsInvalid", non_retryable=True,
            ) from None

    @activity.defn(name="publish_node_dns")
    async def publish_node(self, node: NodeDns) -> str:
        publisher = await self._publisher(node.cluster)
        if publisher is None:
            return "no DNS settings: nothing published"
        await _temporal_errors(publisher.publish([DnsRecord(name=node.name, addresses=[node.ip])]))
        activity.logger.info("published %s.%s A %s", node.name, publisher.settings.zone, node.ip)
        return f"published {node.name}.{publisher.settings.zone} A {node.ip}"

    @activity.defn(name="remove_node_dns")
    async def remove_node(self, node: NodeDns) -> str:
        publisher = await self._publisher(node.cluster)
        if publisher is None:
            return "no DNS settings: nothing to remove"
        await _temporal_errors(publisher.remove([DnsRecord(name=node.name, addresses=[node.ip])]))
        return f"removed {node.name}.{publisher.settings.zone}"

    @activity.defn(name="publish_api_name")
    async def publish_api_name(self, request: ApiNameDns) -> str:
        publisher = await self._publisher(request.cluster)
        if publisher is None:
            return "no DNS settings: API name not published"
        client = activity.client()
        addresses = []
        for machine_id in request.machine_ids:
            status = await client.get_workflow_handle(machine_workflow_id(machine_id)).query(
                "status", result_type=MachineStatus
            )
            if status.ip:
                addresses.append(status.ip)
        name = f"api.{request.cluster}"
        await _temporal_errors(publisher.publish([DnsRecord(name=name, addresses=sorted(addresses))], ptr=False))
        return f"published {name}.{publisher.settings.zone} A {', '.join(sorted(addresses)) or '(removed)'}"


async def _temporal_errors(work) -> None:
    """Refusals are final (the operator must fix keys or ACLs); silence is retried with backoff.
    Heartbeats meanwhile: a server that is slow to answer keeps the activity waiting."""
    try:
        await heartbeating(work)
    except DnsRefused as err:
        raise ApplicationError(str(err), type="DnsRefused", non_retryable=True) from None
    except DnsUnavailable as err:
        raise ApplicationError(str(err), type="DnsUnavailable") from None
    except UNBUILDABLE as err:
        raise ApplicationError(
            f"cannot build the DNS update ({_describe(err)})", type="DnsNameInvalid", non_retryable=True
        ) from None


def _describe(err: Exception) -> str:
    """The error without the offending input (a validation error would quote a TSIG secret)."""
    if isinstance(err, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_input=False))
    return f"{type(err).__name__}: {err}"
