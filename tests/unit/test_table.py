"""ProtoTable, the one store of protos every service keeps its resources in.

The table's own contract (put, get, delete, children, reload, a failed write undone,
``after_commit``) on a real SQLite file, and that a data directory written by the stores
it replaced still loads: their tables, created here with the statements those stores
used, are read back by today's stores and have the columns today's stores create.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.cloud.devtools.cloudbuild_v1 import types as build_types
from google.cloud.eventarc_v1 import types as eventarc_types
from google.cloud.run_v2 import types as run_types
from google.cloud.workflows.executions_v1.types import Execution
from google.cloud.workflows_v1.types import Workflow
from google.iam.v1 import policy_pb2
from google.longrunning import operations_pb2
from google.protobuf.message import Message
from google.pubsub_v1.types import Topic

from localcloud.cloudbuild.store import BuildStore
from localcloud.core.db import Database, together
from localcloud.core.iam import PolicyStore
from localcloud.core.table import Column, ProtoTable
from localcloud.eventarc.store import TriggerStore
from localcloud.operations.store import OperationStore
from localcloud.pubsub import store as pubsub_store
from localcloud.run.store import RunStore
from localcloud.workflows.store import WorkflowStore

RevisionPb = run_types.Revision.pb()
WorkflowPb = Workflow.pb()
SERVICE = "projects/p/locations/l/services"


def revisions(db: Database) -> ProtoTable[str, Any]:
    """Cloud Run's revisions: a parent column beside the key."""
    return ProtoTable(
        db,
        "revisions",
        RevisionPb,
        columns=(Column("service", lambda r: r.service or None),),  # empty: NOT NULL fails
        parent="service",
    )


def rev(service: str, n: int, generation: int = 1) -> Any:
    return RevisionPb(
        name=f"{SERVICE}/{service}/revisions/r{n}",
        service=f"{SERVICE}/{service}",
        generation=generation,
    )


def opened(path: Path, *tables: Callable[[Database], Any]) -> tuple[Database, list[Any]]:
    """A database with its tables loaded, then its writer started (reads come first)."""
    db = Database(path)
    loaded = [table(db) for table in tables]
    db.start()
    return db, loaded


def test_put_get_children_delete_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "db"

    async def write() -> None:
        db, [table] = opened(path, revisions)
        for service, n in [("a", 1), ("b", 2), ("a", 3), ("c", 4)]:
            await table.put(rev(service, n))
        await table.put(rev("a", 1, generation=7))  # replaces, keeps its place
        await table.delete(f"{SERVICE}/b/revisions/r2")
        await table.delete(f"{SERVICE}/b/revisions/missing")  # no error
        await db.write(together(table.stage_delete_children(f"{SERVICE}/c")))
        assert [r.name.rsplit("/", 1)[-1] for r in table.children(f"{SERVICE}/a")] == ["r1", "r3"]
        assert table.children(f"{SERVICE}/b") == table.children(f"{SERVICE}/c") == []
        db.close()

    asyncio.run(write())
    db = Database(path)
    table = revisions(db)
    assert sorted(table) == [f"{SERVICE}/a/revisions/r1", f"{SERVICE}/a/revisions/r3"]
    assert table[f"{SERVICE}/a/revisions/r1"].generation == 7
    assert f"{SERVICE}/b/revisions/r2" not in table and len(table) == 2
    assert [r.name for r in table.children(f"{SERVICE}/a")] == sorted(table)
    indexes = {row[1] for row in db.query("PRAGMA index_list(revisions)")}
    assert "revisions_by_service" in indexes
    db.close()


def test_a_composite_key_and_a_key_the_message_does_not_carry(tmp_path: Path) -> None:
    path = tmp_path / "db"

    def tables(db: Database) -> tuple[ProtoTable, ProtoTable]:
        by_revision = WorkflowStore(db).revisions  # keyed by (workflow, revision id)
        policies: ProtoTable[str, policy_pb2.Policy] = ProtoTable(
            db, "policies", policy_pb2.Policy, key="resource", key_of=None
        )
        return by_revision, policies

    async def write() -> None:
        db, [(by_revision, policies)] = opened(path, tables)
        for revision in ("000001-abc", "000002-def"):
            await by_revision.put(WorkflowPb(name="w", revision_id=revision))
        await by_revision.put(WorkflowPb(name="other", revision_id="000001-abc"))
        await policies.put(policy_pb2.Policy(version=3), key="topics/t")
        with pytest.raises(TypeError, match="pass key="):
            await policies.put(policy_pb2.Policy())
        db.close()

    asyncio.run(write())
    by_revision, policies = tables(Database(path))
    assert sorted(by_revision) == [
        ("other", "000001-abc"),
        ("w", "000001-abc"),
        ("w", "000002-def"),
    ]
    assert [w.revision_id for w in by_revision.children("w")] == ["000001-abc", "000002-def"]
    assert policies["topics/t"].version == 3


