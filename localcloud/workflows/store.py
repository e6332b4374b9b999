"""Workflows (with their revisions' sources) and executions, as serialized protos."""

from __future__ import annotations

from typing import Any

from google.cloud.workflows.executions_v1.types import Execution
from google.cloud.workflows_v1.types import Workflow

from localcloud.core.db import Database

WorkflowPb = Workflow.pb()
ExecutionPb = Execution.pb()
SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS workflow_revisions (
    workflow TEXT NOT NULL, revision TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (workflow, revision)
);
CREATE TABLE IF NOT EXISTS workflow_executions (
    name TEXT PRIMARY KEY, workflow TEXT NOT NULL, started REAL NOT NULL, body BLOB NOT NULL
);
"""


class WorkflowStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.execute_script(SCHEMA)
        self.workflows = {
            w.name: w
            for w in (WorkflowPb.FromString(b) for (b,) in db.query("SELECT body FROM workflows"))
        }
        self.revisions: dict[tuple[str, str], Any] = {
            (w, r): WorkflowPb.FromString(b)
            for w, r, b in db.query("SELECT workflow, revision, body FROM workflow_revisions")
        }
        self.executions = {
            e.name: e
            for e in (
                ExecutionPb.FromString(b)
                for (b,) in db.query("SELECT body FROM workflow_executions ORDER BY started")
            )
        }

    async def put_workflow(self, workflow: Any) -> None:
        self.workflows[workflow.name] = workflow
        self.revisions[(workflow.name, workflow.revision_id)] = workflow
        body = workflow.SerializeToString()
        name, rev = workflow.name, workflow.revision_id

        def write(c) -> None:
            c.execute("INSERT OR REPLACE INTO workflows VALUES (?, ?)", (name, body))
            c.execute(
                "INSERT OR REPLACE INTO workflow_revisions VALUES (?, ?, ?)", (name, rev, body)
            )

        await self.db.write(write)

    async def delete_workflow(self, name: str) -> None:
        self.workflows.pop(name, None)
        for key in [k for k in self.revisions if k[0] == name]:
            del self.revisions[key]

        def write(c) -> None:
            c.execute("DELETE FROM workflows WHERE name=?", (name,))
            c.execute("DELETE FROM workflow_revisions WHERE workflow=?", (name,))

        await self.db.write(write)

    async def put_execution(self, execution: Any) -> None:
        self.executions[execution.name] = execution
        workflow = execution.name.rsplit("/executions/", 1)[0]
        row = (
            execution.name,
            workflow,
            execution.start_time.ToNanoseconds() / 1e9,
            execution.SerializeToString(),
        )
        await self.db.write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO workflow_executions VALUES (?, ?, ?, ?)", row
            )
        )
