"""Workflows (with their revisions' sources) and executions, as serialized protos."""

from __future__ import annotations

from typing import Any

from google.cloud.workflows.executions_v1.types import Execution
from google.cloud.workflows_v1.types import Workflow

from localcloud.core.db import Database, together
from localcloud.core.table import Column, ProtoTable

WorkflowPb = Workflow.pb()
ExecutionPb = Execution.pb()


def _workflow_of(execution: Any) -> str:
    return execution.name.rsplit("/executions/", 1)[0]


class WorkflowStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.workflows: ProtoTable[str, Any] = ProtoTable(db, "workflows", WorkflowPb)
        # Every revision a workflow had, by (workflow, revision id): GetWorkflow can ask
        # for an older one, and an execution runs the revision it started with.
        self.revisions: ProtoTable[tuple[str, str], Any] = ProtoTable(
            db,
            "workflow_revisions",
            WorkflowPb,
            key=("workflow", "revision"),
            key_of=lambda w: (w.name, w.revision_id),
            parent="workflow",
        )
        self.executions: ProtoTable[str, Any] = ProtoTable(
            db,
            "workflow_executions",
            ExecutionPb,
            columns=(
                Column("workflow", _workflow_of),
                Column("started", lambda e: e.start_time.ToNanoseconds() / 1e9, "REAL"),
            ),
            parent="workflow",
            order_by="started",
        )

    async def put_workflow(self, workflow: Any) -> None:
        """The workflow and its current revision, in one transaction."""
        await self.db.write(
            together(self.workflows.stage_put(workflow), self.revisions.stage_put(workflow))
        )

    async def delete_workflow(self, name: str) -> None:
        """The workflow and every revision, in one transaction; its executions are kept."""
        await self.db.write(
            together(self.workflows.stage_delete(name), self.revisions.stage_delete_children(name))
        )
