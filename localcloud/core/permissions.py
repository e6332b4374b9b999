"""The permissions every gRPC method needs, read from ``permissions.json``.

The table is data, not code per method: each entry names the permission(s) Google documents
for the method (each API's access-control page, cited per entry) and the request field that
names the resource checked; ``core/wire.py`` checks them for every call after validation and
before the handler runs, so no handler repeats them and none can forget them. Where a
request names a service account the new resource will run as (a build, a revision, a
trigger, a workflow, a push subscription's token), the caller also needs
``iam.serviceAccounts.actAs`` on that account, as Google requires.

What the table's fields mean is written in its ``about``. Two of them need the serving
objects: ``lookup`` (a subscription's topic) and ``lookup_service`` (which service owns a
long-running operation) name a method of the servicer, which answers ``None`` for a
resource that does not exist; the check is then left to the handler, which answers
NOT_FOUND.

Enforcement mode (``LOCALCLOUD_IAM``, ``configure``): ``enforce`` refuses every caller
without the permission. ``enforce`` is the default (``orch local up`` applies Terraform's grants to
the orchestrator's accounts). ``audit`` still refuses callers with a bearer token and the local user, but lets calls from
Cloud Run instances (the orchestrator's functions, run as their service accounts) through,
logging each denial it would have made, so the missing grants can be read in the log.
``off`` checks no permission at all (callers are still authenticated: a bad token is still
UNAUTHENTICATED); it exists to measure what enforcement costs (``benchmarks/iam.py``) and is
not a way to run: nothing Google would refuse is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

TABLE_FILE = Path(__file__).with_name("permissions.json")
ACT_AS = "iam.serviceAccounts.actAs"
MODES = ("enforce", "audit", "off")

_mode = "enforce"
LOG = logging.getLogger(__name__)
# Whether the HTTP request being served (storage, registry) is only audited: set by its
# front for every request, so a keep-alive connection's next request never inherits it.
_audited_request: ContextVar[bool] = ContextVar("localcloud_iam_audited", default=False)


def configure(mode: str) -> None:
    """Set the enforcement mode (the server does, from ``Config.iam``)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"IAM mode must be one of {', '.join(MODES)}, not {mode!r}")
    _mode = mode


def mode() -> str:
    return _mode


def checking() -> bool:
    """Whether permissions are checked at all (every mode but ``off``): the gRPC layer and
    the storage and registry fronts ask before any policy is read, so ``off`` costs nothing
    and the benchmark's "unenforced" side is truly unenforced."""
    return _mode != "off"


def audited(member: str, has_token: bool) -> bool:
    """Whether a denial of this caller is only logged: ``audit`` mode and a caller from a
    Cloud Run instance (no bearer token, and not the local user)."""
    from localcloud.core import identity

    return _mode == "audit" and member != identity.local_user() and not has_token


def audit_request(member: str, has_token: bool) -> None:
    """Mark the HTTP request being served as audited or not (the fronts call this first)."""
    _audited_request.set(audited(member, has_token))


def let_through(member: str, permission: str, resource: str, what: str) -> bool:
    """True (after logging the denial it stands for) when the HTTP request being served is
    only audited; False when the denial must be answered."""
    if not _audited_request.get():
        return False
    LOG.warning("IAM audit: %s would be denied %s on %s by %s", member, permission, resource, what)
    return True


@dataclass(frozen=True)
class Check:
    permission: str
    resource: tuple[str, ...]
    on: str = ""
    lookup: str = ""
    lookup_service: str = ""
    by_service: dict[str, str] = field(default_factory=dict)

    def permissions(self) -> set[str]:
        """Every permission this check may ask for."""
        return {self.permission} if self.permission else set(self.by_service.values())


