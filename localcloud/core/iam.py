"""IAM policies on any localcloud resource, and ``google.iam.v1.IAMPolicy`` over gRPC.

Policies are stored per resource name with an etag that SetIamPolicy checks, as Google
does, so read-modify-write races fail with ABORTED instead of losing a binding. Which
resources exist is asked of the owning services (``resolvers``): a policy on a missing
topic is NOT_FOUND, not silently kept. A policy never set reads as the resource's default
(``default``: a project's creator is its owner, see ``core/authz.py``), and every role a
policy grants must resolve (``grantable``), so a typo is refused instead of stored empty.

The IAM methods are themselves authorized, as on Google
(https://cloud.google.com/iam/docs/reference/rpc/google.iam.v1): GetIamPolicy needs the
resource's ``*.getIamPolicy`` permission, SetIamPolicy its ``*.setIamPolicy``;
TestIamPermissions needs none and answers which of the asked permissions the caller holds.

Under domain restricted sharing (``LOCALCLOUD_ORG_POLICY_DOMAIN_RESTRICTED``), a policy
naming ``allUsers`` or ``allAuthenticatedUsers`` is refused as Google refuses it: every
member of the policy being set is checked, not only the new ones, so a policy still
holding ``allUsers`` from before the constraint cannot be written back until it is removed
(https://cloud.google.com/knowledge/kb/organization-policy-violation-when-setting-iam-policy-000004666).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable

import grpc
from google.iam.v1 import iam_policy_pb2, policy_pb2

from localcloud.core import authz, identity
from localcloud.core.db import Database
from localcloud.core.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from localcloud.core.table import ProtoTable
from localcloud.core.wire import handler_for, rpc

LOG = logging.getLogger(__name__)
# Principals outside any customer: what domain restricted sharing refuses outright.
PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})
# Google's answer (HTTP 400, FAILED_PRECONDITION, a PreconditionFailure naming the
# constraint): https://cloud.google.com/knowledge/kb/organization-policy-violation-when-setting-iam-policy-000004666
NOT_PERMITTED = (
    "One or more users named in the policy do not belong to a permitted customer, "
    "perhaps due to an organization policy."
)

# resource name -> (exists?, permissions valid for it) ; None when not this service's
Resolver = Callable[[str], tuple[bool, set[str]] | None]
# Conditional role bindings need policy version 3:
# https://cloud.google.com/iam/docs/policies#versions
CONDITIONS_NEED_V3 = (
    "Conditional role bindings require policy version 3. For more information, please refer "
    "to https://cloud.google.com/iam/docs/policies#versions."
)


def _etag(policy: policy_pb2.Policy) -> bytes:
    clean = policy_pb2.Policy()
    clean.CopyFrom(policy)
    clean.ClearField("etag")
    return hashlib.sha256(clean.SerializeToString(deterministic=True)).digest()[:8]


class PolicyStore:
    def __init__(self, db: Database, *, domain_restricted: bool = False) -> None:
        self.domain_restricted = domain_restricted
        # What a policy never set reads as, and the check each granted role passes; the
        # server installs both from core/authz.py (None: empty policy, any roles/... name).
        self.default: Callable[[str], policy_pb2.Policy | None] = lambda resource: None
        self.grantable: Callable[[str], None] = _role_name_only
        # A policy does not name its resource, so the key is given with each put.
        self._policies: ProtoTable[str, policy_pb2.Policy] = ProtoTable(
            db, "iam_policies", policy_pb2.Policy, key="resource", key_of=None
        )
        # Changed by every set and forget: the authorizer remembers answers until it changes.
        self._generation = 0

    def generation(self) -> int:
        """A number that changes whenever a policy may have: a policy set, or forgotten
        with its resource (even one never set: a bucket made again may be another
        project's). ``core/authz.py`` remembers its answers for as long as it stays."""
        return self._generation

    def get(self, resource: str) -> policy_pb2.Policy:
        policy = self._policies.get(resource)
        if policy is None:
            policy = self.default(resource) or policy_pb2.Policy(version=1)
            policy.etag = _etag(policy)
        return policy

    def is_set(self, resource: str) -> bool:
        return resource in self._policies

    async def set(self, resource: str, policy: policy_pb2.Policy) -> policy_pb2.Policy:
        # The policy is checked before the etag: a bad one is refused even when stale.
        for binding in policy.bindings:
            self.grantable(binding.role)
            if binding.HasField("condition") and policy.version < 3:
                raise InvalidArgument(CONDITIONS_NEED_V3)
        current = self.get(resource)
        if policy.etag and policy.etag != current.etag:
            raise Aborted(
                "There were concurrent policy changes. Please retry the whole "
                "read-modify-write with exponential backoff."
            )
        if self.domain_restricted:
            refused = sorted({m for b in policy.bindings for m in b.members} & PUBLIC_MEMBERS)
            if refused:
                # Google carries the constraint in the error's details; localcloud's errors
                # have a message only, so it names the constraint and the members there.
                raise FailedPrecondition(
                    f"{NOT_PERMITTED} (constraints/iam.allowedPolicyMemberDomains refuses "
                    f"{', '.join(refused)})"
                )
        stored = policy_pb2.Policy()
        stored.CopyFrom(policy)
        stored.version = stored.version or 1
        stored.etag = _etag(stored)
        # Changed before the write (which changes memory before its first await) and after
        # it (a failed write puts memory back as it was).
        self._generation += 1
        try:
            await self._policies.put(stored, key=resource)
        finally:
            self._generation += 1
        return stored

    async def forget(self, resource: str) -> None:
        self._generation += 1
        try:
            if resource in self._policies:
                await self._policies.delete(resource)
        finally:
            self._generation += 1

    def members_with(self, resource: str, role: str) -> frozenset[str]:
        return frozenset(
            m for b in self.get(resource).bindings if b.role == role for m in b.members
        )


def _role_name_only(role: str) -> None:
    if not role.startswith("roles/"):
        raise InvalidArgument(f"Role {role} is not a valid role name.")


def iam_permission(valid: set[str], verb: str) -> str:
    """The ``SERVICE.COLLECTION.getIamPolicy`` (``verb``) permission among a resource's."""
    return next((p for p in sorted(valid) if p.endswith("." + verb)), verb)


class IamService:
    """``google.iam.v1.IAMPolicy`` for every resource a resolver claims."""

    SERVICE = "google.iam.v1.IAMPolicy"

    def __init__(self, store: PolicyStore) -> None:
        self.store = store
        self.resolvers: list[Resolver] = []

    def _resolve(self, resource: str) -> set[str]:
        for resolver in self.resolvers:
            answer = resolver(resource)
            if answer is not None:
                exists, permissions = answer
                if not exists:
                    raise NotFound(f"Resource not found (resource={resource.rsplit('/', 1)[-1]}).")
                return permissions
        raise InvalidArgument(f"Invalid resource name given (name={resource}).")

    @rpc("GetIamPolicy", iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy)
    async def get_iam_policy(self, request, context):
        valid = self._resolve(request.resource)
        authz.require(iam_permission(valid, "getIamPolicy"), request.resource)
        return self.store.get(request.resource)

    @rpc("SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy)
    async def set_iam_policy(self, request, context):
        valid = self._resolve(request.resource)
        authz.require(iam_permission(valid, "setIamPolicy"), request.resource)
        return await self.store.set(request.resource, request.policy)

    @rpc(
        "TestIamPermissions",
        iam_policy_pb2.TestIamPermissionsRequest,
        iam_policy_pb2.TestIamPermissionsResponse,
    )
    async def test_iam_permissions(self, request, context):
        valid = self._resolve(request.resource)
        return iam_policy_pb2.TestIamPermissionsResponse(
            permissions=truthful(request.permissions, valid, request.resource)
        )

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)


def truthful(asked: Iterable[str], valid: set[str], resource: str) -> list[str]:
    """TestIamPermissions' answer: of the asked permissions that apply to the resource, the
    ones the caller holds on it, in the order asked."""
    applicable = [p for p in asked if p in valid]
    held = authz.permitted(identity.caller(), applicable, resource)
    return [p for p in applicable if p in held]
