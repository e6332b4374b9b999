"""The ``build`` step: Cloud Build with the buildpacks step turns the archive into an image.

It first takes the service's lock, so two deployments of one service never interleave
their steps: the later one waits (and says so in a status event) until the earlier one
finishes or its workflow is gone. The build is submitted once per deployment: it is tagged with the deployment id, so a
retried call after a crash finds it and waits for it instead of building again.
"""

from __future__ import annotations

import time
from typing import Any

from google.api_core import exceptions

from orchestrator import abandoned
from orchestrator.step import Context, Deployment, StepFailed, reraise

BUILDER = "gcr.io/buildpacks/builder:latest"
PACK = "gcr.io/k8s-skaffold/pack"
BUILD_TIMEOUT = 1200  # seconds
LOCK_TIMEOUT = 1500.0
LOG_TAIL_LINES = 20
RETRY_GRACE = 5.0  # seconds a retried call waits for its first attempt's build to appear


def pack_build(
    source: tuple[str, str, int | None], image: str, env: dict[str, str], tags: list[str]
) -> Any:
    """The Build ``gcloud builds submit --pack`` sends for a ``(bucket, object, generation)``
    source: the buildpacks step with ``env`` as its ``--env`` values."""
    from google.cloud.devtools import cloudbuild_v1

    bucket, name, generation = source
    args = ["build", image, "--network", "cloudbuild", "--builder", BUILDER]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return cloudbuild_v1.Build(
        source={"storage_source": {"bucket": bucket, "object_": name, "generation": generation}},
        steps=[{"name": PACK, "entrypoint": "pack", "args": args}],
        images=[image],
        tags=tags,
        timeout={"seconds": BUILD_TIMEOUT},
    )


def function_env(deployment: Deployment) -> dict[str, str]:
    """The ``GOOGLE_*`` variables Google's buildpacks read to build a function."""
    m = deployment.manifest
    env = {
        "GOOGLE_FUNCTION_TARGET": m.entry_point,
        "GOOGLE_FUNCTION_SIGNATURE_TYPE": m.signature_type,
    }
    if m.runtime:
        env["GOOGLE_RUNTIME"] = m.runtime
    return env


def _log_tail(ctx: Context, build: Any) -> list[str]:
    """The last lines of the build's log object, for the failure event (none when the build
    logs only to Cloud Logging)."""
    bucket = build.logs_bucket.removeprefix("gs://")
    bucket, _, prefix = bucket.partition("/")
    if not bucket:
        return []
    name = f"{prefix.strip('/')}/log-{build.id}.txt".lstrip("/")
    try:
        text = ctx.clients.storage.bucket(bucket).blob(name).download_as_text()
    except exceptions.GoogleAPICallError:
        return []
    return text.splitlines()[-LOG_TAIL_LINES:]


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
                ),
            )
        except exceptions.GoogleAPICallError as exc:
            reraise("BUILD_FAILED", "Cloud Build refused the build", exc)
        build_id = operation.metadata.build.id

    status = cloudbuild_v1.Build.Status
    done = {status.SUCCESS, status.FAILURE, status.INTERNAL_ERROR, status.TIMEOUT}
    done |= {status.CANCELLED, status.EXPIRED}
    delay = 0.02
    while True:
        build = ctx.clients.cloud_build.get_build(project_id=settings.project, id=build_id)
        if build.status in done:
            break
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)

    if build.status != status.SUCCESS:
        details = {
            "build_id": build_id,
            "log_url": build.log_url,
            "log_tail": _log_tail(ctx, build),
        }
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
