"""Who may do what: IAM policies evaluated as Google evaluates them.

A caller holds a permission on a resource when a binding in the policy of that resource, or
of one of its ancestors, grants a role that includes the permission to a member matching the
caller, and the binding's condition (if any) holds
(https://cloud.google.com/iam/docs/overview#policy_inheritance). The ancestors are the
resource's parents by name (a revision's service, an object's bucket) and, last, its project
(a bucket's project comes from the storage service; ``projects/_`` names none).

Roles resolve to permissions from ``roles.json`` (Google's predefined roles, see its
``about``) or from the custom roles of the IAM Admin API (``projects/P/roles/ID``). A role
that resolves to nothing cannot be granted (``check_grantable``), so a typo never becomes a
silently empty binding.

Members are matched as Google matches them (https://cloud.google.com/iam/docs/principal-identifiers):
``user:`` and ``serviceAccount:`` by email, case-insensitively; ``allUsers`` matches every
caller, ``allAuthenticatedUsers`` every caller with credentials; ``domain:D`` a user of that
domain; ``projectOwner:P`` / ``projectEditor:P`` / ``projectViewer:P`` (Cloud Storage's
convenience values) whoever holds roles/owner, editor, viewer on project P. ``group:``
members are stored but never match: localcloud has no directory to expand them from.

Conditions (https://cloud.google.com/iam/docs/conditions-overview): the subset of CEL over
``resource.name``, ``resource.type`` and ``resource.service`` that resource-based conditions
use (``==``, ``!=``, ``startsWith``, ``endsWith``, ``&&``, ``||``, ``!``, parentheses).
A condition using anything else (``request.time``, tags) grants nothing here; that is logged.

Defaults, as a new project and a new bucket have on Google: a project whose policy was never
set has the local user as its owner (its creator is); a bucket whose policy was never set
grants the legacy bucket and object roles to its project's owners, editors and viewers
(https://cloud.google.com/storage/docs/access-control/iam#convenience-values).

Wave 2 calls ``check``/``permitted`` (or ``require``, for the caller of the current call) at
the top of every method; ``denied`` words the error as the resource's service words it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from google.iam.v1 import policy_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from localcloud.core import identity, permissions
from localcloud.core.errors import InvalidArgument, PermissionDenied

LOG = logging.getLogger(__name__)
ROLES_FILE = Path(__file__).with_name("roles.json")
CUSTOM_ROLE = re.compile(r"^(projects/[^/]+|organizations/[0-9]+)/roles/[A-Za-z0-9_.]{3,64}$")
PREDEFINED_ROLE = re.compile(r"^roles/[A-Za-z0-9_.]+$")
BASIC = {
    "projectOwner": "roles/owner",
    "projectEditor": "roles/editor",
    "projectViewer": "roles/viewer",
}
ANONYMOUS = frozenset({"", "allUsers", "anonymous"})


@dataclass(frozen=True)
class Role:
    name: str
    title: str
    permissions: frozenset[str]
    stage: str = "GA"
    deleted: bool = False


@cache
def predefined() -> dict[str, Role]:
    data = json.loads(ROLES_FILE.read_text())
    return {
        name: Role(name, r["title"], frozenset(r["permissions"]), r.get("stage", "GA"))
        for name, r in data["roles"].items()
    }


@cache
def known_permissions() -> frozenset[str]:
    """Every permission some predefined role of ``roles.json`` includes."""
    return frozenset(p for role in predefined().values() for p in role.permissions)


# ------------------------------------------------------------------ resources


def _strip(resource: str) -> str:
    """A full resource name (``//pubsub.googleapis.com/projects/p/topics/t``) as relative."""
    if resource.startswith("//"):
        return resource[2:].split("/", 1)[1] if "/" in resource[2:] else ""
    return resource


_TYPES = [
    (re.compile(r"^projects/_/buckets/[^/]+/objects/.+$"), "storage.googleapis.com/Object"),
    (re.compile(r"^projects/_/buckets/[^/]+$"), "storage.googleapis.com/Bucket"),
    (re.compile(r"^projects/[^/]+/topics/[^/]+$"), "pubsub.googleapis.com/Topic"),
    (re.compile(r"^projects/[^/]+/subscriptions/[^/]+$"), "pubsub.googleapis.com/Subscription"),
    (re.compile(r"^projects/[^/]+/locations/[^/]+/services/[^/]+$"), "run.googleapis.com/Service"),
    (
        re.compile(r"^projects/[^/]+/locations/[^/]+/services/[^/]+/revisions/[^/]+$"),
        "run.googleapis.com/Revision",
    ),
    (re.compile(r"^projects/[^/]+/locations/[^/]+/jobs/[^/]+$"), "run.googleapis.com/Job"),
    (
        re.compile(r"^projects/[^/]+/locations/[^/]+/workflows/[^/]+$"),
        "workflows.googleapis.com/Workflow",
    ),
    (
        re.compile(r"^projects/[^/]+/locations/[^/]+/triggers/[^/]+$"),
        "eventarc.googleapis.com/Trigger",
    ),
    (
        re.compile(r"^projects/[^/]+/locations/[^/]+/repositories/[^/]+$"),
        "artifactregistry.googleapis.com/Repository",
    ),
    (re.compile(r"^projects/[^/]+/serviceAccounts/[^/]+$"), "iam.googleapis.com/ServiceAccount"),
    (re.compile(r"^projects/[^/]+/roles/[^/]+$"), "iam.googleapis.com/Role"),
    (re.compile(r"^projects/[^/]+$"), "cloudresourcemanager.googleapis.com/Project"),
]


def resource_type(resource: str) -> str:
    """The ``resource.type`` IAM Conditions see for a resource (empty when unknown)."""
    name = _strip(resource)
    return next((kind for pattern, kind in _TYPES if pattern.match(name)), "")


def service_of(resource: str) -> str:
    kind = resource_type(resource)
    return kind.split("/", 1)[0] if kind else ""


def service_account_project(resource: str) -> str | None:
    """``projects/P/serviceAccounts/EMAIL`` -> P (``projects/-`` reads P from the email)."""
    parts = _strip(resource).split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "serviceAccounts":
        return None
    if parts[1] != "-":
        return parts[1]
    domain = parts[3].partition("@")[2]
    return domain.removesuffix(".iam.gserviceaccount.com") if "." in domain else None


# ------------------------------------------------------------------ conditions

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>&&|\|\||==|!=|!|\(|\)|,)"""
    r"""|(?P<id>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*))"""
)
ATTRIBUTES = ("resource.name", "resource.type", "resource.service")
METHODS = {
    "startsWith": str.startswith,
    "endsWith": str.endswith,
    "contains": str.__contains__,
}


class Unsupported(ValueError):
    """A condition outside the CEL subset localcloud evaluates."""


def _tokens(expression: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = expression.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise Unsupported(f"cannot read {text[pos:]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "str":
            value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
        out.append((kind, value))
        pos = match.end()
    return out


class _Parser:
    """Recursive descent over the subset; evaluates as it parses (no side effects)."""

    def __init__(self, expression: str, attributes: dict[str, str]) -> None:
        self.tokens = _tokens(expression)
        self.i = 0
        self.attributes = attributes

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise Unsupported(f"expected {value or 'more'} at token {self.i}")
        self.i += 1
        return token

    def parse(self) -> bool:
        result = self.disjunction()
        if self.peek() is not None:
            raise Unsupported(f"unexpected {self.peek()}")
        return result

    def disjunction(self) -> bool:
        value = self.conjunction()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.conjunction()
            value = value or right
        return value

    def conjunction(self) -> bool:
        value = self.unary()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.unary()
            value = value and right
        return value

    def unary(self) -> bool:
        if self.peek() == ("op", "!"):
            self.take()
            return not self.unary()
        if self.peek() == ("op", "("):
            self.take()
            value = self.disjunction()
            self.take(")")
            return value
        return self.comparison()

    def operand(self) -> str | bool:
        kind, value = self.take()
        if kind == "str":
            return value
        if kind != "id":
            raise Unsupported(f"unexpected {value!r}")
        if value in ("true", "false"):
            return value == "true"
        if value in self.attributes:
            return self.attributes[value]
        head, _, method = value.rpartition(".")
        if head in self.attributes and method in METHODS:
            self.take("(")
            kind, argument = self.take()
            if kind != "str":
                raise Unsupported(f"{method} takes a string")
            self.take(")")
            return bool(METHODS[method](self.attributes[head], argument))
        raise Unsupported(f"{value} is not evaluated locally")

    def comparison(self) -> bool:
        left = self.operand()
        token = self.peek()
        if token in (("op", "=="), ("op", "!=")):
            self.take()
            right = self.operand()
            return (left == right) == (token == ("op", "=="))
        if not isinstance(left, bool):
            raise Unsupported("a condition must be true or false")
        return left


def evaluate(expression: str, resource: str) -> bool:
    """Whether ``expression`` holds for a request on ``resource``; Unsupported if it uses
    CEL beyond the subset."""
    name = _strip(resource)
    attributes = {
        "resource.name": name,
        "resource.type": resource_type(name),
        "resource.service": service_of(name),
    }
    return _Parser(expression, attributes).parse()


# ------------------------------------------------------------------ denial wording


class Denied(PermissionDenied):
    """PERMISSION_DENIED carrying a ``google.rpc.ErrorInfo`` (reason IAM_PERMISSION_DENIED,
    the permission and resource in its metadata), as Google's APIs attach one
    (https://cloud.google.com/apis/design/errors#error_info)."""

    def __init__(self, message: str, permission: str, resource: str) -> None:
        super().__init__(message)
        self.permission = permission
        self.resource = resource

    def to_proto(self) -> status_pb2.Status:
        status = super().to_proto()
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason="IAM_PERMISSION_DENIED",
                domain="iam.googleapis.com",
                metadata={"permission": self.permission, "resource": self.resource},
            )
        )
        status.details.append(detail)
        return status


