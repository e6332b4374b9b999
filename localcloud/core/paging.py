"""List pagination the way Google's APIs do it: an opaque token, a bounded page size."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TypeVar

from localcloud.core.errors import InvalidArgument

T = TypeVar("T")
MAX_PAGE = 1000


def page(items: Sequence[T], page_size: int, page_token: str) -> tuple[Sequence[T], str]:
    """One page of ``items`` (already sorted) and the token for the next, "" at the end."""
    start = 0
    if page_token:
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode())
        except ValueError:
            raise InvalidArgument(f"Invalid page_token {page_token!r}.") from None
    if page_size < 0:
        raise InvalidArgument(f"Invalid page_size {page_size}: must not be negative.")
    size = min(page_size or MAX_PAGE, MAX_PAGE)
    end = start + size
    token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else ""
    return items[start:end], token
