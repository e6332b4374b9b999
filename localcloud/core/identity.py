"""Who each call is served for: the IAM member (``user:…``, ``serviceAccount:…``) that
localcloud checks permissions against.

Every gRPC call is served as its caller (``core/wire.py`` calls ``enter`` before the handler
runs), so any code on the call's path asks ``caller()``
instead of threading the identity through every function. A caller with no credentials on
the user's own machine (their shell, ``orch``, the tests) is the local user: the project's
owner unless ``LOCALCLOUD_PRINCIPAL`` names someone else (``user:dev@example.com``), so a
test or a user can see what a principal with fewer rights is refused.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from localcloud.core.oidc import owner_email

# What IAM accepts as a member of a binding that names one principal.
MEMBER = re.compile(r"^(user|serviceAccount|group|domain|principal|principalSet):\S+$")

_caller: ContextVar[str | None] = ContextVar("localcloud_caller", default=None)
_local_user = f"serviceAccount:{owner_email('local-project')}"


# Who a gRPC call comes from, given its context; the local user until the server installs
# a resolver that reads credentials.
def _as_local_user(_context: Any) -> str:
    return _local_user


_resolver: Callable[[Any], str] = _as_local_user


def default_principal(project: str) -> str:
    """The local user when ``LOCALCLOUD_PRINCIPAL`` is unset: the identity the metadata
    server speaks for on the user's machine, owner of the project."""
    return f"serviceAccount:{owner_email(project)}"


def configure(local_user: str, resolver: Callable[[Any], str] | None = None) -> None:
    """Set the local user and how a call's identity is found (the server does, at start)."""
    global _local_user, _resolver
    _local_user = local_user
    _resolver = resolver or _as_local_user


def local_user() -> str:
    return _local_user


def caller() -> str:
    """The member the current call is served for (the local user outside any call)."""
    return _caller.get() or _local_user


def enter(context: Any) -> str:
    """Serve the rest of this call as its caller. grpc.aio runs each call in a task of its
    own, whose context ends with it, so nothing needs resetting."""
    member = _resolver(context)
    _caller.set(member)
    return member


@contextlib.contextmanager
def serving(member: str) -> Iterator[str]:
    token = _caller.set(member)
    try:
        yield member
    finally:
        _caller.reset(token)
