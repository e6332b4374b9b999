"""An async client for the OCI distribution API, used to push and pull images locally.

The local builder pushes the layers it writes to disk and the Cloud Run runtime pulls
images by digest; both talk to the loopback CNCF registry through this client rather
than through a Docker daemon, which localcloud does not require.

Spec: https://github.com/opencontainers/distribution-spec/blob/main/spec.md

Design choices, and why:

- Content is addressed by sha256 and verified on both sides: a pushed blob's digest is
  checked by the registry and against its ``Docker-Content-Digest`` answer; a pulled blob
  or manifest is hashed here before anyone uses it.
- Layers can be large, so uploads stream the file from disk (aiohttp reads it in a
  worker thread) and downloads stream to a temporary file renamed into place only once
  its digest matches, so a reader never sees a partial or corrupt layer.
- Every request has a timeout; transport failures and registry errors both surface as
  :class:`RegistryError`, which carries the status and the registry's error codes.
- Credentials are a bearer access token sent on every request (``token``), as ``docker``
  sends Google's after ``docker login``: the registry front checks each request's
  Artifact Registry permission for the token's account. Without one, the front takes the
  connection's identity (the local user, from the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import aiohttp
from yarl import URL

from localcloud.registry.names import check_digest, check_repository_path, check_tag

LOG = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_TYPES: tuple[str, ...] = (
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_LIST,
)

# The spec asks registries to accept manifests of at least 4 MiB; anything larger from
# the registry is refused rather than buffered.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# get_blob_bytes is for configs and other small blobs; layers go through get_blob.
MAX_BLOB_BYTES_IN_MEMORY = 16 * 1024 * 1024
HASH_CHUNK = 1024 * 1024
_LINK_NEXT_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class RegistryError(Exception):
    """A registry request failed.

    ``status`` is the HTTP status (None when the registry could not be reached or the
    failure was detected here, e.g. a digest mismatch); ``errors`` is the registry's
    ``{"errors": [{"code", "message", "detail"}]}`` list, and ``codes`` just the codes.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        errors: list[dict[str, Any]] | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors or []
        self.method = method
        self.url = url

    @property
    def codes(self) -> list[str]:
        return [str(e.get("code")) for e in self.errors if e.get("code")]


class DigestMismatchError(RegistryError):
    """Content did not hash to the digest it was declared or announced with."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 digest and size of a file, read in chunks (blocking: run it in a thread)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _declared_media_type(manifest: bytes) -> str | None:
    """The manifest's own ``mediaType`` field, if it is JSON and has one."""
    try:
        doc = json.loads(manifest)
    except ValueError:
        return None
    value = doc.get("mediaType") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body: a registry's answer is never buffered unbounded."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _parse_errors(body: bytes) -> list[dict[str, Any]]:
    """The registry's error list, or a single pseudo-error holding a non-JSON body."""
    if not body:
        return []
    try:
        doc = json.loads(body)
    except ValueError:
        text = body[:500].decode("utf-8", "replace").strip()
        return [{"code": "", "message": text}] if text else []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return []
    return [e for e in errors if isinstance(e, dict)]


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        text = ": ".join(str(x) for x in (e.get("code"), e.get("message")) if x)
        if e.get("detail"):
            text += f" (detail: {json.dumps(e['detail'], sort_keys=True)})"
        parts.append(text)
    return "; ".join(p for p in parts if p)


