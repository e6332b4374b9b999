"""List pagination the way Google's APIs do it: an opaque token, a bounded page size."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import TypeVar

from localcloud.core.errors import InvalidArgument

T = TypeVar("T")
MAX_PAGE = 1000


def page(
    items: Sequence[T],
    page_size: int,
    page_token: str,
    *,
    default_size: int = MAX_PAGE,
    max_size: int = MAX_PAGE,
    bound_to: str = "",
) -> tuple[Sequence[T], str]:
    """One page of ``items`` (already sorted) and the token for the next, "" at the end.

    A page size over ``max_size`` is coerced down to it, as Google's APIs do. ``bound_to``
    names the request's other parameters (filter, order): APIs that say "all other
    parameters must match the call that provided the page token" refuse a token issued
    for a different listing instead of paging through the wrong one.
    """
    seal = hashlib.sha256(bound_to.encode()).hexdigest()[:12] if bound_to else ""
    start = 0
    if page_token:
        try:
            text = base64.urlsafe_b64decode(page_token.encode()).decode()
            offset, _, sealed = text.partition(":")
            start = int(offset)
        except ValueError:
            raise InvalidArgument(f"Invalid page_token {page_token!r}.") from None
        if sealed != seal:
            raise InvalidArgument(
                f"Invalid page_token {page_token!r}: it was issued for a request with other "
                "parameters; every parameter but page_token must match the call that provided it."
            )
    if page_size < 0:
        raise InvalidArgument(f"Invalid page_size {page_size}: must not be negative.")
    size = min(page_size or default_size, max_size)
    end = start + size
    mark = f"{end}:{seal}" if seal else str(end)
    token = base64.urlsafe_b64encode(mark.encode()).decode() if end < len(items) else ""
    return items[start:end], token
