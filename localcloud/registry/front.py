"""The registry port: our front on the registry address, the CNCF registry behind it.

Artifact Registry checks every Docker API request against the repository's IAM
(https://cloud.google.com/artifact-registry/docs/access-control#permissions): pulls (a
manifest, a blob, a tag list) need ``artifactregistry.repositories.downloadArtifacts``,
pushes (blob uploads, manifests) ``artifactregistry.repositories.uploadArtifacts``, deletes
``artifactregistry.repositories.deleteArtifacts``; a cross-repository blob mount needs
``downloadArtifacts`` on the repository it mounts from. The CNCF registry checks nothing,
so it listens on a private loopback port and this front, in localcloud's asyncio loop,
sees every request first and streams it through.

Who is asking (``identity.resolve_http``): ``Authorization: Bearer TOKEN`` (a localcloud
access token), or ``Basic`` with user ``oauth2accesstoken`` and the access token as the
password, as ``docker login`` sends Google's tokens
(https://cloud.google.com/artifact-registry/docs/docker/authentication#token); no
credentials is the connection's identity (an instance's service account, or the local
user). A bad token is 401 with Docker's ``UNAUTHORIZED`` error; a denial is 403 ``DENIED``
with Artifact Registry's words (``authz.registry_message``).

Paths are ``/v2/PROJECT/REPOSITORY/IMAGE...`` (localcloud maps
``LOCATION-docker.pkg.dev`` to this port, see ``names.py``); the repository IAM is read on
``projects/PROJECT/locations/LOCATION/repositories/REPOSITORY``, LOCATION being the
repository's when Artifact Registry's API has it, else the request's
``LOCATION-docker.pkg.dev`` host, else localcloud's region. Its project's grants apply
through inheritance, so a repository made by ``docker push`` alone is governed by the
project's roles.

A repository must exist in Artifact Registry's API before anything is pushed to it or
pulled from it ("you need to create repositories in Artifact Registry before you can push
images", https://cloud.google.com/artifact-registry/docs/transition/changes-gcp#workflow):
a request naming one that does not is 404 ``NAME_UNKNOWN`` ``Repository "REPO" not found``,
which ``docker push`` prints as ``name unknown: Repository "REPO" not found`` (as in
https://github.com/GoogleCloudPlatform/developer-journey-app/issues/117). The permission
is checked first, so a caller who may not know whether it exists is told only that.

localcloud's own traffic carries the token of whom Google acts as: the builder pushes as
the build's service account, the Cloud Run runtime pulls as the service's project's Cloud
Run Service Agent, which reads its own project's repositories by default (``agents.py``).
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from localcloud.core import acks, authz, identity, permissions
from localcloud.core.config import Config, free_port
from localcloud.core.errors import Unauthenticated
from localcloud.core.hops import HOP_BY_HOP
from localcloud.registry import agents

LOG = logging.getLogger(__name__)

DOWNLOAD = "artifactregistry.repositories.downloadArtifacts"
UPLOAD = "artifactregistry.repositories.uploadArtifacts"
DELETE = "artifactregistry.repositories.deleteArtifacts"
# The registry behind asks for no credentials: the front has checked them, and keeps them.
HOP_HEADERS = HOP_BY_HOP | {"authorization"}
HOST = re.compile(r"^([a-z0-9-]+)-docker\.pkg\.dev(?::\d+)?$")
# The distribution API's operations on a repository: /v2/<name>/{manifests,blobs,tags}/...
OPERATION = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs|tags)(?P<rest>/.*)?$")


def docker_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """The distribution spec's error document
    (https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes)."""
    body = {"errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status, headers=headers)


def basic_to_bearer(header: str) -> str:
    """``Basic base64(oauth2accesstoken:TOKEN)`` as the ``Bearer TOKEN`` it stands for;
    any other header unchanged (the resolver refuses what is not a bearer token)."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return header
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return header
    if user != "oauth2accesstoken" or not password:
        return header
    return f"Bearer {password}"


class _Asking:
    """The request as the identity resolver reads it: its transport, and its
    ``Authorization`` header with Docker's Basic form turned into the bearer token."""

    def __init__(self, request: web.Request) -> None:
        self.transport = request.transport
        self.headers = CIMultiDict(request.headers)
        if "Authorization" in self.headers:
            self.headers["Authorization"] = basic_to_bearer(self.headers["Authorization"])


