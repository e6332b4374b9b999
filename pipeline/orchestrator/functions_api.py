"""``api: functions``: the deployment goes through the Cloud Functions API v2.

One create-or-update of the function named after the service starts one long-running
operation; the workflow's steps follow its stages and report them as the run path's
steps, so a subscriber reads the same stream whichever API deployed:

- ``build`` (the service's lock already held) starts the operation and waits for its
  BUILD stage (ARTIFACT_REGISTRY comes first and counts as part of it);
- ``push`` is reported ``skipped``: Cloud Functions keeps the image in its own
  ``gcf-artifacts`` repository and deploys it from there;
- ``deploy`` waits for the SERVICE stage and sets the invoker policy;
- ``bind_triggers`` waits for the TRIGGER stage and the end of the operation, then
  releases the lock (``step.run``), so the next deployment's update is never ABORTED.

The operation's name is the build step's result (and, before that, a record of the
deployment), so a retried step waits on the same operation instead of starting another.
A stage that fails fails its step with the run path's code (BUILD_FAILED with the build's
log tail, DEPLOY_FAILED, TRIGGER_FAILED). Cloud Functions keeps the previous revision
serving when an update fails (https://cloud.google.com/functions/docs/troubleshooting),
and the failure says which revision that is.

The function: ``build_config`` with the manifest's runtime (``python3XX`` or ``nodejsNN``,
which picks both language and version: Cloud Functions takes no build variables for them;
a Node.js source always has one, ``nodejs22`` by default) and entry point, the source as
``storage_source`` (the uploaded object, by generation: Cloud Functions copies it to its
``gcf-v2-sources`` bucket, https://cloud.google.com/functions/docs/reference/rest/v2/projects.locations.functions#StorageSource)
and the pipeline's build account; ``service_config`` with the manifest's env, scaling,
concurrency and timeout, Cloud Run's defaults of one CPU and 512 MiB (what the run path's
services get, and concurrency above 1 needs a whole CPU:
https://cloud.google.com/functions/docs/configuring/concurrency), the runtime account and
all ingress; an ``event_trigger`` for the manifest's trigger (at most one: the manifest
refuses more), as the trigger account, retried like the run path's Eventarc triggers.
Public functions get ``roles/run.invoker`` for ``allUsers`` on their Cloud Run service, as
``gcloud functions deploy --allow-unauthenticated`` grants it for a Cloud Functions
(2nd gen) function: an IAM policy outlives the Functions API's updates of the service,
where the service's own ``invoker_iam_disabled`` is the Functions API's to rewrite.

One service, one API: a Cloud Run service deployed by ``api: run`` is refused to
``api: functions`` and the reverse (``API_CONFLICT``), before anything is built. Google
refuses the first itself (a service made with the Cloud Run Admin API is managed only
through it) and allows the second (a Functions API function's service may be changed with
the Cloud Run Admin API: https://cloud.google.com/run/docs/functions/comparison), but the
function would keep its own trigger and configuration and undo the Cloud Run deploy on its
next update, so the orchestrator refuses it too: delete the function first.
"""

from __future__ import annotations

import contextlib
from typing import Any

from google.api_core import exceptions

from orchestrator import triggers as triggers_step
from orchestrator.build import BUILD_TIMEOUT, LOG_TAIL_LINES, QUEUE_MARGIN, log_tail
from orchestrator.deploy import DEPLOYMENT_LABEL, MANAGED_LABEL, set_invoker
from orchestrator.records import deployment_prefix
from orchestrator.step import Context, Deployment, StepFailed, reraise

# What Cloud Functions marks its services with (and localcloud, like Google, sets).
FUNCTIONS_LABEL = ("goog-managed-by", "cloudfunctions")
MEMORY = "512Mi"
CPU = "1"
STAGE_CODES = {
    "ARTIFACT_REGISTRY": "BUILD_FAILED",
    "BUILD": "BUILD_FAILED",
    "SERVICE": "DEPLOY_FAILED",
    "TRIGGER": "TRIGGER_FAILED",
}
STEP_STAGES = {"build": "BUILD", "deploy": "SERVICE", "bind_triggers": "TRIGGER"}
DEPLOY_TIMEOUT = 900
TRIGGER_TIMEOUT = 300


