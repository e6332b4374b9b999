"""``google.devtools.artifactregistry.v1.ArtifactRegistry``: the repositories IAM grants name.

localcloud serves the part of the Artifact Registry API that grants and deployments need
(https://cloud.google.com/artifact-registry/docs/reference/rpc/google.devtools.artifactregistry.v1):
CreateRepository (a long-running operation, done at once), GetRepository,
ListRepositories, DeleteRepository, and a repository's GetIamPolicy / SetIamPolicy /
TestIamPermissions. Docker repositories in standard mode only; the images are pushed and
pulled through the registry front (``localcloud/registry/front.py``), which checks
``artifactregistry.repositories.uploadArtifacts`` / ``downloadArtifacts`` on the repository.

Each method needs the permission Google documents for it
(https://cloud.google.com/artifact-registry/docs/access-control#permissions):
``artifactregistry.repositories.create/get/list/delete/getIamPolicy/setIamPolicy``, checked
before the handler from ``core/permissions.json`` like every other method's.
"""

from __future__ import annotations

import re
from typing import Any

import grpc
from google.cloud.artifactregistry_v1 import types
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, timestamp_pb2

from localcloud.artifactregistry.store import RepositoryPb, RepositoryStore
from localcloud.core.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from localcloud.core.iam import PolicyStore, truthful
from localcloud.core.names import parse_parent
from localcloud.core.paging import page
from localcloud.core.wire import handler_for, rpc
from localcloud.operations.store import OperationStore
from localcloud.registry.names import MULTI_REGIONS, REGION_RE, REPOSITORY_RE

SERVICE = "google.devtools.artifactregistry.v1.ArtifactRegistry"
PERMISSIONS = {
    f"artifactregistry.repositories.{verb}"
    for verb in (
        "get",
        "update",
        "delete",
        "downloadArtifacts",
        "uploadArtifacts",
        "deleteArtifacts",
        "getIamPolicy",
        "setIamPolicy",
    )
} | {"artifactregistry.versions.delete", "artifactregistry.tags.delete"}
_NAME = re.compile(r"projects/([^/]+)/locations/([^/]+)/repositories/([^/]+)")
Format = types.Repository.Format
Mode = types.Repository.Mode
# Google's answer for a repository that is not there (or that the caller may not see).
NOT_FOUND = "Requested entity was not found."


def _location(location: str) -> str:
    """A region or a multi-region Artifact Registry has
    (https://cloud.google.com/artifact-registry/docs/repositories/repo-locations)."""
    if location not in MULTI_REGIONS and not REGION_RE.fullmatch(location):
        raise InvalidArgument(
            f"Invalid location {location!r}: expected a region (us-central1) or a "
            "multi-region (us, europe, asia)"
        )
    return location


def parse_name(name: str) -> tuple[str, str, str]:
    match = _NAME.fullmatch(name)
    if match is None:
        raise InvalidArgument(
            f"Invalid repository name {name!r}: expected "
            "projects/PROJECT/locations/LOCATION/repositories/REPOSITORY"
        )
    return match.group(1), match.group(2), match.group(3)


class RepositoriesService:
    SERVICE = SERVICE

    def __init__(
        self, store: RepositoryStore, operations: OperationStore, policies: PolicyStore
    ) -> None:
        self.store = store
        self.operations = operations
        self.policies = policies

    def _existing(self, name: str) -> Any:
        parse_name(name)
        found = self.store.get(name)
        if found is None:
            raise NotFound(f"{NOT_FOUND} (repository {name})")
        return found

    @rpc("CreateRepository", types.CreateRepositoryRequest, operations_pb2.Operation)
    async def create_repository(self, request, context):
        project, location = parse_parent(request.parent)
        _location(location)
        repository_id = request.repository_id
        if not REPOSITORY_RE.fullmatch(repository_id):
            raise InvalidArgument(
                f"repository_id {repository_id!r} is not valid: lowercase letters, digits and "
                "hyphens, starting with a letter and ending with a letter or digit, at most 63"
            )
        wanted = request.repository
        if wanted.format_ == Format.FORMAT_UNSPECIFIED:
            raise InvalidArgument("repository.format is required (DOCKER)")
        if wanted.format_ != Format.DOCKER:
            raise Unimplemented(
                f"repository.format {Format(wanted.format_).name}: localcloud serves DOCKER "
                "repositories only"
            )
        if wanted.mode not in (Mode.MODE_UNSPECIFIED, Mode.STANDARD_REPOSITORY):
            raise Unimplemented(
                f"repository.mode {Mode(wanted.mode).name}: localcloud serves standard "
                "repositories only"
            )
        name = f"{request.parent}/repositories/{repository_id}"
        if self.store.get(name) is not None:
            raise AlreadyExists(f"the repository already exists (repository {name})")
        repository = RepositoryPb()
        repository.CopyFrom(wanted)
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        repository.name = name
        repository.mode = Mode.STANDARD_REPOSITORY
        repository.create_time.CopyFrom(now)
        repository.update_time.CopyFrom(now)
        repository.registry_uri = f"{location}-docker.pkg.dev/{project}/{repository_id}"
        repository.size_bytes = 0
        await self.store.put(repository)
        metadata = types.OperationMetadata.pb()()
        return await self.operations.create(request.parent, metadata, response=repository)

    @rpc("GetRepository", types.GetRepositoryRequest, types.Repository)
    async def get_repository(self, request, context):
        parse_name(request.name)
        return self._existing(request.name)

    @rpc("ListRepositories", types.ListRepositoriesRequest, types.ListRepositoriesResponse)
    async def list_repositories(self, request, context):
        parse_parent(request.parent)
        items, token = page(
            self.store.in_location(request.parent), request.page_size, request.page_token
        )
        return types.ListRepositoriesResponse.pb()(repositories=items, next_page_token=token)

    @rpc("DeleteRepository", types.DeleteRepositoryRequest, operations_pb2.Operation)
    async def delete_repository(self, request, context):
        parse_name(request.name)
        self._existing(request.name)
        await self.store.delete(request.name)
        await self.policies.forget(request.name)
        parent = request.name.rsplit("/repositories/", 1)[0]
        metadata = types.OperationMetadata.pb()()
        return await self.operations.create(parent, metadata, response=empty_pb2.Empty())

    @rpc("GetIamPolicy", iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy)
    async def get_iam_policy(self, request, context):
        parse_name(request.resource)
        self._existing(request.resource)
        return self.policies.get(request.resource)

    @rpc("SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy)
    async def set_iam_policy(self, request, context):
        parse_name(request.resource)
        self._existing(request.resource)
        return await self.policies.set(request.resource, request.policy)

    @rpc(
        "TestIamPermissions",
        iam_policy_pb2.TestIamPermissionsRequest,
        iam_policy_pb2.TestIamPermissionsResponse,
    )
    async def test_iam_permissions(self, request, context):
        self._existing(request.resource)
        return iam_policy_pb2.TestIamPermissionsResponse(
            permissions=truthful(request.permissions, PERMISSIONS, request.resource)
        )

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(SERVICE, self)
