"""``google.cloud.resourcemanager.v3.Projects``: a project's id and number, and its IAM policy.

Every project a client names exists locally (localcloud keeps any project apart, see
DESIGN.md), so GetProject answers for any well-formed id, named ``projects/NUMBER`` as Google
names it (https://cloud.google.com/resource-manager/reference/rpc/google.cloud.resourcemanager.v3#google.cloud.resourcemanager.v3.Projects.GetProject).
A number is recognised once its project has been named by id (numbers are derived from ids);
an unknown one is refused as Google refuses a project the caller cannot see: PERMISSION_DENIED
"(or it may not exist)". The policy of ``projects/P`` is the one every resource of P
inherits (``core/authz.py``); until set it makes the local user the owner.
"""

from __future__ import annotations

import re

import grpc
from google.cloud.resourcemanager_v3 import types
from google.iam.v1 import iam_policy_pb2, policy_pb2

from localcloud.core import authz, identity
from localcloud.core.errors import InvalidArgument
from localcloud.core.iam import PolicyStore, truthful
from localcloud.core.projects import project_number
from localcloud.core.wire import handler_for, rpc

SERVICE = "google.cloud.resourcemanager.v3.Projects"
# https://cloud.google.com/resource-manager/docs/creating-managing-projects#before_you_begin
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
NUMBER = re.compile(r"^[0-9]+$")


class ProjectsService:
    SERVICE = SERVICE

    def __init__(self, policies: PolicyStore, default_project: str) -> None:
        self.policies = policies
        self._ids: dict[str, str] = {}  # number -> id, for every id seen
        self._remember(default_project)

    def _remember(self, project_id: str) -> str:
        self._ids[project_number(project_id)] = project_id
        return project_id

    def _id(self, name: str, field: str, permission: str) -> str:
        """The project id ``projects/ID|NUMBER`` names, after the caller's ``permission``."""
        parts = name.split("/")
        if len(parts) != 2 or parts[0] != "projects" or not parts[1]:
            raise InvalidArgument(
                f"Invalid {field} {name!r}: expected projects/PROJECT_ID_OR_NUMBER",
            )
        key = parts[1]
        if NUMBER.match(key):
            project = self._ids.get(key)
            if project is None:
                raise authz.denied(identity.caller(), permission, name)
        elif PROJECT_ID.match(key):
            project = self._remember(key)
        else:
            raise authz.denied(identity.caller(), permission, name)
        authz.require(permission, f"projects/{project}")
        return project

    @rpc("GetProject", types.GetProjectRequest, types.Project)
    async def get_project(self, request, context):
        project = self._id(request.name, "name", "resourcemanager.projects.get")
        return types.Project.pb()(
            name=f"projects/{project_number(project)}",
            project_id=project,
            display_name=project,
            state=int(types.Project.State.ACTIVE),
            etag=self.policies.get(f"projects/{project}").etag.hex(),
        )

    @rpc("GetIamPolicy", iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy)
    async def get_iam_policy(self, request, context):
        project = self._id(request.resource, "resource", "resourcemanager.projects.getIamPolicy")
        return self.policies.get(f"projects/{project}")

    @rpc("SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy)
    async def set_iam_policy(self, request, context):
        project = self._id(request.resource, "resource", "resourcemanager.projects.setIamPolicy")
        return await self.policies.set(f"projects/{project}", request.policy)

    @rpc(
        "TestIamPermissions",
        iam_policy_pb2.TestIamPermissionsRequest,
        iam_policy_pb2.TestIamPermissionsResponse,
    )
    async def test_iam_permissions(self, request, context):
        # No permission is needed to test one's own (Google documents none for it); a
        # project's permissions are any that its resources can hold.
        key = request.resource.split("/")[-1]
        project = self._ids.get(key, key) if NUMBER.match(key) else self._remember(key)
        return iam_policy_pb2.TestIamPermissionsResponse(
            permissions=truthful(
                request.permissions, set(authz.known_permissions()), f"projects/{project}"
            )
        )

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(SERVICE, self)