def function_name(ctx: Context, service: str) -> str:
    return f"{ctx.settings.location_path}/functions/{service}"


def operation_record(deployment_id: str) -> str:
    """Where the build step notes the operation it started, before it waits on it."""
    return f"{deployment_prefix(deployment_id)}function-operation.json"


def managed_by_functions(service: Any) -> bool:
    key, value = FUNCTIONS_LABEL
    return service.labels.get(key) == value


def check_api(ctx: Context, deployment: Deployment) -> Any:
    """Refuse a deployment whose service another API manages (API_CONFLICT); the service
    as it is (None when there is none yet)."""
    name = ctx.settings.service_path(deployment.service)
    try:
        existing = ctx.clients.run_services.get_service(name=name)
    except exceptions.NotFound:
        return None
    by_functions = managed_by_functions(existing)
    if deployment.manifest.api == "functions" and not by_functions:
        raise StepFailed(
            "API_CONFLICT",
            f"service {deployment.service} was deployed through the Cloud Run Admin API "
            "(api: run); a function of the Cloud Functions API cannot take it over. Deploy "
            "it with api: run, or use another service name",
        )
    if deployment.manifest.api == "run" and by_functions:
        raise StepFailed(
            "API_CONFLICT",
            f"service {deployment.service} is the service of a Cloud Functions function "
            "(api: functions); deploying it through the Cloud Run Admin API would leave the "
            "function's trigger and configuration to undo it on its next update. Deploy it "
            f"with api: functions, or delete the function first (gcloud functions delete "
            f"{deployment.service} --region {ctx.settings.region})",
        )
    return existing


def function(ctx: Context, deployment: Deployment, trigger_region: str | None) -> Any:
    """The Function the manifest describes."""
    from google.cloud import functions_v2

    m = deployment.manifest
    settings = ctx.settings
    fn = functions_v2.Function(
        name=function_name(ctx, deployment.service),
        description=f"deployed by the orchestrator from {deployment.source}"[:1000],
        labels={DEPLOYMENT_LABEL: deployment.deployment_id, MANAGED_LABEL: "orchestrator"},
        build_config=functions_v2.BuildConfig(
            runtime=m.runtime or "",
            entry_point=m.entry_point,
            source=functions_v2.Source(
                storage_source=functions_v2.StorageSource(
                    bucket=deployment.bucket,
                    object_=deployment.object,
                    generation=deployment.generation,
                )
            ),
            service_account=(
                f"projects/{settings.project}/serviceAccounts/{settings.build_service_account}"
            ),
        ),
        service_config=functions_v2.ServiceConfig(
            environment_variables=dict(m.env),
            min_instance_count=m.min_instances,
            max_instance_count=m.max_instances,
            max_instance_request_concurrency=m.concurrency,
            available_memory=MEMORY,
            available_cpu=CPU,
            timeout_seconds=m.timeout_seconds,
            service_account_email=settings.runtime_service_account,
            ingress_settings=functions_v2.ServiceConfig.IngressSettings.ALLOW_ALL,
            all_traffic_on_latest_revision=True,
        ),
    )
    if m.triggers:
        trigger = m.triggers[0]
        spec = functions_v2.EventTrigger(
            event_type=trigger.event_type,
            trigger_region=trigger_region or settings.region,
            service_account_email=settings.trigger_service_account,
            retry_policy=functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_RETRY,
        )
        if trigger.kind == "pubsub":
            spec.pubsub_topic = settings.topic_path(trigger.topic or "")
        else:
            spec.event_filters = [
                functions_v2.EventFilter(attribute="bucket", value=trigger.bucket or "")
            ]
        fn.event_trigger = spec
    return fn


# --------------------------------------------------------------------------- operation


def _start(ctx: Context, deployment: Deployment) -> str:
    """Create or update the function; the operation's name."""
    region = None
    if deployment.manifest.triggers:  # the topic made, the bucket checked, as the run path does
        region = triggers_step._location(ctx, deployment.manifest.triggers[0], {}, "build")
    wanted = function(ctx, deployment, region)
    client = ctx.clients.functions
    try:
        client.get_function(name=wanted.name)
        exists = True
    except exceptions.NotFound:
        exists = False
    try:
        if exists:  # no mask: every field is replaced, a dropped trigger deleted
            operation = client.update_function(function=wanted)
        else:
            operation = client.create_function(
                parent=ctx.settings.location_path,
                function=wanted,
                function_id=deployment.service,
            )
    except exceptions.GoogleAPICallError as exc:
        reraise("DEPLOY_FAILED", f"Cloud Functions refused function {deployment.service}", exc)
    return str(operation.operation.name)


