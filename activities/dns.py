"""DNS: RFC 2136 dynamic updates signed with TSIG, for every view of a split-horizon zone.

Each view is a TSIG key (the server picks the view by the key that signs), its servers, and
an optional mapping of native prefixes to the prefixes that view publishes. Writes are
idempotent (an RRset is replaced, never appended), batched (many RRsets per UPDATE, written in
wire format by `dnswire`, each UPDATE under 64 KB, over TCP connections reused for a batch), and
bounded: never more connections and UPDATEs in flight to one server than `max_in_flight`,
because BIND silently drops updates past its update quota. After writing, every view is read
back with a query signed with that view's own key.

Failures come in two kinds. A server that does not answer is `DnsUnavailable`: worth retrying
with backoff. A server that answers no (BADKEY, BADSIG, REFUSED, NOTAUTH, ...) is `DnsRefused`,
carrying the server's answer and the records it refused (an UPDATE refused for its content is
sent again in halves to find them) for the operator: retrying will not help.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
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
from activities import dnswire as wire
from activities import metrics
from activities.heartbeat import heartbeating
from activities.domain.lifecycle import READY
from activities.storage import dnsconfig, machinestate
from activities.storage.settings import Settings

VERIFY_CONCURRENCY = 64


class DnsUnavailable(Exception):
    """No answer (down, unreachable, timed out): retry later."""


class DnsRefused(Exception):
    """The server answered no; the message says what it answered."""


class _WhollyRefused(DnsRefused):
    """Every record of the UPDATE was refused, each on its own if need be (`count` of them)."""

    def __init__(self, message: str, rcode: int, count: int) -> None:
        super().__init__(message)
        self.rcode, self.count = rcode, count


def _by_policy(refused: DnsRefused) -> bool:
    """Whether a refusal is the key's or the zone policy's rather than one record's: REFUSED for
    each of two or more records (one bad name is refused alone; a batch of them all, hardly)."""
    return isinstance(refused, _WhollyRefused) and refused.rcode == dns.rcode.REFUSED and refused.count >= 2


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

    @cached_property
    def tsig(self) -> dns.tsig.Key:
        return next(iter(self.keyring.values()))


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


Item = wire.Item
Write = Callable[[wire.Update, Item], None]


class Publisher:
    """Publishes DnsRecords in every view of the settings' zone (and each view's reverse zone)."""

    def __init__(self, settings: DnsSettings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.zone = dns.name.from_text(settings.zone)
        self._zone = wire.labels(self.zone)
        self._in_flight: dict[tuple[str, int], asyncio.Semaphore] = {}

    async def publish(self, records: list[DnsRecord], ptr: bool = True) -> int:
        """Write `records` (A, and PTR when a reverse zone is set and `ptr`) in every view;
        a record with no addresses is deleted. Returns the number of UPDATE messages sent."""
        counts = await _all(self._publish_view(v, records, ptr) for v in views(self.settings))
        if self.settings.verify:
            await _all(self.verify(v, records) for v in views(self.settings))
        return sum(counts)

    async def remove(self, records: list[DnsRecord]) -> int:
        """Delete the names, and the PTRs of the addresses they had."""
        gone = [DnsRecord(name=r.name, addresses=[]) for r in records]
        sent = await _all(self._remove_view(v, records) for v in views(self.settings))
        if self.settings.verify:
            await _all(self.verify(v, gone) for v in views(self.settings))
        return sum(sent)

    # ---- building UPDATEs ------------------------------------------------------------------

    def _forward(self, view: View, records: list[DnsRecord]) -> list[Item]:
        return [
            Item(
                wire.owner(r.name, self.zone, self._zone), tuple(wire.a_rdata(view.address(ip)) for ip in r.addresses),
                r.name,
            )
            for r in records
        ]

    def _reverse(self, view: View, records: list[DnsRecord]) -> list[Item]:
        zone = wire.labels(view.reverse_zone)
        found = []
        for record in records:
            target = wire.owner(record.name, self.zone, self._zone)
            for ip in record.addresses:
                reverse = wire.reverse_owner(view.address(ip))
                if wire.is_within(reverse, zone):
                    found.append(Item(reverse, (target,), f"{record.name} (PTR {ip})"))
        return found

    async def _publish_view(self, view: View, records: list[DnsRecord], ptr: bool) -> int:
        ttl = self.settings.ttl

        def forward(update: wire.Update, item: Item) -> None:
            update.delete_rrset(item.owner, dns.rdatatype.A)  # replace: never append
            for packed in item.data:
                update.add_a(item.owner, ttl, packed)

        def reverse(update: wire.Update, item: Item) -> None:
            update.delete_rrset(item.owner, dns.rdatatype.PTR)
            update.ptr(item.owner, item.data[0], ttl)

        jobs = [self._send_all(view, self._zone, self._forward(view, records), forward)]
        if ptr and view.reverse_zone is not None:
            jobs.append(self._send_all(view, wire.labels(view.reverse_zone), self._reverse(view, records), reverse))
        return sum(await _all(jobs))

    async def _remove_view(self, view: View, records: list[DnsRecord]) -> int:
        def forward(update: wire.Update, item: Item) -> None:
            update.delete_rrset(item.owner, dns.rdatatype.A)

        def reverse(update: wire.Update, item: Item) -> None:
            update.ptr(item.owner, item.data[0], 0, dns.rdataclass.NONE)  # only the PTR we wrote

        jobs = [self._send_all(view, self._zone, self._forward(view, records), forward)]
        if view.reverse_zone is not None:
            jobs.append(self._send_all(view, wire.labels(view.reverse_zone), self._reverse(view, records), reverse))
        return sum(await _all(jobs))

    # ---- sending ---------------------------------------------------------------------------

    async def _send_all(self, view: View, zone: wire.Labels, items: list[Item], write: Write) -> int:
        """Send `items` to every server of the view: each server gets up to `max_in_flight` TCP
        connections (shared by every view and zone), each sending UPDATEs one after another.
        Every UPDATE is tried; refusals are gathered into one DnsRefused naming their records."""
        if not items:
            return 0
        batches = wire.batches(items, self.settings.batch_size)
        results = await asyncio.gather(
            *(self._send_to(view, zone, server, batches, write) for server in view.servers), return_exceptions=True
        )
        refused = [r for found in results if isinstance(found, tuple) for r in found[1]]
        failed = [r for r in results if isinstance(r, BaseException)]
        if refused:
            more = f" (and {len(refused) - 1} more refused UPDATEs)" if len(refused) > 1 else ""
            raise DnsRefused(f"{refused[0]}{more}")
        if failed:
            raise failed[0]
        return sum(found[0] for found in results)

    async def _send_to(
        self, view: View, zone: wire.Labels, server: DnsServer, batches: list[list[Item]], write: Write
    ) -> tuple[int, list[DnsRefused]]:
        queue = deque(batches)
        refused: list[DnsRefused] = []
        sent = 0

        async def worker() -> None:
            """Holds one of the server's `max_in_flight` slots, so the server never sees more
            connections or UPDATEs at once than that (BIND drops past its quotas)."""
            nonlocal sent
            async with self._slot(server), wire.Connection(server.host, server.port, self.timeout) as connection:
                while queue:
                    batch = queue.popleft()
                    try:
                        done = await self._settle(connection, view, zone, server, batch, write)
                    except DnsRefused as err:
                        refused.append(err)
                    else:
                        sent += done  # after the await: `sent += await ...` would add to a stale value

        count = min(len(batches), self.settings.max_in_flight)
        await self._answer(_all(worker() for _ in range(count)), server, view)
        return sent, refused

    async def _settle(
        self, connection: wire.Connection, view: View, zone: wire.Labels, server: DnsServer, batch: list[Item],
        write: Write, rcode: int | None = None,
    ) -> int:
        """Send one UPDATE of `batch` (`rcode`: its answer, when it was sent already). One refused
        for its content (REFUSED, NOTZONE) is sent again in halves, so the error names the records
        the server will not take (and the others land).

        When the first half is refused record by record, every one of two or more, the refusal is
        the key's or the policy's, not one record's: the second half is sent once whole, never
        split in turn, so a key the server will not let update costs O(log n) UPDATEs, not 2n-1.
        """
        if rcode is None:
            rcode = await self._send(connection, view, zone, server, batch, write)
        if rcode == dns.rcode.NOERROR:
            return 1
        whole = _WhollyRefused(_refusal(server, rcode, zone, view, batch), rcode, len(batch))
        if len(batch) == 1 or rcode not in (dns.rcode.REFUSED, dns.rcode.NOTZONE):
            raise whole
        first, second = batch[: len(batch) // 2], batch[len(batch) // 2 :]
        sent, refused = 1, []
        try:
            sent += await self._settle(connection, view, zone, server, first, write)
        except DnsRefused as err:
            refused.append(err)
        answered = None
        if refused and _by_policy(refused[0]):
            answered = await self._send(connection, view, zone, server, second, write)
            if answered == dns.rcode.REFUSED:
                raise whole
        try:
            sent += await self._settle(connection, view, zone, server, second, write, answered)
        except DnsRefused as err:
            refused.append(err)
        if len(refused) == 2:
            raise whole if all(isinstance(err, _WhollyRefused) for err in refused) else DnsRefused(str(whole))
        if refused:
            raise refused[0]
        return sent

    async def _send(
        self, connection: wire.Connection, view: View, zone: wire.Labels, server: DnsServer, batch: list[Item],
        write: Write,
    ) -> int:
        """One UPDATE of `batch`; the server's answer."""
        update = wire.Update(zone)
        for item in batch:
            write(update, item)
        with metrics.counted(metrics.DNS_UPDATES, UPDATE_RESULTS, view=view.name) as counted:
            rcode = await self._answer(connection.exchange(update, view.tsig, view.keyring), server, view)
            if rcode != dns.rcode.NOERROR:
                counted["result"] = "refused"  # the server's no comes as an answer, not an exception
            return rcode

    def _slot(self, server: DnsServer) -> asyncio.Semaphore:
        key = (server.host, server.port)
        if key not in self._in_flight:
            self._in_flight[key] = asyncio.Semaphore(self.settings.max_in_flight)
        return self._in_flight[key]

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

        await _all(
            check(dns.name.from_text(r.name, self.zone), {view.address(ip) for ip in r.addresses}) for r in records
        )


