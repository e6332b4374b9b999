"""The ``deploy`` step: create or update the Cloud Run service with the image by digest.

The service gets the manifest's env, scaling, concurrency and timeout, runs as the
pipeline's runtime service account, carries the deployment id as a label and the source as
an annotation, and sends all traffic to its latest ready revision. When the new revision
fails to start, Cloud Run keeps the previous one serving; the failure event names both.

``allow_unauthenticated`` is the service's ``invoker_iam_disabled``, Google's recommended
way to make a service public: it works where domain restricted sharing (an organization
policy) forbids granting ``allUsers`` anything, and it goes with the revision in one
request (https://cloud.google.com/run/docs/authenticating/public). ``allUsers`` is never
granted; a deploy with ``allow_unauthenticated: false`` turns the check back on and
removes an ``allUsers`` invoker binding left by earlier versions, before the new revision
is asked for. Whatever refuses either change (IAM, an organization policy) fails the step
with DEPLOY_FAILED naming the reason, and no new revision is made: the previous one keeps
serving (an ``allUsers`` binding removed before the refusal stays removed, as asked).
"""

from __future__ import annotations

from typing import Any, NoReturn

from google.api_core import exceptions

from orchestrator.step import Context, Deployment, StepFailed, reraise

INVOKER = "roles/run.invoker"
DEPLOYMENT_LABEL = "deployment-id"
MANAGED_LABEL = "managed-by"
SOURCE_ANNOTATION = "orchestrator.dev/source"


def template(ctx: Context, deployment: Deployment, image: str) -> Any:
    from google.cloud import run_v2

    m = deployment.manifest
    return run_v2.RevisionTemplate(
        containers=[
            run_v2.Container(
                image=image, env=[{"name": k, "value": str(v)} for k, v in sorted(m.env.items())]
            )
        ],
        scaling={"min_instance_count": m.min_instances, "max_instance_count": m.max_instances},
        max_instance_request_concurrency=m.concurrency,
        timeout={"seconds": m.timeout_seconds},
        service_account=ctx.settings.runtime_service_account,
        labels={DEPLOYMENT_LABEL: deployment.deployment_id},
    )


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else ""


def set_invoker(services: Any, service: str, members: set[str], public: bool | None) -> None:
    """Grant ``members`` run.invoker on ``service`` (through the Cloud Run ``services``
    client); add or remove ``allUsers`` when ``public`` is given. Nothing else changes."""
    policy = services.get_iam_policy(request={"resource": service})
    binding = next((b for b in policy.bindings if b.role == INVOKER), None)
    current = set(binding.members) if binding is not None else set()
    wanted = current | members
    if public is True:
        wanted.add("allUsers")
    elif public is False:
        wanted.discard("allUsers")
    if wanted == current:
        return
    if binding is None:
        binding = policy.bindings.add(role=INVOKER)
    del binding.members[:]
    binding.members.extend(sorted(wanted))
    services.set_iam_policy(request={"resource": service, "policy": policy})


def _refused(what: str, exc: exceptions.GoogleAPICallError, previous: str) -> NoReturn:
    """A refusal before the service changed: DEPLOY_FAILED naming the reason and the
    revision that keeps serving; a transient error is raised for the workflow to retry."""
    try:
        reraise("DEPLOY_FAILED", what, exc)
    except StepFailed as failed:
        keeps = f"; revision {previous} keeps serving" if previous else ""
        raise StepFailed(
            failed.code, failed.message + keeps, {"serving_revision": previous}
        ) from None


def work(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    from google.cloud import run_v2

    if deployment.manifest.api == "functions":
        from orchestrator import functions_api  # imports this module

        return functions_api.deploy(ctx, deployment)

    image = deployment.output("push", "image")
    services = ctx.clients.run_services
    name = ctx.settings.service_path(deployment.service)
    labels = {DEPLOYMENT_LABEL: deployment.deployment_id, MANAGED_LABEL: "orchestrator"}
    latest = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    try:
        existing = services.get_service(name=name)
    except exceptions.NotFound:
        existing = None
    previous = _short(existing.latest_ready_revision) if existing else ""
    public = deployment.manifest.allow_unauthenticated
    if existing is not None and not public:
        # Private before the new revision is asked for, so no revision of a service meant
        # to be private is ever public; a refusal here leaves the service untouched.
        try:
            set_invoker(services, name, set(), False)
        except exceptions.GoogleAPICallError as exc:
            _refused(f"could not remove allUsers from the invoker policy of {name}", exc, previous)
    try:
        if existing is None:
            service = run_v2.Service(
                template=template(ctx, deployment, image),
                labels=labels,
                annotations={SOURCE_ANNOTATION: deployment.source},
                traffic=[{"type_": latest, "percent": 100}],
                invoker_iam_disabled=public,
            )
            operation = services.create_service(
                parent=ctx.settings.location_path, service=service, service_id=deployment.service
            )
        else:
            existing.template = template(ctx, deployment, image)
            existing.labels.update(labels)
            existing.annotations[SOURCE_ANNOTATION] = deployment.source
            del existing.traffic[:]
            existing.traffic.append(run_v2.TrafficTarget(type_=latest, percent=100))
            existing.invoker_iam_disabled = public
            operation = services.update_service(service=existing)
    except exceptions.GoogleAPICallError as exc:
        _refused("Cloud Run refused the service", exc, previous)
    try:
        service = operation.result(polling=ctx.clients.env.polling(900))
    except exceptions.GoogleAPICallError as exc:
        after = services.get_service(name=name)
        failed = _short(after.latest_created_revision)
        serving = _short(after.latest_ready_revision)
        keeps = (
            f"; revision {serving} keeps serving"
            if serving and serving != failed
            else "; no revision serves"
        )
        raise StepFailed(
            "DEPLOY_FAILED",
            f"revision {failed or '?'} of {deployment.service} failed to start: "
            f"{exc.message or exc}{keeps}",
            {"failed_revision": failed, "serving_revision": serving, "url": after.uri},
        ) from None
    return {
        "url": service.uri,
        "revision": _short(service.latest_ready_revision),
        "previous_revision": previous,
        "image": image,
        "public": public,
    }
