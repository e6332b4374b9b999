"""The ``build`` step: Cloud Build with the buildpacks step turns the archive into an image.

It first takes the service's lock, so two deployments of one service never interleave
their steps: the later one waits (and says so in a status event) until the earlier one
finishes or its workflow is gone. Then it refuses a service another API manages
(``functions_api.check_api``). The build is submitted once per deployment: it is tagged with
the deployment id, so a retried call after a crash finds it and waits for it instead of
building again. With ``api: functions`` the build is Cloud Functions' (``functions_api``).
"""

from __future__ import annotations

import time
from typing import Any

from google.api_core import exceptions
from google.auth.exceptions import GoogleAuthError

from orchestrator import abandoned
from orchestrator.config import Settings
from orchestrator.runtimes import BUILDER as BUILDER
from orchestrator.runtimes import BUILDER_NODEJS as BUILDER_NODEJS
from orchestrator.runtimes import BUILDER_PYTHONS as BUILDER_PYTHONS
from orchestrator.runtimes import version_env
from orchestrator.step import Context, Deployment, StepFailed, reraise

# The pinned builder and the runtimes it builds live in runtimes.py: google-22 (Ubuntu 22)
# ships Python 3.10 to 3.13 and Node.js 12 to 24 for functions
# (https://cloud.google.com/docs/buildpacks/builders). The manifest schema's runtimes are
# exactly those (a unit test holds them together).
PACK = "gcr.io/k8s-skaffold/pack"
BUILD_TIMEOUT = 1200  # seconds
# How long a build may wait in Cloud Build's queue before the step stops waiting for it.
QUEUE_MARGIN = 600  # seconds
LOCK_TIMEOUT = 1500.0
LOG_TAIL_LINES = 20
RETRY_GRACE = 5.0  # seconds a retried call waits for its first attempt's build to appear


def pack_build(
    source: tuple[str, str, int | None],
    image: str,
    env: dict[str, str],
    tags: list[str],
    settings: Settings,
) -> Any:
    """The Build ``gcloud builds submit --pack`` sends for a ``(bucket, object, generation)``
    source: the buildpacks step with ``env`` as its ``--env`` values.

    It runs as the pipeline's build account (``settings.build_service_account``), never the
    project's default build account, which Terraform grants nothing and which projects
    made since mid-2024 do not even have. A build with its own account may not log to the
    default bucket (Cloud Build refuses it), and ours could not read that one anyway: the
    log goes to the pipeline's logs bucket, Cloud Storage only, as ``log-BUILD_ID.txt``
    (https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts).
    """
    from google.cloud.devtools import cloudbuild_v1

    bucket, name, generation = source
    args = ["build", image, "--network", "cloudbuild", "--builder", BUILDER]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    account = settings.build_service_account
    return cloudbuild_v1.Build(
        source={"storage_source": {"bucket": bucket, "object_": name, "generation": generation}},
        steps=[{"name": PACK, "entrypoint": "pack", "args": args}],
        images=[image],
        tags=tags,
        timeout={"seconds": BUILD_TIMEOUT},
        service_account=f"projects/{settings.project}/serviceAccounts/{account}",
        logs_bucket=f"gs://{settings.build_logs_bucket}",
        options={"logging": cloudbuild_v1.BuildOptions.LoggingMode.GCS_ONLY},
    )


def function_env(deployment: Deployment) -> dict[str, str]:
    """The ``GOOGLE_*`` variables Google's buildpacks read to build a function."""
    m = deployment.manifest
    env = {
        "GOOGLE_FUNCTION_TARGET": m.entry_point,
        "GOOGLE_FUNCTION_SIGNATURE_TYPE": m.signature_type,
    }
    if m.runtime:  # GOOGLE_RUNTIME and the language's version variable (runtimes.py)
        env.update(version_env(m.runtime))
    return env


def log_tail(ctx: Context, build: Any) -> tuple[list[str], str | None]:
    """The last lines of the build's log object and, when they cannot be read, why: the
    failure event says so instead of showing an empty tail as if the log were empty."""
    bucket = build.logs_bucket.removeprefix("gs://")
    bucket, _, prefix = bucket.partition("/")
    if not bucket:
        return [], f"build {build.id} wrote no log to Cloud Storage (logs_bucket is not set)"
    name = f"{prefix.strip('/')}/log-{build.id}.txt".lstrip("/")
    where = f"gs://{bucket}/{name}"
    try:
        text = ctx.clients.storage.bucket(bucket).blob(name).download_as_text()
    except exceptions.NotFound:
        return [], f"the build log {where} does not exist"
    except exceptions.Forbidden as exc:
        return [], f"no permission to read the build log {where}: {exc.message}"
    except exceptions.GoogleAPICallError as exc:
        return [], f"could not read the build log {where}: {exc}"
    except (GoogleAuthError, OSError) as exc:
        return [], f"could not read the build log {where}: {type(exc).__name__}: {exc}"
    return text.splitlines()[-LOG_TAIL_LINES:], None


