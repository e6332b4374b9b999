"""What a workflow can call besides its subworkflows: ``sys.*``, ``http.*`` and connectors.

Blocking calls (``sys.sleep``, ``http.*``, connectors) are coroutines, so thousands of
waiting executions are just tasks. HTTP goes through the shared aiohttp session; with
``auth: {type: OIDC}`` the request carries an ID token from localcloud's issuer for the
workflow's service account (audience: the given one, else the URL without its query).
Connectors call localcloud's own services in-process and wait on their long-running
operations the way Google's connectors do, raising ``OperationError`` when one fails.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from google.protobuf import json_format

from localcloud.core import authz, identity, permissions
from localcloud.core.errors import GoogleError, InvalidArgument, as_google_error
from localcloud.workflows.expr import WorkflowError
from localcloud.workflows.interpreter import DEFAULT_RETRY, NON_IDEMPOTENT, Interpreter

if TYPE_CHECKING:
    from localcloud.cloudbuild.builder import Builder
    from localcloud.core.oidc import Issuer
    from localcloud.operations.store import OperationStore
    from localcloud.pubsub.engine import PubSub
    from localcloud.run.controller import Controller

LOG = logging.getLogger(__name__)
MAX_RESPONSE = 2 * 1024 * 1024
HTTP_METHODS = {"get": "GET", "post": "POST", "put": "PUT", "patch": "PATCH", "delete": "DELETE"}


class Connectors(Protocol):
    """What the connectors call: the engines behind localcloud's APIs, nothing else."""

    @property
    def pubsub(self) -> PubSub: ...

    @property
    def builder(self) -> Builder: ...

    @property
    def controller(self) -> Controller: ...

    @property
    def operations(self) -> OperationStore: ...


@dataclass(frozen=True)
class Engines:
    """The engines a server hands its workflows (``Connectors``)."""

    pubsub: PubSub
    builder: Builder
    controller: Controller
    operations: OperationStore


