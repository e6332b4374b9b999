"""Cloud Run ingress: each service's stable port, and one shared port routing by Host.

A request is authorized (a public service has ``invoker_iam_disabled``, Google's
recommended way, or grants ``roles/run.invoker`` to ``allUsers``; private ones need an ID
token from localcloud's issuer whose audience is the service's URL, from a member the
policy allows), routed to a revision by the traffic split or the
tag in the Host (``TAG---SERVICE.run.localhost``), given an instance by the autoscaler
(waiting while one starts) and proxied with streaming bodies and ``X-Forwarded-*``.

A request is sent to an instance once. It goes to another instance only when the first
refused the connection (nothing was sent); once its bytes may have reached an instance, a
failure before the answer (the instance died, closed the connection, answered garbage) is
answered 503, as Cloud Run does, and written to the revision's log. aiohttp itself would
send an idempotent request again on such a failure (``_send_once`` stops it), and it
reuses a connection only while it has been idle for less than ``sandbox.KEEPALIVE``, so
a connection the instance is closing as idle is not picked for a request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from localcloud.core import acks, authz
from localcloud.core.oidc import InvalidToken, Issuer, owner_email
from localcloud.run import sandbox
from localcloud.run.autoscaler import Overloaded, StartFailed
from localcloud.run.images import ImageError

LOG = logging.getLogger(__name__)
INVOKER = "roles/run.invoker"
INVOKE = "run.routes.invoke"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


class InstanceUnreachable(Exception):
    """The instance refused the connection: nothing of the request was sent."""


class InstanceLost(aiohttp.ClientError):
    """The connection failed after the request was sent, or may have been: the instance
    may have run it, so it is not sent again."""


async def _send_once(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """A client middleware: aiohttp sends an idempotent request (GET, PUT, DELETE...) a
    second time when its connection fails before the answer (ClientOSError,
    ServerDisconnectedError; RFC 9112 section 9.3.1), so a function whose instance died
    mid-request ran twice. A failure of an established connection becomes InstanceLost,
    a ClientError aiohttp passes on without retrying."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise  # no connection was made: nothing was sent
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise InstanceLost(str(exc) or type(exc).__name__) from exc


