"""The thin wire layer: registers a servicer's methods with the client libraries' types.

A servicer marks its methods with ``@rpc(...)`` naming the request and response types
shipped in the official client libraries (proto-plus or plain protobuf). ``handler_for``
turns the servicer into a generic gRPC handler whose (de)serializers are those types, so
what crosses the wire is exactly what Google's servers speak. Handlers receive and return
plain protobuf messages (proto-plus wrappers cost a copy per field access on hot paths);
pass ``proto_plus=True`` to receive proto-plus messages instead.

Errors: a ``GoogleError`` becomes its status code; anything else becomes INTERNAL with the
exception's message and a logged traceback, never UNKNOWN.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from localcloud.core.errors import GoogleError, to_status

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
    code, message = to_status(exc)
    if not isinstance(exc, GoogleError):
        LOG.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(code, message)


def _wrap(fn: Callable[..., Any], spec: RpcSpec, method: str) -> grpc.RpcMethodHandler:
    deserialize, serialize = _codecs(spec)
    if spec.response_streaming:

        async def stream_handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            try:
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

    async def unary_handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    factory = (
        grpc.stream_unary_rpc_method_handler
        if spec.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return factory(unary_handler, deserialize, serialize)


def handler_for(service_name: str, servicer: object) -> grpc.GenericRpcHandler:
    """A generic handler serving every ``@rpc`` method of ``servicer`` as ``service_name``."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for attr in dir(type(servicer)):
        fn = getattr(servicer, attr, None)
        spec = getattr(fn, "__rpc__", None)
        if fn is not None and isinstance(spec, RpcSpec):
            handlers[spec.name] = _wrap(fn, spec, f"{service_name}/{spec.name}")
    if not handlers:
        raise ValueError(f"{type(servicer).__name__} has no @rpc methods")
    return grpc.method_handlers_generic_handler(service_name, handlers)
