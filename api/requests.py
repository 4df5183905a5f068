"""Small helpers routes share about the request itself: the app's settings, and a body read
against a limit (routes that must bound a body before parsing it read it themselves)."""

from __future__ import annotations

from fastapi import HTTPException, Request

from activities.storage.settings import Settings


def app_settings(request: Request) -> Settings:
    """The settings the app was started with (api/app.py keeps them on `app.state`)."""
    return request.app.state.settings


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (by Content-Length, or
    while it streams): never read whole first."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"{what}: at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"{what}: at most {limit} bytes")
    return bytes(body)