def _common(permission: str, resource: str) -> str:
    # Most of Google's gRPC APIs (Workflows, Eventarc, Cloud Build v2, IAM ...).
    return f"Permission '{permission}' denied on resource '{resource}' (or it may not exist)."


def _pubsub(permission: str, resource: str) -> str:
    # Pub/Sub answers only "User not authorized to perform this action." (e.g.
    # https://github.com/googleapis/nodejs-pubsub/issues/1180); localcloud adds the sentence
    # most APIs give, so a failed deployment says which grant is missing.
    return f"User not authorized to perform this action. {_common(permission, resource)}"


def _run(permission: str, resource: str) -> str:
    # https://github.com/google-github-actions/deploy-cloudrun/issues/182
    return f"Permission '{permission}' denied on resource '{resource}' (or resource may not exist)."


def _resourcemanager(permission: str, resource: str) -> str:
    # Resource Manager names the project by its full resource name:
    # https://github.com/CrowdStrike/falcon-integration-gateway/pull/98
    return _common(permission, f"//cloudresourcemanager.googleapis.com/{_strip(resource)}")


def _service_account(permission: str, resource: str) -> str:
    # "Permission 'iam.serviceaccounts.actAs' denied on service account X (or it may not
    # exist)." as Cloud Run, Cloud Build and Eventarc report a missing serviceAccountUser.
    email = _strip(resource).rsplit("/", 1)[-1]
    return f"Permission '{permission}' denied on service account {email} (or it may not exist)."


