"""Every gRPC method localcloud serves, served as HTTP/JSON too, from the APIs' own HTTP rules.

The routes are not written per method: each method ``core/wire.py`` binds is looked up in
the ``http`` section of ``core/api_annotations.json`` (each method's ``google.api.http``
option, and for the mixins the ``http: rules:`` of each API's service configuration, both
generated from googleapis by ``core/gen_annotations.py``), and every binding of it
(``additional_bindings`` too) becomes a route on localcloud's HTTP port, base path ``/``:
``POST /v1/projects/p/topics/t:publish`` is ``google.pubsub.v1.Publisher/Publish``.

A REST call takes the gRPC call's own path (``wire.call``): the caller is resolved from the
HTTP request (``identity.resolve_http``: a bearer token, else the instance the connection
comes from, else the local user), the request is validated and held to IAM, then the same
servicer method answers. What differs is only the transcoding (``transcode.py``) and the
error's shape: Google's JSON error (https://cloud.google.com/apis/design/errors#http_mapping)
with the HTTP status Google maps the code to, and the details as JSON ``Any``s.

Methods with no HTTP rule are not served over HTTP (``Front.unserved`` says which and why):
StreamingPull is a gRPC stream, and Google serves it over gRPC only.

System parameters (https://cloud.google.com/apis/docs/system-parameters): ``alt`` (``json``,
the default, or ``proto``), ``prettyPrint`` (default true, as Google's), ``access_token``
(a bearer token as a parameter), ``X-HTTP-Method-Override``; ``fields`` (a partial response)
and the others (``key``, ``quotaUser``, ``$.xgafv``, ``callback``, ...) are accepted and
ignored: the full response is always sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from localcloud.core import identity, wire
from localcloud.core.errors import GoogleError, InvalidArgument, Unauthenticated
from localcloud.core.validate import ANNOTATIONS
from localcloud.rest import transcode, workers
from localcloud.rest.context import RestContext
from localcloud.rest.templates import Template, split_verb

LOG = logging.getLogger(__name__)
# Accepted wherever a request goes, with or without their "$" (system parameters page).
SYSTEM_PARAMETERS = {
    "alt",
    "fields",
    "prettyPrint",
    "quotaUser",
    "callback",
    "key",
    "access_token",
    "oauth_token",
    "upload_protocol",
    "uploadType",
    "userIp",
    "userProject",
    ".xgafv",
    "apiVersion",
    "ct",
    "outputDefaults",
    "unique",
    "requestReason",
}
JSON = "application/json; charset=UTF-8"


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one served method."""

    bound: wire.Bound
    http_method: str
    template: Template
    body: str
    response_body: str
    source: str  # the service configuration the binding comes from ("" for the proto)


@cache
def http_rules() -> dict[str, list[dict[str, str]]]:
    rules: dict[str, list[dict[str, str]]] = json.loads(ANNOTATIONS.read_text())["http"]
    return rules


def _is_proto_plus(cls: Any) -> bool:
    return hasattr(cls, "pb") and hasattr(cls, "meta")


def _message_class(cls: Any) -> Any:
    return cls.pb() if _is_proto_plus(cls) else cls


