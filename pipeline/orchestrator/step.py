"""What every pipeline step shares: its request, its status events, its saved result.

The deploy workflow POSTs ``{"deployment": {...}, "outputs": {step: result}}`` to each
step function. A step answers 200 with ``{"ok": true, "result": {...}}``, or 200 with
``{"ok": false, "error": {"code", "message"}, "details": {...}}`` for a failure retrying
cannot fix (a broken build, an invalid service); anything else (a 5xx, a dropped
connection) is transient and the workflow retries it. A step's finished result is saved
under the deployment's records, so a retried call returns it instead of redoing the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn

from google.api_core import exceptions

from orchestrator import clients
from orchestrator.config import Settings
from orchestrator.manifest import Manifest, resolve
from orchestrator.records import Records
from orchestrator.status import StatusEvent, StatusPublisher

LOG = logging.getLogger(__name__)


class StepFailed(Exception):
    """A failure the workflow must not retry; the message says what to fix."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


class BadStepRequest(StepFailed):
    def __init__(self, message: str) -> None:
        super().__init__("INVALID_REQUEST", message)


@dataclass
class Deployment:
    """The deployment a step works on, as intake handed it to the workflow."""

    deployment_id: str
    service: str
    source: str
    bucket: str
    object: str
    generation: int
    manifest: Manifest
    execution: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_request(cls, body: Any) -> Deployment:
        if not isinstance(body, dict) or not isinstance(body.get("deployment"), dict):
            raise BadStepRequest("the request body must be a JSON object with 'deployment'")
        d = body["deployment"]
        try:
            manifest = resolve(d["manifest"], {}, d["object"])
            return cls(
                deployment_id=d["deployment_id"],
                service=manifest.service,
                source=d["source"],
                bucket=d["bucket"],
                object=d["object"],
                generation=int(d["generation"]),
                manifest=manifest,
                execution=d.get("execution") or "",
                outputs=dict(body.get("outputs") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadStepRequest(f"the deployment in the request is incomplete: {exc}") from None

    def output(self, step: str, key: str) -> Any:
        try:
            return self.outputs[step][key]
        except (KeyError, TypeError):
            raise BadStepRequest(f"the request lacks the {step} step's {key!r}") from None


class Context:
    """Settings, and the clients, records and status publisher of one function process.

    Clients come from the factory on every use (it caches them, and drops them in a forked
    child), so nothing here outlives a fork.
    """

    def __init__(self, settings: Settings | None = None, factory: Any = None) -> None:
        self.settings = settings or Settings.from_env()
        self._factory = factory

    @property
    def clients(self) -> Any:
        return self._factory or clients.default()

    @property
    def records(self) -> Records:
        return Records(self.settings, self.clients.storage)

    @property
    def status(self) -> StatusPublisher:
        return StatusPublisher(
            self.settings.status_topic,
            publisher=self.clients.ordered_publisher,
            project=self.settings.project,
        )

    def publish(
        self,
        deployment: Deployment,
        step: str,
        state: str,
        message: str = "",
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        wait: bool = True,
    ) -> Any:
        """Publish one status event; with ``wait=False``, the handle for ``status.finish``."""
        started = self.status.start(
            StatusEvent(
                deployment_id=deployment.deployment_id,
                service=deployment.service,
                step=step,
                state=state,
                message=message,
                error_code=code,
                details=details or {},
                source_uri=deployment.source,
            )
        )
        return self.status.finish(started) if wait else started

    def execution_active(self, execution: str | None) -> bool:
        """Whether a workflow execution still runs (a lock holder that is gone is stale)."""
        if not execution:
            return False
        from google.cloud.workflows import executions_v1

        try:
            found = self.clients.executions.get_execution(name=execution)
        except exceptions.NotFound:
            return False
        return found.state == executions_v1.Execution.State.ACTIVE


_CONTEXT: Context | None = None


def warm() -> None:
    """Import the API client libraries now, while the instance starts.

    A first call would otherwise pay for importing the GAPIC modules (about a second per
    step function). Only imports: functions-framework loads this module in gunicorn's
    master process and forks the worker after, and gRPC channels or client threads made
    before a fork can hang in the child. Clients are built in the worker, on first use.
    """
    import google.cloud.pubsub_v1
    import google.cloud.storage  # noqa: F401
    from google.cloud import eventarc_v1, functions_v2, run_v2  # noqa: F401
    from google.cloud.devtools import cloudbuild_v1  # noqa: F401
    from google.cloud.workflows import executions_v1  # noqa: F401


def context() -> Context:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = Context()
    return _CONTEXT


# Failures worth retrying: the platform was busy or unreachable, or the call timed out.
# Anything else that escapes a step is a fault no retry fixes, reported as INTERNAL.
TRANSIENT = (
    exceptions.ServerError,
    exceptions.TooManyRequests,
    exceptions.Conflict,
    exceptions.RetryError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def run(
    step: str,
    body: Any,
    work: Callable[[Context, Deployment], dict[str, Any]],
    *,
    announce: str | None = "",
    release_on_failure: bool = True,
    release_on_success: bool = False,
    under_lock: bool = False,
    skip: Callable[[Context, Deployment], dict[str, Any] | None] | None = None,
) -> tuple[dict[str, Any], int]:
    """Run one step for the workflow: events, saved result, and the HTTP answer.

    ``announce`` is the ``running`` event's message; None when ``work`` publishes it
    itself (the build step first waits for the service's lock). A final failure is saved
    like a result, so a retried call (its answer was lost) gives the same failure instead
    of carrying on after the service's lock was released. The last step releases the
    service's lock on success (``release_on_success``) only after its result is saved and
    its ``succeeded`` event is out, so the next deployment of the service never starts
    before this one ends, and a retried call finds the result instead of working again.

    The steps after the build (``under_lock``) work only while their deployment holds the
    lock: a call that finds another deployment holding it (a retry of a call that has
    meanwhile finished, saved and released, or a deployment whose lock was taken over as
    stale) returns the result saved by then, or fails LOCK_LOST, and never deploys this
    deployment's revision or applies its manifest over the next one's.

    A call the step's own account is refused outside ``work`` (reading or saving its records,
    publishing its status events: a grant is missing) is final too: retrying cannot grant
    it, and a 500 would have the workflow retry for a minute before reporting a bare HTTP
    error. The step answers INTERNAL naming the refused permission, and reports and records
    it wherever it still may.

    ``skip`` answers the result of a step this deployment does not need (None when it
    does): it is saved and reported as one ``skipped`` event, with its ``reason``.
    """
    try:
        return _run(
            step,
            body,
            work,
            announce=announce,
            release_on_failure=release_on_failure,
            release_on_success=release_on_success,
            under_lock=under_lock,
            skip=skip,
        )
    except exceptions.Forbidden as exc:  # PermissionDenied (gRPC) is a Forbidden too
        return _refused(step, body, exc, release_on_failure)


def _refused(
    step: str, body: Any, exc: exceptions.Forbidden, release: bool
) -> tuple[dict[str, Any], int]:
    """The final answer of a step whose account was refused a call of its own plumbing."""
    LOG.error("%s: the step's account was refused: %s", step, exc.message)
    ctx = context()
    deployment = Deployment.from_request(body)  # it parsed before anything was called
    error = {"code": "INTERNAL", "message": f"the {step} step failed: {exc.message}"}

    def save() -> None:
        ctx.records.save_step(deployment.deployment_id, step, {"error": error, "details": {}})

    def report() -> None:
        ctx.publish(deployment, step, "failed", error["message"], code=error["code"])

    def unlock() -> None:
        if release:
            ctx.records.release(deployment.service, deployment.deployment_id)

    for attempt in (save, report, unlock):
        try:
            attempt()
        except Exception as also:  # what is refused too is refused: the answer still goes
            LOG.error("%s: %s", step, also)
    return {"ok": False, "error": error}, 200


def _run(
    step: str,
    body: Any,
    work: Callable[[Context, Deployment], dict[str, Any]],
    *,
    announce: str | None,
    release_on_failure: bool,
    release_on_success: bool,
    under_lock: bool,
    skip: Callable[[Context, Deployment], dict[str, Any] | None] | None,
) -> tuple[dict[str, Any], int]:
    ctx = context()
    try:
        deployment = Deployment.from_request(body)
    except StepFailed as failure:
        return {"ok": False, "error": {"code": failure.code, "message": failure.message}}, 200
    check_lock = under_lock or release_on_success
    saved, holder = _saved_and_holder(ctx, deployment, step, check_lock)
    if saved is None and check_lock:
        saved = _unless_lock_lost(ctx, deployment, step, holder)
    if saved is not None and "error" in saved:
        error, details = saved["error"], saved.get("details", {})
        ctx.publish(
            deployment, step, "failed", error["message"], code=error["code"], details=details
        )
        return {"ok": False, "error": error, "details": details}, 200
    if saved is not None:
        LOG.info("%s: %s already done; returning its result", deployment.deployment_id, step)
        state = "skipped" if saved.get("skipped") is True else "succeeded"
        ctx.publish(deployment, step, state, f"{step} already done", details=saved)
        if release_on_success:  # the first call may have died before releasing
            ctx.records.release(deployment.service, deployment.deployment_id)
        return {"ok": True, "result": saved}, 200
    skipped = skip(ctx, deployment) if skip is not None else None
    if skipped is not None:
        ctx.records.save_step(deployment.deployment_id, step, skipped)
        reason = skipped.get("reason", "")
        ctx.publish(deployment, step, "skipped", f"skipped: {reason}", details=skipped)
        return {"ok": True, "result": skipped}, 200
    started = time.monotonic()
    running = None
    try:
        if announce is not None:  # sent while the work starts; waited for before the result
            running = ctx.publish(deployment, step, "running", announce, wait=False)
        try:
            result = work(ctx, deployment)
        except StepFailed:
            raise
        except TRANSIENT:
            raise  # a 500: the workflow retries, and the step resumes from its records
        except Exception as exc:  # a fault in the step itself: retrying repeats it
            LOG.exception("%s of %s failed", step, deployment.deployment_id)
            raise StepFailed(
                "INTERNAL", f"the {step} step failed: {type(exc).__name__}: {exc}"
            ) from exc
    except StepFailed as failure:
        if running is not None:
            ctx.status.finish(running)
        details = {**failure.details, "seconds": round(time.monotonic() - started, 3)}
        error = {"code": failure.code, "message": failure.message}
        ctx.records.save_step(deployment.deployment_id, step, {"error": error, "details": details})
        ctx.publish(deployment, step, "failed", failure.message, code=failure.code, details=details)
        if release_on_failure:
            ctx.records.release(deployment.service, deployment.deployment_id)
        return {"ok": False, "error": error, "details": details}, 200
    result["seconds"] = round(time.monotonic() - started, 3)
    if running is not None:
        ctx.status.finish(running)
    ctx.records.save_step(deployment.deployment_id, step, result)
    ctx.publish(deployment, step, "succeeded", details=result)
    if release_on_success:
        ctx.records.release(deployment.service, deployment.deployment_id)
    return {"ok": True, "result": result}, 200


def _saved_and_holder(
    ctx: Context, deployment: Deployment, step: str, check_lock: bool
) -> tuple[dict[str, Any] | None, str | None]:
    """The step's saved result, and (``check_lock``) who holds the service's lock: two
    reads of the records bucket made at once, since every step after the build needs both
    before it starts (one round trip less between the workflow's call and the work).
    Read in either order they mean the same: a lock seen lost is checked against the
    saved result again (``_unless_lock_lost``)."""
    if not check_lock:
        return ctx.records.step_result(deployment.deployment_id, step), None
    records = ctx.records
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(records.holder, deployment.service)
        saved = records.step_result(deployment.deployment_id, step)
        return saved, holder.result()


def _unless_lock_lost(
    ctx: Context, deployment: Deployment, step: str, holder: str | None
) -> dict[str, Any] | None:
    """None when ``deployment`` holds its service's lock (``holder`` read), so ``step`` may
    work; otherwise what the call answers instead: the result another call of the step
    saved before it released the lock, or a LOCK_LOST failure (not saved: it describes
    this call)."""
    if holder == deployment.deployment_id:
        return None
    saved = ctx.records.step_result(deployment.deployment_id, step)
    if saved is not None:
        return saved
    who = f"deployment {holder} holds it" if holder else "nobody holds it"
    message = (
        f"deployment {deployment.deployment_id} no longer holds the lock of service "
        f"{deployment.service} ({who}), so its {step} step did not run: it would undo what "
        "a newer deployment set up; deploy the source again if it should be the one serving"
    )
    return {"error": {"code": "LOCK_LOST", "message": message}, "details": {}}


def reraise(code: str, what: str, exc: exceptions.GoogleAPICallError) -> NoReturn:
    """Raise StepFailed for an API error a retry cannot fix (4xx but 409/429), else ``exc``."""
    retryable = (exceptions.TooManyRequests, exceptions.Conflict)
    if isinstance(exc, exceptions.ClientError) and not isinstance(exc, retryable):
        raise StepFailed(code, f"{what}: {exc.message or exc}") from None
    raise exc
