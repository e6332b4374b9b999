"""``google.cloud.run.v2`` Services and Revisions: parse, call the controller, return."""

from __future__ import annotations

from typing import Any

import grpc
from google.cloud.run_v2 import types
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2

from localcloud.core.iam import truthful
from localcloud.core.paging import page
from localcloud.core.wire import handler_for, rpc
from localcloud.run import names
from localcloud.run.controller import Controller

RUN_PERMISSIONS = {
    "run.routes.invoke",
    "run.services.get",
    "run.services.update",
    "run.services.delete",
    "run.services.getIamPolicy",
    "run.services.setIamPolicy",
}


class ServicesService:
    SERVICE = "google.cloud.run.v2.Services"

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    @rpc("CreateService", types.CreateServiceRequest, operations_pb2.Operation)
    async def create_service(self, request, context):
        return await self.controller.create(
            request.parent, request.service, request.service_id, request.validate_only
        )

    @rpc("GetService", types.GetServiceRequest, types.Service)
    async def get_service(self, request, context):
        return self.controller.get(request.name)

    @rpc("ListServices", types.ListServicesRequest, types.ListServicesResponse)
    async def list_services(self, request, context):
        items, token = page(
            self.controller.list(request.parent), request.page_size, request.page_token
        )
        return types.ListServicesResponse.pb()(services=items, next_page_token=token)

    @rpc("UpdateService", types.UpdateServiceRequest, operations_pb2.Operation)
    async def update_service(self, request, context):
        return await self.controller.update(
            request.service, request.allow_missing, request.validate_only
        )

    @rpc("DeleteService", types.DeleteServiceRequest, operations_pb2.Operation)
    async def delete_service(self, request, context):
        return await self.controller.delete(request.name, request.etag, request.validate_only)

    @rpc("GetIamPolicy", iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy)
    async def get_iam_policy(self, request, context):
        self.controller.get(request.resource)
        return self.controller.policies.get(request.resource)

    @rpc("SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy)
    async def set_iam_policy(self, request, context):
        self.controller.get(request.resource)
        return await self.controller.policies.set(request.resource, request.policy)

    @rpc(
        "TestIamPermissions",
        iam_policy_pb2.TestIamPermissionsRequest,
        iam_policy_pb2.TestIamPermissionsResponse,
    )
    async def test_iam_permissions(self, request, context):
        self.controller.get(request.resource)
        return iam_policy_pb2.TestIamPermissionsResponse(
            permissions=truthful(request.permissions, RUN_PERMISSIONS, request.resource)
        )

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)


class RevisionsService:
    SERVICE = "google.cloud.run.v2.Revisions"

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    @rpc("GetRevision", types.GetRevisionRequest, types.Revision)
    async def get_revision(self, request, context):
        return self.controller.get_revision(request.name)

    @rpc("ListRevisions", types.ListRevisionsRequest, types.ListRevisionsResponse)
    async def list_revisions(self, request, context):
        names.service(request.parent)
        revs: list[Any] = self.controller.list_revisions(request.parent)
        items, token = page(revs, request.page_size, request.page_token)
        return types.ListRevisionsResponse.pb()(revisions=items, next_page_token=token)

    @rpc("DeleteRevision", types.DeleteRevisionRequest, operations_pb2.Operation)
    async def delete_revision(self, request, context):
        return await self.controller.delete_revision(
            request.name, request.etag, request.validate_only
        )

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)
