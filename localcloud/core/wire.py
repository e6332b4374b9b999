"""The thin wire layer: registers a servicer's methods with the client libraries' types.

A servicer marks its methods with ``@rpc(...)`` naming the request and response types
shipped in the official client libraries (proto-plus or plain protobuf). ``handler_for``
turns the servicer into a generic gRPC handler whose (de)serializers are those types, so
what crosses the wire is exactly what Google's servers speak. Handlers receive and return
plain protobuf messages (proto-plus wrappers cost a copy per field access on hot paths);
pass ``proto_plus=True`` to receive proto-plus messages instead.

Every request is first held to its API's annotations (``validate.py``): required fields,
resource names, update masks; output-only fields are cleared. The checks are built once per
method from the request type, so no handler repeats them and none can forget them. Of a
request stream only the first message is checked: it is the one that opens the call
(StreamingPull's first request names the subscription and the stream's ack deadline, both
REQUIRED; later ones carry acks only).

Then every call is held to IAM (``permissions.py``, ``permissions.json``): the caller needs
each permission Google documents for the method on the resource the request names (through
the policies of the resource, its parents and its project, ``authz.py``), and
``iam.serviceAccounts.actAs`` on any service account the request asks a resource to run as.
A denial is PERMISSION_DENIED in the service's words, naming the permission and the
resource. In ``audit`` mode (``LOCALCLOUD_IAM``), a call from a Cloud Run instance that
would be denied is logged and let through instead; ``off`` checks nothing (see
``permissions.py``).

Both front ends take the same path: ``handler_for`` binds each method once (``Bound``: the
servicer's function and its checks) and the gRPC handlers and the HTTP/JSON front end
(``localcloud/rest``, which reads the methods from ``ServiceHandler.methods``) call it
through ``call``, so a REST call is served as its caller, validated and held to IAM exactly
as the gRPC call is.

Errors: a ``GoogleError`` becomes its status code; anything else becomes INTERNAL with the
exception's message and a logged traceback, never UNKNOWN. An error whose status carries
details (a ``BadRequest`` naming the fields) sends them in ``grpc-status-details-bin``,
where Google's client libraries read them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from localcloud.core import authz, identity, permissions
from localcloud.core.errors import GoogleError, as_google_error
from localcloud.core.validate import Validator, validator_for

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RpcSpec:
    name: str
    # Message classes, proto-plus or protobuf: generated at run time, so untyped (Any).
    request: Any
    response: Any
    request_streaming: bool
    response_streaming: bool
    proto_plus: bool


def rpc(
    name: str,
    request: type,
    response: type,
    *,
    request_streaming: bool = False,
    response_streaming: bool = False,
    proto_plus: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a servicer method as the implementation of RPC ``name``."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__rpc__ = RpcSpec(  # type: ignore[attr-defined]
            name, request, response, request_streaming, response_streaming, proto_plus
        )
        return fn

    return mark


def _is_proto_plus(cls: type) -> bool:
    return hasattr(cls, "pb") and hasattr(cls, "meta")


def _codecs(spec: RpcSpec) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    if _is_proto_plus(spec.request) and spec.proto_plus:
        deserialize = spec.request.deserialize
    elif _is_proto_plus(spec.request):
        deserialize = spec.request.pb().FromString
    else:
        deserialize = spec.request.FromString
    resp = spec.response
    if _is_proto_plus(resp):
        resp_pb = resp.pb()

        def serialize(message: Any) -> bytes:
            if isinstance(message, resp_pb):
                return message.SerializeToString()
            return resp.serialize(message)

    else:

        def serialize(message: Any) -> bytes:
            return message.SerializeToString()

    return deserialize, serialize


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    error = failure(exc, method)
    status = error.to_proto()
    details = (("grpc-status-details-bin", status.SerializeToString()),) if status.details else ()
    await context.abort(error.code, error.message, trailing_metadata=details)


def _authorizing() -> bool:
    """Whether the server installed an authorizer (``localcloud/server.py`` does at start;
    a test serving its own servicer from ``wire`` alone may not, and is served unchecked)."""
    try:
        authz.authorizer()
    except RuntimeError:
        return False
    return True


def _audited(member: str, context: grpc.aio.ServicerContext) -> bool:
    """Whether a denial is only logged: ``audit`` mode and a caller from a Cloud Run
    instance (no bearer token, and not the local user)."""
    token = any(key == "authorization" for key, _ in context.invocation_metadata() or ())
    return permissions.audited(member, token)


def authorize(
    rule: permissions.Rule, request: Any, servicer: object, context: grpc.aio.ServicerContext
) -> None:
    """PERMISSION_DENIED unless the caller holds what ``rule`` asks on the request's
    resources (``request`` is a plain protobuf message or a proto-plus one). ``off`` mode
    checks nothing (for measuring what the checks cost)."""
    if not permissions.checking():
        return
    required = list(rule.required(request, servicer))
    if not required or not _authorizing():
        return
    member = identity.caller()
    if rule.any_of:
        if any(authz.permitted(member, (p,), r) for p, r in required):
            return
        missing = required[:1]
    else:
        missing = [(p, r) for p, r in required if not authz.permitted(member, (p,), r)]
    for permission, resource in missing:
        error = authz.denied(member, permission, resource)
        if not _audited(member, context):
            raise error
        LOG.warning(
            "IAM audit: %s would be denied %s on %s by %s: %s",
            member,
            permission,
            resource,
            rule.method,
            error.message,
        )


def _checked(
    validate: Validator, proto_plus: bool, rule: permissions.Rule, servicer: object
) -> Callable[[Any, Any], None]:
    def check(request: Any, context: Any) -> None:
        validate(type(request).pb(request) if proto_plus else request)
        authorize(rule, request, servicer, context)

    return check


@dataclass(frozen=True)
class Bound:
    """One served method: the servicer's function and the checks every call of it passes,
    whichever front end (gRPC, or HTTP/JSON in ``localcloud/rest``) the call came by."""

    service: str
    spec: RpcSpec
    fn: Callable[..., Any]
    check: Callable[[Any, Any], None]

    @property
    def method(self) -> str:
        """``google.pubsub.v1.Publisher/Publish``: the name permissions and rules use."""
        return f"{self.service}/{self.spec.name}"


def bind(service_name: str, fn: Callable[..., Any], spec: RpcSpec, servicer: object) -> Bound:
    method = f"{service_name}/{spec.name}"
    check = _checked(
        validator_for(method, spec.request), spec.proto_plus, permissions.rule(method), servicer
    )
    return Bound(service_name, spec, fn, check)


async def call(bound: Bound, request: Any, context: Any, member: str | None = None) -> Any:
    """The one checked call of a unary method, for both front ends: the call is served as
    its caller (``member`` when the front end resolved it, as ``localcloud/rest`` does from
    the HTTP request; else from the gRPC ``context``), the request is validated and held to
    IAM, then the servicer's method answers. Errors propagate (see ``failure``)."""
    if member is None:
        identity.enter(context)
        bound.check(request, context)
        return await bound.fn(request, context)
    with identity.serving(member):
        bound.check(request, context)
        return await bound.fn(request, context)


