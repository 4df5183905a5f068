"""The edge's HTTP server, the only address machines ever talk to.

`/boot.ipxe` without parameters answers a tiny script that asks again with iPXE's variables
(MAC, UUID, serial, platform); with them, the edge forwards the question to the control plane
and renders the answer. When the control plane cannot answer, the machine is told to hold and
ask again with backoff, never left without a script. `/ipxe/` serves the iPXE builds for UEFI
HTTP Boot and `/images/` the boot images. `/machines/<id>/facts` and `/instruction` relay the
discovery agent's requests, with its own per-boot token, to the control plane.

The runtime OS's cloud-init cannot send headers, so its NoCloud seed URL carries the token in the
path, `/machines/<id>/<token>/`: the edge moves it into the Authorization header when it relays
`meta-data`, `user-data`, `vendor-data` and the phone home. Tokens never reach a log line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from activities.domain import logfields
from activities.domain.edge import EdgeBootRequest
from activities.domain.facts import MAX_POLL_WAIT_S
from bootedge import metrics, scripts
from bootedge.control import ControlPlane, Refused, Unavailable
from bootedge.packets import EdgeAddress

log = logging.getLogger("tempered.bootedge.http")
IPXE = "text/plain; charset=utf-8"
SEED = "text/plain; charset=utf-8"
SEED_ITEMS = ("meta-data", "user-data", "vendor-data")
MAX_RELAY_BYTES = 1 << 20
MAX_PHONE_HOME_BYTES = 64 << 10


async def _bind_fields(request: Request) -> None:
    """The request's log lines name its machine (by id: never the token beside it in the path)."""
    logfields.bind(machine=request.path_params.get("machine_id"), mac=(request.query_params.get("mac") or "")[:40])


def create_app(edge: EdgeAddress, control: ControlPlane, tftp_root: Path, images: Path) -> FastAPI:
    app = FastAPI(
        title="Tempered boot edge", docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(_bind_fields)]
    )
    app.add_middleware(metrics.HttpTransfers)
    app.mount("/ipxe", StaticFiles(directory=tftp_root), name="ipxe")
    images.mkdir(parents=True, exist_ok=True)
    app.mount("/images", StaticFiles(directory=images), name="images")

    @app.get("/boot.ipxe", response_class=PlainTextResponse)
    async def boot_script(
        request: Request,
        mac: str | None = Query(None),
        uuid: str | None = Query(None),
        serial: str | None = Query(None),
        platform: str = Query("pcbios"),
        buildarch: str = Query("x86_64"),
        attempt: int = Query(0, ge=0, le=1000),
    ) -> PlainTextResponse:
        if not mac:
            return PlainTextResponse(scripts.chain(edge.http), media_type=IPXE)
        try:
            question = EdgeBootRequest(
                mac=mac, uuid=uuid or None, serial=serial or None, platform=platform, buildarch=buildarch,
                ip=request.client.host if request.client else None,
            )
        except ValidationError as err:
            log.warning("malformed boot request from %s: %s", request.client, err.errors()[0]["msg"])
            return PlainTextResponse(scripts.refuse(f"malformed boot request ({err.errors()[0]['msg']})"), media_type=IPXE)
        return PlainTextResponse(await _answer(question, attempt), media_type=IPXE)

    @app.post("/machines/{machine_id}/facts")
    async def relay_facts(machine_id: str, request: Request) -> Response:
        """The discovery agent's facts, relayed with its own token (at most 1 MiB)."""
        body = await _bounded(request, MAX_RELAY_BYTES)
        if body is None:
            return JSONResponse({"detail": f"facts are limited to {MAX_RELAY_BYTES} bytes"}, status_code=413)
        return await _relay("POST", f"/v1/boot/{quote(machine_id)}/facts", request.headers.get("authorization"), body)

    @app.get("/machines/{machine_id}/instruction")
    async def relay_instruction(
        machine_id: str, request: Request, wait: int = Query(0, ge=0, le=MAX_POLL_WAIT_S)
    ) -> Response:
        """The agent's poll; with `wait`, a long poll the control plane may hold that long."""
        path = f"/v1/boot/{quote(machine_id)}/instruction" + (f"?wait={wait}" if wait else "")
        return await _relay("GET", path, request.headers.get("authorization"), held_s=wait)

    @app.get("/machines/{machine_id}/{token}/{item}")
    async def relay_seed(machine_id: str, token: str, item: str) -> Response:
        """cloud-init's NoCloud seed for this boot (meta-data, user-data, vendor-data)."""
        if item not in SEED_ITEMS:
            return PlainTextResponse("not part of the seed\n", status_code=404)
        return await _relay("GET", f"/v1/boot/{quote(machine_id)}/{item}", f"Bearer {token}", media_type=SEED)

    @app.post("/machines/{machine_id}/{token}/phone-home")
    async def relay_phone_home(machine_id: str, token: str, request: Request) -> Response:
        """cloud-init's phone home form (with the node's new SSH host key), at most 64 KiB."""
        body = await _bounded(request, MAX_PHONE_HOME_BYTES)
        if body is None:
            return JSONResponse({"detail": f"a phone home is limited to {MAX_PHONE_HOME_BYTES} bytes"}, status_code=413)
        return await _relay("POST", f"/v1/boot/{quote(machine_id)}/phone-home", f"Bearer {token}", body)

    async def _bounded(request: Request, limit: int) -> bytes | None:
        """The body, or None as soon as it passes `limit` (never read whole)."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    async def _relay(
        method: str, path: str, authorization: str | None, body: bytes = b"", media_type: str = "application/json",
        held_s: float = 0,
    ) -> Response:
        started = time.monotonic()
        try:
            answer = await control.relay(method, path, authorization, body, edge_url=edge.http, held_s=held_s)
        except Unavailable as err:
            log.warning("could not relay %s %s: %s", method, path, err)
            return JSONResponse({"detail": "the control plane is not answering; try again"}, status_code=503)
        log.info("relayed %s %s in %.3fs", method, path, time.monotonic() - started)  # `tempered lab timings` reads it
        if answer.status_code >= 400:
            log.warning("%s %s: the control plane answered %d", method, path, answer.status_code)
            media_type = "application/json"
        return Response(answer.content, status_code=answer.status_code, media_type=media_type)

    async def _answer(question: EdgeBootRequest, attempt: int) -> str:
        started = time.monotonic()
        try:
            answer = await control.boot(question)
        except Refused as err:
            log.warning("refused %s: %s", question.mac, err)
            return scripts.refuse(str(err))
        except Unavailable as err:
            log.warning("holding %s (attempt %d): %s", question.mac, attempt, err)
            return scripts.hold(edge.http, question, attempt, "the control plane is not answering")
        instruction = answer.instruction
        log.info(
            "boot script for %s: %s (machine %s, boot %d, %s) in %.3fs",  # `tempered lab timings` reads it
            question.mac, instruction.action, instruction.machine_id, instruction.boot, instruction.state,
            time.monotonic() - started, extra={"machine": instruction.machine_id, "boot": instruction.boot},
        )
        if instruction.action in ("discovery", "runtime") and answer.token:
            return scripts.boot(edge.http, instruction, answer.token)
        if instruction.action == "local":
            return scripts.local(question.platform, instruction.reason)
        if instruction.action == "hold":
            return scripts.hold(edge.http, question, attempt, instruction.reason or "waiting")
        return scripts.refuse(instruction.reason or "refused by the control plane")

    return app
