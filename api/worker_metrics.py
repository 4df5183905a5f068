"""The worker's Prometheus endpoint (README, Metrics).

`tempered worker` serves one `/metrics` on a loopback address (TEMPERED_WORKER_METRICS): the
activities' own metrics (activities/metrics.py), the step timer below, the machines gauge, and
the Temporal SDK's runtime metrics. The SDK exports those on a private loopback port of its own;
they are re-exposed here at each scrape, so that a scrape config names one target per worker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.request
from collections import Counter as Tally
from concurrent.futures import TimeoutError as FutureTimeout

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.metrics import STEP_SECONDS
from activities.storage.settings import split_address
from api import logs
from workflows import search

log = logging.getLogger("tempered.metrics")

class StepTimer(Interceptor):
    """Times every activity attempt (a lifecycle step) by type and outcome."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TimedActivity(next)


class _TimedActivity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput):
        name, outcome, started = activity.info().activity_type, "failed", time.monotonic()
        try:
            result = await super().execute_activity(input)
            outcome = "completed"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            STEP_SECONDS.labels(name, outcome).observe(time.monotonic() - started)


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via http_proxy


class SdkMetrics(Collector):
    """The Temporal SDK's metrics, read from its private loopback exporter at each scrape."""

    def __init__(self, address: str) -> None:
        self.url = f"http://{address}/metrics"

    def describe(self):
        return []  # names are only known once scraped; nothing to check against the registry

    def collect(self):
        try:  # on the scrape's thread, never the event loop
            with _DIRECT.open(self.url, timeout=2) as answer:
                text = answer.read().decode()
        except OSError as err:
            log.warning("the Temporal SDK's metrics at %s did not answer: %s", self.url, err)
            return
        yield from text_string_to_metric_families(text)


class Machines(Collector):
    """`tempered_machines{cluster, state}`: running machine workflows, counted from Temporal's
    visibility (their search attributes; states live in Temporal, not the database).

    Refreshed when scraped, at most every MIN_REFRESH_S, on the worker's event loop; the
    scrape thread waits for it at most WAIT_S and otherwise answers the last count."""

    QUERY = "WorkflowType = 'MachineWorkflow' AND ExecutionStatus = 'Running'"
    MIN_REFRESH_S = 5.0
    WAIT_S = 5.0

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client, self.loop = client, loop
        self.counts: Tally[tuple[str, str]] = Tally()
        self.refreshed = float("-inf")
        self.pending = None

    def describe(self):
        return []

    async def refresh(self) -> None:
        counts: Tally[tuple[str, str]] = Tally()
        async for execution in self.client.list_workflows(self.QUERY, page_size=1000):
            found = execution.typed_search_attributes
            counts[(found.get(search.CLUSTER) or "", found.get(search.STATE) or "")] += 1
        self.counts, self.refreshed = counts, time.monotonic()

    def collect(self):
        if time.monotonic() - self.refreshed >= self.MIN_REFRESH_S:
            try:
                if self.pending is None or self.pending.done():
                    self.pending = asyncio.run_coroutine_threadsafe(self.refresh(), self.loop)
                self.pending.result(timeout=self.WAIT_S)
            except FutureTimeout:
                log.warning("counting machines took over %.0f s; serving the previous count", self.WAIT_S)
            except Exception as err:  # Temporal unreachable, the worker stopping: the last count
                log.warning("could not count machines in Temporal: %s", err)
        gauge = GaugeMetricFamily(
            "tempered_machines", "Running machine workflows by cluster and state", labels=["cluster", "state"]
        )
        for (cluster, state), count in sorted(self.counts.items()):
            gauge.add_metric([cluster, state], count)
        yield gauge


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sdk_runtime() -> tuple[Runtime, str]:
    """A Temporal runtime exporting the SDK's metrics on a free loopback port (re-exposed by
    SdkMetrics, never scraped directly), and that address. Its core's own log lines go through
    Python logging (api/logs.py), so they follow TEMPERED_LOG_FORMAT like every other line."""
    address = f"127.0.0.1:{_free_loopback_port()}"
    config = PrometheusConfig(bind_address=address, counters_total_suffix=True, durations_as_seconds=True)
    return Runtime(telemetry=TelemetryConfig(metrics=config, logging=logs.core_logging())), address


def serve_worker_metrics(address: str, client: Client, sdk_address: str | None) -> bool:
    """Serve the worker's registry on `address` (host:port) from a thread; False when it could
    not bind (the worker runs on without metrics: they must never stop the lifecycles)."""
    host, port = split_address(address, "TEMPERED_WORKER_METRICS")  # checked when the settings loaded
    try:
        start_http_server(port, addr=host.strip("[]"))
    except OSError as err:
        log.error("worker metrics not served on %s (%s): set TEMPERED_WORKER_METRICS to a free address", address, err)
        return False
    REGISTRY.register(Machines(client, asyncio.get_running_loop()))
    if sdk_address:
        REGISTRY.register(SdkMetrics(sdk_address))
    log.info("worker metrics on http://%s/metrics", address)
    return True