class _Pending(Exception):
    """The stage waited for has not finished (the poll policy retries on this alone)."""


def wait(ctx: Context, operation: str, stage: str, deadline: float, *, done: bool = False) -> Any:
    """Poll ``operation`` until ``stage`` is COMPLETE (and, with ``done``, the operation
    ended) or the operation ended without it; (operation, metadata)."""
    from google.api_core import retry
    from google.cloud import functions_v2

    complete = functions_v2.Stage.State.COMPLETE
    seen: list[Any] = []

    def poll() -> Any:
        op = ctx.clients.functions.get_operation(request={"name": operation})
        metadata = functions_v2.OperationMetadata.deserialize(op.metadata.value)
        seen[:] = [metadata]
        if op.done:
            return op, metadata
        if not done and _stage(metadata, stage).state == complete:
            return op, metadata
        raise _Pending()

    policy = ctx.clients.env.polling(deadline).with_predicate(retry.if_exception_type(_Pending))
    try:
        return policy(poll)()
    except exceptions.RetryError:
        where = seen[0].status_detail if seen else "no word from it"
        raise StepFailed(
            "TIMEOUT",
            f"operation {operation} did not reach its {stage} stage's end within "
            f"{deadline:g}s ({where})",
            {"operation": operation},
        ) from None


def _stage(metadata: Any, stage: str) -> Any:
    from google.cloud import functions_v2

    wanted = getattr(functions_v2.Stage.Name, stage)
    found = next((s for s in metadata.stages if s.name == wanted), None)
    return found if found is not None else functions_v2.Stage(name=wanted)


def failed_stage(metadata: Any) -> str | None:
    """The stage the operation failed in: the one with an error message, else the first
    one still in progress."""
    from google.cloud import functions_v2

    error = functions_v2.StateMessage.Severity.ERROR
    in_progress = functions_v2.Stage.State.IN_PROGRESS
    for stage in metadata.stages:
        if any(m.severity == error for m in stage.state_messages):
            return functions_v2.Stage.Name(stage.name).name
    for stage in metadata.stages:
        if stage.state == in_progress:
            return functions_v2.Stage.Name(stage.name).name
    return None


def _check(op: Any, metadata: Any, stage: str, step: str) -> None:
    """Fail ``step`` when the operation ended in error before ``stage`` completed."""
    from google.cloud import functions_v2

    if not op.done or not op.HasField("error"):
        return
    if (
        _stage(metadata, stage).state == functions_v2.Stage.State.COMPLETE
        and step != "bind_triggers"
    ):
        return  # a later stage failed: the step that follows it says so
    where = failed_stage(metadata) or stage
    code = STAGE_CODES.get(where, STAGE_CODES[stage])
    raise StepFailed(
        code,
        f"Cloud Functions' {where} stage failed: {op.error.message}",
        {"operation": op.name, "stage": where},
    )


# --------------------------------------------------------------------------- the steps


def build(ctx: Context, deployment: Deployment, existing: Any) -> dict[str, Any]:
    """The build step (lock held): start the operation (once) and wait for its build."""
    record = operation_record(deployment.deployment_id)
    found = ctx.records.read(record)
    if found is not None:
        operation, previous = found[0]["operation"], found[0].get("previous_revision", "")
    else:
        previous = existing.latest_ready_revision.rsplit("/", 1)[-1] if existing else ""
        operation = _start(ctx, deployment)
        ctx.records.write(record, {"operation": operation, "previous_revision": previous})
    op, metadata = wait(ctx, operation, "BUILD", BUILD_TIMEOUT + QUEUE_MARGIN)
    built = _build_of(ctx, metadata)
    try:
        _check(op, metadata, "BUILD", "build")
    except StepFailed as failure:
        if failure.code == "BUILD_FAILED":
            failure.details.update(_log_details(ctx, built, op.error.message))
            if previous:
                failure.message += f"; revision {previous} keeps serving"
        raise
    return {
        "build_id": built.id if built is not None else "",
        "image": _image(built),
        "digest": _image(built).partition("@")[2],
        "log_url": built.log_url if built is not None else "",
        "operation": operation,
        "function": function_name(ctx, deployment.service),
        "previous_revision": previous,
        "api": "functions",
    }


