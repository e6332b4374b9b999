"""``google.devtools.cloudbuild.v1.CloudBuild``: builds as long-running operations.

Parse and check the request, then hand over to the builder. Names: ``parent`` is
``projects/P/locations/L``; the legacy ``project_id`` form maps to the ``global`` location.
"""

from __future__ import annotations

import re

import grpc
from google.cloud.devtools.cloudbuild_v1 import types
from google.longrunning import operations_pb2

from localcloud.cloudbuild.builder import Builder
from localcloud.cloudbuild.identity import default_account
from localcloud.core.errors import InvalidArgument, Unimplemented
from localcloud.core.names import PARENT, parse_parent
from localcloud.core.paging import page
from localcloud.core.wire import handler_for, rpc

SERVICE = "google.devtools.cloudbuild.v1.CloudBuild"
_NAME = re.compile(PARENT + r"/builds/([A-Za-z0-9\-]+)")
_DEFAULT_ACCOUNT = re.compile(PARENT + "/defaultServiceAccount")
S = types.Build.Status


def _parent(parent: str, project_id: str) -> tuple[str, str]:
    if parent:
        return parse_parent(parent)
    if not project_id:
        raise InvalidArgument("project_id or parent is required")
    return project_id, "global"


def _build_name(name: str, project_id: str, build_id: str) -> tuple[str, str, str]:
    if name:
        match = _NAME.fullmatch(name)
        if match is None:
            raise InvalidArgument(
                f"Invalid build name {name!r}: expected projects/PROJECT/locations/LOCATION/builds/ID"
            )
        return match.group(1), match.group(2), match.group(3)
    if not project_id or not build_id:
        raise InvalidArgument("name, or project_id and id, are required")
    return project_id, "global", build_id


_FILTER_TERM = re.compile(r'\s*(status|build_id|id|tags|images)\s*=\s*"?([^"\s]+)"?\s*')


def _filter(builds: list, text: str) -> list:
    """The filters Cloud Build users write most: ``status="SUCCESS"``, ``build_id=...``,
    ``tags=...``, ``images=...``, joined with AND."""
    if not text.strip():
        return builds
    for term in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.fullmatch(term)
        if match is None:
            raise InvalidArgument(
                f"Unsupported filter term {term!r}: use status=, build_id=, tags= or images=, joined with AND"
            )
        key, value = match.groups()
        if key == "status":
            if value not in S.__members__:
                raise InvalidArgument(f"Unknown build status {value!r} in filter")
            builds = [b for b in builds if b.status == S.__members__[value]]
        elif key in ("build_id", "id"):
            builds = [b for b in builds if b.id == value]
        elif key == "tags":
            builds = [b for b in builds if value in b.tags]
        else:
            builds = [b for b in builds if value in b.images]
    return builds


class CloudBuildService:
    def __init__(self, builder: Builder) -> None:
        self.builder = builder

    @rpc("CreateBuild", types.CreateBuildRequest, operations_pb2.Operation)
    async def create_build(self, request, context):
        project, location = _parent(request.parent, request.project_id)
        return await self.builder.create(project, location, request.build)

    @rpc("GetBuild", types.GetBuildRequest, types.Build)
    async def get_build(self, request, context):
        project, _location, build_id = _build_name(request.name, request.project_id, request.id)
        return self.builder.get(project, build_id)

    @rpc("ListBuilds", types.ListBuildsRequest, types.ListBuildsResponse)
    async def list_builds(self, request, context):
        project, _location = _parent(request.parent, request.project_id)
        builds = _filter(self.builder.store.list(project), request.filter)
        items, token = page(builds, request.page_size, request.page_token)
        return types.ListBuildsResponse.pb()(builds=items, next_page_token=token)

    @rpc("CancelBuild", types.CancelBuildRequest, types.Build)
    async def cancel_build(self, request, context):
        project, _location, build_id = _build_name(request.name, request.project_id, request.id)
        return await self.builder.cancel(project, build_id)

    @rpc("RetryBuild", types.RetryBuildRequest, operations_pb2.Operation)
    async def retry_build(self, request, context):
        project, location, build_id = _build_name(request.name, request.project_id, request.id)
        return await self.builder.retry(project, location, build_id)

    @rpc(
        "GetDefaultServiceAccount",
        types.GetDefaultServiceAccountRequest,
        types.DefaultServiceAccount,
    )
    async def get_default_service_account(self, request, context):
        """The account a build runs as when it names none: localcloud's builds run as the
        Compute Engine default, as new projects' do, answered as
        ``projects/PROJECT/serviceAccounts/EMAIL``
        (https://cloud.google.com/build/docs/api/reference/rest/v1/projects.locations/getDefaultServiceAccount).
        ``gcloud functions deploy`` asks before it deploys."""
        match = _DEFAULT_ACCOUNT.fullmatch(request.name)
        if match is None:
            raise InvalidArgument(
                f"Invalid name {request.name!r}: expected "
                "projects/PROJECT/locations/LOCATION/defaultServiceAccount"
            )
        project = match.group(1)
        return types.DefaultServiceAccount.pb()(
            name=request.name,
            service_account_email=f"projects/{project}/serviceAccounts/{default_account(project)}",
        )

    @rpc("ApproveBuild", types.ApproveBuildRequest, operations_pb2.Operation)
    async def approve_build(self, request, context):
        raise Unimplemented("Build approvals are not supported by localcloud.")

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(SERVICE, self)
