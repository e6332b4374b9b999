"""The Cloud Storage port: our front on the storage address, fake-gcs-server behind it.

Clients (``STORAGE_EMULATOR_HOST``) talk to this aiohttp server, in localcloud's one
asyncio loop; fake-gcs-server listens on a private loopback port and sees only what the
front sends it. The front keeps Cloud Storage's rules where fake-gcs-server's filesystem
backend cannot (see ``layout.py`` for what goes wrong there and ``docs/localcloud.md`` for
why this design):

- **names**: every object name is checked against Google's rules (``names.py``) and given
  to the backend encoded (``layout.encode``): in request paths, the ``name`` and
  ``prefix`` parameters, multipart and resumable metadata, compose sources; every name
  coming back (object resources, listings, ACL entries, resumable upload URLs) is decoded.
- **notifications**: every write that finalizes, updates or deletes an object is
  announced (``notifier.py``: published and recorded in one commit) before it is answered,
  under the object's lock, so notifications are as durable as objects and in the order of
  the writes. At start, before the port opens, what a crash left unannounced is announced.
- **listing**: the backend filters by the encoded prefix; the front decodes, applies
  ``delimiter``, ``startOffset``/``endOffset``, ``includeTrailingDelimiter`` and pages
  (``maxResults`` up to 1,000, an opaque ``pageToken``) on the real names.
- **metadata**: custom metadata over 8 KiB is refused before the backend sees the
  request (a patch is checked merged with what it patches).
- **preconditions**: ``ifGenerationMatch``, ``ifGenerationNotMatch``,
  ``ifMetagenerationMatch``, ``ifMetagenerationNotMatch`` (and ``ifSource*`` for copies)
  are checked here for every kind of request; writes to one object are serialized by the
  front, so the check and the write are one step. fake-gcs-server checks them only on
  multipart uploads.
- **buckets**: location, location type, storage class and project are kept by the front
  (``buckets.py``): checked on create as Google checks them, answered on every bucket
  resource, and ``buckets.list`` lists the named project's buckets only.
- **IAM**: every request is served as its caller (``identity.resolve_http``) and needs the
  permission Google's table gives its method, on the bucket or object it names (``iam.py``);
  buckets' IAM policies (``/b/BUCKET/iam``, ``iam/testPermissions``) live in localcloud's
  policy store, so a bucket grant in Terraform's shape is what the front enforces.
- **errors**: Google's JSON error shape; a backend message is never passed on when it
  could show a host path or an encoded name.
- **signed URLs** (``signed.py``) that localcloud's services hand out: an XML API PUT,
  GET or HEAD carrying a valid signature is served as its signer, without IAM.
- Only routes the front knows reach the backend: batch requests, XML API uploads and
  listings, and fake-gcs-server's ``/_internal`` endpoints are refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gzip
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiDictProxy, MultiMapping
from yarl import URL

from localcloud.core import acks, authz, identity, permissions
from localcloud.core.children import ChildSpec
from localcloud.core.config import Config, free_port
from localcloud.core.errors import Unauthenticated
from localcloud.core.hops import HOP_BY_HOP
from localcloud.core.iam import PolicyStore
from localcloud.core.projects import project_number
from localcloud.storage import buckets, gcs, iam, layout, signed
from localcloud.storage.names import (
    StorageError,
    check_bucket_name,
    check_metadata,
    check_object_name,
    error_body,
)
from localcloud.storage.notifier import Key, Notifier

LOG = logging.getLogger(__name__)

MAX_PAGE = 1000  # Cloud Storage returns at most 1,000 entries a page
MAX_BODY = 1 << 32  # multipart uploads and JSON bodies read whole (fake-gcs-server does too)
MAX_HEADER = 1 << 16  # x-goog-meta-* headers may carry up to 8 KiB of metadata
PENDING_UPLOADS = 10_000
HOP_HEADERS = HOP_BY_HOP | {"host", "content-length", "expect"}
PRECONDITIONS = (
    "GenerationMatch",
    "GenerationNotMatch",
    "MetagenerationMatch",
    "MetagenerationNotMatch",
)
BOUNDARY = re.compile(r"""boundary=(?:"([^"]*)"|'([^']*)'|([^;\s]+))""", re.IGNORECASE)


@dataclass
class Pending:
    """A resumable upload the backend accepted: where it goes and what it must find there."""

    bucket: str
    name: str
    conditions: dict[str, int]


@dataclass
class Route:
    """What a request addresses, parsed from its raw (still percent-encoded) path."""

    kind: str
    bucket: str = ""
    name: str = ""
    tail: tuple[str, ...] = ()
    dest_bucket: str = ""
    dest_name: str = ""