def _build_of(ctx: Context, metadata: Any) -> Any:
    """The Cloud Build build the BUILD stage ran (None when it reused the image)."""
    name = metadata.build_name or _stage(metadata, "BUILD").resource
    if "/builds/" not in name:
        return None
    project, build_id = name.split("/")[1], name.rsplit("/", 1)[1]
    try:
        return ctx.clients.cloud_build.get_build(
            request={"name": name, "project_id": project, "id": build_id}
        )
    except exceptions.NotFound:
        return None


def _image(build: Any) -> str:
    if build is None or not build.results.images:
        return ""
    built = build.results.images[0]
    return f"{built.name.split('@')[0].rsplit(':', 1)[0]}@{built.digest}"


def _log_details(ctx: Context, build: Any, error: str) -> dict[str, Any]:
    """The failed build's id, log URL and log tail: from the log object when the build
    wrote one to Cloud Storage, else from the operation's error, which carries the
    build's own last words ("Build failed with status: FAILURE and message: ...")."""
    details: dict[str, Any] = {}
    tail: list[str] = []
    if build is not None:
        details.update(build_id=build.id, log_url=build.log_url)
        if build.logs_bucket:
            tail, unreadable = log_tail(ctx, build)
            if unreadable:
                details["log_error"] = unreadable
    if not tail:
        message = error.split(" and message: ", 1)[-1]
        message = message.split(". For more details see the logs at ", 1)[0]
        tail = message.splitlines()[-LOG_TAIL_LINES:]
    details["log_tail"] = tail
    return details


def push(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    """What the skipped push step answers: the image as built, where it stays."""
    return {
        "skipped": True,
        "reason": "Cloud Functions deploys the image from its gcf-artifacts repository",
        "image": deployment.output("build", "image"),
        "digest": deployment.output("build", "digest"),
    }


def deploy(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    """Wait for the SERVICE stage; then the invoker policy, as ``allow_unauthenticated`` says."""
    operation = deployment.output("build", "operation")
    previous = deployment.output("build", "previous_revision")
    services = ctx.clients.run_services
    name = ctx.settings.service_path(deployment.service)
    public = deployment.manifest.allow_unauthenticated
    if previous and not public:  # no revision of a private function stays public longer
        with contextlib.suppress(exceptions.NotFound):
            set_invoker(services, name, set(), False)
    op, metadata = wait(ctx, operation, "SERVICE", DEPLOY_TIMEOUT)
    try:
        _check(op, metadata, "SERVICE", "deploy")
    except StepFailed as failure:
        serving = ""
        with contextlib.suppress(exceptions.NotFound):
            serving = services.get_service(name=name).latest_ready_revision.rsplit("/", 1)[-1]
        failure.message += (
            f"; revision {serving} keeps serving" if serving else "; no revision serves"
        )
        failure.details["serving_revision"] = serving
        raise
    service = services.get_service(name=name)
    members = set()
    if deployment.manifest.triggers:  # as the run path's bind_triggers grants it
        members.add(f"serviceAccount:{ctx.settings.trigger_service_account}")
    try:
        set_invoker(services, name, members, public)
    except exceptions.GoogleAPICallError as exc:
        reraise("DEPLOY_FAILED", f"could not set the invoker policy of {name}", exc)
    return {
        "url": service.uri,
        "revision": service.latest_ready_revision.rsplit("/", 1)[-1],
        "previous_revision": previous,
        "image": deployment.output("build", "image"),
        "public": public,
        "function": function_name(ctx, deployment.service),
    }


def bind_triggers(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    """Wait for the TRIGGER stage and the operation's end: the function is ACTIVE."""
    operation = deployment.output("build", "operation")
    op, metadata = wait(ctx, operation, "TRIGGER", TRIGGER_TIMEOUT, done=True)
    _check(op, metadata, "TRIGGER", "bind_triggers")
    trigger = _stage(metadata, "TRIGGER").resource
    names = [trigger.rsplit("/", 1)[-1]] if trigger else []
    return {"triggers": names, "function_state": "ACTIVE", "trigger": trigger}
