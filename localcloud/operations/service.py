"""``google.longrunning.Operations`` over gRPC, for every service's operations."""

from __future__ import annotations

import grpc
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from localcloud.core.errors import InvalidArgument, NotFound
from localcloud.core.wire import handler_for, rpc
from localcloud.operations.store import OperationStore

SERVICE = "google.longrunning.Operations"
MAX_WAIT = 600.0
# Operation metadata's package -> the service whose permissions guard the operation.
OWNERS = (
    ("google.cloud.run.", "run"),
    ("google.cloud.eventarc.", "eventarc"),
    ("google.cloud.workflows.", "workflows"),
    ("google.devtools.cloudbuild.", "cloudbuild"),
    ("google.cloud.functions.", "cloudfunctions"),
)


class OperationsService:
    def __init__(self, store: OperationStore) -> None:
        self.store = store

    def operation_service(self, name: str) -> str | None:
        """The service owning an operation (``run``, ``eventarc``, ``workflows``,
        ``cloudbuild``), read from its metadata's type: its ``*.operations.*`` permission
        is checked (core/permissions.json). None for no such operation."""
        try:
            op = self.store.get(name)
        except NotFound:
            return None
        package = op.metadata.type_url.rpartition("/")[2]
        for prefix, service in OWNERS:
            if package.startswith(prefix):
                return service
        return None

    @rpc("GetOperation", operations_pb2.GetOperationRequest, operations_pb2.Operation)
    async def get_operation(self, request, context):
        return self.store.get(request.name)

    @rpc(
        "ListOperations",
        operations_pb2.ListOperationsRequest,
        operations_pb2.ListOperationsResponse,
    )
    async def list_operations(self, request, context):
        ops = self.store.list(request.name, request.filter)
        start = 0
        if request.page_token:
            try:
                start = int(request.page_token)
            except ValueError:
                raise InvalidArgument(f"Invalid page_token {request.page_token!r}") from None
        size = request.page_size or 100
        page = ops[start : start + size]
        token = str(start + size) if start + size < len(ops) else ""
        return operations_pb2.ListOperationsResponse(operations=page, next_page_token=token)

    @rpc("DeleteOperation", operations_pb2.DeleteOperationRequest, empty_pb2.Empty)
    async def delete_operation(self, request, context):
        await self.store.delete(request.name)
        return empty_pb2.Empty()

    @rpc("CancelOperation", operations_pb2.CancelOperationRequest, empty_pb2.Empty)
    async def cancel_operation(self, request, context):
        await self.store.cancel(request.name)
        return empty_pb2.Empty()

    @rpc("WaitOperation", operations_pb2.WaitOperationRequest, operations_pb2.Operation)
    async def wait_operation(self, request, context):
        timeout = MAX_WAIT
        if request.HasField("timeout"):
            timeout = min(request.timeout.ToTimedelta().total_seconds(), MAX_WAIT)
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining - 0.05, 0))
        return await self.store.wait(request.name, timeout)

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(SERVICE, self)
