"""localcloud's HTTP port as gcloud's HTTP proxy: requests in absolute form.

``gcloud run --region R`` sends its calls to the regional endpoint, which it makes by
prefixing the override's host with ``R-`` (``http://us-central1-127.0.0.1:8090/``); that
name resolves nowhere. So the ``localcloud`` gcloud configuration (``orch local gcloud``)
names localcloud's HTTP port as its proxy (``proxy/type http``): gcloud then never resolves
a name, and every call of that configuration arrives here as ``GET http://HOST:PORT/path``
(RFC 9112 section 3.2.2, absolute form).

- A request for this port (whatever the host: the regional names differ only there) is
  served here, as if it came direct; aiohttp routes absolute-form requests by path.
- A request for localcloud's Cloud Storage port is passed on to it, as it is (its caller's
  token and all), so ``gcloud storage`` works through the same configuration. A caller
  without a token must be the local user: a Cloud Run instance must not reach storage
  through here as someone else than itself.
- Anything else is refused (403): this is no open proxy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from localcloud.core import identity
from localcloud.core.config import Config
from localcloud.core.errors import Unauthenticated
from localcloud.core.hops import HOP_BY_HOP

LOG = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, reason: str, message: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "status": reason}}
    return web.json_response(body, status=status)


def middleware(config: Config, session: Callable[[], aiohttp.ClientSession | None]) -> Middleware:
    """The middleware for the HTTP app; ``session`` gives the server's client session."""
    loopback = {config.host, "127.0.0.1", "localhost"}

    @web.middleware
    async def proxying(request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = request.raw_path
        if not raw.startswith(("http://", "https://")):
            return await handler(request)
        target = URL(raw)
        if target.port == config.http_port:
            return await handler(request)
        if (
            target.scheme == "http"
            and target.host in loopback
            and target.port == config.storage_port
        ):
            return await _forward(request, config, target, session())
        return _error(
            403,
            "PERMISSION_DENIED",
            f"localcloud's proxy reaches localcloud only (its ports {config.http_port} and "
            f"{config.storage_port}), not {target.host}:{target.port}",
        )

    return proxying


async def _forward(
    request: web.Request, config: Config, target: URL, session: aiohttp.ClientSession | None
) -> web.StreamResponse:
    if "Authorization" not in request.headers:
        try:
            member = identity.resolve_http(request)
        except Unauthenticated as exc:
            return identity.http_error(exc)
        if member != identity.local_user():
            return _error(
                403,
                "PERMISSION_DENIED",
                f"{member} reaches Cloud Storage directly, not through localcloud's proxy",
            )
    if session is None:
        return _error(503, "UNAVAILABLE", "localcloud is starting")
    url = URL.build(
        scheme="http",
        host=config.host,
        port=config.storage_port,
        path=target.raw_path,
        query_string=target.raw_query_string,
        encoded=True,
    )
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in HOP_BY_HOP and k.lower() != "host"
    }
    try:
        upstream = await session.request(
            request.method,
            url,
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            auto_decompress=False,
        )
    except (aiohttp.ClientError, OSError) as exc:
        LOG.warning("proxying to %s failed: %s", url, exc)
        return _error(502, "UNAVAILABLE", f"localcloud's Cloud Storage did not answer: {exc}")
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                response.headers.add(key, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response
