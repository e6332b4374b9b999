"""The ``projects/P/locations/L`` parent every regional API names its resources under.

One parser, so every service gives the same clear error for a malformed parent (services
add their own resource segment on top of ``PARENT``).
"""

from __future__ import annotations

import re

from localcloud.core.errors import InvalidArgument

PARENT = r"projects/([a-z0-9][a-z0-9\-.:]{0,61}[a-z0-9])/locations/([a-z][a-z0-9-]*)"
_PARENT = re.compile(PARENT)


def parse_parent(parent: str) -> tuple[str, str]:
    """``projects/P/locations/L`` -> (P, L); INVALID_ARGUMENT naming the expected shape."""
    match = _PARENT.fullmatch(parent)
    if match is None:
        raise InvalidArgument(
            f"Invalid parent {parent!r}: expected projects/PROJECT/locations/LOCATION"
        )
    return match.group(1), match.group(2)
