"""Google's error model, and its one mapping to gRPC status codes.

Services raise these; the wire layer (``wire.py``) turns them into the status a client
sees. Anything else that escapes a handler becomes INTERNAL with its message, never
UNKNOWN, so a client always gets a code it can act on.
"""

from __future__ import annotations

import grpc


class GoogleError(Exception):
    """Base of the hierarchy: a status code and a message a person can act on."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GoogleError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(GoogleError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(GoogleError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unauthenticated(GoogleError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GoogleError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(GoogleError):
    code = grpc.StatusCode.NOT_FOUND


class Aborted(GoogleError):
    code = grpc.StatusCode.ABORTED


class AlreadyExists(GoogleError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(GoogleError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(GoogleError):
    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(GoogleError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(GoogleError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(GoogleError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(GoogleError):
    code = grpc.StatusCode.UNAVAILABLE


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The (code, message) a client sees for an exception raised by a handler."""
    if isinstance(exc, GoogleError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