class RegistryClient:
    """OCI distribution API over plain HTTP to ``address`` (``"127.0.0.1:5000"``).

    Pass an existing ``aiohttp.ClientSession`` to share its connection pool; otherwise
    the client creates one and closes it in ``close()`` / ``async with``. ``timeout``
    bounds each metadata request end to end; blob transfers instead fail after
    ``transfer_idle_timeout`` seconds without progress, so a large layer is never cut
    off merely for being large.
    """

    def __init__(
        self,
        address: str,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: float = 30.0,
        transfer_idle_timeout: float = 60.0,
        token: str | None = None,
    ) -> None:
        base = address if "://" in address else f"http://{address}"
        self._credentials = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = URL(base.rstrip("/"))
        self.address = address
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._transfer_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout, sock_read=transfer_idle_timeout
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily so the client can be constructed outside a running event loop.
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the aiohttp session given to RegistryClient is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    # -- plumbing ----------------------------------------------------------------------

    def _url(self, repo: str, *parts: str) -> URL:
        check_repository_path(repo)
        return self.base_url.join(URL(f"/v2/{repo}/" + "/".join(parts)))

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        url: URL,
        *,
        ok: Iterable[int],
        what: str,
        transfer: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; yields the response if its status is in ``ok``, else raises.

        ``what`` describes the operation for error messages ("push blob sha256:... to
        repo x"), because a bare URL with an upload UUID tells the reader little.
        """
        timeout = self._transfer_timeout if transfer else self._timeout
        if self._credentials:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **self._credentials}
        try:
            async with self.session.request(method, url, timeout=timeout, **kwargs) as resp:
                if resp.status not in ok:
                    body = b"" if method == "HEAD" else await _read_limited(resp, 64 * 1024)
                    errors = _parse_errors(body)
                    detail = _describe(errors)
                    raise RegistryError(
                        f"{what}: {method} {url.path} returned {resp.status} {resp.reason}"
                        + (f": {detail}" if detail else ""),
                        status=resp.status,
                        errors=errors,
                        method=method,
                        url=str(url),
                    )
                yield resp
        except RegistryError:
            raise
        except TimeoutError as exc:
            raise RegistryError(
                f"{what}: {method} {url.path} timed out (registry at {self.address})",
                method=method,
                url=str(url),
            ) from exc
        except aiohttp.ClientError as exc:
            raise RegistryError(
                f"{what}: {method} {url.path} failed: registry at {self.address}: {exc}",
                method=method,
                url=str(url),
            ) from exc

    def _check_announced(self, resp: aiohttp.ClientResponse, expected: str, what: str) -> None:
        announced = resp.headers.get("Docker-Content-Digest")
        if announced is not None and announced != expected:
            raise DigestMismatchError(
                f"{what}: the registry answered Docker-Content-Digest {announced}, expected {expected}",
                status=resp.status,
            )

    # -- API -----------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True if a v2 registry answers ``GET /v2/`` with 200; False if unreachable.

        Never raises, so it can be polled while the registry starts.
        """
        try:
            async with self._request(
                "GET", self.base_url.join(URL("/v2/")), ok=(200,), what="ping"
            ):
                return True
        except RegistryError as exc:
            LOG.debug("registry ping failed: %s", exc)
            return False

    async def blob_exists(self, repo: str, digest: str) -> int | None:
        """The blob's size if ``repo`` has it (HEAD), else None.

        Existence is per repository: a blob stored for another repository is not visible
        here until it is pushed or mounted into this one.
        """
        check_digest(digest)
        url = self._url(repo, "blobs", digest)
        async with self._request(
            "HEAD", url, ok=(200, 404), what=f"check blob {digest} in {repo}"
        ) as resp:
            if resp.status == 404:
                return None
            return int(resp.headers.get("Content-Length", "0"))

    async def push_blob(
        self,
        repo: str,
        path_or_bytes: Path | str | bytes | bytearray | memoryview,
        digest: str | None = None,
        *,
        mount_from: str | None = None,
    ) -> tuple[str, int]:
        """Upload a blob (file path or bytes) to ``repo``; return ``(digest, size)``.

        Skipped when the repository already has the digest. With ``mount_from`` the
        registry is first asked to link the blob from that repository (no data sent);
        if it declines (202) the upload session it opened is used for a normal upload.
        In-memory content is always hashed here, so a wrong declared digest is caught
        before anything is sent; a file is hashed here only when no digest is given
        (in a worker thread), otherwise the registry verifies it while receiving.
        """
        check_repository_path(repo)
        if mount_from is not None:
            check_repository_path(mount_from)
        if isinstance(path_or_bytes, bytes | bytearray | memoryview):
            content = bytes(path_or_bytes)
            data: bytes | None = content
            path: Path | None = None
            actual = sha256_digest(content)
            if digest is not None and check_digest(digest) != actual:
                raise DigestMismatchError(
                    f"push blob to {repo}: content hashes to {actual}, not the declared {digest}"
                )
            blob, size = actual, len(content)
        elif digest is None:
            data, path = None, Path(path_or_bytes)
            blob, size = await asyncio.to_thread(file_digest, path)
        else:
            data, path = None, Path(path_or_bytes)
            blob = check_digest(digest)
            size = (await asyncio.to_thread(path.stat)).st_size
        what = f"push blob {blob} to {repo}"

        try:
            existing = await self.blob_exists(repo, blob)
        except RegistryError as exc:
            # A caller who may push but not read (or not at all) is refused the existence
            # check; like docker, go on to the upload, whose refusal names the permission
            # a push lacks (a HEAD's answer has no body to say it).
            if exc.status not in (401, 403):
                raise
            existing = None
        if existing is not None:
            LOG.debug("%s: already present (%d bytes), skipped", what, existing)
            return blob, existing

        uploads = self._url(repo, "blobs", "uploads", "")
        if mount_from is not None:
            uploads = uploads.with_query({"mount": blob, "from": mount_from})
        async with self._request("POST", uploads, ok=(201, 202), what=what) as resp:
            if resp.status == 201:
                self._check_announced(resp, blob, what)
                LOG.debug("%s: mounted from %s", what, mount_from)
                return blob, size
            location = resp.headers.get("Location")
        if not location:
            raise RegistryError(
                f"{what}: the registry opened an upload without a Location", status=202
            )
        if mount_from is not None:
            LOG.debug("%s: registry declined to mount from %s; uploading", what, mount_from)

        target = self.base_url.join(URL(location)).update_query({"digest": blob})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        try:
            if data is not None:
                async with self._request(
                    "PUT", target, ok=(201,), what=what, transfer=True, data=data, headers=headers
                ) as resp:
                    self._check_announced(resp, blob, what)
            else:
                assert path is not None
                f: BinaryIO = await asyncio.to_thread(open, path, "rb")
                try:
                    async with self._request(
                        "PUT", target, ok=(201,), what=what, transfer=True, data=f, headers=headers
                    ) as resp:
                        self._check_announced(resp, blob, what)
                finally:
                    await asyncio.to_thread(f.close)
        except Exception:
            # Release the registry's upload state; best effort, the original error matters.
            with contextlib.suppress(Exception):
                async with self._request(
                    "DELETE", self.base_url.join(URL(location)), ok=(204, 404), what=what
                ):
                    pass
            raise
        LOG.debug("%s: uploaded %d bytes", what, size)
        return blob, size

    async def put_manifest(
        self, repo: str, reference: str, manifest: bytes, media_type: str
    ) -> str:
        """Store ``manifest`` (exact bytes) under a tag or its digest; return its digest.

        The digest is the sha256 of the bytes as sent, which is why callers pass bytes,
        not a dict: re-serialising would change the digest. The registry refuses a
        manifest whose config or layers it does not have in ``repo``.
        """
        digest = sha256_digest(manifest)
        self._check_reference(reference)
        declared = _declared_media_type(manifest)
        if declared is not None and declared != media_type:
            # The registry refuses this too, but only with a bare "manifest invalid".
            raise ValueError(
                f"put manifest to {repo}: the manifest's mediaType is {declared!r} but it is "
                f"being sent as {media_type!r}"
            )
        if reference.startswith("sha256:") and reference != digest:
            raise DigestMismatchError(
                f"put manifest to {repo}: content hashes to {digest}, not the reference {reference}"
            )
        what = f"put manifest {self._describe_ref(repo, reference)}"
        url = self._url(repo, "manifests", reference)
        async with self._request(
            "PUT", url, ok=(201,), what=what, data=manifest, headers={"Content-Type": media_type}
        ) as resp:
            self._check_announced(resp, digest, what)
        return digest

    async def get_manifest(
        self, repo: str, reference: str, accept: tuple[str, ...] = MANIFEST_TYPES
    ) -> tuple[bytes, str, str]:
        """Fetch a manifest by tag or digest; return ``(body, media type, digest)``.

        The digest is computed from the body; when fetching by digest it must equal the
        reference, which is what makes pulling by digest safe.
        """
        self._check_reference(reference)
        what = f"get manifest {self._describe_ref(repo, reference)}"
        url = self._url(repo, "manifests", reference)
        async with self._request(
            "GET", url, ok=(200,), what=what, headers={"Accept": ", ".join(accept)}
        ) as resp:
            body = await _read_limited(resp, MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                raise RegistryError(
                    f"{what}: manifest larger than {MAX_MANIFEST_BYTES} bytes", status=200
                )
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            digest = sha256_digest(body)
            self._check_announced(resp, digest, what)
        if reference.startswith("sha256:") and reference != digest:
            raise DigestMismatchError(
                f"{what}: the manifest received hashes to {digest}", status=200
            )
        return body, media_type, digest

    async def get_blob(self, repo: str, digest: str, dest: Path) -> Path:
        """Download a blob to ``dest``, streamed and verified; return ``dest``.

        Writes to a temporary file next to ``dest`` and renames it into place only once
        the sha256 matches, so ``dest`` either is the blob or does not change.
        """
        check_digest(digest)
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        what = f"get blob {digest} from {repo}"
        h = hashlib.sha256()

        def write(f: BinaryIO, chunk: bytes) -> None:
            h.update(chunk)
            f.write(chunk)

        try:
            async with self._request(
                "GET", self._url(repo, "blobs", digest), ok=(200,), what=what, transfer=True
            ) as resp:
                f: BinaryIO = await asyncio.to_thread(open, tmp, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(HASH_CHUNK):
                        await asyncio.to_thread(write, f, chunk)
                finally:
                    await asyncio.to_thread(f.close)
            actual = "sha256:" + h.hexdigest()
            if actual != digest:
                raise DigestMismatchError(
                    f"{what}: the content received hashes to {actual}", status=200
                )
            await asyncio.to_thread(os.replace, tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(tmp.unlink)
        return dest

    async def get_blob_bytes(self, repo: str, digest: str) -> bytes:
        """A small blob (an image config) in memory, verified against its digest."""
        check_digest(digest)
        what = f"get blob {digest} from {repo}"
        async with self._request(
            "GET", self._url(repo, "blobs", digest), ok=(200,), what=what
        ) as resp:
            body = await _read_limited(resp, MAX_BLOB_BYTES_IN_MEMORY + 1)
            if len(body) > MAX_BLOB_BYTES_IN_MEMORY:
                raise RegistryError(
                    f"{what}: larger than {MAX_BLOB_BYTES_IN_MEMORY} bytes; use get_blob",
                    status=200,
                )
        actual = sha256_digest(body)
        if actual != digest:
            raise DigestMismatchError(
                f"{what}: the content received hashes to {actual}", status=200
            )
        return body

    async def tags(self, repo: str) -> list[str]:
        """All tags of ``repo``, following ``Link: <...>; rel="next"`` pagination."""
        what = f"list tags of {repo}"
        url: URL | None = self._url(repo, "tags", "list")
        found: list[str] = []
        while url is not None:
            async with self._request("GET", url, ok=(200,), what=what) as resp:
                doc = await resp.json(content_type=None)
                link = resp.headers.get("Link")
            found.extend((doc or {}).get("tags") or [])
            match = _LINK_NEXT_RE.search(link or "")
            url = self.base_url.join(URL(match.group(1))) if match else None
        return found

    async def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (the registry refuses deletes by tag)."""
        check_digest(digest)
        url = self._url(repo, "manifests", digest)
        async with self._request("DELETE", url, ok=(202,), what=f"delete manifest {repo}@{digest}"):
            pass

    @staticmethod
    def _describe_ref(repo: str, reference: str) -> str:
        sep = "@" if reference.startswith("sha256:") else ":"
        return f"{repo}{sep}{reference}"

    @staticmethod
    def _check_reference(reference: str) -> None:
        if reference.startswith("sha256:"):
            check_digest(reference)
        else:
            check_tag(reference)
