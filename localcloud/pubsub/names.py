"""Pub/Sub resource names, checked against Google's rules.

Google: a resource id starts with a letter, is 3 to 255 characters of letters, digits,
``-``, ``.``, ``_``, ``~``, ``%`` and ``+``, and does not start with ``goog``
(https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names). Errors carry the
message the real service gives, so a client's error text matches production.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localcloud.core.errors import InvalidArgument

_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-._~%+]{2,254}")
_PROJECT = re.compile(r"[a-z0-9][a-z0-9\-.:]{0,61}[a-z0-9]|[0-9]+")
DOC = "https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names"
DELETED_TOPIC = "_deleted-topic_"


@dataclass(frozen=True)
class ResourceName:
    project: str
    kind: str  # topics | subscriptions | snapshots
    id: str

    def __str__(self) -> str:
        return f"projects/{self.project}/{self.kind}/{self.id}"


def _invalid(name: str) -> InvalidArgument:
    return InvalidArgument(
        f"Invalid resource name given (name={name}). Refer to {DOC} for more information."
    )


def parse(name: str, kind: str) -> ResourceName:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != kind:
        raise _invalid(name)
    project, rid = parts[1], parts[3]
    if not _PROJECT.fullmatch(project):
        raise _invalid(name)
    if not _ID.fullmatch(rid) or rid.lower().startswith("goog"):
        raise _invalid(name)
    return ResourceName(project, kind, rid)


def topic(name: str) -> ResourceName:
    return parse(name, "topics")


def subscription(name: str) -> ResourceName:
    return parse(name, "subscriptions")


def project(name: str) -> str:
    """``projects/P`` -> ``P``."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "projects" or not _PROJECT.fullmatch(parts[1]):
        raise InvalidArgument(f"Invalid project name given (name={name}).")
    return parts[1]