def storage_message(member: str, permission: str, resource: str) -> str:
    """Cloud Storage's JSON API 403 (e.g.
    https://github.com/ansible-collections/google.cloud/issues/575): the caller, the
    permission, the kind of resource; Google names no resource, localcloud appends it."""
    kind = "object" if "/objects/" in resource else "bucket"
    who = member.partition(":")[2] or "Anonymous caller"
    return (
        f"{who} does not have {permission} access to the Google Cloud Storage {kind}. "
        f"Permission '{permission}' denied on resource (or it may not exist). "
        f"(resource: {_strip(resource)})"
    )


def registry_message(permission: str, resource: str, authenticated: bool = True) -> str:
    """Artifact Registry's Docker API ``denied`` message (e.g.
    https://github.com/GoogleCloudPlatform/cymbal-superstore/pull/4)."""
    if not authenticated:
        return (
            f'Unauthenticated request. Unauthenticated requests do not have permission "{permission}" '
            f'on resource "{_strip(resource)}" (or it may not exist)'
        )
    return (
        f'Permission "{permission}" denied on resource "{_strip(resource)}" (or it may not exist)'
    )


_WORDING: dict[str, Callable[[str, str], str]] = {
    "pubsub": _pubsub,
    "run": _run,
    "resourcemanager": _resourcemanager,
}


