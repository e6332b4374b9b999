"""Bucket IAM on the storage port: who may call which JSON API method, and the bucket's policy.

Every request the front serves is checked before fake-gcs-server sees it, for the caller
``identity.resolve_http`` names (a bad token is 401; a missing permission 403 with Cloud
Storage's wording from ``authz.storage_message``). The permission each method needs is
Google's table (https://cloud.google.com/storage/docs/access-control/iam-json):

- buckets.insert ``storage.buckets.create`` and buckets.list ``storage.buckets.list``, on the
  ``project`` named; buckets.get ``storage.buckets.get``; patch/update
  ``storage.buckets.update``; delete ``storage.buckets.delete``;
- buckets.getIamPolicy / setIamPolicy ``storage.buckets.getIamPolicy`` / ``setIamPolicy``;
  testIamPermissions needs none;
- objects.list ``storage.objects.list`` on the bucket; objects.get (metadata or media, the
  ``/download/`` path and the XML API's ``GET /BUCKET/OBJECT``) ``storage.objects.get``;
  patch/update ``storage.objects.update``; delete ``storage.objects.delete``;
- objects.insert (media, multipart, the initiation of a resumable upload: the session URL is
  the capability afterwards, as on Google), compose, copy and rewrite
  ``storage.objects.create`` on the destination, plus ``storage.objects.delete`` when it
  replaces a live object ("Replacing an existing object requires both" (same page)), and
  ``storage.objects.get`` on each source;
- object ACLs (objectAccessControls) ``storage.objects.getIamPolicy`` to read,
  ``storage.objects.setIamPolicy`` to change
  (https://cloud.google.com/storage/docs/access-control/iam-json#acl-methods).

A bucket's policy lives in localcloud's ``PolicyStore`` under ``projects/_/buckets/BUCKET``,
the name ``core/authz.py`` evaluates (a bucket inherits from its project; an object from its
bucket). Its JSON form is the API's ``storage#policy``
(https://cloud.google.com/storage/docs/json_api/v1/buckets/getIamPolicy); a role the
IAM policy service would refuse is refused here (``PolicyStore.set``), as 400.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from google.iam.v1 import policy_pb2

from localcloud.core import authz, permissions
from localcloud.core.errors import Aborted, FailedPrecondition, GoogleError
from localcloud.core.iam import PolicyStore
from localcloud.storage.names import StorageError

# Permissions a bucket's testIamPermissions can answer: Cloud Storage's own
# (https://cloud.google.com/storage/docs/json_api/v1/buckets/testIamPermissions).
TESTABLE_PREFIXES = ("storage.buckets.", "storage.objects.", "storage.managedFolders.")
PUBLIC = frozenset({"allUsers", "allAuthenticatedUsers"})
MEMBER_KINDS = frozenset(
    {
        "user",
        "serviceAccount",
        "group",
        "domain",
        "projectOwner",
        "projectEditor",
        "projectViewer",
        "principal",
        "principalSet",
        "deleted",
    }
)


def bucket_resource(bucket: str) -> str:
    return f"projects/_/buckets/{bucket}"


def object_resource(bucket: str, name: str) -> str:
    return f"projects/_/buckets/{bucket}/objects/{name}"


def project_message(member: str, permission: str, project: str) -> str:
    """Cloud Storage's 403 for a project-level permission (buckets.insert, buckets.list):
    "X does not have storage.buckets.create access to the Google Cloud project." (e.g.
    https://github.com/hashicorp/terraform-provider-google/issues/15437); like
    ``authz.storage_message``, localcloud appends the resource."""
    who = member.partition(":")[2] or "Anonymous caller"
    return (
        f"{who} does not have {permission} access to the Google Cloud project. "
        f"Permission '{permission}' denied on resource (or it may not exist). "
        f"(resource: projects/{project})"
    )


def forbidden(message: str) -> StorageError:
    return StorageError(403, message, "forbidden")


def require(member: str, permission: str, resource: str) -> None:
    """403 in Cloud Storage's words unless ``member`` holds ``permission`` on ``resource``
    (a bucket or an object, as ``bucket_resource`` / ``object_resource`` name them);
    nothing is checked in ``off`` mode (``permissions.checking``)."""
    if not permissions.checking():
        return
    if permission not in authz.permitted(member, (permission,), resource):
        if permissions.let_through(member, permission, resource, "Cloud Storage"):
            return
        raise forbidden(authz.storage_message(member, permission, resource))


def require_project(member: str, permission: str, project: str) -> None:
    if not permissions.checking():
        return
    if permission not in authz.permitted(member, (permission,), f"projects/{project}"):
        if permissions.let_through(member, permission, f"projects/{project}", "Cloud Storage"):
            return
        raise forbidden(project_message(member, permission, project))


def held(member: str, permissions: Iterable[str], resource: str) -> set[str]:
    return authz.permitted(member, permissions, resource)


# ---------------------------------------------------------------------- policy documents


def policy_document(policy: policy_pb2.Policy, bucket: str) -> dict[str, Any]:
    """A stored policy as the JSON API's ``storage#policy``."""
    bindings = []
    for binding in policy.bindings:
        entry: dict[str, Any] = {"role": binding.role, "members": list(binding.members)}
        if binding.HasField("condition"):
            condition = {"expression": binding.condition.expression}
            if binding.condition.title:
                condition["title"] = binding.condition.title
            if binding.condition.description:
                condition["description"] = binding.condition.description
            entry["condition"] = condition
        bindings.append(entry)
    return {
        "kind": "storage#policy",
        "resourceId": bucket_resource(bucket),
        "version": policy.version or 1,
        "etag": base64.b64encode(policy.etag).decode(),
        "bindings": bindings,
    }


def parse_policy(document: dict[str, Any]) -> policy_pb2.Policy:
    """A ``storage#policy`` from a setIamPolicy body; 400 naming the field that is wrong."""
    policy = policy_pb2.Policy()
    version = document.get("version", 1)
    if not isinstance(version, int) or version not in (0, 1, 3):
        raise StorageError(400, f"Invalid argument: version must be 1 or 3, not {version!r}")
    policy.version = version
    etag = document.get("etag")
    if etag:
        if not isinstance(etag, str):
            raise StorageError(400, "Invalid argument: etag must be a base64 string")
        try:
            policy.etag = base64.b64decode(etag, validate=True)
        except (binascii.Error, ValueError):
            raise StorageError(400, f"Invalid argument: etag {etag!r} is not base64") from None
    bindings = document.get("bindings") or []
    if not isinstance(bindings, list):
        raise StorageError(400, "Invalid argument: bindings must be a list")
    for i, entry in enumerate(bindings):
        if not isinstance(entry, dict):
            raise StorageError(400, f"Invalid argument: bindings[{i}] must be an object")
        role = entry.get("role")
        if not isinstance(role, str) or not role:
            raise StorageError(400, f"Invalid argument: bindings[{i}].role is required", "required")
        members = entry.get("members") or []
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise StorageError(400, f"Invalid argument: bindings[{i}].members must be strings")
        for member in members:
            kind, sep, value = member.partition(":")
            if member not in PUBLIC and not (sep and value and kind in MEMBER_KINDS):
                # Google: 400 "Invalid argument." for a malformed member; named here.
                raise StorageError(
                    400, f"Invalid argument: bindings[{i}].members: {member!r} is not a member"
                )
        binding = policy.bindings.add(role=role, members=members)
        condition = entry.get("condition")
        if condition is not None:
            if not isinstance(condition, dict) or not isinstance(condition.get("expression"), str):
                raise StorageError(
                    400, f"Invalid argument: bindings[{i}].condition needs an expression"
                )
            binding.condition.expression = condition["expression"]
            binding.condition.title = str(condition.get("title") or "")
            binding.condition.description = str(condition.get("description") or "")
    return policy


async def set_policy(store: PolicyStore, bucket: str, document: dict[str, Any]) -> dict[str, Any]:
    """setIamPolicy: the policy checked and stored as the IAM policy service stores it; its
    errors in Cloud Storage's statuses (a stale etag and an organization policy's refusal
    are 412 ``conditionNotMet``, as the JSON API answers them)."""
    policy = parse_policy(document)
    try:
        stored = await store.set(bucket_resource(bucket), policy)
    except (Aborted, FailedPrecondition) as exc:
        raise StorageError(412, exc.message) from None
    except GoogleError as exc:
        raise StorageError(exc.http_status, exc.message) from None
    return policy_document(stored, bucket)


def testable(permissions: Iterable[str]) -> list[str]:
    """The asked permissions, each one Cloud Storage's (400 for any other, as Google)."""
    asked = list(permissions)
    for permission in asked:
        if not permission.startswith(TESTABLE_PREFIXES):
            raise StorageError(400, f"Invalid argument: permission {permission!r} is not valid")
    return asked