class Runtime:
    """Per-server services the blocking functions need."""

    def __init__(
        self, session: aiohttp.ClientSession, issuer: Issuer, services: Connectors | None
    ) -> None:
        self.session = session
        self.issuer = issuer
        self._services = services

    @property
    def services(self) -> Connectors:
        if self._services is None:
            raise RuntimeError("this runtime has no connectors")
        return self._services

    def functions(self, env: dict[str, str]) -> dict[str, Callable[..., Any]]:
        from localcloud.workflows.stdlib import standard_functions

        funcs = dict(standard_functions())

        def get_env(name: str, default: Any = None) -> Any:
            return env.get(name, default)

        funcs["sys.get_env"] = get_env
        funcs["sys.now"] = lambda: time.time()
        funcs["http.default_retry_predicate"] = DEFAULT_RETRY
        funcs["http.default_retry_predicate_non_idempotent"] = NON_IDEMPOTENT
        funcs.setdefault("retry.always", lambda e: True)
        funcs.setdefault("retry.never", lambda e: False)
        return funcs

    def blocking(self, service_account: str, acting_as: str = "") -> dict[str, Any]:
        """The blocking calls of an execution whose workflow runs as ``service_account``
        (the account its OIDC tokens are for). With ``acting_as`` (the workflow names its
        account), connectors call the APIs as that account, each call held to the
        permission the API's own method needs, as Google's connectors do
        (https://cloud.google.com/workflows/docs/connectors#permissions)."""
        calls: dict[str, Any] = {
            "sys.sleep": _sleep,
            "sys.log": _log,
            "http.request": lambda it, args: self.http(it, args, None, service_account),
        }
        for name, method in HTTP_METHODS.items():
            calls[f"http.{name}"] = lambda it, args, method=method: self.http(
                it, args, method, service_account
            )
        connectors = {
            "googleapis.pubsub.v1.projects.topics.publish": self.pubsub_publish,
            "googleapis.cloudbuild.v1.projects.builds.create": self.build_create,
            "googleapis.cloudbuild.v1.projects.builds.get": self.build_get,
            "googleapis.run.v2.projects.locations.services.create": self.run_create,
            "googleapis.run.v2.projects.locations.services.patch": self.run_patch,
            "googleapis.run.v2.projects.locations.services.get": self.run_get,
            "googleapis.run.v2.projects.locations.services.delete": self.run_delete,
        }
        for name, connector in connectors.items():
            calls[name] = _acting(connector, CONNECTOR_PERMISSIONS[name], acting_as)
        return calls

    # -- http -------------------------------------------------------------------------
    async def http(
        self, it: Interpreter, args: dict[str, Any], method: str | None, account: str
    ) -> Any:
        if not isinstance(args, dict) or "url" not in args:
            raise WorkflowError("http call needs a url argument", "TypeError")
        method = method or str(args.get("method", "GET")).upper()
        url = args["url"]
        headers = {str(k): str(v) for k, v in (args.get("headers") or {}).items()}
        auth = args.get("auth") or {}
        if auth:
            kind = str(auth.get("type", "")).upper()
            if kind == "OIDC":
                parts = urlsplit(url)
                audience = auth.get("audience") or urlunsplit(
                    (parts.scheme, parts.netloc, parts.path, "", "")
                )
                headers["Authorization"] = "Bearer " + self.issuer.mint_id_token(audience, account)
            elif kind == "OAUTH2":
                headers["Authorization"] = "Bearer localcloud-oauth2-access-token"
            else:
                raise WorkflowError(
                    f"auth type {auth.get('type')!r} is not OIDC or OAuth2", "ValueError"
                )
        body = args.get("body")
        data: Any = None
        if body is not None:
            if isinstance(body, bytes):
                data = body
            elif isinstance(body, str) and headers.get("Content-Type", "").startswith("text/"):
                data = body.encode()
            else:
                data = json.dumps(body).encode()
                headers.setdefault("Content-Type", "application/json")
        timeout = float(args.get("timeout", 300))
        try:
            async with self.session.request(
                method,
                url,
                params=_query(args.get("query")),
                headers=headers,
                data=data,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.content.read(MAX_RESPONSE + 1)
                if len(raw) > MAX_RESPONSE:
                    raise WorkflowError("HTTP response exceeds 2 MB", "ResourceLimitError")
                result = {
                    "code": response.status,
                    "headers": dict(response.headers),
                    "body": _decode(raw, response.headers.get("Content-Type", "")),
                }
        except TimeoutError:
            raise WorkflowError(
                f"HTTP {method} {url} timed out after {timeout:g}s", "TimeoutError"
            ) from None
        except aiohttp.ClientError as exc:
            raise WorkflowError(
                f"HTTP {method} {url} failed: {exc}", "ConnectionFailedError", "ConnectionError"
            ) from None
        if result["code"] >= 400:
            raise WorkflowError(
                f"HTTP server responded with error code {result['code']}",
                "HttpError",
                code=result["code"],
                headers=result["headers"],
                body=result["body"],
            )
        return result

    # -- connectors -------------------------------------------------------------------
    async def pubsub_publish(self, it: Interpreter, args: dict[str, Any]) -> Any:
        """Publish as ``Publisher.Publish`` does, with the same checks (names, limits)."""
        from google.pubsub_v1.types import PublishRequest

        from localcloud.pubsub.service import check_publish

        request = PublishRequest.pb()(topic=str(args.get("topic") or ""))
        try:
            for m in (args.get("body") or {}).get("messages", []):
                pb = request.messages.add(
                    data=base64.b64decode(m.get("data", ""), validate=True),
                    ordering_key=m.get("orderingKey", ""),
                )
                pb.attributes.update(
                    {str(k): str(v) for k, v in (m.get("attributes") or {}).items()}
                )
        except (ValueError, TypeError, AttributeError) as exc:
            raise _as_error(InvalidArgument(f"Invalid publish body: {exc}")) from None
        try:
            check_publish(request)
            ids = await self.services.pubsub.publish(request.topic, list(request.messages))
        except Exception as exc:
            raise _as_error(exc) from None
        return {"messageIds": ids}

    async def _wait(self, op_name: str) -> Any:
        while True:
            op = await self.services.operations.wait(op_name, 30)
            if op.done:
                break
        if op.HasField("error"):
            raise WorkflowError(
                f"Operation failed: {op.error.message}",
                "OperationError",
                operation={
                    "name": op.name,
                    "error": {"code": op.error.code, "message": op.error.message},
                },
            )
        return op

    async def build_create(self, it: Interpreter, args: dict[str, Any]) -> Any:
        from google.cloud.devtools.cloudbuild_v1 import types

        build = types.Build.pb()()
        json_format.ParseDict(args.get("body") or {}, build, ignore_unknown_fields=False)
        project = args.get("projectId") or it.functions["sys.get_env"]("GOOGLE_CLOUD_PROJECT_ID")
        location = (args.get("parent") or "").rsplit("/", 1)[-1] or "global"
        try:
            op = await self.services.builder.create(project, location, build)
        except Exception as exc:
            raise _as_error(exc) from None
        op = await self._wait(op.name)
        response = types.Build.pb()()
        op.response.Unpack(response)
        return json_format.MessageToDict(response)

    async def build_get(self, it: Interpreter, args: dict[str, Any]) -> Any:
        try:
            build = self.services.builder.get(args["projectId"], args["id"])
        except Exception as exc:
            raise _as_error(exc) from None
        return json_format.MessageToDict(build)

    async def _run_op(self, coro: Any) -> Any:
        from google.cloud.run_v2 import types

        try:
            op = await coro
        except Exception as exc:
            raise _as_error(exc) from None
        op = await self._wait(op.name)
        service = types.Service.pb()()
        op.response.Unpack(service)
        return json_format.MessageToDict(service)

    def _service(self, body: dict[str, Any] | None) -> Any:
        from google.cloud.run_v2 import types

        service = types.Service.pb()()
        json_format.ParseDict(body or {}, service, ignore_unknown_fields=False)
        return service

    async def run_create(self, it: Interpreter, args: dict[str, Any]) -> Any:
        return await self._run_op(
            self.services.controller.create(
                args["parent"], self._service(args.get("body")), args["serviceId"], False
            )
        )

    async def run_patch(self, it: Interpreter, args: dict[str, Any]) -> Any:
        service = self._service(args.get("body"))
        service.name = args["name"]
        return await self._run_op(
            self.services.controller.update(service, bool(args.get("allowMissing")), False)
        )

    async def run_get(self, it: Interpreter, args: dict[str, Any]) -> Any:
        try:
            return json_format.MessageToDict(self.services.controller.get(args["name"]))
        except Exception as exc:
            raise _as_error(exc) from None

    async def run_delete(self, it: Interpreter, args: dict[str, Any]) -> Any:
        return await self._run_op(self.services.controller.delete(args["name"], "", False))


def _publish(args: dict[str, Any]) -> Any:
    from google.pubsub_v1.types import PublishRequest

    return PublishRequest.pb()(topic=str(args.get("topic") or ""))


def _build_create(args: dict[str, Any]) -> Any:
    from google.cloud.devtools.cloudbuild_v1 import types

    account = str((args.get("body") or {}).get("serviceAccount") or "")
    return types.CreateBuildRequest.pb()(
        parent=str(args.get("parent") or ""),
        project_id=str(args.get("projectId") or ""),
        build=types.Build.pb()(service_account=account),
    )


def _build_get(args: dict[str, Any]) -> Any:
    from google.cloud.devtools.cloudbuild_v1 import types

    return types.GetBuildRequest.pb()(
        project_id=str(args.get("projectId") or ""), id=str(args.get("id") or "")
    )


def _run_account(args: dict[str, Any]) -> Any:
    from google.cloud.run_v2 import types

    template = (args.get("body") or {}).get("template") or {}
    return types.RevisionTemplate.pb()(service_account=str(template.get("serviceAccount") or ""))


def _run_create(args: dict[str, Any]) -> Any:
    from google.cloud.run_v2 import types

    service = types.Service.pb()(template=_run_account(args))
    return types.CreateServiceRequest.pb()(parent=str(args.get("parent") or ""), service=service)


def _run_patch(args: dict[str, Any]) -> Any:
    from google.cloud.run_v2 import types

    service = types.Service.pb()(name=str(args.get("name") or ""), template=_run_account(args))
    return types.UpdateServiceRequest.pb()(service=service)


def _run_named(request_type: str) -> Callable[[dict[str, Any]], Any]:
    def request(args: dict[str, Any]) -> Any:
        from google.cloud.run_v2 import types

        return getattr(types, request_type).pb()(name=str(args.get("name") or ""))

    return request


# Each connector's call as the API method it calls, and the fields of that method's request
# its arguments fill: the permissions are the method's own (core/permissions.json).
CONNECTOR_PERMISSIONS: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "googleapis.pubsub.v1.projects.topics.publish": (
        "google.pubsub.v1.Publisher/Publish",
        _publish,
    ),
    "googleapis.cloudbuild.v1.projects.builds.create": (
        "google.devtools.cloudbuild.v1.CloudBuild/CreateBuild",
        _build_create,
    ),
    "googleapis.cloudbuild.v1.projects.builds.get": (
        "google.devtools.cloudbuild.v1.CloudBuild/GetBuild",
        _build_get,
    ),
    "googleapis.run.v2.projects.locations.services.create": (
        "google.cloud.run.v2.Services/CreateService",
        _run_create,
    ),
    "googleapis.run.v2.projects.locations.services.patch": (
        "google.cloud.run.v2.Services/UpdateService",
        _run_patch,
    ),
    "googleapis.run.v2.projects.locations.services.get": (
        "google.cloud.run.v2.Services/GetService",
        _run_named("GetServiceRequest"),
    ),
    "googleapis.run.v2.projects.locations.services.delete": (
        "google.cloud.run.v2.Services/DeleteService",
        _run_named("DeleteServiceRequest"),
    ),
}