class _Pending(Exception):
    """The build has not finished yet (the poll policy retries on this alone)."""


def wait(ctx: Context, build_id: str, deadline: float) -> Any:
    """The finished build, polled with the environment's policy for long operations
    (``Environment.polling``); StepFailed TIMEOUT when it has not finished in ``deadline``
    seconds, so a build stuck in the queue never holds the step (and the service's lock)
    for ever."""
    from google.api_core import retry
    from google.cloud.devtools import cloudbuild_v1

    status = cloudbuild_v1.Build.Status
    done = {status.SUCCESS, status.FAILURE, status.INTERNAL_ERROR, status.TIMEOUT}
    done |= {status.CANCELLED, status.EXPIRED}
    seen: list[Any] = []

    def poll() -> Any:
        build = ctx.clients.cloud_build.get_build(project_id=ctx.settings.project, id=build_id)
        seen[:] = [build]
        if build.status not in done:
            raise _Pending()
        return build

    policy = ctx.clients.env.polling(deadline).with_predicate(retry.if_exception_type(_Pending))
    try:
        return policy(poll)()
    except exceptions.RetryError:
        state = status(seen[0].status).name if seen else "unknown"
        raise StepFailed(
            "TIMEOUT",
            f"build {build_id} did not finish within {deadline:g}s (still {state}); "
            "see it with `gcloud builds describe " + build_id + "`",
            {"build_id": build_id, "build_status": state},
        ) from None


def _earlier_build(ctx: Context, deployment: Deployment) -> str | None:
    """The build an earlier call of this step submitted, found by its deployment tag.

    A retried call may overlap a first attempt that is still between taking the lock and
    submitting (its answer was lost, not its process): give it a few seconds to appear.
    """
    deadline = time.monotonic() + RETRY_GRACE
    while True:
        found = ctx.clients.cloud_build.list_builds(
            project_id=ctx.settings.project, filter=f'tags="{deployment.deployment_id}"'
        )
        earlier = next(iter(found), None)
        if earlier is not None:
            return earlier.id
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def work(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    from google.cloud.devtools import cloudbuild_v1

    settings = ctx.settings

    def waiting(holder: str) -> None:
        ctx.publish(
            deployment,
            "build",
            "running",
            f"waiting: deployment {holder} of service {deployment.service} is in progress",
            details={"waiting_for": holder},
        )

    try:
        first_call = ctx.records.acquire(
            deployment.service,
            deployment.deployment_id,
            deployment.execution,
            ctx.execution_active,
            waiting,
            LOCK_TIMEOUT,
            on_stale=lambda holder: abandoned.finish(ctx, holder, deployment.service),
        )
    except TimeoutError as exc:
        raise StepFailed("TIMEOUT", str(exc)) from None
    ctx.publish(deployment, "build", "running", f"building {deployment.source}")
    from orchestrator import functions_api  # imports this module

    existing = functions_api.check_api(ctx, deployment)
    if deployment.manifest.api == "functions":
        return functions_api.build(ctx, deployment, existing)

    build_id = None if first_call else _earlier_build(ctx, deployment)
    if build_id is None:
        image = f"{settings.staging_image(deployment.service)}:{deployment.deployment_id}"
        try:
            operation = ctx.clients.cloud_build.create_build(
                project_id=settings.project,
                build=pack_build(
                    (deployment.bucket, deployment.object, deployment.generation),
                    image,
                    function_env(deployment),
                    [deployment.deployment_id, deployment.service],
                    settings,
                ),
            )
        except exceptions.GoogleAPICallError as exc:
            reraise("BUILD_FAILED", "Cloud Build refused the build", exc)
        build_id = operation.metadata.build.id

    status = cloudbuild_v1.Build.Status
    build = wait(ctx, build_id, BUILD_TIMEOUT + QUEUE_MARGIN)
    if build.status != status.SUCCESS:
        tail, unreadable = log_tail(ctx, build)
        details: dict[str, Any] = {"build_id": build_id, "log_url": build.log_url, "log_tail": tail}
        if unreadable:
            details["log_error"] = unreadable
        reason = build.status_detail or status(build.status).name
        raise StepFailed(
            "BUILD_FAILED", f"build {build_id} {status(build.status).name}: {reason}", details
        )
    if not build.results.images:
        raise StepFailed("BUILD_FAILED", f"build {build_id} succeeded but pushed no image")
    built = build.results.images[0]
    name = built.name.rsplit(":", 1)[0] if "@" not in built.name else built.name.split("@")[0]
    return {
        "build_id": build_id,
        "image": f"{name}@{built.digest}",
        "digest": built.digest,
        "log_url": build.log_url,
        "build_seconds": _seconds(build),
    }


def _seconds(build: Any) -> float | None:
    try:
        return round((build.finish_time - build.start_time).total_seconds(), 3)
    except (AttributeError, TypeError):
        return None
