"""Workflows (with their revisions' sources) and executions, as serialized protos; and
where each running execution is, to resume it after a restart.

A running execution's saved state (``resume.py``: its position and variables, JSON) is a
plain row beside its proto, not a field of it: it is written at each checkpoint, read
only at start, and removed in the same transaction as the execution's final state. It is
written with the execution when it is created, so an ACTIVE execution without one comes
from a localcloud that saved no state.
"""

from __future__ import annotations

from typing import Any

from google.cloud.workflows.executions_v1.types import Execution
from google.cloud.workflows_v1.types import Workflow

from localcloud.core.db import Database, together
from localcloud.core.table import Column, ProtoTable

WorkflowPb = Workflow.pb()
ExecutionPb = Execution.pb()
STATES = (
    "CREATE TABLE IF NOT EXISTS workflow_execution_states "
    "(execution TEXT PRIMARY KEY, state TEXT NOT NULL);"
)


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
        db.execute_script(STATES)
        # Read once, for the engine's start; running executions' states are never read.
        self.saved: dict[str, str] = dict(
            db.query("SELECT execution, state FROM workflow_execution_states")
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

    async def begin_execution(self, execution: Any, state: str) -> None:
        """A new execution and its first saved state, in one transaction."""
        name = execution.name
        await self.db.write(
            together(
                self.executions.stage_put(execution),
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO workflow_execution_states VALUES (?, ?)", (name, state)
                ),
            )
        )

    async def save_state(self, name: str, state: str) -> None:
        await self.db.write(
            lambda c: c.execute(
                "UPDATE workflow_execution_states SET state=? WHERE execution=?", (state, name)
            )
        )

    async def end_execution(self, execution: Any) -> None:
        """An execution's final state, and its saved state gone, in one transaction."""
        name = execution.name
        await self.db.write(
            together(
                self.executions.stage_put(execution),
                lambda c: c.execute(
                    "DELETE FROM workflow_execution_states WHERE execution=?", (name,)
                ),
            )
        )