def failure(exc: BaseException, method: str) -> GoogleError:
    """The error a caller of ``method`` sees for ``exc``: itself if a ``GoogleError``, else
    INTERNAL naming it, its traceback logged (never UNKNOWN)."""
    if not isinstance(exc, GoogleError):
        LOG.error("unexpected error in %s", method, exc_info=exc)
    return as_google_error(exc)


async def _first_checked(
    requests: Any, check: Callable[[Any, Any], None], context: Any
) -> AsyncIterator:
    """The request stream, its first message checked before the handler reads it."""
    first = True
    async for request in requests:
        if first:
            check(request, context)
            first = False
        yield request


def _wrap(bound: Bound) -> grpc.RpcMethodHandler:
    spec, fn, check, method = bound.spec, bound.fn, bound.check, bound.method
    deserialize, serialize = _codecs(spec)
    if spec.response_streaming:

        async def stream_handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            try:
                identity.enter(context)
                if spec.request_streaming:
                    request = _first_checked(request, check, context)
                else:
                    check(request, context)
                result = fn(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    async for item in await result:
                        yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, method)

        factory = (
            grpc.stream_stream_rpc_method_handler
            if spec.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(stream_handler, deserialize, serialize)

    if spec.request_streaming:

        async def client_stream_handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                identity.enter(context)
                return await fn(_first_checked(request, check, context), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, method)

        return grpc.stream_unary_rpc_method_handler(client_stream_handler, deserialize, serialize)

    async def unary_handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await call(bound, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return grpc.unary_unary_rpc_method_handler(unary_handler, deserialize, serialize)


class ServiceHandler(grpc.ServiceRpcHandler):
    """The gRPC handler of one service, keeping its ``Bound`` methods (``methods``) for the
    HTTP/JSON front end, which serves the same methods through the same ``call``."""

    def __init__(self, service_name: str, methods: dict[str, Bound]) -> None:
        self._name = service_name
        self.methods = methods
        self._handlers = {f"/{service_name}/{name}": _wrap(b) for name, b in methods.items()}

    def service_name(self) -> str:
        return self._name

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


def handler_for(service_name: str, servicer: object) -> ServiceHandler:
    """A generic handler serving every ``@rpc`` method of ``servicer`` as ``service_name``."""
    methods: dict[str, Bound] = {}
    for attr in dir(type(servicer)):
        fn = getattr(servicer, attr, None)
        spec = getattr(fn, "__rpc__", None)
        if fn is not None and isinstance(spec, RpcSpec):
            methods[spec.name] = bind(service_name, fn, spec, servicer)
    if not methods:
        raise ValueError(f"{type(servicer).__name__} has no @rpc methods")
    return ServiceHandler(service_name, methods)