def test_a_failed_write_leaves_memory_as_it_was(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, [table] = opened(tmp_path / "db", revisions)
        kept = rev("a", 1)
        await table.put(kept)
        orphan = RevisionPb(name=kept.name)  # no service: the NOT NULL column refuses it
        with pytest.raises(sqlite3.IntegrityError):
            await table.put(orphan)
        assert table[kept.name] is kept
        assert table.children(f"{SERVICE}/a") == [kept]
        with pytest.raises(sqlite3.IntegrityError):
            await table.put(RevisionPb(name="new"))
        assert "new" not in table
        db.close()

    asyncio.run(scenario())


def test_after_commit_shows_the_old_value_until_the_row_is_committed(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, [table] = opened(tmp_path / "db", revisions)
        first = rev("a", 1)
        await table.put(first)
        second = rev("a", 1, generation=2)
        pending = asyncio.get_running_loop().create_task(table.put(second, after_commit=True))
        await asyncio.sleep(0)  # the write is queued, not yet answered
        assert table[first.name] is first
        await pending
        assert table[first.name] is second
        db.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("spec", [{"parent": "elsewhere"}, {"key": "name; DROP TABLE t"}])
def test_a_table_refuses_names_it_would_put_into_sql_unchecked(tmp_path: Path, spec: dict) -> None:
    with pytest.raises(ValueError):
        ProtoTable(Database(tmp_path / "db"), "t", RevisionPb, **spec)


# -- a data directory from before ProtoTable ------------------------------------------------
# Each case: the table's columns as the store that wrote it created them, the row's values
# before its body (the message), today's store of that table and how it finds the message.
Case = tuple[str, tuple, Callable[[Database], Any], Callable[[Any], Any], Message]
BUILD = build_types.Build.pb()(id="b1", project_id="p", name="projects/p/builds/b1")
TRIGGER = eventarc_types.Trigger.pb()(name="projects/p/locations/l/triggers/t")
SERVICE_PB = run_types.Service.pb()(name=f"{SERVICE}/s")
REVISION = RevisionPb(name=f"{SERVICE}/s/revisions/s-1", service=f"{SERVICE}/s")
WORKFLOW = WorkflowPb(name="projects/p/locations/l/workflows/w", revision_id="000001-abc")
EXECUTION = Execution.pb()(name=f"{WORKFLOW.name}/executions/e1")
OPERATION = operations_pb2.Operation(name="projects/p/locations/l/operations/o1", done=True)
POLICY = policy_pb2.Policy(version=1, etag=b"e")
TOPIC = Topic.pb()(name="projects/p/topics/t")


def by_name(store: Callable[[Database], Any], table: str, message: Any) -> Case:
    """A table of (name, body), as most were."""
    columns = "name TEXT PRIMARY KEY, body BLOB NOT NULL"
    return columns, (message.name,), store, lambda s: getattr(s, table)[message.name], message


LEGACY: dict[str, Case] = {
    "builds": (
        "id TEXT PRIMARY KEY, project TEXT NOT NULL, created REAL NOT NULL, body BLOB NOT NULL",
        ("b1", "p", 1.5),
        BuildStore,
        lambda s: s.list("p")[0],
        BUILD,
    ),
    "eventarc_triggers": by_name(TriggerStore, "triggers", TRIGGER),
    "run_services": by_name(RunStore, "services", SERVICE_PB),
    "run_revisions": (
        "name TEXT PRIMARY KEY, service TEXT NOT NULL, body BLOB NOT NULL",
        (REVISION.name, REVISION.service),
        RunStore,
        lambda s: s.revisions_of(REVISION.service)[0],
        REVISION,
    ),
    "workflows": by_name(WorkflowStore, "workflows", WORKFLOW),
    "workflow_revisions": (
        "workflow TEXT NOT NULL, revision TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (workflow, revision)",
        (WORKFLOW.name, WORKFLOW.revision_id),
        WorkflowStore,
        lambda s: s.revisions[(WORKFLOW.name, WORKFLOW.revision_id)],
        WORKFLOW,
    ),
    "workflow_executions": (
        "name TEXT PRIMARY KEY, workflow TEXT NOT NULL, started REAL NOT NULL, body BLOB NOT NULL",
        (EXECUTION.name, WORKFLOW.name, 2.5),
        WorkflowStore,
        lambda s: s.executions.children(WORKFLOW.name)[0],
        EXECUTION,
    ),
    "operations": (
        "name TEXT PRIMARY KEY, done INTEGER NOT NULL, body BLOB NOT NULL",
        (OPERATION.name, 1),
        OperationStore,
        lambda s: s.get(OPERATION.name),
        OPERATION,
    ),
    "iam_policies": (
        "resource TEXT PRIMARY KEY, body BLOB NOT NULL",
        ("projects/p/topics/t",),
        PolicyStore,
        lambda s: s.get("projects/p/topics/t"),
        POLICY,
    ),
    "pubsub_topics": by_name(pubsub_store.init, "topics", TOPIC),
}


def _columns(db: Database, table: str) -> list[tuple[str, str]]:
    return [(row[1], row[2]) for row in db.query(f"PRAGMA table_info({table})")]


@pytest.mark.parametrize("table", sorted(LEGACY))
def test_a_table_written_before_prototable_loads_and_keeps_its_columns(
    tmp_path: Path, table: str
) -> None:
    columns, values, open_store, find, expected = LEGACY[table]
    old = Database(tmp_path / "old.db")
    old.execute_script(f"CREATE TABLE {table} ({columns});")
    row = (*values, expected.SerializeToString())
    old.query(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    assert find(open_store(old)) == expected
    fresh = Database(tmp_path / "fresh.db")
    open_store(fresh)
    assert _columns(fresh, table) == _columns(old, table)
    old.close()
    fresh.close()
