"""``google.iam.admin.v1.IAM``: service accounts, their IAM policies, custom roles.

Rules and answers are Google's (https://cloud.google.com/iam/docs/reference/rpc/google.iam.admin.v1):
an account id is 6-30 characters, ``[a-z]([-a-z0-9]*[a-z0-9])``; the account is
``ID@PROJECT.iam.gserviceaccount.com``, named ``projects/P/serviceAccounts/EMAIL`` (``-``
may stand for the project, and the unique id for the email). Each method needs the
permission Google documents (https://cloud.google.com/iam/docs/service-accounts-create#permissions,
https://cloud.google.com/iam/docs/creating-custom-roles#required-roles), checked with
``core/authz.py``. ``roles/iam.serviceAccountUser`` granted on an account (its policy here)
is what lets a principal act as it (``iam.serviceAccounts.actAs``).

Not served: keys (localcloud signs with its own issuer), sign/undelete/disable, and
Update/List/Undelete of roles (see docs/compatibility.md): they answer UNIMPLEMENTED.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import grpc
from google.cloud.iam_admin_v1 import types
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import empty_pb2

from localcloud.core import authz
from localcloud.core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
)
from localcloud.core.iam import PolicyStore, truthful
from localcloud.core.oidc import subject_id
from localcloud.core.paging import page
from localcloud.core.wire import handler_for, rpc
from localcloud.iam.store import AccountStore

SERVICE = "google.iam.admin.v1.IAM"
ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
ROLE_ID = re.compile(r"^[A-Za-z0-9_.]{3,64}$")
PERMISSION = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+){2,}$")
PROJECT = re.compile(r"^projects/([^/]+)$")
UNKNOWN_ACCOUNT = "Unknown service account"


def _etag(message: Any) -> bytes:
    clean = type(message)()
    clean.CopyFrom(message)
    clean.ClearField("etag")
    return hashlib.sha256(clean.SerializeToString(deterministic=True)).digest()[:8]


def _project(name: str, field: str = "name") -> str:
    match = PROJECT.match(name)
    if match is None or match.group(1) in ("-", "_"):
        raise InvalidArgument(
            f"Invalid {field} {name!r}: expected projects/PROJECT",
        )
    return match.group(1)


def account_permissions() -> set[str]:
    return {p for p in authz.known_permissions() if p.startswith("iam.serviceAccounts.")}


class IamAdminService:
    SERVICE = SERVICE

    def __init__(self, store: AccountStore, policies: PolicyStore) -> None:
        self.store = store
        self.policies = policies

    # ---------------------------------------------------------- service accounts

    def _account(self, name: str, permission: str) -> Any:
        """The account ``name`` designates, after the caller's ``permission`` on it: a
        caller without it is told PERMISSION_DENIED whether or not the account exists."""
        found = self.store.find(name)
        authz.require(permission, found.name if found is not None else name)
        if found is None:
            raise NotFound(UNKNOWN_ACCOUNT)
        return found

    @rpc("CreateServiceAccount", types.CreateServiceAccountRequest, types.ServiceAccount)
    async def create_service_account(self, request, context):
        project = _project(request.name)
        account_id = request.account_id
        if not (6 <= len(account_id) <= 30 and ACCOUNT_ID.match(account_id)):
            raise InvalidArgument(
                f"Invalid account_id {account_id!r}: an account ID must be 6 to 30 "
                "characters, start with a lowercase letter and hold only lowercase "
                "letters, digits and hyphens, not ending with a hyphen.",
            )
        authz.require("iam.serviceAccounts.create", f"projects/{project}")
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        name = f"projects/{project}/serviceAccounts/{email}"
        if name in self.store.accounts:
            # Google's 409: "Service account X already exists within project projects/P."
            raise AlreadyExists(
                f"Service account {account_id} already exists within project projects/{project}."
            )
        given = request.service_account
        if len(given.display_name) > 100:
            raise InvalidArgument("service_account.display_name must be at most 100 characters.")
        if len(given.description) > 256:
            raise InvalidArgument("service_account.description must be at most 256 characters.")
        unique = subject_id(email)
        account = types.ServiceAccount.pb()(
            name=name,
            project_id=project,
            unique_id=unique,
            email=email,
            display_name=given.display_name,
            description=given.description,
            oauth2_client_id=unique,
        )
        account.etag = _etag(account)
        await self.store.accounts.put(account)
        return account

    @rpc("GetServiceAccount", types.GetServiceAccountRequest, types.ServiceAccount)
    async def get_service_account(self, request, context):
        return self._account(request.name, "iam.serviceAccounts.get")

    @rpc("ListServiceAccounts", types.ListServiceAccountsRequest, types.ListServiceAccountsResponse)
    async def list_service_accounts(self, request, context):
        project = _project(request.name)
        authz.require("iam.serviceAccounts.list", f"projects/{project}")
        accounts = sorted(
            (a for a in self.store.accounts.values() if a.project_id == project),
            key=lambda a: a.email,
        )
        # Page size: default 20, at most 100 (ListServiceAccountsRequest.page_size).
        items, token = page(
            accounts, request.page_size, request.page_token, default_size=20, max_size=100
        )
        return types.ListServiceAccountsResponse.pb()(accounts=items, next_page_token=token)

    @rpc("DeleteServiceAccount", types.DeleteServiceAccountRequest, empty_pb2.Empty)
    async def delete_service_account(self, request, context):
        account = self._account(request.name, "iam.serviceAccounts.delete")
        await self.store.accounts.delete(account.name)
        await self.policies.forget(account.name)
        return empty_pb2.Empty()

    # ---------------------------------------------------------- IAM on accounts

    @rpc("GetIamPolicy", iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy)
    async def get_iam_policy(self, request, context):
        account = self._account(request.resource, "iam.serviceAccounts.getIamPolicy")
        return self.policies.get(account.name)

    @rpc("SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy)
    async def set_iam_policy(self, request, context):
        account = self._account(request.resource, "iam.serviceAccounts.setIamPolicy")
        return await self.policies.set(account.name, request.policy)

    @rpc(
        "TestIamPermissions",
        iam_policy_pb2.TestIamPermissionsRequest,
        iam_policy_pb2.TestIamPermissionsResponse,
    )
    async def test_iam_permissions(self, request, context):
        account = self.store.find(request.resource)
        if account is None:
            raise NotFound(UNKNOWN_ACCOUNT)
        return iam_policy_pb2.TestIamPermissionsResponse(
            permissions=truthful(request.permissions, account_permissions(), account.name)
        )

    # ---------------------------------------------------------- custom roles

    @rpc("CreateRole", types.CreateRoleRequest, types.Role)
    async def create_role(self, request, context):
        project = _project(request.parent, "parent")
        if not ROLE_ID.match(request.role_id):
            raise InvalidArgument(
                f"Invalid role_id {request.role_id!r}: a role ID must be 3 to 64 "
                "characters of letters, digits, underscores and periods.",
            )
        authz.require("iam.roles.create", f"projects/{project}")
        name = f"projects/{project}/roles/{request.role_id}"
        if name in self.store.roles:
            raise AlreadyExists(
                f"A role named {request.role_id} in projects/{project} already exists."
            )
        role = types.Role.pb()()
        role.CopyFrom(request.role)
        for permission in role.included_permissions:
            if not PERMISSION.match(permission):
                raise InvalidArgument(f"Permission {permission} is not valid.")
        role.name = name
        role.deleted = False
        role.etag = _etag(role)
        await self.store.roles.put(role)
        return role

    @rpc("GetRole", types.GetRoleRequest, types.Role)
    async def get_role(self, request, context):
        name = request.name
        if name.startswith("roles/"):
            # Predefined roles are public: no permission is needed to read them.
            found = authz.predefined().get(name)
            if found is None:
                raise NotFound(f"The role named {name} was not found.")
            return types.Role.pb()(
                name=found.name,
                title=found.title,
                included_permissions=sorted(found.permissions),
                stage=int(getattr(types.Role.RoleLaunchStage, found.stage)),
                etag=b"AA==",
            )
        if not authz.CUSTOM_ROLE.match(name):
            raise InvalidArgument(f"Invalid role name {name!r}.")
        authz.require("iam.roles.get", name.rsplit("/roles/", 1)[0])
        role = self.store.roles.get(name)
        if role is None:
            raise NotFound(f"The role named {name} was not found.")
        return role

    @rpc("DeleteRole", types.DeleteRoleRequest, types.Role)
    async def delete_role(self, request, context):
        name = request.name
        if not authz.CUSTOM_ROLE.match(name):
            raise InvalidArgument(f"Invalid role name {name!r}.")
        authz.require("iam.roles.delete", name.rsplit("/roles/", 1)[0])
        role = self.store.roles.get(name)
        if role is None:
            raise NotFound(f"The role named {name} was not found.")
        deleted = types.Role.pb()()
        deleted.CopyFrom(role)
        deleted.deleted = True
        deleted.etag = _etag(deleted)
        await self.store.roles.put(deleted)
        return deleted

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(SERVICE, self)