def _acting(
    connector: Callable[[Interpreter, dict[str, Any]], Any],
    method: tuple[str, Callable[[dict[str, Any]], Any]],
    account: str,
) -> Callable[[Interpreter, dict[str, Any]], Any]:
    """``connector`` called as ``account`` (an email; none: unchecked, the account the
    workflow runs as by default is the project's editor), refused with the API's
    PERMISSION_DENIED, raised as the connector's HttpError 403."""
    if not account:
        return connector
    member = f"serviceAccount:{account}"

    async def call(it: Interpreter, args: dict[str, Any]) -> Any:
        if permissions.checking() and _authorizing():
            try:
                name, request = method
                for permission, resource in permissions.rule(name).required(request(args), None):
                    authz.check(member, permission, resource)
            except GoogleError as exc:
                raise _as_error(exc) from None
        with identity.serving(member):
            return await connector(it, args)

    return call


def _authorizing() -> bool:
    """Whether the server installed an authorizer (a test running workflows on their own
    may not: its connectors are unchecked, as its gRPC calls are)."""
    try:
        authz.authorizer()
    except RuntimeError:
        return False
    return True


def _as_error(exc: Exception) -> WorkflowError:
    """A localcloud API error as the HttpError a connector raises, with Google's status."""
    error = as_google_error(exc)
    if not isinstance(exc, GoogleError):
        LOG.exception("a connector failed", exc_info=exc)
    return WorkflowError(error.message, "HttpError", code=error.http_status)


def _query(query: Any) -> Any:
    if not query:
        return None
    return {str(k): str(v) if not isinstance(v, bool) else str(v).lower() for k, v in query.items()}


def _decode(raw: bytes, content_type: str) -> Any:
    if "json" in content_type:
        try:
            return json.loads(raw)
        except ValueError:
            pass
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


# https://cloud.google.com/workflows/docs/sleeping: sys.sleep "suspends execution for the
# given number of seconds to a maximum of 31536000 (one year)".
MAX_SLEEP = 31_536_000


async def _sleep(it: Interpreter, args: dict[str, Any]) -> None:
    seconds = args.get("seconds", 0)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        raise WorkflowError("sys.sleep: seconds must be an integer or a double", "TypeError")
    if not 0 <= seconds <= MAX_SLEEP:
        raise WorkflowError(
            f"sys.sleep: seconds must be between 0 and {MAX_SLEEP} (one year), got {seconds}",
            "ValueError",
        )
    await asyncio.sleep(seconds)


async def _log(it: Interpreter, args: dict[str, Any]) -> None:
    value = args.get("data", args.get("text", args.get("json")))
    it.log(str(args.get("severity", "DEFAULT")), value)