class _Locks:
    """One asyncio lock per object, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, bucket: str, name: str) -> AsyncIterator[None]:
        key = (bucket, name)
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class StorageFront:
    """The storage port: validates, encodes and forwards to fake-gcs-server, decodes back."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = config.data_dir / "storage"
        # The backend is reached only through the front, so it listens on loopback only.
        self.backend_port = free_port("127.0.0.1")
        self.backend = f"http://127.0.0.1:{self.backend_port}"
        self.session: aiohttp.ClientSession | None = None
        self.notifier: Notifier | None = None
        self._runner: web.AppRunner | None = None
        self._locks = _Locks()
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self.buckets = buckets.BucketStore(self.root, config.region, config.project)
        self.policies: PolicyStore | None = None

    def child_spec(self) -> ChildSpec:
        """fake-gcs-server, on the private port, over a root ``layout.prepare`` made ready."""
        layout.prepare(self.root)
        return gcs.spec(self.config, self.backend_port)

    async def start(self, notifier: Notifier, policies: PolicyStore | None = None) -> None:
        """Open the storage port, once what a crash left unannounced is announced (the
        backend must answer already: the supervisor waits for it). With ``policies`` (the
        server's), buckets' IAM policies are kept there and every request is authorized
        (``iam.py``); the authorizer learns each bucket's project from the front."""
        self.notifier = notifier
        self.policies = policies
        if policies is not None:
            authz.authorizer().bucket_project = self.bucket_project
        self.session = aiohttp.ClientSession(
            # Downloads pass through as stored: a gzip object stays gzip for a client that
            # accepts it, exactly as the backend decided.
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        stored, names = await self._stored()
        await asyncio.to_thread(self.buckets.adopt, names)
        await notifier.recover(stored)
        app = web.Application(client_max_size=MAX_BODY, middlewares=[acks.middleware])
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            max_field_size=MAX_HEADER,
            max_line_size=MAX_HEADER,
            shutdown_timeout=2.0,  # a download in flight does not hold up a SIGTERM
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.storage_port, reuse_address=True
        )
        await site.start()
        LOG.info(
            "Cloud Storage on %s (fake-gcs-server on %s)", self.config.storage_address, self.backend
        )

    def bucket_project(self, bucket: str) -> str | None:
        """The project a bucket was made in (None for no such bucket), whose owners,
        editors and viewers a bucket's default policy names and whose policy it inherits."""
        attrs = self.buckets.read(bucket)
        return attrs.project if attrs is not None else None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    # ------------------------------------------------------------------ dispatch

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            route = parse_route(request.method, request.raw_path.split("?", 1)[0])
            if signed.is_signed(request.query) and route.kind in ("download", "unsupported"):
                return await self._signed(request)
            if self.policies is not None:
                request["member"] = identity.resolve_http(request)
                permissions.audit_request(request["member"], "Authorization" in request.headers)
                self._authorize(request, route)
            return await self._dispatch(request, route)
        except Unauthenticated as exc:
            return identity.http_error(exc)
        except StorageError as exc:
            return _error(exc.status, exc.message, exc.reason)
        except (aiohttp.ClientError, ConnectionError) as exc:
            LOG.warning("storage backend unreachable: %s", exc)
            return _error(503, "Cloud Storage is starting or stopped (its backend does not answer)")
        except Exception:
            LOG.exception("storage front failed on %s %s", request.method, request.raw_path[:300])
            return _error(
                500, "Cloud Storage failed on this request; localcloud's log has the details"
            )

    def _authorize(self, request: web.Request, route: Route) -> None:
        """The permission the request's method needs on what its path names (``iam.py``
        has Google's table), checked before the request is read any further. Writes check
        the rest where it is known: an overwrite's ``storage.objects.delete``, compose's
        sources, an upload's name from its body (``_may_write``)."""
        member: str = request["member"]
        method = request.method
        reading = method in ("GET", "HEAD")
        kind = route.kind
        if kind == "buckets":
            project = request.query.get("project")
            if project:  # without one, the handler's 400 names the parameter
                wanted = "storage.buckets.create" if method == "POST" else "storage.buckets.list"
                iam.require_project(member, wanted, project)
            return
        bucket = iam.bucket_resource(route.bucket)
        if kind == "bucket":
            if reading:
                iam.require(member, "storage.buckets.get", bucket)
            elif method == "DELETE":
                iam.require(member, "storage.buckets.delete", bucket)
            else:
                iam.require(member, "storage.buckets.update", bucket)
        elif kind == "iam":
            if route.tail == ("testPermissions",):
                return  # needs no permission: it answers which ones the caller holds
            wanted = "storage.buckets.getIamPolicy" if reading else "storage.buckets.setIamPolicy"
            iam.require(member, wanted, bucket)
        elif kind == "list":
            iam.require(member, "storage.objects.list", bucket)
        elif kind in ("object", "download"):
            resource = iam.object_resource(route.bucket, route.name)
            if reading:
                iam.require(member, "storage.objects.get", resource)
            elif method == "DELETE":
                iam.require(member, "storage.objects.delete", resource)
            else:
                iam.require(member, "storage.objects.update", resource)
        elif kind == "acl":
            wanted = "storage.objects.getIamPolicy" if reading else "storage.objects.setIamPolicy"
            iam.require(member, wanted, iam.object_resource(route.bucket, route.name))
        elif kind == "copy":
            iam.require(
                member, "storage.objects.get", iam.object_resource(route.bucket, route.name)
            )
        # compose and uploads: in their handlers, which know every name involved.

    async def _signed(self, request: web.Request) -> web.StreamResponse:
        """A request on a signed URL (``signed.py``): served as the signer once the
        signature holds, whoever sends it; a PUT writes the object, a GET or HEAD reads it."""
        path = request.raw_path.split("?", 1)[0]
        bucket, _, raw_name = path.lstrip("/").partition("/")
        name = unquote(raw_name, errors="surrogateescape")
        check_bucket_name(bucket)
        check_object_name(name)
        method = request.method
        content_type = request.headers.get("Content-Type", "") if method == "PUT" else ""
        try:
            if method not in ("PUT", "GET", "HEAD"):
                raise signed.Refusal(405, "MethodNotAllowed", f"{method} on a signed URL")
            signed.verify(self.config.data_dir, method, content_type, bucket, name, request.query)
        except signed.Refusal as refusal:
            return web.Response(
                status=refusal.status, text=refusal.xml(), content_type="application/xml"
            )
        if method != "PUT":
            return await self._download(request, bucket, name)
        body = await _read_body(request)
        assert self.session is not None
        async with self._locks.hold(bucket, name):
            url = self._url(
                ["upload", "storage", "v1", "b", bucket, "o"],
                {"uploadType": "media", "name": layout.encode(name)},
            )
            headers = {"Content-Type": content_type or "application/octet-stream"}
            async with self.session.post(url, data=body, headers=headers) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _backend_error(resp.status, raw, bucket, name)
            document = _present(json.loads(raw), _base(request))
            await self._announce(document)
        # The XML API answers a PUT with an empty 200 and the object's ETag.
        return web.Response(status=200, headers={"ETag": f'"{document.get("etag", "")}"'})

    async def _may_write(self, request: web.Request, bucket: str, name: str) -> None:
        """``storage.objects.create`` on the object written, and ``storage.objects.delete``
        too when it replaces a live object (Google's rule, see ``iam.py``); called under
        the object's lock where the write holds one."""
        member = request.get("member")
        if member is None:
            return  # IAM off: the front was started without policies
        resource = iam.object_resource(bucket, name)
        held = iam.held(member, ("storage.objects.create", "storage.objects.delete"), resource)
        if "storage.objects.create" not in held:
            iam.require(member, "storage.objects.create", resource)
        if "storage.objects.delete" not in held and await self._current(bucket, name):
            iam.require(member, "storage.objects.delete", resource)

    async def _dispatch(self, request: web.Request, route: Route) -> web.StreamResponse:
        method = request.method
        if route.kind == "buckets":
            if method == "POST":
                return await self._insert_bucket(request)
            if method in ("GET", "HEAD"):
                return await self._list_buckets(request)
            raise StorageError(405, f"{method} is not allowed on buckets")
        if route.kind == "bucket":
            check_bucket_name(route.bucket)
            return await self._bucket(request, route.bucket)
        if route.kind == "iam":
            check_bucket_name(route.bucket)
            return await self._iam(request, route)
        if route.kind == "list":
            check_bucket_name(route.bucket)
            if method != "GET":
                raise StorageError(405, f"{method} is not allowed on a bucket's objects")
            return await self._list(request, route.bucket)
        if route.kind in ("object", "acl", "compose", "copy", "download"):
            check_bucket_name(route.bucket)
            check_object_name(route.name)
            if route.kind == "copy":
                check_bucket_name(route.dest_bucket)
                check_object_name(route.dest_name)
        if route.kind == "object":
            return await self._object(request, route)
        if route.kind == "download":
            return await self._download(request, route.bucket, route.name)
        if route.kind == "acl":
            return await self._acl(request, route)
        if route.kind == "compose":
            return await self._compose(request, route)
        if route.kind == "copy":
            return await self._copy(request, route)
        if route.kind == "upload":
            check_bucket_name(route.bucket)
            return await self._upload(request, route.bucket)
        if route.kind == "resumable":
            return await self._chunk(request, route.tail[0], route.bucket)
        if route.kind == "unsupported":
            raise StorageError(501, f"{route.name} is not supported by localcloud's Cloud Storage")
        raise StorageError(
            404, f"Not Found: {request.method} {request.raw_path.split('?')[0][:200]}"
        )

    # ------------------------------------------------------------------ buckets

    async def _insert_bucket(self, request: web.Request) -> web.StreamResponse:
        """buckets.insert: checked as Google checks it, made by the backend, and what it
        names kept in the bucket's side file (``buckets.py``) once the backend made it.
        Held under the bucket's lock, so a second create of the same name (a 409 from the
        backend) cannot overwrite the first one's fields."""
        raw = await _read_body(request)
        body = _json(raw)
        name = check_bucket_name(str(body.get("name") or ""))
        project = _required_project(request.query)
        attrs = buckets.requested(body, project)
        async with self._locks.hold(name, ""):
            response = await self._forward(
                request, ["storage", "v1", "b"], body=raw, bucket_attrs=lambda _name: attrs
            )
            if response.status < 300:
                await asyncio.to_thread(self.buckets.write, name, attrs)
        return response

    async def _list_buckets(self, request: web.Request) -> web.StreamResponse:
        """buckets.list: the buckets of the ``project`` named (required, as by Google), by
        project number, so a project named by id or by number finds the same buckets."""
        wanted = project_number(_required_project(request.query))
        found: dict[str, buckets.BucketAttrs] = {}

        def attrs_of(name: str) -> buckets.BucketAttrs:
            found[name] = self.buckets.get(name)
            return found[name]

        def only_ours(document: dict[str, Any]) -> dict[str, Any]:
            items = [
                item
                for item in document.get("items") or []
                if isinstance(item, dict) and found[str(item.get("name"))].project_number == wanted
            ]
            if items:
                document["items"] = items
            else:
                document.pop("items", None)
            return document

        return await self._forward(
            request, ["storage", "v1", "b"], bucket_attrs=attrs_of, transform=only_ours
        )

    async def _bucket(self, request: web.Request, bucket: str) -> web.StreamResponse:
        """Get, patch, update or delete a bucket. A patch or update may change the default
        storage class (Google allows that), not the location (set at creation: a request
        naming another is refused, not answered as if it had moved the bucket); a delete
        removes the bucket's side file once the backend deleted it."""
        method = request.method
        override = request.headers.get("X-HTTP-Method-Override", "").upper()
        path = ["storage", "v1", "b", bucket]
        if method in ("GET", "HEAD"):
            return await self._forward(request, path, bucket_attrs=self.buckets.get)
        if method == "DELETE":
            async with self._locks.hold(bucket, ""):
                response = await self._forward(request, path)
                await asyncio.to_thread(self.buckets.delete, bucket)
                if self.policies is not None:
                    # A bucket made later under this name starts from the default policy.
                    await self.policies.forget(iam.bucket_resource(bucket))
            return response
        if method not in ("PATCH", "PUT", "POST"):
            raise StorageError(405, f"{method} is not allowed on a bucket")
        if method == "POST" and override not in ("PATCH", "PUT"):
            raise StorageError(405, "POST is not allowed on a bucket")
        raw = await _read_body(request)
        update = _json(raw) if raw.strip() else {}
        async with self._locks.hold(bucket, ""):
            attrs = self.buckets.get(bucket)
            if "location" in update and str(update["location"] or "").upper() != attrs.location:
                raise StorageError(
                    400,
                    f"location cannot be changed: bucket {bucket} is in {attrs.location} "
                    "(a bucket's location is set when it is created)",
                )
            storage_class = update.get("storageClass")
            changed = None
            if storage_class is not None:
                checked = buckets.requested(
                    {"location": attrs.location, "storageClass": storage_class}, attrs.project
                )
                changed = dataclasses.replace(attrs, storage_class=checked.storage_class)
            response = await self._forward(
                request, path, body=raw, bucket_attrs=lambda _name: changed or attrs
            )
            if changed is not None and response.status < 300:
                await asyncio.to_thread(self.buckets.write, bucket, changed)
        return response

    async def _iam(self, request: web.Request, route: Route) -> web.StreamResponse:
        """buckets.getIamPolicy, setIamPolicy and testIamPermissions
        (https://cloud.google.com/storage/docs/json_api/v1/buckets/getIamPolicy and the
        pages next to it), on the policy ``core/authz.py`` evaluates."""
        bucket, method = route.bucket, request.method
        if self.policies is None:
            raise StorageError(501, "bucket IAM needs localcloud's IAM (the front runs without)")
        if self.buckets.read(bucket) is None:
            raise StorageError(404, "The specified bucket does not exist.")
        resource = iam.bucket_resource(bucket)
        if route.tail == ("testPermissions",) and method == "GET":
            asked = iam.testable(request.query.getall("permissions", []))
            if not asked:
                raise StorageError(400, "Required parameter: permissions", "required")
            held = iam.held(request["member"], asked, resource)
            body: dict[str, Any] = {"kind": "storage#testIamPermissionsResponse"}
            if held:
                body["permissions"] = [p for p in dict.fromkeys(asked) if p in held]
            return web.json_response(body)
        if route.tail:
            raise StorageError(404, f"Not Found: {method} {request.path[:200]}")
        if method == "GET":
            return web.json_response(iam.policy_document(self.policies.get(resource), bucket))
        if method == "PUT":
            document = _json(await _read_body(request))
            async with self._locks.hold(bucket, ""):
                return web.json_response(await iam.set_policy(self.policies, bucket, document))
        raise StorageError(405, f"{method} is not allowed on a bucket's IAM policy")

    # ------------------------------------------------------------------ objects

    async def _object(self, request: web.Request, route: Route) -> web.StreamResponse:
        """Get, patch, update or delete one object. A write holds the object's lock from
        its checks (preconditions, ``generation``, the merged metadata) to the backend's
        answer, so nothing changes the object in between."""
        method = request.method
        override = request.headers.get("X-HTTP-Method-Override", "").upper()
        bucket, name = route.bucket, route.name
        if method in ("GET", "HEAD"):
            if method == "HEAD" or request.query.get("alt") == "media":
                return await self._download(request, bucket, name)
            await self._check_read(request.query, bucket, name)
            return await self._forward(request, _object_path(bucket, name), name=name)
        if method not in ("PATCH", "PUT", "POST", "DELETE"):
            raise StorageError(405, f"{method} is not allowed on an object")
        body = b""
        if method != "DELETE":
            body = await _read_body(request)
        patch = method == "PATCH" or (method == "POST" and override == "PATCH")
        metadata = _json(body).get("metadata") if method != "DELETE" else None
        generation = request.query.get("generation")
        async with self._locks.hold(bucket, name):
            current = None
            if (
                _conditions(request.query)
                or generation is not None
                or (patch and isinstance(metadata, dict))
            ):
                current = await self._current(bucket, name)
                _check_conditions(request.query, current, bucket, name)
            if generation is not None and (
                current is None or str(current.get("generation")) != generation
            ):
                # fake-gcs-server acts on the live object whatever generation is named; in
                # a bucket without versioning only the live generation exists.
                raise StorageError(404, f"No such object: {bucket}/{name}#{generation}")
            if patch and isinstance(metadata, dict) and current is not None:
                # A patch merges: what counts is the metadata the object would end with.
                merged = {**(current.get("metadata") or {}), **metadata}
                check_metadata({k: v for k, v in merged.items() if v is not None})
            else:
                check_metadata(metadata)
            assert self.notifier is not None
            if method != "DELETE":
                # fake-gcs-server answers a patch or update with its own record of the
                # object (no kind, links or metageneration; the name as stored): the
                # answer and the notification are the object read back.
                await self._forward(request, _object_path(bucket, name), name=name, body=body)
                fresh = await self._current(bucket, name)
                if fresh is None:
                    raise StorageError(404, f"No such object: {bucket}/{name}")
                resource = _present_object(fresh, _base(request))
                await self.notifier.updated(resource)
                return web.json_response(resource)
            if current is None and not self.notifier.has(bucket, name):
                current = await self._current(bucket, name)  # what the notification says
            response = await self._forward(request, _object_path(bucket, name), name=name)
            gone = _present_object(current, _base(request)) if current is not None else None
            await self.notifier.deleted(bucket, name, gone)
            return response

    async def _acl(self, request: web.Request, route: Route) -> web.StreamResponse:
        path = [*_object_path(route.bucket, route.name), *route.tail]
        if request.method in ("GET", "HEAD"):
            return await self._forward(request, path, name=route.name)
        body = await _read_body(request)
        async with self._locks.hold(route.bucket, route.name):
            return await self._forward(request, path, name=route.name, body=body)

    async def _download(self, request: web.Request, bucket: str, name: str) -> web.StreamResponse:
        """Stream the object's bytes through (never buffered: objects can be large), with
        the backend's headers (``X-Goog-Hash``, ``Content-Range``...) as they are."""
        await self._check_read(request.query, bucket, name)
        assert self.session is not None
        url = self._url(
            ["download", "storage", "v1", "b", bucket, "o", layout.encode(name)], request.query
        )
        headers = _forward_headers(request.headers)
        # Absent, aiohttp would ask for gzip on the client's behalf; the backend then skips
        # the decompressive transcoding a client without gzip gets from Cloud Storage.
        headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
        async with self.session.request(
            request.method, url, headers=headers, allow_redirects=False
        ) as resp:
            if resp.status >= 400 and resp.status != 416:
                await resp.read()
                raise _backend_error(resp.status, b"", bucket, name)
            out = web.StreamResponse(status=resp.status)
            for key, value in resp.headers.items():
                if key.lower() not in HOP_HEADERS:
                    out.headers.add(key, value)
            if resp.headers.get("Content-Length") is not None:
                out.headers["Content-Length"] = resp.headers["Content-Length"]
            await out.prepare(request)
            if request.method != "HEAD":
                async for chunk in resp.content.iter_chunked(1 << 16):
                    await out.write(chunk)
            await out.write_eof()
            return out

    async def _copy(self, request: web.Request, route: Route) -> web.StreamResponse:
        """copyTo and rewriteTo: both names encoded, the destination's preconditions (and
        the source's ``ifSource*``) checked, under the destination's lock."""
        body = await _read_body(request)
        update = _json(body) if body.strip() else {}
        check_metadata(update.get("metadata"))
        if _conditions(request.query, "Source"):
            source = await self._current(route.bucket, route.name)
            _check_conditions(request.query, source, route.bucket, route.name, "Source")
        async with self._locks.hold(route.dest_bucket, route.dest_name):
            await self._may_write(request, route.dest_bucket, route.dest_name)
            if _conditions(request.query):
                current = await self._current(route.dest_bucket, route.dest_name)
                _check_conditions(request.query, current, route.dest_bucket, route.dest_name)
            path = [
                *_object_path(route.bucket, route.name),
                route.tail[0],
                *_object_path(route.dest_bucket, route.dest_name)[2:],
            ]
            return await self._forward(request, path, name=route.name, body=body, announce=True)

    async def _compose(self, request: web.Request, route: Route) -> web.StreamResponse:
        """Compose: the source names in the body are encoded too, and each must exist."""
        compose = _json(await _read_body(request))
        sources = compose.get("sourceObjects")
        if not isinstance(sources, list) or not sources:
            raise StorageError(
                400, "sourceObjects: at least one source object is required", "required"
            )
        destination = compose.get("destination") or {}
        if not isinstance(destination, dict):
            raise StorageError(400, "destination must be an object resource")
        check_metadata(destination.get("metadata"))
        for source in sources:
            if not isinstance(source, dict):
                raise StorageError(400, "sourceObjects: each source is an object with a name")
            source_name = check_object_name(source.get("name"))
            if "member" in request:
                iam.require(
                    request["member"],
                    "storage.objects.get",
                    iam.object_resource(route.bucket, source_name),
                )
            # fake-gcs-server answers a missing source with a 500; Cloud Storage with a 404.
            found = await self._current(route.bucket, source_name)
            if found is None:
                raise StorageError(404, f"No such object: {route.bucket}/{source_name}")
            wanted = (source.get("objectPreconditions") or {}).get("ifGenerationMatch")
            if wanted is not None and int(found.get("generation") or 0) != _int(
                wanted, "ifGenerationMatch"
            ):
                raise _precondition_failed()
            source["name"] = layout.encode(source_name)
        async with self._locks.hold(route.bucket, route.name):
            await self._may_write(request, route.bucket, route.name)
            if _conditions(request.query):
                current = await self._current(route.bucket, route.name)
                _check_conditions(request.query, current, route.bucket, route.name)
            path = [*_object_path(route.bucket, route.name), "compose"]
            return await self._forward(
                request, path, name=route.name, body=json.dumps(compose).encode(), announce=True
            )

    # ------------------------------------------------------------------ uploads

    async def _upload(self, request: web.Request, bucket: str) -> web.StreamResponse:
        query = request.query
        kind = query.get("uploadType", "")
        if not kind and request.headers.get("X-Goog-Upload-Protocol", "").lower() == "resumable":
            kind = "resumable"
        if request.method in ("PUT", "POST") and "upload_id" in query:
            return await self._chunk(request, query["upload_id"], bucket)
        if request.method == "DELETE" and "upload_id" in query:
            self._pending.pop(query["upload_id"], None)
            return web.Response(status=499)  # Cloud Storage's answer to a cancelled upload
        if request.method != "POST":
            raise StorageError(405, f"{request.method} is not allowed here")
        if kind == "media":
            return await self._media(request, bucket)
        if kind == "multipart":
            return await self._multipart(request, bucket)
        if kind == "resumable":
            return await self._resumable(request, bucket)
        raise StorageError(400, f"uploadType must be media, multipart or resumable, not {kind!r}")

    async def _media(self, request: web.Request, bucket: str) -> web.StreamResponse:
        """``uploadType=media``: the name is a query parameter and the metadata comes in
        ``x-goog-meta-*`` headers; the body streams through."""
        name = check_object_name(request.query.get("name"))
        metadata = {
            key.lower().removeprefix("x-goog-meta-"): value
            for key, value in request.headers.items()
            if key.lower().startswith("x-goog-meta-")
        }
        check_metadata(metadata)
        return await self._write_upload(request, bucket, name, stream=True)

    async def _multipart(self, request: web.Request, bucket: str) -> web.StreamResponse:
        """``uploadType=multipart``: the name and metadata are in the first part, a JSON
        resource, which is rewritten in place; the content parts pass as they are."""
        body = await _read_body(request)
        found = BOUNDARY.search(request.headers.get("Content-Type", ""))
        if not found:
            raise StorageError(400, "a multipart upload needs a Content-Type with a boundary")
        boundary = next(g for g in found.groups() if g is not None).encode()
        start, end = _first_part(body, boundary)
        resource = _json(body[start:end])
        name = check_object_name(request.query.get("name") or resource.get("name"))
        check_metadata(resource.get("metadata"))
        resource["name"] = layout.encode(name)
        body = body[:start] + json.dumps(resource).encode() + body[end:]
        return await self._write_upload(request, bucket, name, body=body)

    async def _write_upload(
        self,
        request: web.Request,
        bucket: str,
        name: str,
        *,
        body: bytes | None = None,
        stream: bool = False,
    ) -> web.StreamResponse:
        """A one-request upload: its preconditions checked and the write forwarded under
        the object's lock, with the name encoded where the query carries it."""
        async with self._locks.hold(bucket, name):
            await self._may_write(request, bucket, name)
            await self._check_write(request.query, bucket, name)
            return await self._forward(
                request,
                ["upload", "storage", "v1", "b", bucket, "o"],
                name=name,
                query=_encoded_name(request.query, name),
                body=body,
                stream=stream,
                announce=True,
            )

    async def _resumable(self, request: web.Request, bucket: str) -> web.StreamResponse:
        """Start a resumable upload. The session URL handed back points at the front and
        carries the real name; the front remembers where the upload goes and its
        preconditions, which the backend would not check."""
        raw = await _read_body(request)
        resource = _json(raw) if raw.strip() else {}
        name = check_object_name(request.query.get("name") or resource.get("name"))
        check_metadata(resource.get("metadata"))
        # fake-gcs-server files an upload under the body's "bucket" when there is one; the
        # URL says which bucket this is, and it is the one that was checked.
        if "bucket" in resource:
            resource["bucket"] = bucket
        if resource or raw.strip():
            resource["name"] = layout.encode(name)
            raw = json.dumps(resource).encode()
        query = _encoded_name(request.query, name)
        conditions = _conditions(request.query)
        # Checked now, so a doomed upload sends nothing, and again when it completes. IAM
        # only now: the session URL is the upload's capability, as on Google.
        await self._may_write(request, bucket, name)
        await self._check_write(request.query, bucket, name)
        response = await self._forward(
            request, ["upload", "storage", "v1", "b", bucket, "o"], name=name, query=query, body=raw
        )
        location = response.headers.get("Location")
        if location and response.status < 300:
            upload_id = (parse_qs(urlsplit(location).query).get("upload_id") or [""])[0]
            self._pending[upload_id] = Pending(bucket, name, conditions)
            while len(self._pending) > PENDING_UPLOADS:
                self._pending.popitem(last=False)
            url = f"{_base(request)}/upload/storage/v1/b/{quote(bucket, safe='')}/o?" + urlencode(
                {"uploadType": "resumable", "name": name, "upload_id": upload_id}
            )
            response.headers["Location"] = url
            if "X-Goog-Upload-URL" in response.headers:
                response.headers["X-Goog-Upload-URL"] = url
        return response

    async def _chunk(self, request: web.Request, upload_id: str, bucket: str) -> web.StreamResponse:
        """One request of a resumable upload, to the URL the front handed out (``bucket``
        set) or to ``/upload/resumable/ID``; the one that completes it is checked against
        the upload's preconditions, under the object's lock."""
        pending = self._pending.get(upload_id)
        if bucket:
            path = ["upload", "storage", "v1", "b", bucket, "o"]
            query = _replace(request.query, name=None)  # the backend goes by upload_id
        else:
            path, query = ["upload", "resumable", upload_id], list(request.query.items())
        final = _final_chunk(request.headers.get("Content-Range"))
        if pending is None or not final:
            # An upload started before a restart is not pending here: its last request is
            # announced all the same (unlocked: the front no longer knows its name).
            return await self._forward(request, path, query=query, stream=True, announce=final)
        async with self._locks.hold(pending.bucket, pending.name):
            if pending.conditions:
                current = await self._current(pending.bucket, pending.name)
                try:
                    _check_conditions(pending.conditions, current, pending.bucket, pending.name)
                except StorageError:
                    self._pending.pop(upload_id, None)
                    raise
            response = await self._forward(
                request, path, name=pending.name, query=query, stream=True, announce=True
            )
        if response.status < 300:
            self._pending.pop(upload_id, None)
        return response

    # ------------------------------------------------------------------ listing

    async def _list(self, request: web.Request, bucket: str) -> web.Response:
        """List on the real names: the backend filters by the encoded prefix (``layout``
        keeps prefixes); delimiter, offsets and pages are applied here. A page token is
        the last entry returned, so pages stay right when objects come and go between
        calls."""
        q = request.query
        if q.get("matchGlob"):
            raise StorageError(501, "matchGlob is not supported by localcloud's Cloud Storage")
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        start, end = q.get("startOffset", ""), q.get("endOffset", "")
        trailing = q.get("includeTrailingDelimiter", "").lower() == "true"
        size = _int(q.get("maxResults") or MAX_PAGE, "maxResults")
        if size < 1:
            raise StorageError(400, "maxResults must be a positive number")
        size = min(size, MAX_PAGE)
        after = _token(q.get("pageToken"))
        listing = await self._backend_json(
            ["storage", "v1", "b", bucket, "o"], {"prefix": layout.encode_prefix(prefix)}
        )
        base = _base(request)
        entries: dict[tuple[bytes, int], Any] = {}
        for item in listing.get("items") or []:
            try:
                name = layout.decode(item["name"])
            except (KeyError, ValueError):
                LOG.warning(
                    "storage: skipping an object the front did not name: %r", item.get("name")
                )
                continue
            if not name.startswith(prefix):
                continue
            if (start and name < start) or (end and name >= end):
                continue
            item = _present_object(item, base)
            if q.get("projection") != "full":
                item.pop("acl", None)
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = name[: cut + len(delimiter)]
                entries[(common.encode(), 1)] = common
                if trailing and name == common:
                    entries[(name.encode(), 0)] = item
            else:
                entries[(name.encode(), 0)] = item
        keys = sorted(k for k in entries if after is None or k > after)
        page, rest = keys[:size], keys[size:]
        body: dict[str, Any] = {"kind": "storage#objects"}
        items = [entries[k] for k in page if k[1] == 0]
        prefixes = [entries[k] for k in page if k[1] == 1]
        if items:
            body["items"] = items
        if prefixes:
            body["prefixes"] = prefixes
        if rest and page:
            last = page[-1]
            body["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps([last[0].decode(), last[1]]).encode()
            ).decode()
        return web.json_response(body)

    # ------------------------------------------------------------------ the backend

    def _url(self, segments: Iterable[str], query: Any = None) -> URL:
        path = "/".join(quote(s, safe="") for s in segments)
        text = f"{self.backend}/{path}"
        if query:
            items = list(query.items()) if hasattr(query, "items") else list(query)
            text += "?" + urlencode(items, quote_via=quote)
        return URL(text, encoded=True)

    async def _current(self, bucket: str, name: str) -> dict[str, Any] | None:
        """The live object's resource as the backend has it, or None."""
        assert self.session is not None
        async with self.session.get(self._url(_object_path(bucket, name))) as resp:
            data = await resp.read()
            if resp.status == 404:
                return None
            if resp.status >= 400:
                raise _backend_error(resp.status, data, bucket, name)
            return json.loads(data)

    async def _check_write(self, query: Any, bucket: str, name: str) -> None:
        if _conditions(query):
            _check_conditions(query, await self._current(bucket, name), bucket, name)

    async def _check_read(self, query: Any, bucket: str, name: str) -> None:
        if _conditions(query):
            _check_conditions(query, await self._current(bucket, name), bucket, name, read=True)

    async def _forward(
        self,
        request: web.Request,
        segments: list[str],
        *,
        name: str = "",
        query: Any = None,
        body: bytes | None = None,
        stream: bool = False,
        announce: bool = False,
        bucket_attrs: Callable[[str], buckets.BucketAttrs] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> web.Response:
        """Send the request on with its path as ``segments`` (names already encoded by
        ``_object_path``); return the backend's answer with every name decoded. With
        ``announce``, the object the answer carries is announced as finalized first.
        ``bucket_attrs`` gives the front's fields of each bucket the answer carries;
        ``transform`` has the last word on the answer's document."""
        assert self.session is not None
        headers = _forward_headers(request.headers)
        data: Any = None
        if stream:
            data = request.content
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
        elif body is not None:
            data = body
            headers.pop("Content-Encoding", None)  # _read_body decompressed it
        url = self._url(segments, request.query if query is None else query)
        async with self.session.request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise _backend_error(resp.status, raw, _segments_bucket(segments), name)
            out_headers = CIMultiDict(
                (k, v)
                for k, v in resp.headers.items()
                if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"
            )
            if raw and "json" in resp.headers.get("Content-Type", ""):
                try:
                    document = json.loads(raw)
                except ValueError:
                    document = None
                if isinstance(document, dict):
                    document = _present(document, _base(request))
                    if bucket_attrs is not None:
                        document = _present_buckets(document, bucket_attrs)
                    if transform is not None:
                        document = transform(document)
                    raw = json.dumps(document).encode()
                    if announce:
                        await self._announce(document)
            return web.Response(status=resp.status, body=raw, headers=out_headers)

    async def _announce(self, document: dict[str, Any]) -> None:
        """Announce the object a write's answer carries (a rewrite's once it is done)."""
        assert self.notifier is not None
        if document.get("kind") == "storage#rewriteResponse":
            if not document.get("done"):
                return
            document = document.get("resource") or {}
        if document.get("kind") != "storage#object":
            return
        await self.notifier.finalized(document)

    async def _stored(self) -> tuple[dict[Key, dict[str, Any]], list[str]]:
        """Every object the backend holds, by bucket and real name, as the front shows it;
        and the name of every bucket (the backend's listing has every project's)."""
        assert self.session is not None
        base = f"http://{self.config.storage_address}"
        found: dict[Key, dict[str, Any]] = {}
        names: list[str] = []
        listing = await self._backend_json(["storage", "v1", "b"], {"project": self.config.project})
        for entry in listing.get("items") or []:
            bucket = str(entry.get("name", ""))
            names.append(bucket)
            listing = await self._backend_json(["storage", "v1", "b", bucket, "o"])
            for item in listing.get("items") or []:
                try:
                    layout.decode(str(item.get("name")))
                except ValueError:
                    LOG.warning("storage: an object the front did not name: %r", item.get("name"))
                    continue
                resource = _present_object(item, base)
                found[(bucket, resource["name"])] = resource
        return found, names

    async def _backend_json(self, segments: list[str], query: Any = None) -> dict[str, Any]:
        assert self.session is not None
        async with self.session.get(self._url(segments, query)) as resp:
            data = await resp.read()
            if resp.status >= 400:
                raise _backend_error(resp.status, data, _segments_bucket(segments))
            document = json.loads(data)
        return document if isinstance(document, dict) else {}


# ---------------------------------------------------------------------- helpers


def parse_route(method: str, raw_path: str) -> Route:
    """What a raw request path addresses. Object names are taken from the path as the
    client encoded them (``%2F`` for ``/``); a name sent with raw slashes is joined back."""
    seg = [unquote(s, errors="surrogateescape") for s in raw_path.split("/")[1:]]
    if seg[:2] == ["storage", "v1"] and seg[2:3] == ["b"]:
        rest = seg[3:]
        if rest in ([], [""]):
            return Route("buckets")
        bucket = rest[0]
        if len(rest) == 1:
            return Route("bucket", bucket)
        if rest[1] == "iam":
            return Route("iam", bucket, tail=tuple(rest[2:]))
        if rest[1] != "o":
            return Route("none")
        tail = rest[2:]
        if tail in ([], [""]):
            return Route("list", bucket)
        for i, part in enumerate(tail):
            if (
                part in ("copyTo", "rewriteTo")
                and tail[i + 1 : i + 2] == ["b"]
                and tail[i + 3 : i + 4] == ["o"]
            ):
                return Route(
                    "copy",
                    bucket,
                    "/".join(tail[:i]),
                    (part,),
                    dest_bucket=tail[i + 2],
                    dest_name="/".join(tail[i + 4 :]),
                )
        if method == "POST" and len(tail) > 1 and tail[-1] == "compose":
            return Route("compose", bucket, "/".join(tail[:-1]))
        if "acl" in tail[1:]:
            i = tail.index("acl", 1)
            return Route("acl", bucket, "/".join(tail[:i]), tuple(tail[i:]))
        return Route("object", bucket, "/".join(tail))
    if seg[:4] == ["download", "storage", "v1", "b"] and seg[5:6] == ["o"] and len(seg) > 6:
        return Route("download", seg[4], "/".join(seg[6:]))
    if seg[:4] == ["upload", "storage", "v1", "b"] and seg[5:6] == ["o"] and seg[6:] in ([], [""]):
        return Route("upload", seg[4])
    if seg[:2] == ["upload", "resumable"] and len(seg) == 3:
        return Route("resumable", tail=(seg[2],))
    if seg[:1] == ["batch"]:
        return Route("unsupported", name="The batch endpoint")
    if (
        seg
        and seg[0]
        and not seg[0].startswith("_")
        and seg[0] not in ("storage", "upload", "download")
    ):
        # The XML API's path style: GET/HEAD /BUCKET/OBJECT downloads.
        if method in ("GET", "HEAD") and len(seg) > 1 and "/".join(seg[1:]):
            return Route("download", seg[0], "/".join(seg[1:]))
        return Route("unsupported", name="The XML API (other than downloads)")
    return Route("none")


def _required_project(query: MultiMapping[str]) -> str:
    """The ``project`` parameter buckets.insert and buckets.list require
    (https://cloud.google.com/storage/docs/json_api/v1/buckets/insert)."""
    project = query.get("project", "")
    if not project:
        raise StorageError(400, "Required parameter: project", "required")
    return project


def _present_buckets(
    document: dict[str, Any], attrs: Callable[[str], buckets.BucketAttrs]
) -> dict[str, Any]:
    """A bucket resource, or a listing of them, with the fields the front keeps."""
    if document.get("kind") == "storage#bucket":
        return attrs(str(document.get("name"))).apply(document)
    if document.get("kind") == "storage#buckets":
        for item in document.get("items") or []:
            if isinstance(item, dict):
                attrs(str(item.get("name"))).apply(item)
    return document


def _segments_bucket(segments: list[str]) -> str:
    """The bucket a backend path names, for error messages."""
    try:
        return segments[segments.index("b") + 1]
    except (ValueError, IndexError):
        return ""


def _object_path(bucket: str, name: str) -> list[str]:
    return ["storage", "v1", "b", bucket, "o", layout.encode(name)]


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _forward_headers(headers: Any) -> CIMultiDict:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_HEADERS)


