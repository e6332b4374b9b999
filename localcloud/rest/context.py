"""What a servicer method asks of its ``context``, answered for an HTTP request.

The servicers are written against ``grpc.aio.ServicerContext`` and use a few of its
methods: ``invocation_metadata`` (IAM's audit mode asks whether a token was sent),
``peer``, ``time_remaining`` (Pull and WaitOperation wait no longer than the caller's
deadline), ``abort`` and the trailing-metadata setters. Over HTTP the metadata are the
request's headers (lowercased, as gRPC's are), the deadline is the ``X-Server-Timeout``
header Google's front end reads (seconds; https://cloud.google.com/apis/docs/system-parameters),
and ``abort`` raises the ``GoogleError`` of that code, which the front end answers in
Google's JSON shape.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from aiohttp import web

from localcloud.core import errors
from localcloud.core.errors import GoogleError

_BY_CODE: dict[grpc.StatusCode, type[GoogleError]] = {
    cls.code: cls
    for cls in GoogleError.__subclasses__()
    if cls.__module__ == errors.__name__ and cls.__name__ != "InvalidFields"
}


class Aborted(GoogleError):
    """A servicer's ``context.abort``: its code and message, as they were given."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = _BY_CODE.get(code, errors.Unknown).http_status


class RestContext:
    """The ``ServicerContext`` of one HTTP request."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._deadline: float | None = None
        timeout = request.headers.get("X-Server-Timeout")
        if timeout:
            try:
                self._deadline = time.monotonic() + max(float(timeout), 0.0)
            except ValueError:
                raise errors.InvalidArgument(
                    f"Invalid X-Server-Timeout header {timeout!r}: expected seconds."
                ) from None
        self.trailing_metadata: tuple[tuple[str, str], ...] = ()
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((key.lower(), value) for key, value in self._request.headers.items())

    def peer(self) -> str:
        transport = self._request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, tuple):
            host, port = peer[0], peer[1]
            return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        return "unix:"

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, Any]] = (),
    ) -> NoReturn:
        raise Aborted(code, details)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.trailing_metadata = tuple(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def cancelled(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.is_closing()

    def done(self) -> bool:
        return self.cancelled()
