"""The current time as the proto ``Timestamp`` every API's resources carry."""

from __future__ import annotations

from google.protobuf import timestamp_pb2


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts
