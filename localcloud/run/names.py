"""Cloud Run resource names, checked against Cloud Run's rules.

Service ids: lowercase letters, digits and hyphens, starting with a letter, not ending
with a hyphen, at most 49 characters (https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.services).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localcloud.core.errors import InvalidArgument
from localcloud.core.names import parse_parent

_SERVICE_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?")
_REVISION_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Parent:
    project: str
    location: str

    def __str__(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"


def parent(name: str) -> Parent:
    return Parent(*parse_parent(name))


def check_service_id(service_id: str) -> None:
    if not _SERVICE_ID.fullmatch(service_id):
        raise InvalidArgument(
            f"service_id {service_id!r} is invalid: use lowercase letters, digits and hyphens, "
            "start with a letter, do not end with a hyphen, at most 49 characters"
        )


def service(name: str) -> tuple[Parent, str]:
    """``projects/P/locations/L/services/S`` -> (parent, S)."""
    parts = name.split("/")
    if len(parts) != 6 or parts[4] != "services":
        raise InvalidArgument(
            f"Invalid service name {name!r}: expected projects/PROJECT/locations/LOCATION/services/SERVICE"
        )
    p = parent("/".join(parts[:4]))
    check_service_id(parts[5])
    return p, parts[5]


def revision(name: str) -> tuple[str, str]:
    """``.../services/S/revisions/R`` -> (service name, R)."""
    parts = name.split("/")
    if len(parts) != 8 or parts[6] != "revisions" or not _REVISION_ID.fullmatch(parts[7]):
        raise InvalidArgument(
            f"Invalid revision name {name!r}: expected "
            "projects/PROJECT/locations/LOCATION/services/SERVICE/revisions/REVISION"
        )
    service("/".join(parts[:6]))
    return "/".join(parts[:6]), parts[7]
