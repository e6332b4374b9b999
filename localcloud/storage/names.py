"""Cloud Storage's rules for bucket names, object names and custom metadata, and its errors.

Google accepts any object name of 1 to 1,024 bytes of UTF-8 except a few
(https://cloud.google.com/storage/docs/objects#naming): names with a carriage return or a
line feed, the names ``.`` and ``..``, and names starting with
``.well-known/acme-challenge/``. ``../../x``, ``a/../b`` and ``..x`` are all ordinary
names. Custom metadata may hold 8 KiB, counted as the bytes of every key and value
(https://cloud.google.com/storage/quotas). What Google refuses, localcloud refuses with
Google's error shape (HTTP 400, JSON ``{"error": {...}}``, a message naming the problem);
what Google accepts, localcloud stores (see ``layout.py`` for how, safely).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

MAX_NAME_BYTES = 1024
MAX_METADATA_BYTES = 8 * 1024
ACME_PREFIX = ".well-known/acme-challenge/"
# https://cloud.google.com/storage/docs/buckets#naming: lowercase letters, digits, '-', '_'
# and '.', starting and ending with a letter or digit, 3 to 63 characters (222 with dots,
# each dot-separated part at most 63).
BUCKET_RE = re.compile(r"[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]")

REASONS = {
    304: "notModified",
    400: "invalid",
    404: "notFound",
    405: "methodNotAllowed",
    412: "conditionNotMet",
    500: "backendError",
    501: "notImplemented",
    502: "backendError",
    503: "backendError",
}


class StorageError(Exception):
    """A request Cloud Storage refuses: becomes Google's JSON error with this status."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or REASONS.get(status, "invalid")

    def body(self) -> bytes:
        """Google's error document (https://cloud.google.com/storage/docs/json_api/v1/status-codes)."""
        return error_body(self.status, self.message, self.reason)


def error_body(status: int, message: str, reason: str | None = None) -> bytes:
    reason = reason or REASONS.get(status, "invalid")
    error = {"domain": "global", "reason": reason, "message": message}
    return json.dumps({"error": {"code": status, "message": message, "errors": [error]}}).encode()


def check_object_name(name: str | None) -> str:
    """``name`` if Google accepts it as an object name; else a StorageError saying why."""
    if not name:
        raise StorageError(
            400, "Object name is required (an empty name is not allowed)", "required"
        )
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise StorageError(
            400,
            f"Object name is {size:,} bytes in UTF-8; Cloud Storage allows at most "
            f"{MAX_NAME_BYTES:,} bytes",
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise StorageError(400, "Object name is not valid UTF-8") from None
    if "\r" in name or "\n" in name:
        raise StorageError(400, "Object name must not contain a carriage return or line feed")
    if name in (".", ".."):
        raise StorageError(400, f"Object name must not be {name!r}")
    if name.startswith(ACME_PREFIX):
        raise StorageError(400, f"Object name must not start with {ACME_PREFIX!r}")
    return name


def check_bucket_name(name: str) -> str:
    """``name`` if it can name a bucket; a name that cannot is refused before any lookup,
    so no bucket name (``..``, ``a/b``) ever reaches the storage backend's file system."""
    if not BUCKET_RE.fullmatch(name) or any(len(part) > 63 for part in name.split(".")):
        raise StorageError(400, f"Invalid bucket name: {name!r}")
    return name


def metadata_size(metadata: Mapping[str, Any] | None) -> int:
    """Bytes of custom metadata as Google counts them: every key and value in UTF-8
    (a null value, which removes a key in a patch, counts nothing)."""
    if not metadata:
        return 0
    return sum(
        len(str(k).encode()) + len(str(v).encode()) for k, v in metadata.items() if v is not None
    )


def check_metadata(metadata: Any) -> None:
    """Refuse custom metadata Google refuses: not an object of strings, or over 8 KiB."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise StorageError(400, "metadata must be an object of string keys and values")
    size = metadata_size(metadata)
    if size > MAX_METADATA_BYTES:
        raise StorageError(
            400,
            f"Custom metadata is {size:,} bytes (keys and values); Cloud Storage allows at "
            f"most {MAX_METADATA_BYTES:,} bytes (8 KiB) per object",
        )
