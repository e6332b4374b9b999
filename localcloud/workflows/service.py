"""``google.cloud.workflows.v1.Workflows`` and ``...executions.v1.Executions`` over gRPC."""

from __future__ import annotations

import grpc
from google.cloud.workflows.executions_v1 import types as ex
from google.cloud.workflows_v1 import types as wf
from google.longrunning import operations_pb2

from localcloud.core.errors import InvalidArgument
from localcloud.core.listing import (
    DURATION,
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


# What each view returns (https://cloud.google.com/workflows/docs/reference/executions/rest/v1/ExecutionView):
# BASIC "includes only basic metadata about the execution. The following fields are
# returned: name, start_time, end_time, duration, state, and workflow_revision_id";
# FULL "includes all data". No labels, argument, result, error or status in BASIC.
BASIC_FIELDS = ("name", "start_time", "end_time", "duration", "state", "workflow_revision_id")
VIEWS = frozenset(
    int(v)
    for v in (
        ex.ExecutionView.EXECUTION_VIEW_UNSPECIFIED,
        ex.ExecutionView.BASIC,
        ex.ExecutionView.FULL,
    )
)
# ListExecutions: "Max supported value depends on the selected Execution view: it's 1000
# for BASIC and 100 for FULL. The default value used if the field is not specified is 100,
# regardless of the selected view. Values greater than the max value will be coerced down."
# https://cloud.google.com/workflows/docs/reference/executions/rest/v1/projects.locations.workflows.executions/list
PAGE_DEFAULT = 100
PAGE_MAX = {ex.ExecutionView.BASIC: 1000, ex.ExecutionView.FULL: 100}


def _view(execution, view: int):
    """``execution`` as ``view`` shows it: BASIC keeps only its documented fields."""
    if view not in VIEWS:
        raise InvalidArgument(f"Invalid view {view}: use BASIC or FULL")
    if view != ex.ExecutionView.BASIC:
        return execution
    basic = type(execution)()
    for name in BASIC_FIELDS:
        if name in ("state", "name", "workflow_revision_id"):
            setattr(basic, name, getattr(execution, name))
        elif execution.HasField(name):
            getattr(basic, name).CopyFrom(getattr(execution, name))
    return basic


def _nanos(message_field: str):
    def get(execution):
        if not execution.HasField(message_field):
            return None
        return getattr(execution, message_field).ToNanoseconds()

    return get


_STATES = enum_values(Execution.State, skip=("STATE_UNSPECIFIED",))
_id = Field(STRING, lambda e: e.name.rsplit("/", 1)[-1])
_revision = Field(STRING, lambda e: e.workflow_revision_id)
_started = Field(TIMESTAMP, _nanos("start_time"))
# ListExecutions "filter": "The following fields are supported for filtering: executionId,
# state, createTime, startTime, endTime, duration, workflowRevisionId, stepName, and
# label" (AIP-160); "orderBy": executionId, state, createTime, startTime, endTime,
# duration and workflowRevisionId; "By default the ordering is based on descending
# createTime". The client's own proto comments spell executionID and workflowRevisionID.
# localcloud starts an execution when it creates it (nothing is ever QUEUED), so its
# createTime is its startTime. Labels are compared as labels.KEY = "VALUE".
EXECUTION_FIELDS = {
    "executionId": _id,
    "executionID": _id,
    "state": Field(ENUM, lambda e: e.state, enum=_STATES),
    "createTime": _started,
    "startTime": _started,
    "endTime": Field(TIMESTAMP, _nanos("end_time")),
    "duration": Field(DURATION, _nanos("duration")),
    "workflowRevisionId": _revision,
    "workflowRevisionID": _revision,
    "stepName": Field(STRING, lambda e: [s.step for s in e.status.current_steps], many=True),
    "labels": Field(MAP, lambda e: e.labels),
}


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
        view = request.view or ex.ExecutionView.BASIC  # "The API will default to the BASIC view."
        _view(Execution.pb()(), view)  # a bad view is refused before anything else
        keep = compile_filter(request.filter, EXECUTION_FIELDS, "ListExecutions")
        found = [e for e in self.engine.list_executions(request.parent) if keep(e)]
        found = sort(found, request.order_by, EXECUTION_FIELDS, "ListExecutions")
        items, token = page(
            found,
            request.page_size,
            request.page_token,
            default_size=PAGE_DEFAULT,
            max_size=PAGE_MAX[view],
            bound_to=f"{request.filter}\0{request.order_by}\0{view}",
        )
        return ex.ListExecutionsResponse.pb()(
            executions=[_view(e, view) for e in items], next_page_token=token
        )

    @rpc("CancelExecution", ex.CancelExecutionRequest, ex.Execution)
    async def cancel_execution(self, request, context):
        return await self.engine.cancel_execution(request.name)

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)