class RegistryFront:
    """Checks each Docker API request's permission, then streams it to the registry."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.backend_port = free_port("127.0.0.1")
        self.backend = f"http://127.0.0.1:{self.backend_port}"
        self.session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        # (project, repository) -> its location, from Artifact Registry's API (or None).
        self.location_of: Callable[[str, str], str | None] = lambda project, repo: None
        # (image path, digest) of every manifest pushed: Cloud Run unpacks it ahead.
        self.on_manifest: Callable[[str, str], None] | None = None

    async def start(
        self,
        location_of: Callable[[str, str], str | None] | None = None,
        on_manifest: Callable[[str, str], None] | None = None,
    ) -> None:
        if location_of is not None:
            self.location_of = location_of
        self.on_manifest = on_manifest
        self.session = aiohttp.ClientSession(
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=1 << 34, middlewares=[acks.middleware])
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.registry_port, reuse_address=True
        )
        await site.start()
        LOG.info(
            "registry on %s (the CNCF registry on %s)", self.config.registry_address, self.backend
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    def repository(self, request: web.Request, name: str) -> str | None:
        """The Artifact Registry repository an image path names (None: not one)."""
        parts = name.split("/")
        if len(parts) < 3:
            return None
        project, repo = parts[0], parts[1]
        location = self.location_of(project, repo)
        if location is None:
            found = HOST.match(request.host or "")
            location = found.group(1) if found else self.config.region
        return f"projects/{project}/locations/{location}/repositories/{repo}"

    def _permissions(self, request: web.Request) -> list[tuple[str, str]] | web.Response:
        """(permission, repository) pairs the request needs; or the answer for a path that
        names no repository."""
        path = request.path
        if path in ("/v2", "/v2/"):
            return []  # the version check: who is asking was resolved already
        found = OPERATION.match(path)
        if found is None:
            # /v2/_catalog lists every project's repositories: Artifact Registry has no
            # such call (repositories are listed with its API).
            return docker_error(404, "UNSUPPORTED", f"{path[:200]} is not served")
        repository = self.repository(request, found.group("name"))
        if repository is None:
            return docker_error(
                404,
                "NAME_UNKNOWN",
                f"{found.group('name')!r} is not an image of Artifact Registry's shape "
                "PROJECT/REPOSITORY/IMAGE",
            )
        method = request.method
        if method in ("GET", "HEAD"):
            wanted = [(DOWNLOAD, repository)]
        elif method == "DELETE" and not (found.group("rest") or "").startswith("/uploads"):
            wanted = [(DELETE, repository)]
        else:
            wanted = [(UPLOAD, repository)]
            source = request.query.get("from")
            if request.query.get("mount") and source:
                mounted = self.repository(request, source)
                if mounted is not None:
                    wanted.append((DOWNLOAD, mounted))
        return wanted

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            member = identity.resolve_http(_Asking(request))
        except Unauthenticated as exc:
            return docker_error(
                401,
                "UNAUTHORIZED",
                exc.message,
                **{"WWW-Authenticate": f'Bearer realm="http://{request.host}/v2/token"'},
            )
        wanted = self._permissions(request)
        if isinstance(wanted, web.Response):
            return wanted
        permissions.audit_request(member, "Authorization" in request.headers)
        for permission, repository in wanted if permissions.checking() else ():
            if permission in authz.permitted(member, (permission,), repository):
                continue
            if agents.reads_by_default(member, permission, repository):
                continue
            if permissions.let_through(member, permission, repository, "the registry"):
                continue
            message = authz.registry_message(permission, repository)
            return docker_error(403, "DENIED", message)
        if wanted:  # the first names the request's own repository (a mount's source follows)
            project, _, _, _, repo = wanted[0][1].split("/")[1:6]
            if self.location_of(project, repo) is None:
                return docker_error(404, "NAME_UNKNOWN", f'Repository "{repo}" not found')
        try:
            response = await self._forward(request)
        except (aiohttp.ClientError, ConnectionError) as exc:
            LOG.warning("registry backend unreachable: %s", exc)
            return docker_error(503, "UNAVAILABLE", "the registry is starting or stopped")
        if request.method == "PUT" and response.status == 201:
            self._announce_manifest(request.path, response.headers.get("Docker-Content-Digest"))
        return response

    def _announce_manifest(self, path: str, digest: str | None) -> None:
        """Tell ``on_manifest`` (Cloud Run's image cache) of a manifest just stored."""
        found = OPERATION.match(path)
        if found is None or found.group("kind") != "manifests" or not digest:
            return
        if self.on_manifest is not None:
            self.on_manifest(found.group("name"), digest)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        """Stream the request to the registry and its answer back. The Host header goes as
        it came, so the upload locations the registry builds point at this front."""
        assert self.session is not None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS
        )
        url = URL(self.backend + request.raw_path, encoded=True)
        data: Any = request.content if request.body_exists else None
        async with self.session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            skip_auto_headers=("Content-Type",),
        ) as resp:
            out = web.StreamResponse(status=resp.status, reason=resp.reason)
            for key, value in resp.headers.items():
                if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                    out.headers.add(key, value)
            length = resp.headers.get("Content-Length")
            if length is not None:
                out.content_length = int(length)
            await out.prepare(request)
            if request.method != "HEAD":
                async for chunk in resp.content.iter_chunked(1 << 16):
                    await out.write(chunk)
            await out.write_eof()
            return out
