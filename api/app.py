"""The FastAPI application: wiring, error translation and the health route.

Temporal errors are translated once, here, into answers an operator can act on: an Update the
workflow refused in its current state is a 409 with the workflow's own reason, an unknown
workflow a 404, an unreachable Temporal a 503 that says where it was looked for.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.sandbox import Sandbox
from api import auth, db, temporal
from api.settings import Settings

log = logging.getLogger("tempered.api")
ECHOED_INPUT = 256  # characters: a 422 shows an invalid input only when it is this short


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        db.engine(settings.database_url)
        auth.ensure_admin_token(settings)
        app.state.temporal = await temporal.connect(settings)
        await temporal.ensure_search_attributes(app.state.temporal)  # the API starts workflows too
        app.state.sandbox = Sandbox(workers=1)  # checks rules when saved, runs dry-runs
        app.state.blocking = anyio.CapacityLimiter(2)  # threads for sandbox/CPU work, off the event loop
        log.info("API ready; OpenAPI docs at %s/docs", settings.api_url)
        try:
            yield
        finally:
            app.state.sandbox.close()

    app = FastAPI(
        title="Tempered",
        version="0.1.0",
        summary="Bare metal to Kubernetes: clusters, machines and their durable lifecycles.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    from api import boot, clusters, dns, edges, fragments, machines, rules

    app.include_router(clusters.router)
    app.include_router(machines.router)
    app.include_router(edges.operator_router)
    app.include_router(edges.edge_router)
    app.include_router(dns.router)
    app.include_router(boot.router)
    app.include_router(rules.router)
    app.include_router(fragments.router)
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
        """FastAPI's 422, without echoing a large input back (a 1 MB field stays with its sender)."""
        errors = jsonable_encoder(err.errors())
        for error in errors:
            if "input" in error and len(json.dumps(error["input"])) > ECHOED_INPUT:
                error["input"] = f"(not echoed: over {ECHOED_INPUT} characters)"
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(WorkflowUpdateFailedError)
    async def _update_refused(_: Request, err: WorkflowUpdateFailedError) -> JSONResponse:
        cause = err.cause
        message = getattr(cause, "message", None) or str(cause or err)
        return JSONResponse({"detail": message}, status_code=409)

    @app.exception_handler(RPCError)
    async def _temporal_error(_: Request, err: RPCError) -> JSONResponse:
        if err.status == RPCStatusCode.NOT_FOUND:
            return JSONResponse({"detail": f"not found in Temporal: {err.message}"}, status_code=404)
        if err.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
            return JSONResponse(
                {
                    "detail": "no worker answered in time: check that 'tempered worker' is running "
                    f"against {settings.temporal_address} (namespace {settings.temporal_namespace})"
                },
                status_code=504,
            )
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