def _replace(query: MultiDictProxy | Any, **changes: str | None) -> list[tuple[str, str]]:
    """The query's items with ``changes`` applied (None removes the parameter)."""
    items = [(k, v) for k, v in query.items() if k not in changes]
    items += [(k, v) for k, v in changes.items() if v is not None]
    return items


def _encoded_name(query: MultiMapping[str], name: str) -> Any:
    """The query with its ``name`` parameter, if it has one, encoded for the backend."""
    return _replace(query, name=layout.encode(name)) if "name" in query else query


async def _read_body(request: web.Request) -> bytes:
    body = await request.read()
    if request.headers.get("Content-Encoding", "").lower() == "gzip" and body:
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            raise StorageError(400, "the request body is not valid gzip") from None
    return body


def _json(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        raise StorageError(400, "the request body is not valid JSON", "parseError") from None
    if not isinstance(document, dict):
        raise StorageError(400, "the request body must be a JSON object", "parseError")
    return document


def _first_part(body: bytes, boundary: bytes) -> tuple[int, int]:
    """Where the first part's content (the JSON resource) of a multipart body lies."""
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    line_end = body.find(b"\n", at) if at >= 0 else -1
    if line_end < 0:
        raise StorageError(400, "the multipart body has no part")
    for separator in (b"\r\n\r\n", b"\n\n"):
        head_end = body.find(separator, line_end)
        if head_end >= 0:
            start = head_end + len(separator)
            break
    else:
        raise StorageError(400, "the multipart body's first part has no content")
    for closing in (b"\r\n" + delimiter, b"\n" + delimiter):
        end = body.find(closing, start)
        if end >= 0:
            return start, end
    raise StorageError(400, "the multipart body's first part does not end")


def _final_chunk(content_range: str | None) -> bool:
    """Whether fake-gcs-server commits the upload on this request (its own rule): no
    Content-Range, an unknown range (``bytes */N``), or a range reaching the known total."""
    if not content_range:
        return True
    found = re.fullmatch(r"bytes (\*|(\d+)-(\d+|\*))/(\d+|\*)", content_range.strip())
    if not found:
        return False  # the backend refuses it
    if found.group(1) == "*" or found.group(3) == "*":
        return True
    if found.group(4) == "*":
        return False
    return int(found.group(3)) + 1 >= int(found.group(4))


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StorageError(400, f"Invalid value for {what}: {str(value)[:100]!r}") from None


def _conditions(query: Any, prefix: str = "") -> dict[str, int]:
    found: dict[str, int] = {}
    for condition in PRECONDITIONS:
        key = f"if{prefix}{condition}"
        if key in query:
            found[key] = _int(query[key], key)
    return found


def _precondition_failed() -> StorageError:
    return StorageError(412, "At least one of the pre-conditions you specified did not hold.")


def _check_conditions(
    query: Any,
    current: dict[str, Any] | None,
    bucket: str,
    name: str,
    prefix: str = "",
    read: bool = False,
) -> None:
    """Google's preconditions (https://cloud.google.com/storage/docs/request-preconditions):
    412 when a ...Match fails; on a read, 304 when a ...NotMatch fails."""
    conditions = _conditions(query, prefix)
    if not conditions:
        return
    generation = int(current.get("generation") or 0) if current else 0
    meta = int(current.get("metageneration") or 1) if current else None
    for key, wanted in conditions.items():
        condition = key.removeprefix(f"if{prefix}")
        if condition == "GenerationMatch":
            ok = generation == wanted
        elif condition == "GenerationNotMatch":
            ok = generation != wanted
        elif condition == "MetagenerationMatch":
            ok = meta == wanted
        else:
            ok = meta != wanted
        if not ok:
            if read and condition.endswith("NotMatch"):
                raise StorageError(304, "Not Modified")
            raise _precondition_failed()


def _token(text: str | None) -> tuple[bytes, int] | None:
    if not text:
        return None
    try:
        name, kind = json.loads(base64.urlsafe_b64decode(text.encode()))
        return name.encode(), int(kind)
    except (ValueError, TypeError):
        raise StorageError(400, "Invalid pageToken") from None


def _present(document: dict[str, Any], base: str) -> dict[str, Any]:
    """A backend response with every object name decoded (and the links made from it)."""
    kind = document.get("kind")
    if kind == "storage#object":
        return _present_object(document, base)
    if kind == "storage#objectAccessControl":
        _decode_field(document, "object")
    elif kind == "storage#rewriteResponse" and isinstance(document.get("resource"), dict):
        document["resource"] = _present_object(document["resource"], base)
    elif isinstance(document.get("items"), list):
        document["items"] = [
            _present(item, base) if isinstance(item, dict) else item for item in document["items"]
        ]
    return document


def _present_object(resource: dict[str, Any], base: str) -> dict[str, Any]:
    if not _decode_field(resource, "name"):
        return resource
    name, bucket = resource["name"], resource.get("bucket", "")
    generation = resource.get("generation")
    quoted = f"{quote(bucket, safe='')}/o/{quote(name, safe='')}"
    resource["id"] = f"{bucket}/{name}/{generation}" if generation else f"{bucket}/{name}"
    resource["selfLink"] = f"{base}/storage/v1/b/{quoted}"
    pinned = f"generation={generation}&" if generation and generation != "0" else ""
    resource["mediaLink"] = f"{base}/download/storage/v1/b/{quoted}?{pinned}alt=media"
    for entry in resource.get("acl") or []:
        if isinstance(entry, dict):
            _decode_field(entry, "object")
    return resource


def _decode_field(document: dict[str, Any], key: str) -> bool:
    value = document.get(key)
    if not isinstance(value, str):
        return False
    try:
        document[key] = layout.decode(value)
    except ValueError:
        return False
    return True


def _backend_error(status: int, raw: bytes, bucket: str, name: str = "") -> StorageError:
    """The backend's error, in words that show no host path and no encoded name (a path
    has a slash; an encoded name is a long run of hex digits)."""
    if status == 404:
        if name:
            return StorageError(404, f"No such object: {bucket}/{name}")
        return StorageError(404, "The specified bucket does not exist.")
    if status == 412:
        return _precondition_failed()
    message = ""
    try:
        message = str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = raw.decode(errors="replace")[:500]
    LOG.warning("storage backend answered %s: %s", status, message)
    if status >= 500 or "/" in message or re.search(r"[0-9a-f]{16}", message):
        message = (
            f"Cloud Storage could not complete the request (HTTP {status}); "
            "localcloud's storage log has the details"
        )
    return StorageError(status, message or f"HTTP {status}")


def _error(status: int, message: str, reason: str | None = None) -> web.Response:
    if status == 304:
        return web.Response(status=304)
    return web.Response(
        status=status, body=error_body(status, message, reason), content_type="application/json"
    )