async def _all(jobs: Iterable[Awaitable]) -> list:
    """Await every job, even when one fails (none is left running unawaited), then raise: a refusal
    first (it is final and says what to fix), else the first other error."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if isinstance(error, DnsRefused):
            raise error
    if errors:
        raise errors[0]
    return results


def _refusal(server: DnsServer, rcode: int, zone: wire.Labels, view: View, batch: list[Item]) -> str:
    """The server's answer, and which records it would not take (the first ten, and how many)."""
    names = ", ".join(item.record for item in batch[:10]) + (f" and {len(batch) - 10} more" if len(batch) > 10 else "")
    zone_text = b".".join(zone).decode(errors="replace") + "."
    return (
        f"{server.host}:{server.port} answered {dns.rcode.to_text(rcode)} to an UPDATE of {zone_text} in view "
        f"{view.name} (key {view.key.name}) for {len(batch)} record{'s' if len(batch) > 1 else ''}: {names}"
    )


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
        result = await self._publish_node(node)
        # its success is the machine's move to ready: the state lists show (storage/machinestate.py)
        machine_id = activity.info().workflow_id.removeprefix("machine:")
        await asyncio.to_thread(machinestate.save, self.settings.database_url, machine_id, state=READY)
        return result

    async def _publish_node(self, node: NodeDns) -> str:
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