class Front:
    """The HTTP/JSON front end of the methods the gRPC ``handlers`` serve."""

    def __init__(
        self,
        methods: Iterable[wire.Bound],
        max_body: int,
        aliases: dict[str, list[dict[str, str]]] | None = None,
    ) -> None:
        """``aliases``: more bindings of a method, beside its own (``aliases.py``)."""
        self.max_body = max_body  # the app's client_max_size, said in the 413
        self.transcoder = workers.Transcoder()  # closed by ``close``
        self.routes: list[Route] = []
        self.unserved: dict[str, str] = {}
        rules = http_rules()
        for bound in methods:
            bindings = rules.get(bound.method, [])
            if bindings and aliases:
                bindings = bindings + aliases.get(bound.method, [])
            if bound.spec.request_streaming or bound.spec.response_streaming:
                self.unserved[bound.method] = (
                    "a gRPC stream: Google serves it over gRPC only"
                    if not bindings
                    else "a stream: not served over HTTP by localcloud"
                )
                continue
            if not bindings:
                self.unserved[bound.method] = "the API gives it no HTTP rule"
                continue
            for b in bindings:
                self.routes.append(
                    Route(
                        bound,
                        b["method"],
                        Template.parse(b["path"]),
                        b.get("body", ""),
                        b.get("response_body", ""),
                        b.get("source", ""),
                    )
                )
        # The most specific template first: literal segments outweigh wildcards, and a
        # '**' is tried last (Cloud Build's operations/** after every named collection).
        self.routes.sort(key=lambda r: ("**" in r.template.source, -r.template.literals))
        self._by_verb: dict[str, list[Route]] = {}
        for route in self.routes:
            self._by_verb.setdefault(route.template.verb, []).append(route)

    def route_defs(self) -> list[web.RouteDef]:
        """One catch-all route: mount it after the app's own routes (JWKS, metadata,
        ``/healthz``), which aiohttp then tries first."""
        return [web.route("*", "/{tail:.*}", self.handle)]

    async def close(self, _app: web.Application) -> None:
        """Stop the transcoding workers: the app's ``on_cleanup``."""
        self.transcoder.close()

    def resolve(self, http_method: str, raw_path: str) -> tuple[Route, dict[str, str]] | set[str]:
        """The route serving this request and its path variables; else the HTTP methods
        the path is served for (empty: the path is served for none)."""
        path, verb = split_verb(raw_path)
        found = self._matches(self._by_verb.get(verb, []), path) if verb else []
        if not found:
            found = self._matches(self._by_verb.get("", []), raw_path)
        for route, variables in found:
            if route.http_method == http_method:
                return route, variables
        return {route.http_method for route, _ in found}

    @staticmethod
    def _matches(routes: list[Route], path: str) -> list[tuple[Route, dict[str, str]]]:
        out = []
        for route in routes:
            variables = route.template.match(path)
            if variables is not None:
                out.append((route, variables))
        return out

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        override = request.headers.get("X-HTTP-Method-Override")
        if override and method == "POST":
            method = override.upper()
        raw_path = request.rel_url.raw_path
        found = self.resolve(method, raw_path)
        if isinstance(found, set):
            if not found:
                return error_response(
                    _NotFound(
                        f"The requested URL {request.rel_url.path} was not found on this server."
                    )
                )
            allowed = ", ".join(sorted(found))
            return error_response(
                _MethodNotAllowed(
                    f"Method {method} is not allowed for {request.rel_url.path}: it is served "
                    f"for {allowed}."
                ),
                headers={"Allow": allowed},
            )
        route, variables = found
        system: dict[str, str] = {}
        fields: list[tuple[str, str]] = []
        for key, value in request.rel_url.query.items():
            name = key[1:] if key.startswith("$") else key
            if name in SYSTEM_PARAMETERS:
                system[name] = value
            else:
                fields.append((key, value))
        pretty = system.get("prettyPrint", "true") != "false"
        alt = system.get("alt", "json")
        try:
            if alt not in ("json", "proto"):
                raise InvalidArgument(
                    f"Invalid value for alt: {alt!r}; this API answers json or proto."
                )
            token = system.get("access_token") or system.get("oauth_token")
            if token and "Authorization" not in request.headers:
                request = request.clone(
                    headers={**request.headers, "Authorization": f"Bearer {token}"}
                )
            member = identity.resolve_http(request)
            context = RestContext(request)
            message = await self._request(request, route, variables, fields)
            response = await wire.call(route.bound, message, context, member=member)
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                _TooLarge(f"Request payload size exceeds the limit: {self.max_body} bytes.")
            )
        except Exception as exc:
            return error_response(wire.failure(exc, route.bound.method), pretty)
        pb: Message = type(response).pb(response) if _is_proto_plus(type(response)) else response
        if route.response_body:
            pb = getattr(pb, route.response_body)
        if alt == "proto":
            return web.Response(body=pb.SerializeToString(), content_type="application/x-protobuf")
        body = await self.transcoder.dumps(pb, pretty)
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def _request(
        self,
        request: web.Request,
        route: Route,
        variables: dict[str, str],
        query: list[tuple[str, str]],
    ) -> Any:
        spec = route.bound.spec
        message = _message_class(spec.request)()
        raw = await request.read()
        if route.body == "*":
            await self.transcoder.parse(raw, message, "")
        elif route.body:
            target = getattr(message, route.body)
            target.SetInParent()  # over HTTP the body field is always there
            await self.transcoder.parse(raw, target, route.body)
        for path, value in variables.items():
            transcode.set_path(message, path, value)
        bound = set(variables)
        if route.body and route.body != "*":
            bound.add(route.body)
        transcode.parse_query(query, message, bound, route.body)
        if spec.proto_plus and _is_proto_plus(spec.request):
            return spec.request.wrap(message)
        return message


class _NotFound(GoogleError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class _MethodNotAllowed(GoogleError):
    # No google.rpc.Code says "wrong HTTP method": the status is UNIMPLEMENTED (this method
    # is not implemented at this path) and the HTTP status the usual 405.
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 405


class _TooLarge(GoogleError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 413


def _json(body: dict[str, Any], status: int, pretty: bool = True, **kw: Any) -> web.Response:
    text = workers.json_text(body, pretty)
    return web.Response(
        body=text, status=status, content_type="application/json", charset="utf-8", **kw
    )


def error_response(
    error: GoogleError, pretty: bool = True, headers: dict[str, str] | None = None
) -> web.Response:
    """Google's JSON error: ``{"error": {code, message, status, details}}``, ``code`` the
    HTTP status Google maps the gRPC code to (``errors.py``), the details as JSON ``Any``s
    (``@type`` and the message's fields)."""
    status = error.to_proto()
    body: dict[str, Any] = {
        "code": error.http_status,
        "message": error.message,
        "status": error.status_name,
    }
    if status.details:
        body["details"] = [json_format.MessageToDict(detail) for detail in status.details]
    headers = dict(headers or {})
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
    return _json({"error": body}, error.http_status, pretty, headers=headers)
