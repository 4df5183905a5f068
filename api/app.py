"""The FastAPI application: wiring, error translation and the health route.

Temporal errors are translated once, here, into answers an operator can act on: an Update the
workflow refused in its current state is a 409 with the workflow's own reason, an unknown
workflow a 404, an unreachable Temporal a 503 that says where it was looked for.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from functools import partial

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import TimeoutError as PoolTimeout
from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from activities.sandbox import Sandbox
from api import audit, auth, logs, temporal
from api.boot_questions import BootQuestions
from api.boot_views import BootViews
from api.held_polls import HeldPolls
from activities.storage import db, machinestate
from activities.storage.settings import Settings

log = logging.getLogger("tempered.api")

# Operator and edge JSON bodies: everything they carry is bounded field by field (activities/domain/)
# well under Temporal's 2 MB payload limit; this cap refuses a huge body before it is parsed.
# Machine-facing routes (/v1/boot/) and Terraform's state store stream their bodies against their own limits.
MAX_BODY_BYTES = 1 << 20
OWN_LIMITS = ("/v1/boot/", "/v1/terraform/state/")
MAX_ERRORS = 20
VALUE_ERROR = "Value error, "  # what pydantic puts before a validator's ValueError message


class BodyLimit:
    """ASGI middleware: 413 for a request body past `limit`, by Content-Length or while it
    streams (a chunked body is counted too). The answer never echoes the body."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OWN_LIMITS):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(self.limit)
            return message

        async def tracked_send(message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        response = JSONResponse({"detail": f"request body too large: at most {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, _no_body, send)


class _TooLarge(HTTPException):
    """Raised from inside the body read: FastAPI passes HTTPExceptions through to its handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: at most {limit} bytes")


def _short(part: str | int, limit: int = 200) -> str | int:
    """A field name or message as the client may have shaped it (a dict key, a value quoted in a
    validator's message), cut short so that a 422 never carries a large input back."""
    return part if isinstance(part, int) or len(part) <= limit else part[:limit] + "… (cut)"


async def _no_body() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        db.engine(settings.database_url)
        auth.ensure_admin_token(settings)
        app.state.temporal = await temporal.connect(settings)
        await temporal.ensure_search_attributes(app.state.temporal)  # the API starts workflows too
        app.state.sandbox = Sandbox(workers=1)  # checks rules when saved, runs dry-runs
        app.state.blocking = anyio.CapacityLimiter(2)  # threads for sandbox/CPU work, off the event loop
        # the edge's boot questions and the machines' status reads: threads of their own, never
        # queued behind facts parsing or lists
        app.state.boot_threads = anyio.CapacityLimiter(8)
        app.state.boot_views = BootViews()  # what machines read of their status, asked of the workflow per move
        app.state.boot_questions = BootQuestions()  # an edge's ask again rides on the first ask's Update
        log.info("API ready; OpenAPI docs at %s/docs", settings.api_url)
        try:
            yield
        finally:
            app.state.sandbox.close()

    # /docs and /redoc load Swagger UI and ReDoc from fastapi-offline's package, never a CDN: a
    # site without internet reads its docs too. No validator badge (it would call swagger.io).
    app = FastAPIOffline(
        swagger_ui_parameters={"validatorUrl": None},  # the token stays in the tab, not localStorage
        title="Tempered",
        version="0.1.0",
        summary="Bare metal to Kubernetes: clusters, machines and their durable lifecycles.",
        lifespan=lifespan,
        dependencies=[Depends(logs.bind_route_fields)],
    )
    app.state.settings = settings
    # outside the lifespan: `tempered api` answers the held polls as soon as it is told to stop
    app.state.held_polls = HeldPolls(partial(machinestate.recorded_many, settings.database_url))
    app.add_middleware(BodyLimit)
    app.add_middleware(audit.AuditTrail)  # outside BodyLimit: it records refusals made inside too

    from api import (
        boot, cluster_terraform, clusters, dns, edges, fragments, machine_list, machines, metrics, operations, power,
        rules, terraform_state, terraform_states, tokens,
    )

    app.include_router(clusters.router)
    app.include_router(cluster_terraform.router)
    app.include_router(operations.router)
    app.include_router(machines.router)
    app.include_router(machine_list.router)
    app.include_router(power.router)
    app.include_router(edges.operator_router)
    app.include_router(edges.edge_router)
    app.include_router(dns.router)
    app.include_router(boot.router)
    app.include_router(rules.router)
    app.include_router(fragments.router)
    app.include_router(tokens.router)
    app.include_router(terraform_state.router)
    app.include_router(terraform_states.router)
    app.include_router(audit.router)
    app.include_router(metrics.router)
    app.add_middleware(metrics.RequestMetrics)  # outermost: counts the 413s of BodyLimit too
    _install_error_handlers(app, settings)

    @app.get("/healthz", tags=["health"], summary="Liveness: the API and its Temporal connection")
    async def healthz(request: Request) -> dict[str, str]:
        client: Client = request.app.state.temporal
        await client.service_client.check_health()
        return {"status": "ok", "temporal": settings.temporal_address}

    return app


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        """422 naming each field and why, without pydantic's `input` (it may be a megabyte, or a
        secret); a validator's message may quote a short value, cut at 200 characters. Pydantic's
        "Value error, " prefix goes: every client reads the validator's own words. At most
        MAX_ERRORS of them."""
        errors = [
            {"loc": [_short(part) for part in e["loc"]], "msg": _short(e["msg"].removeprefix(VALUE_ERROR)),
             "type": e["type"]}
            for e in err.errors()[:MAX_ERRORS]
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(WorkflowUpdateFailedError)
    async def _update_refused(_: Request, err: WorkflowUpdateFailedError) -> JSONResponse:
        cause = err.cause
        message = getattr(cause, "message", None) or str(cause or err)
        return JSONResponse({"detail": message}, status_code=409)

    @app.exception_handler(WorkflowUpdateRPCTimeoutOrCancelledError)
    async def _update_unanswered(request: Request, _: WorkflowUpdateRPCTimeoutOrCancelledError) -> JSONResponse:
        """An Update past its deadline: the SDK's own error (not an RPCError), a 500 before."""
        log.warning("%s %s: the workflow did not answer its Update in time", request.method, request.url.path)
        return JSONResponse({"detail": _unanswered(settings, "the workflow did not answer in time")}, status_code=504)

    @app.exception_handler(PoolTimeout)
    async def _no_connection(request: Request, err: PoolTimeout) -> JSONResponse:
        """Every database connection busy past the pool's wait: the request was not applied."""
        log.warning("%s %s: no database connection in time: %s", request.method, request.url.path, err)
        return JSONResponse(
            {"detail": "the database gave no connection in time (every connection busy): the request was not "
                       "applied, try again in a few seconds"},
            status_code=504, headers={"Retry-After": "5"},
        )

    @app.exception_handler(RPCError)
    async def _temporal_error(_: Request, err: RPCError) -> JSONResponse:
        if err.status == RPCStatusCode.RESOURCE_EXHAUSTED:
            return JSONResponse(
                {"detail": f"Temporal is overloaded ({err.message}): the request was not applied, try again in a "
                           "few seconds"},
                status_code=503, headers={"Retry-After": "5"},
            )
        if err.status == RPCStatusCode.NOT_FOUND:
            return JSONResponse({"detail": f"not found in Temporal: {err.message}"}, status_code=404)
        if err.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
            return JSONResponse({"detail": _unanswered(settings, "no worker answered in time")}, status_code=504)
        if err.status == RPCStatusCode.UNAVAILABLE:
            return JSONResponse(
                {
                    "detail": f"Temporal at {settings.temporal_address} is unavailable ({err.message}); "
                    "the request was not applied, try again when it is back"
                },
                status_code=503,
            )
        log.error("Temporal error: %s", err)
        return JSONResponse({"detail": f"Temporal error: {err.message}"}, status_code=502)


def _unanswered(settings: Settings, what: str) -> str:
    """A 504's message: what did not answer, and what to do about it."""
    return (
        f"{what}: check that 'tempered worker' is running against {settings.temporal_address} "
        f"(namespace {settings.temporal_namespace}) and is not overloaded; the request may still be applied: "
        "look at the resource, then retry"
    )
