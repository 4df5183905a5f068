"""The edge's client of the control plane, authenticated with the edge's own token.

The URL may be `http(s)://host:port` or `unix:/path/to/api.sock` (an edge on the same host as
the API, or inside a network namespace that shares its filesystem).
"""

from __future__ import annotations

import httpx

from activities.domain.edge import EdgeBootAnswer, EdgeBootRequest, EdgeConfig


# Each discovering machine holds a connection for its long poll (up to 30 s): httpx's default of
# 100 would queue the rest of a large rack's machines behind them.
LIMITS = httpx.Limits(max_connections=2000, max_keepalive_connections=100)


class Refused(Exception):
    """The control plane will not boot this machine (policy, unknown machine): final."""


class Unavailable(Exception):
    """The control plane could not answer now: the machine should wait and ask again."""


class ControlPlane:
    def __init__(self, url: str, token: str, timeout: float = 15.0) -> None:
        if url.startswith("unix:"):
            transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"), limits=LIMITS)
            base_url = "http://control-plane"
        else:
            transport, base_url = None, url.rstrip("/")
        self.url = url
        self._timeout = timeout
        self._etag: str | None = None
        self._last: EdgeConfig | None = None
        self._http = httpx.AsyncClient(
            base_url=base_url, transport=transport, timeout=timeout, headers={"Authorization": f"Bearer {token}"},
            limits=LIMITS,
        )

    async def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise Unavailable(f"control plane {self.url} unreachable: {err}") from err
        if response.status_code in (401, 403, 404, 409, 422):
            raise Refused(_detail(response))
        if response.status_code >= 400:
            raise Unavailable(f"control plane answered {response.status_code}: {_detail(response)}")
        return response

    async def config(self) -> EdgeConfig:
        """The edge's config; polled, so it sends the last ETag and reuses the last answer on a 304."""
        headers = {"If-None-Match": self._etag} if self._etag and self._last is not None else {}
        response = await self._call("GET", "/v1/edge/config", headers=headers)
        if response.status_code == 304 and self._last is not None:
            return self._last
        self._last = EdgeConfig.model_validate_json(response.content)
        self._etag = response.headers.get("etag")
        return self._last

    async def boot(self, request: EdgeBootRequest) -> EdgeBootAnswer:
        response = await self._call("POST", "/v1/edge/boot", json=request.model_dump())
        return EdgeBootAnswer.model_validate_json(response.content)

    async def relay(
        self, method: str, path: str, authorization: str | None, body: bytes = b"", edge_url: str = "",
        held_s: float = 0,
    ) -> httpx.Response:
        """Forward a machine's own request (with its boot token, not the edge's) as it is,
        saying which edge it came through (the control plane builds URLs back to it). A
        request the control plane may hold (a long poll) is given `held_s` more to answer."""
        headers = {"Authorization": authorization or "", "Content-Type": "application/json", "X-Tempered-Edge-Url": edge_url}
        try:
            return await self._http.request(method, path, content=body or None, headers=headers,
                                            timeout=self._timeout + held_s)
        except httpx.HTTPError as err:
            raise Unavailable(f"control plane {self.url} unreachable: {err}") from err

    async def close(self) -> None:
        await self._http.aclose()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]
