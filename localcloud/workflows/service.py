"""``google.cloud.workflows.v1.Workflows`` and ``...executions.v1.Executions`` over gRPC."""

from __future__ import annotations

import grpc
from google.cloud.workflows.executions_v1 import types as ex
from google.cloud.workflows_v1 import types as wf
from google.longrunning import operations_pb2

from localcloud.core.paging import page
from localcloud.core.wire import handler_for, rpc
from localcloud.workflows.engine import WorkflowsEngine

Execution = ex.Execution


class WorkflowsService:
    SERVICE = "google.cloud.workflows.v1.Workflows"

    def __init__(self, engine: WorkflowsEngine) -> None:
        self.engine = engine

    @rpc("CreateWorkflow", wf.CreateWorkflowRequest, operations_pb2.Operation)
    async def create_workflow(self, request, context):
        return await self.engine.create(request.parent, request.workflow, request.workflow_id)

    @rpc("GetWorkflow", wf.GetWorkflowRequest, wf.Workflow)
    async def get_workflow(self, request, context):
        return self.engine.get(request.name, request.revision_id)

    @rpc("ListWorkflows", wf.ListWorkflowsRequest, wf.ListWorkflowsResponse)
    async def list_workflows(self, request, context):
        items, token = page(self.engine.list(request.parent), request.page_size, request.page_token)
        return wf.ListWorkflowsResponse.pb()(workflows=items, next_page_token=token)

    @rpc("UpdateWorkflow", wf.UpdateWorkflowRequest, operations_pb2.Operation)
    async def update_workflow(self, request, context):
        return await self.engine.update(request.workflow, request.update_mask)

    @rpc("DeleteWorkflow", wf.DeleteWorkflowRequest, operations_pb2.Operation)
    async def delete_workflow(self, request, context):
        return await self.engine.delete(request.name)

    @rpc("ListWorkflowRevisions", wf.ListWorkflowRevisionsRequest, wf.ListWorkflowRevisionsResponse)
    async def list_workflow_revisions(self, request, context):
        self.engine.get(request.name)
        revs = self.engine.store.revisions.children(request.name)
        revs.sort(key=lambda w: w.revision_id, reverse=True)
        items, token = page(revs, request.page_size, request.page_token)
        return wf.ListWorkflowRevisionsResponse.pb()(workflows=items, next_page_token=token)

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)


def _view(execution, view: int):
    """The BASIC view leaves out argument and result, as Google's does."""
    if view != ex.ExecutionView.BASIC:
        return execution
    copy = type(execution)()
    copy.CopyFrom(execution)
    copy.ClearField("argument")
    copy.ClearField("result")
    return copy


class ExecutionsService:
    SERVICE = "google.cloud.workflows.executions.v1.Executions"

    def __init__(self, engine: WorkflowsEngine) -> None:
        self.engine = engine

    @rpc("CreateExecution", ex.CreateExecutionRequest, ex.Execution)
    async def create_execution(self, request, context):
        return await self.engine.create_execution(request.parent, request.execution)

    @rpc("GetExecution", ex.GetExecutionRequest, ex.Execution)
    async def get_execution(self, request, context):
        return _view(self.engine.get_execution(request.name), request.view)

    @rpc("ListExecutions", ex.ListExecutionsRequest, ex.ListExecutionsResponse)
    async def list_executions(self, request, context):
        found = [
            _view(e, request.view or ex.ExecutionView.BASIC)
            for e in self.engine.list_executions(request.parent)
        ]
        items, token = page(found, request.page_size, request.page_token)
        return ex.ListExecutionsResponse.pb()(executions=items, next_page_token=token)

    @rpc("CancelExecution", ex.CancelExecutionRequest, ex.Execution)
    async def cancel_execution(self, request, context):
        return await self.engine.cancel_execution(request.name)

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)
