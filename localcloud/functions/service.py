"""``google.cloud.functions.v2.FunctionService`` over gRPC: parse, call the engine, return.

Each method needs the permission Google documents for it
(https://cloud.google.com/functions/docs/reference/iam/permissions), checked before the
handler from ``core/permissions.json``; naming a service account the function or its
trigger runs as needs ``iam.serviceAccounts.actAs`` on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.cloud.functions_v2 import types
from google.longrunning import operations_pb2

from localcloud.core.listing import (
    ENUM,
    MAP,
    STRING,
    TIMESTAMP,
    Field,
    compile_filter,
    enum_values,
    sort,
)
from localcloud.core.paging import page
from localcloud.core.wire import handler_for, rpc
from localcloud.functions.engine import Functions

SERVICE = "google.cloud.functions.v2.FunctionService"
Runtime = types.ListRuntimesResponse.Runtime


def _nanos(field: str) -> Callable[[Any], int | None]:
    def read(fn: Any) -> int | None:
        return getattr(fn, field).ToNanoseconds() if fn.HasField(field) else None

    return read


_STATES = enum_values(types.Function.State, skip=("STATE_UNSPECIFIED",))
_ENVIRONMENTS = enum_values(types.Environment, skip=("ENVIRONMENT_UNSPECIFIED",))
# What ListFunctions filters and orders on: the function's own fields (AIP-160; REST
# spells the timestamps in camelCase, gRPC clients in snake_case: both are taken).
FUNCTION_FIELDS = {
    "name": Field(STRING, lambda f: f.name),
    "state": Field(ENUM, lambda f: f.state, enum=_STATES),
    "environment": Field(ENUM, lambda f: f.environment, enum=_ENVIRONMENTS),
    "url": Field(STRING, lambda f: f.url),
    "description": Field(STRING, lambda f: f.description),
    "labels": Field(MAP, lambda f: f.labels),
    "update_time": Field(TIMESTAMP, _nanos("update_time")),
    "updateTime": Field(TIMESTAMP, _nanos("update_time")),
    "create_time": Field(TIMESTAMP, _nanos("create_time")),
    "createTime": Field(TIMESTAMP, _nanos("create_time")),
}
RUNTIME_FIELDS = {
    "name": Field(STRING, lambda r: r.name),
    "display_name": Field(STRING, lambda r: r.display_name),
    "stage": Field(
        ENUM, lambda r: r.stage, enum=enum_values(types.ListRuntimesResponse.RuntimeStage)
    ),
    "environment": Field(ENUM, lambda r: r.environment, enum=_ENVIRONMENTS),
}


class FunctionService:
    SERVICE = SERVICE

    def __init__(self, engine: Functions) -> None:
        self.engine = engine

    @rpc("GetFunction", types.GetFunctionRequest, types.Function)
    async def get_function(self, request, context):
        return self.engine.get(request.name)

    @rpc("ListFunctions", types.ListFunctionsRequest, types.ListFunctionsResponse)
    async def list_functions(self, request, context):
        keep = compile_filter(request.filter, FUNCTION_FIELDS, "ListFunctions")
        found = [f for f in self.engine.list(request.parent) if keep(f)]
        found = sort(found, request.order_by, FUNCTION_FIELDS, "ListFunctions")
        items, token = page(
            found,
            request.page_size,
            request.page_token,
            bound_to=f"{request.parent}\n{request.filter}\n{request.order_by}",
        )
        return types.ListFunctionsResponse.pb()(functions=items, next_page_token=token)

    @rpc("CreateFunction", types.CreateFunctionRequest, operations_pb2.Operation)
    async def create_function(self, request, context):
        return await self.engine.create(request)

    @rpc("UpdateFunction", types.UpdateFunctionRequest, operations_pb2.Operation)
    async def update_function(self, request, context):
        return await self.engine.update(request)

    @rpc("DeleteFunction", types.DeleteFunctionRequest, operations_pb2.Operation)
    async def delete_function(self, request, context):
        return await self.engine.delete(request.name)

    @rpc("GenerateUploadUrl", types.GenerateUploadUrlRequest, types.GenerateUploadUrlResponse)
    async def generate_upload_url(self, request, context):
        return await self.engine.upload_url(request.parent)

    @rpc("GenerateDownloadUrl", types.GenerateDownloadUrlRequest, types.GenerateDownloadUrlResponse)
    async def generate_download_url(self, request, context):
        return self.engine.download_url(request.name)

    @rpc("ListRuntimes", types.ListRuntimesRequest, types.ListRuntimesResponse)
    async def list_runtimes(self, request, context):
        RuntimePb = Runtime.pb()
        offered = [
            RuntimePb(
                name=r.name,
                display_name=r.display_name,
                stage=types.ListRuntimesResponse.RuntimeStage.GA,
                warnings=list(r.warnings),
                environment=types.Environment.GEN_2,
            )
            for r in self.engine.runtimes()
        ]
        keep = compile_filter(request.filter, RUNTIME_FIELDS, "ListRuntimes")
        return types.ListRuntimesResponse.pb()(runtimes=[r for r in offered if keep(r)])

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)
