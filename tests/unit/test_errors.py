"""Each localcloud error carries Google's gRPC code and HTTP status (google/rpc/code.proto)."""

from __future__ import annotations

import grpc
import pytest

from localcloud.core import errors

EXPECTED = {
    errors.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, 400),
    errors.OutOfRange: (grpc.StatusCode.OUT_OF_RANGE, 400),
    errors.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, 401),
    errors.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, 403),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, 404),
    errors.Aborted: (grpc.StatusCode.ABORTED, 409),
    errors.AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, 409),
    errors.ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    errors.Cancelled: (grpc.StatusCode.CANCELLED, 499),
    errors.Unknown: (grpc.StatusCode.UNKNOWN, 500),
    errors.Internal: (grpc.StatusCode.INTERNAL, 500),
    errors.DataLoss: (grpc.StatusCode.DATA_LOSS, 500),
    errors.Unimplemented: (grpc.StatusCode.UNIMPLEMENTED, 501),
    errors.Unavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    errors.DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
}


def test_every_error_class_is_mapped():
    defined = {
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.GoogleError)
    }
    # InvalidFields is INVALID_ARGUMENT built from field violations (its own test below).
    assert defined - {errors.GoogleError, errors.InvalidFields} == set(EXPECTED)
    assert issubclass(errors.InvalidFields, errors.InvalidArgument)


@pytest.mark.parametrize(
    ("cls", "expected"), EXPECTED.items(), ids=lambda v: getattr(v, "__name__", "")
)
def test_codes_and_statuses(cls, expected):
    code, http = expected
    error = cls("why")
    assert (error.code, error.http_status, error.status_name) == (code, http, code.name)
    status = error.to_proto()
    assert (status.code, status.message) == (code.value[0], "why")


def test_anything_else_is_internal_and_named():
    error = errors.as_google_error(KeyError("k"))
    assert isinstance(error, errors.Internal)
    assert error.message == "internal error: KeyError: 'k'"
    assert errors.to_status(errors.NotFound("gone")) == (grpc.StatusCode.NOT_FOUND, "gone")
