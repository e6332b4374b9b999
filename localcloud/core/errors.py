"""Google's error model: each error knows its gRPC code and its HTTP status.

Services raise these; the wire layer (``wire.py``) turns them into the status a gRPC
client sees, the Workflows connectors into the ``HttpError`` a workflow sees, and
long-running operations into their ``error``; none of them keeps a map of its own.
Anything else that escapes a handler becomes INTERNAL with its message, never UNKNOWN,
so a client always gets a code it can act on.

The HTTP statuses are Google's own mapping (``google/rpc/code.proto``), the ones its REST
APIs answer with.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2


class GoogleError(Exception):
    """Base of the hierarchy: a status code and a message a person can act on."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def status_name(self) -> str:
        """The code's name as Google's JSON errors spell it (``NOT_FOUND``)."""
        return self.code.name

    def to_proto(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` an operation's ``error`` carries."""
        return status_pb2.Status(code=self.code.value[0], message=self.message)


class Unknown(GoogleError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(GoogleError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class FailedPrecondition(GoogleError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400


class OutOfRange(GoogleError):
    code = grpc.StatusCode.OUT_OF_RANGE
    http_status = 400


class Unauthenticated(GoogleError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(GoogleError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class NotFound(GoogleError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class Aborted(GoogleError):
    code = grpc.StatusCode.ABORTED
    http_status = 409


class AlreadyExists(GoogleError):
    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class ResourceExhausted(GoogleError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Cancelled(GoogleError):
    code = grpc.StatusCode.CANCELLED
    http_status = 499


class DeadlineExceeded(GoogleError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unimplemented(GoogleError):
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class Internal(GoogleError):
    code = grpc.StatusCode.INTERNAL
    http_status = 500


class Unavailable(GoogleError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class DataLoss(GoogleError):
    code = grpc.StatusCode.DATA_LOSS


def as_google_error(exc: BaseException) -> GoogleError:
    """``exc`` as the error a client sees: itself, or INTERNAL naming what went wrong."""
    if isinstance(exc, GoogleError):
        return exc
    return Internal(f"internal error: {type(exc).__name__}: {exc}")


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The (code, message) a gRPC client sees for an exception raised by a handler."""
    error = as_google_error(exc)
    return error.code, error.message


class FieldViolation:
    """One field a request got wrong: its path in the request, why, and the sentence to show."""

    __slots__ = ("description", "field", "sentence")

    def __init__(self, field: str, description: str, sentence: str) -> None:
        self.field = field
        self.description = description
        self.sentence = sentence


class InvalidFields(InvalidArgument):
    """INVALID_ARGUMENT naming each bad field in a ``google.rpc.BadRequest`` detail.

    https://google.aip.dev/193: a client reads ``field_violations`` to know which field to
    fix; the message is the first violation's sentence, so a person reading logs sees it too.
    """

    def __init__(self, violations: list[FieldViolation]) -> None:
        sentences = [v.sentence for v in violations]
        more = len(sentences) - 1
        super().__init__(sentences[0] + (f" (and {more} more)" if more else ""))
        self.violations = violations

    def to_proto(self) -> status_pb2.Status:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
        )
        status = super().to_proto()
        status.details.append(detail)
        return status