def denied(member: str, permission: str, resource: str) -> Denied:
    """The PERMISSION_DENIED a service answers when ``member`` lacks ``permission`` on
    ``resource``, worded as that service words it."""
    prefix = permission.split(".", 1)[0]
    if permission.startswith("iam.serviceAccounts.") and resource_type(resource).endswith(
        "/ServiceAccount"
    ):
        message = _service_account(permission, resource)
    elif prefix == "storage":
        message = storage_message(member, permission, resource)
    elif prefix == "artifactregistry":
        message = registry_message(permission, resource, member not in ANONYMOUS)
    else:
        message = _WORDING.get(prefix, _common)(permission, _strip(resource))
    return Denied(message, permission, _strip(resource))


# ------------------------------------------------------------------ the evaluator

PolicyOf = Callable[[str], policy_pb2.Policy]


DECISIONS = 65_536  # remembered (member, permission, resource) answers; all dropped when full


class Authorizer:
    """Evaluates the policies of a resource and its ancestors for a member.

    ``policy_of`` reads a resource's effective policy (stored, or its default);
    ``custom_role`` resolves ``projects/P/roles/ID``; ``bucket_project`` says which project
    holds a bucket (the storage service knows; by default the default project).

    Every call is checked, so answers are remembered per (member, permission, resource)
    when ``generation`` is given: a number its policy source (``core/iam.py``'s
    ``PolicyStore``) changes whenever any policy is set or forgotten (a resource deleted).
    A changed number, or another local user, drops every remembered answer before the next
    check, so a grant or a revocation holds from the very next call. An answer is not
    remembered when it read something that changes without a policy changing: a custom
    role (its permissions change through the IAM Admin API) or a bucket not yet made (its
    project is not known until it is). Everything else an answer reads is fixed: the
    predefined roles, the members' rules, the conditions' resource attributes. Without
    ``generation`` (a caller passing policies of its own) nothing is remembered.
    """

    def __init__(
        self,
        policy_of: PolicyOf,
        *,
        default_project: str = "local-project",
        custom_role: Callable[[str], Role | None] | None = None,
        bucket_project: Callable[[str], str | None] | None = None,
        generation: Callable[[], int] | None = None,
    ) -> None:
        self.policy_of = policy_of
        self.default_project = default_project
        self.custom_role = custom_role or (lambda name: None)
        self.bucket_project = bucket_project or (lambda bucket: None)
        self.generation = generation
        self._unsupported_logged: set[str] = set()
        self._decisions: dict[tuple[str, str, str], bool] = {}
        self._stamp: tuple[int, str] | None = None  # what the remembered answers hold for

    # -- roles

    def role(self, name: str) -> Role | None:
        if name.startswith("roles/"):
            return predefined().get(name)
        if CUSTOM_ROLE.match(name):
            return self.custom_role(name)
        return None

    def check_grantable(self, role: str) -> None:
        """INVALID_ARGUMENT for a role that cannot be granted, in Google's words."""
        if CUSTOM_ROLE.match(role):
            found = self.custom_role(role)
            if found is None or found.deleted:
                raise InvalidArgument(f"Role ({role}) does not exist in the resource's hierarchy.")
            return
        if not PREDEFINED_ROLE.match(role):
            raise InvalidArgument(f"Role {role} is not a valid role name.")
        if role not in predefined():
            # Google's answer for a role it does not offer on the resource, e.g.
            # https://github.com/GoogleCloudPlatform/stackdriver-metrics-export/issues/7
            raise InvalidArgument(f"Role {role} is not supported for this resource.")

    # -- the hierarchy

    def project_of(self, resource: str) -> str | None:
        parts = _strip(resource).split("/")
        if len(parts) >= 3 and parts[:2] == ["projects", "_"] and parts[2] == "buckets":
            return self.bucket_project(parts[3]) or self.default_project
        if len(parts) == 4 and parts[2] == "serviceAccounts":
            return service_account_project(resource)
        if len(parts) >= 2 and parts[0] == "projects" and parts[1] not in ("_", "-"):
            return parts[1]
        return None

    def hierarchy(self, resource: str) -> list[str]:
        """The resource and the resources whose policies it inherits, nearest first."""
        name = _strip(resource)
        parts = name.split("/")
        chain: list[str] = []
        if len(parts) >= 4 and parts[:3] == ["projects", "_", "buckets"]:
            bucket = "/".join(parts[:4])
            chain = [name, bucket] if name != bucket else [bucket]
        elif len(parts) == 4 and parts[2] == "serviceAccounts":
            chain = [f"projects/{self.project_of(name) or parts[1]}/serviceAccounts/{parts[3]}"]
        else:
            # Every "collection/id" prefix: .../services/S/revisions/R inherits from
            # .../services/S, then the location, then the project.
            chain = ["/".join(parts[:n]) for n in range(len(parts) - len(parts) % 2, 1, -2)]
        project = self.project_of(name)
        if project and f"projects/{project}" not in chain:
            chain.append(f"projects/{project}")
        return chain

    # -- members

    def _matches(self, member: str, caller: str, resource: str) -> bool:
        if member == "allUsers":
            return True
        if caller in ANONYMOUS:
            return False
        if member == "allAuthenticatedUsers":
            return True
        kind, _, value = member.partition(":")
        if kind in BASIC:
            return self._holds_basic(caller, BASIC[kind], value)
        ckind, _, cvalue = caller.partition(":")
        if kind == "domain":
            return ckind == "user" and cvalue.lower().endswith("@" + value.lower())
        if kind in ("user", "serviceAccount"):
            return kind == ckind and value.lower() == cvalue.lower()
        return False  # group:, deleted:, principal:// ... (see the module docstring)

    def _holds_basic(self, caller: str, role: str, project: str) -> bool:
        policy = self.policy_of(f"projects/{project}")
        return any(
            b.role == role and not b.HasField("condition") and self._direct(b.members, caller)
            for b in policy.bindings
        )

    @staticmethod
    def _direct(members: Iterable[str], caller: str) -> bool:
        ckind, _, cvalue = caller.partition(":")
        for member in members:
            kind, _, value = member.partition(":")
            if (
                kind in ("user", "serviceAccount")
                and kind == ckind
                and value.lower() == cvalue.lower()
            ):
                return True
        return False

    def _holds(self, binding: Any, resource: str) -> bool:
        if not binding.HasField("condition") or not binding.condition.expression:
            return True
        expression = binding.condition.expression
        try:
            return evaluate(expression, resource)
        except Unsupported as exc:
            if expression not in self._unsupported_logged:
                self._unsupported_logged.add(expression)
                LOG.warning("IAM condition %r grants nothing locally: %s", expression, exc)
            return False

    # -- the answers

    def permitted(self, member: str, permissions: Iterable[str], resource: str) -> set[str]:
        """The subset of ``permissions`` that ``member`` holds on ``resource``."""
        if self.generation is None:
            return self._evaluate(member, set(permissions), resource)[0]
        stamp = (self.generation(), identity.local_user())
        if stamp != self._stamp:
            self._decisions.clear()
            self._stamp = stamp
        decisions = self._decisions
        held: set[str] = set()
        unknown: set[str] = set()
        for permission in permissions:
            known = decisions.get((member, permission, resource))
            if known is None:
                unknown.add(permission)
            elif known:
                held.add(permission)
        if not unknown:
            return held
        found, lasting = self._evaluate(member, unknown, resource)
        # Kept only if nothing changed while it was worked out (a thread's check racing a
        # SetIamPolicy on the loop must not keep an answer from before it).
        if lasting and (self.generation(), identity.local_user()) == stamp:
            if len(decisions) + len(unknown) > DECISIONS:
                decisions.clear()
            for permission in unknown:
                decisions[(member, permission, resource)] = permission in found
        return held | found

    def _evaluate(self, member: str, wanted: set[str], resource: str) -> tuple[set[str], bool]:
        """The subset of ``wanted`` held, read from the policies; and whether that answer
        lasts until a policy changes (see the class's docstring)."""
        held: set[str] = set()
        lasting = self._bucket_known(resource)
        for holder in self.hierarchy(resource):
            for binding in self.policy_of(holder).bindings:
                if not (wanted - held):
                    return held, lasting
                if not binding.role.startswith("roles/"):
                    lasting = False  # a custom role: its permissions may change
                role = self.role(binding.role)
                if role is None or role.deleted or not (role.permissions & (wanted - held)):
                    continue
                if not any(self._matches(m, member, resource) for m in binding.members):
                    continue
                if self._holds(binding, resource):
                    held |= role.permissions & wanted
        return held, lasting

    def _bucket_known(self, resource: str) -> bool:
        """False for a bucket (or its object) not made yet: which project's policy it
        inherits is not known until it is (made in another project, it inherits that)."""
        parts = _strip(resource).split("/", 4)
        if len(parts) >= 4 and parts[:3] == ["projects", "_", "buckets"]:
            return self.bucket_project(parts[3]) is not None
        return True

    def check(self, member: str, permission: str, resource: str) -> None:
        """PERMISSION_DENIED in the service's words unless ``member`` holds ``permission``."""
        if permission not in self.permitted(member, (permission,), resource):
            raise denied(member, permission, resource)

    # -- defaults (what a policy that was never set reads as)

    def default_policy(self, resource: str) -> policy_pb2.Policy | None:
        name = _strip(resource)
        parts = name.split("/")
        if len(parts) == 2 and parts[0] == "projects":
            policy = policy_pb2.Policy(version=1)
            policy.bindings.add(role="roles/owner", members=[identity.local_user()])
            return policy
        if len(parts) == 4 and parts[:3] == ["projects", "_", "buckets"]:
            project = self.project_of(name)
            policy = policy_pb2.Policy(version=1)
            owners = [f"projectEditor:{project}", f"projectOwner:{project}"]
            viewers = [f"projectViewer:{project}"]
            policy.bindings.add(role="roles/storage.legacyBucketOwner", members=owners)
            policy.bindings.add(role="roles/storage.legacyBucketReader", members=viewers)
            policy.bindings.add(role="roles/storage.legacyObjectOwner", members=owners)
            policy.bindings.add(role="roles/storage.legacyObjectReader", members=viewers)
            return policy
        return None


# ------------------------------------------------------------------ the installed one

_authorizer: Authorizer | None = None


def configure(authorizer: Authorizer) -> None:
    """Install the server's authorizer (``localcloud/server.py`` does, at start)."""
    global _authorizer
    _authorizer = authorizer


def authorizer() -> Authorizer:
    if _authorizer is None:
        raise RuntimeError("localcloud.core.authz is not configured")
    return _authorizer


def permitted(member: str, permissions: Iterable[str], resource: str) -> set[str]:
    return authorizer().permitted(member, permissions, resource)


def check(member: str, permission: str, resource: str) -> None:
    authorizer().check(member, permission, resource)


def require(permission: str, resource: str) -> None:
    """``check`` for the caller of the call being served (nothing in ``off`` mode)."""
    if not permissions.checking():
        return
    authorizer().check(identity.caller(), permission, resource)
