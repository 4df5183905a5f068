"""Prometheus metrics of the API (README, Metrics).

The API counts requests by route template and status code, and times them: the template
(`/v1/machines/{machine_id}`), never the raw path, so that machine ids do not make one series
each. `/metrics` is an operator route like the others: a scraper sends any operator token, a viewer
token is enough (Prometheus `authorization: credentials_file`). The worker's metrics: api/worker_metrics.py.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from starlette.routing import Mount, Route
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from api import auth

API_REQUESTS = Counter(
    "tempered_api_requests_total", "API requests by method, route template and status code", ["method", "route", "code"]
)
API_SECONDS = Histogram(
    "tempered_api_request_duration_seconds",
    "Time to answer an API request, by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STATUS_READS = Counter(
    "tempered_machine_status_reads_total",
    "Machine-facing routes' reads of a machine's status: a kept answer, or asked of its workflow (api/boot_views.py)",
    ["source"],
)
HELD_POLLS = Gauge(
    "tempered_instruction_polls_held",
    "Discovery agents' instruction polls held until their machine moves (api/held_polls.py)",
)
UNMATCHED = "unmatched"  # no route: a 404, or a request refused before routing (413)

# The methods a label may name; anything else a client sends counts as "other", so no caller
# can mint new series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "LOCK", "UNLOCK"})  # the last two: Terraform's
router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics of this API process (any token: viewer or above)", response_class=Response)
def metrics(_: auth.Viewer) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        code, started = 500, time.monotonic()  # an exception that escapes is answered 500
        path = scope["path"]  # before a mount rewrites what it routes on

        async def status_of(message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_of)
        finally:
            route = getattr(scope.get("route"), "path", None) or _unrouted(scope, path)  # set on an API route
            method = scope["method"] if scope["method"] in METHODS else "other"  # clients may send any word
            API_SECONDS.labels(method, route).observe(time.monotonic() - started)
            API_REQUESTS.labels(method, route, str(code)).inc()


def _unrouted(scope, path: str) -> str:
    """The label of a request no API route took: the app's own routes outside the API
    (`/openapi.json`) by their path, a mount (`/static-offline-docs`) by its prefix, anything else
    UNMATCHED. Each is a route the app declares, so clients cannot mint series."""
    for route in getattr(scope.get("app"), "routes", ()):
        if isinstance(route, Mount) and (path == route.path or path.startswith(route.path + "/")):
            return route.path
        if isinstance(route, Route) and route.path_regex.match(path):
            return route.path
    return UNMATCHED