class Ingress:
    def __init__(self, controller: Any, issuer: Issuer, host: str, port: int) -> None:
        self.controller = controller
        self.issuer = issuer
        self.host = host
        self.port = port
        self.runners: dict[str, web.AppRunner] = {}
        self.shared: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[acks.middleware])
        app.router.add_route("*", "/{tail:.*}", self._shared)
        self.shared = web.AppRunner(app, access_log=None)
        await self.shared.setup()
        await web.TCPSite(self.shared, self.host, self.port, reuse_address=True).start()

    async def open(self, service: str, port: int) -> None:
        if service in self.runners:
            return

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, service, None)

        app = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[acks.middleware])
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, port, reuse_address=True).start()
        self.runners[service] = runner

    async def close(self, service: str) -> None:
        runner = self.runners.pop(service, None)
        if runner is not None:
            await runner.cleanup()

    async def stop(self) -> None:
        for runner in list(self.runners.values()):
            await runner.cleanup()
        self.runners.clear()
        if self.shared is not None:
            await self.shared.cleanup()

    async def _shared(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").split(":", 1)[0].lower()
        if not host.endswith(".run.localhost"):
            return web.Response(status=404, text="unknown host: use SERVICE.run.localhost\n")
        label = host.removesuffix(".run.localhost")
        tag, _, service_id = label.rpartition("---")
        matches = [n for n in self.controller.store.services if n.rsplit("/", 1)[-1] == service_id]
        if not matches:
            return web.Response(status=404, text=f"no service {service_id!r}\n")
        preferred = [n for n in matches if n.split("/")[1] == self.controller.config.project]
        return await self._serve(request, (preferred or matches)[0], tag or None)

    def _authorized(self, request: web.Request, svc: Any) -> web.Response | None:
        if svc.invoker_iam_disabled:
            # No run.routes.invoke check at all, for anyone, token or not:
            # https://cloud.google.com/run/docs/authenticating/public#invoker_check
            return None
        members = self.controller.policies.members_with(svc.name, INVOKER)
        if "allUsers" in members:
            return None
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.Response(
                status=401, text="Unauthorized: this service is private; send an ID token\n"
            )
        token = header.removeprefix("Bearer ").strip()
        audiences = {svc.uri, *svc.urls, *(u.rstrip("/") for u in svc.urls)}
        try:
            claims = self.issuer.verify(token)
        except InvalidToken as exc:
            return web.Response(status=401, text=f"Unauthorized: {exc}\n")
        if (
            claims.get("aud") not in audiences
            and claims.get("aud", "").rstrip("/") not in audiences
        ):
            return web.Response(
                status=401, text="Unauthorized: the token's audience is not this service's URL\n"
            )
        email = claims.get("email", "")
        if email == owner_email(self.controller.config.project):
            return None  # the project's owner (the metadata identity) may invoke any service
        # run.routes.invoke through the whole hierarchy, as Google checks it: a grant on the
        # project reaches every service (https://cloud.google.com/run/docs/securing/managing-access).
        kind = "serviceAccount" if email.endswith(".gserviceaccount.com") else "user"
        if authz.permitted(f"{kind}:{email}", (INVOKE,), svc.name):
            return None
        return web.Response(status=403, text=f"Forbidden: {email} may not invoke {svc.name}\n")

    async def _serve(
        self, request: web.Request, service: str, tag: str | None
    ) -> web.StreamResponse:
        svc = self.controller.store.services.get(service)
        if svc is None:
            return web.Response(status=404, text="service not found\n")
        refused = self._authorized(request, svc)
        if refused is not None:
            return refused
        rev = self.controller.pick_revision(svc, tag)
        if rev is None:
            return web.Response(
                status=503 if tag is None else 404, text="no ready revision serves this URL\n"
            )
        for attempt in (1, 2):
            try:
                pool = await self.controller.pool_for(rev)
                slot = await pool.acquire()
            except (Overloaded, StartFailed, ImageError) as exc:
                return self._refused(exc)
            try:
                return await self._proxy(request, slot.instance, rev)
            except InstanceUnreachable:
                # The instance died between being picked and being called (nothing was
                # sent yet): drop it and try once more on a live or fresh one.
                await pool.discard(slot)
                if attempt == 2:
                    return web.Response(status=502, text="the instance stopped answering\n")
            finally:
                await pool.release(slot)
        raise AssertionError("unreachable")

    @staticmethod
    def _refused(exc: Exception) -> web.Response:
        if isinstance(exc, Overloaded):
            return web.Response(status=429, text=f"Rate exceeded: {exc}\n")
        if isinstance(exc, StartFailed):
            return web.Response(
                status=503, text=f"The service could not start an instance: {exc}\n"
            )
        return web.Response(status=503, text=f"The revision's image is not available: {exc}\n")

    @staticmethod
    async def _lost(
        request: web.Request, instance: sandbox.Instance, exc: Exception
    ) -> web.Response:
        """The request reached the instance (or may have), which failed before answering:
        it crashed, exited, closed the connection or answered no valid HTTP. Cloud Run
        answers that with a 503 ("HTTP 503: Malformed response or container instance
        connection issue", https://cloud.google.com/run/docs/troubleshooting); the request
        is not sent again, since it may have run. A dying instance is first seen gone, so
        the client's next request does not reach it."""
        await instance.settle()
        instance.log.write(
            f"[localcloud] {request.method} {request.path[:200]}: the connection to the "
            f"instance failed before it answered ({exc}); answered 503, not sent again "
            "(it may have run)\n".encode()
        )
        return web.Response(
            status=503,
            text="The request failed because either the HTTP response was malformed or the "
            "connection to the instance had an error.\n",
        )

    async def _proxy(
        self, request: web.Request, instance: sandbox.Instance, rev: Any
    ) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if "Transfer-Encoding" in request.headers:
            headers.pop("Content-Length", None)
        prior = request.headers.get("X-Forwarded-For")
        client = request.remote or "127.0.0.1"
        headers["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        url = f"{instance.url}{request.rel_url}"
        timeout = aiohttp.ClientTimeout(total=rev.timeout.seconds or 300)
        body = request.content if request.body_exists else None
        response: web.StreamResponse | None = None
        try:
            # The instance's own session: its connections open inside its network namespace.
            async with instance.session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                timeout=timeout,
                allow_redirects=False,
                auto_decompress=False,
                middlewares=(_send_once,),
                # Only what the caller sent: no Accept-Encoding etc. of aiohttp's own.
                skip_auto_headers=("Accept-Encoding", "Accept", "User-Agent"),
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectorError as exc:
            raise InstanceUnreachable(str(exc)) from None
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            if response is not None and response.prepared:
                # Headers are gone already: cut the connection rather than append a response.
                if request.transport is not None:
                    request.transport.close()
                return response
            if isinstance(exc, TimeoutError):
                return web.Response(status=504, text="upstream request timed out\n")
            return await self._lost(request, instance, exc)
        except asyncio.CancelledError:
            raise