@dataclass(frozen=True)
class Rule:
    method: str
    doc: str
    checks: tuple[Check, ...]
    act_as: tuple[str, ...] = ()
    act_as_doc: str = ""
    handler: bool = False
    any_of: bool = False
    why: str = ""

    def required(self, request: Any, servicer: object) -> Iterator[tuple[str, str]]:
        """(permission, resource) pairs this request needs; for ``any_of`` rules, the
        alternatives (one of which suffices)."""
        if self.handler:
            return
        for check in self.checks:
            resource = _resource(check, request)
            if resource is None:
                continue
            if check.lookup:
                resource = getattr(servicer, check.lookup)(resource)
                if resource is None:
                    continue
            if check.permission:
                yield check.permission, resource
            elif check.lookup_service:
                owner = getattr(servicer, check.lookup_service)(resource)
                if owner is None or owner not in check.by_service:
                    continue
                yield check.by_service[owner], resource
            else:
                for owner in sorted(check.by_service):
                    yield check.by_service[owner], resource
        for path in self.act_as:
            account = _field(request, path)
            if account:
                yield ACT_AS, service_account_resource(account)


def service_account_resource(account: str) -> str:
    """The resource ``iam.serviceAccounts.actAs`` is checked on: a request names the account
    by email or as ``projects/P/serviceAccounts/EMAIL``."""
    if account.startswith("projects/"):
        return account
    return f"projects/-/serviceAccounts/{account}"


def _field(request: Any, path: str) -> str:
    value: Any = request
    for part in _path(path):
        value = getattr(value, part, None)
        if value is None:
            return ""
    return value if isinstance(value, str) else ""


@cache
def _path(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


@cache
def _template(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A resource template's literal parts and the fields between them, read once (every
    call fills one)."""
    literals: list[str] = []
    fields: list[str] = []
    rest = template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        name, _, rest = tail.partition("}")
        literals.append(head)
        fields.append(name)
    literals.append(rest)
    return tuple(literals), tuple(fields)


def _fill(template: str, request: Any) -> str | None:
    literals, fields = _template(template)
    if len(fields) == 1 and not literals[0] and not literals[1]:
        return _field(request, fields[0]) or None  # "{topic}": most templates
    out: list[str] = []
    for head, name in zip(literals, fields, strict=False):
        value = _field(request, name)
        if not value:
            return None
        out += [head, value]
    out.append(literals[-1])
    return "".join(out)


def _resource(check: Check, request: Any) -> str | None:
    """The resource a check is made on, or None when the request leaves its fields unset
    (Seek to a time names no snapshot; a Cloud Build request gives ``parent`` or
    ``project_id``; a request naming neither is refused by validation or its handler)."""
    for template in check.resource:
        name = _fill(template, request)
        if name:
            break
    else:
        return None
    if check.on == "project":
        parts = name.split("/")
        return "/".join(parts[:2]) if len(parts) >= 2 and parts[0] == "projects" else name
    return scope(name)


def scope(name: str) -> str:
    """The resource a wildcard name is checked on: ``projects/P/locations/-`` lists across
    locations, so the project's policy decides, as on Google (a collection's ``-`` is
    "every one", https://google.aip.dev/159)."""
    if "/-" not in name:
        return name  # no wildcard: most names
    parts = name.split("/")
    for i in range(3, len(parts), 2):
        if parts[i] == "-":
            return "/".join(parts[: i - 1])
    return name


def _check(raw: dict[str, Any]) -> Check:
    resource = raw["resource"]
    return Check(
        permission=raw["permission"],
        resource=tuple(resource) if isinstance(resource, list) else (resource,),
        on=raw.get("on", ""),
        lookup=raw.get("lookup", ""),
        lookup_service=raw.get("lookup_service", ""),
        by_service=dict(raw.get("by_service", {})),
    )


@cache
def table() -> dict[str, Rule]:
    """Every method's rule, by ``SERVICE/Method``."""
    data = json.loads(TABLE_FILE.read_text())
    return {
        method: Rule(
            method=method,
            doc=raw["doc"],
            checks=tuple(_check(c) for c in raw["checks"]),
            act_as=tuple(raw.get("act_as", ())),
            act_as_doc=raw.get("act_as_doc", ""),
            handler=raw.get("handler", False),
            any_of=raw.get("any_of", False),
            why=raw.get("why", ""),
        )
        for method, raw in data["methods"].items()
    }


def rule(method: str) -> Rule:
    """The rule of ``SERVICE/Method``; KeyError names a method missing from the table, so a
    new method cannot be served unchecked."""
    try:
        return table()[method]
    except KeyError:
        raise KeyError(f"{method} has no entry in {TABLE_FILE.name}") from None
