"""Deployments whose workflow ended without saying so get their ``done`` from here.

The deploy workflow publishes ``done`` itself, on success and on every failure it catches
(then fails its execution with a map naming the step, ``raise``d by the workflow). An
execution can still end without it: cancelled, timed out, or failed where no workflow
code runs (the ``done`` publish itself failing, an internal error). Such a deployment
holds its service's lock until the next deployment of the service finds the lock stale;
the next deployment then reports it (``done`` ``failed``, naming how the execution ended)
before taking the lock over, so no deployment is left without an end.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from google.api_core import exceptions

from orchestrator.bounds import clip
from orchestrator.records import claim_name
from orchestrator.status import StatusEvent
from orchestrator.step import Context

LOG = logging.getLogger(__name__)


def reported_by_workflow(payload: str) -> bool:
    """Whether a failed execution's error is the map the workflow raises after it
    published ``done`` (``deployment_id``, ``state: failed``, ``step``...)."""
    try:
        error = json.loads(payload)
    except ValueError:
        return False
    return (
        isinstance(error, dict)
        and error.get("state") == "failed"
        and "deployment_id" in error
        and "step" in error
    )


def finish(ctx: Context, holder: dict[str, Any], service: str) -> None:
    """Publish ``done`` ``failed`` for the lock holder ``holder`` if its execution ended
    without the workflow's own ``done``; record it failed. Called before a stale lock is
    taken over."""
    from google.cloud.workflows import executions_v1

    State = executions_v1.Execution.State
    dep_id = str(holder.get("deployment_id") or "")
    if not dep_id:
        return
    found = ctx.records.read(claim_name(dep_id))
    record = found[0] if found else {}
    if record.get("state") == "failed":
        return  # refused at intake, or already reported
    execution = holder.get("execution") or record.get("execution")
    state, error = "missing", ""
    if execution:
        try:
            run = ctx.clients.executions.get_execution(name=execution)
        except exceptions.NotFound:
            run = None
        if run is not None:
            if run.state == State.SUCCEEDED:
                return
            if run.state == State.FAILED and reported_by_workflow(run.error.payload):
                return
            state, error = State(run.state).name, run.error.payload or run.error.context
    code = "WORKFLOW_CANCELLED" if state == "CANCELLED" else "WORKFLOW_FAILED"
    message = clip(
        f"the deployment's workflow execution ended without finishing ({state}"
        + (f": {error}" if error else "")
        + ")",
        1000,
    )
    LOG.warning("deployment %s: %s", dep_id, message)
    ctx.status.publish(
        StatusEvent(
            deployment_id=dep_id,
            service=service,
            step="done",
            state="failed",
            message=message,
            error_code=code,
            details={"execution": execution or "", "execution_state": state},
            source_uri=str(record.get("source") or ""),
        )
    )
    ctx.records.write(
        claim_name(dep_id),
        {**record, "state": "failed", "error": {"code": code, "message": message}},
    )
