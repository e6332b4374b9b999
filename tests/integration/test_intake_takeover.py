"""Intake taking over a stale claim finds the execution its first attempt started.

An attempt that claims a deployment, starts the workflow and dies before recording the
execution leaves a claim in state ``claimed``; a later delivery takes the claim over and
must not start a second execution. It looks the first one up by the label intake gives
every execution, with a ListExecutions filter: ListExecutions returns the BASIC view by
default, and BASIC carries no labels on Google Cloud (nor on localcloud), so a lookup that
lists and compares labels never finds it.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from google.cloud.workflows import executions_v1
from google.cloud.workflows_v1 import types as wf

from localcloud.testing import zip_entries
from orchestrator import intake
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings
from orchestrator.manifest import Source, deployment_id
from orchestrator.records import claim_name
from orchestrator.step import Context

PROJECT = "local-project"
SLEEPER = """
main:
  params: [args]
  steps:
    - nap:
        call: sys.sleep
        args:
          seconds: 3600
"""


@pytest.fixture
def ctx(localcloud):
    """A context whose settings name a fresh workflow, sources bucket and status topic."""
    clients = Clients(Environment.from_env(localcloud.env))
    suffix = uuid.uuid4().hex[:8]
    base = Settings.defaults(PROJECT)
    settings = dataclasses.replace(
        base,
        workflow=f"takeover-{suffix}",
        sources_bucket=f"takeover-{suffix}",
        records_bucket=f"takeover-rec-{suffix}",
        status_topic=f"takeover-status-{suffix}",
    )
    workflow = clients.workflows.create_workflow(
        parent=settings.location_path,
        workflow_id=settings.workflow,
        workflow=wf.Workflow(source_contents=SLEEPER),
    ).result(timeout=30)
    clients.storage.create_bucket(settings.sources_bucket)
    clients.storage.create_bucket(settings.records_bucket)
    clients.publisher.create_topic(name=settings.topic_path(settings.status_topic))
    context = Context(settings, factory=clients)
    yield context
    for execution in clients.executions.list_executions(parent=workflow.name):
        if execution.state == executions_v1.Execution.State.ACTIVE:
            clients.executions.cancel_execution(name=execution.name)
    clients.workflows.delete_workflow(name=workflow.name).result(timeout=30)


def _upload(ctx: Context, name: str) -> Source:
    blob = ctx.clients.storage.bucket(ctx.settings.sources_bucket).blob(name)
    blob.upload_from_string(zip_entries([("main.py", b"def hello(request):\n    return 'hi'\n")]))
    return Source(ctx.settings.sources_bucket, name, int(blob.generation))


def _start(ctx: Context, dep_id: str) -> str:
    """What a first attempt did before it died: start the workflow, labelled."""
    return ctx.clients.executions.create_execution(
        parent=ctx.settings.workflow_path,
        execution={"argument": "{}", "labels": {intake.EXECUTION_LABEL: dep_id}},
    ).name


def _labelled(ctx: Context, dep_id: str) -> list[str]:
    request = {
        "parent": ctx.settings.workflow_path,
        "filter": f'labels.{intake.EXECUTION_LABEL}="{dep_id}"',
    }
    return [e.name for e in ctx.clients.executions.list_executions(request=request)]


def test_a_taken_over_claim_resumes_the_execution_already_started(ctx):
    source = _upload(ctx, "hello.zip")
    dep_id = deployment_id(source.bucket, source.object, source.generation or 0)
    started = _start(ctx, dep_id)
    # Later deployments' executions, newer than the one sought.
    for n in range(3):
        _start(ctx, deployment_id(source.bucket, f"other-{n}.zip", 1))
    stale = {
        "deployment_id": dep_id,
        "service": "hello",
        "source": source.uri(),
        "execution": None,
        "state": "claimed",
        "error": None,
        "created": "2000-01-01T00:00:00.000Z",
    }
    assert ctx.records.create(claim_name(dep_id), stale) is not None

    execution = intake.accept(source, dep_id, {}, "object metadata", ctx)

    assert execution == started
    assert _labelled(ctx, dep_id) == [started], "a second execution was started"
    claim, _generation = ctx.records.read(claim_name(dep_id))
    assert (claim["state"], claim["execution"]) == ("accepted", started)


def test_a_taken_over_claim_with_nothing_started_starts_one_execution(ctx):
    source = _upload(ctx, "hello.zip")
    dep_id = deployment_id(source.bucket, source.object, source.generation or 0)
    _start(ctx, deployment_id(source.bucket, "other.zip", 1))
    stale = {
        "deployment_id": dep_id,
        "service": "hello",
        "source": source.uri(),
        "execution": None,
        "state": "claimed",
        "error": None,
        "created": "2000-01-01T00:00:00.000Z",
    }
    assert ctx.records.create(claim_name(dep_id), stale) is not None

    execution = intake.accept(source, dep_id, {}, "object metadata", ctx)

    assert execution is not None
    assert _labelled(ctx, dep_id) == [execution]
