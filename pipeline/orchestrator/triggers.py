"""The ``bind_triggers`` step: make the service's Eventarc triggers match its manifest exactly.

Each trigger has a stable id derived from the service and the trigger's content
(:meth:`Trigger.trigger_id`) and a label naming the service, so redeploying the same
manifest finds its triggers, a changed trigger is a new one, and a trigger no longer in
the manifest is found and deleted. Pub/Sub topics a trigger names are created when
missing (as ``gcloud functions deploy --trigger-topic`` does); buckets are not. A storage
trigger lives in its bucket's location, as Eventarc requires; the locations a service's
triggers live in are recorded so stale ones are found there later. The trigger service
account gets ``run.invoker`` on the service, since Eventarc calls it with that identity.
This is the last step: ``step.run`` runs it only while its deployment holds the
service's lock, and releases the lock once its result is saved and its ``succeeded``
event is out.
"""

from __future__ import annotations

import contextlib
from typing import Any

from google.api_core import exceptions

from orchestrator.deploy import set_invoker
from orchestrator.manifest import Trigger
from orchestrator.records import locations_name
from orchestrator.step import Context, Deployment, StepFailed, reraise

SERVICE_LABEL = "orchestrator-service"


def event_filters(trigger: Trigger) -> list[dict[str, str]]:
    filters = [{"attribute": "type", "value": trigger.event_type}]
    if trigger.kind == "storage":
        filters.append({"attribute": "bucket", "value": trigger.bucket or ""})
    return filters


# What bind_triggers' service account needs to read a user's bucket (its location decides
# the trigger's): storage.buckets.get, in roles/storage.bucketViewer on the project.
BUCKET_ROLE = "roles/storage.bucketViewer"


def trigger_location(bucket_location: str) -> str:
    """The Eventarc location of a storage trigger on a bucket in ``bucket_location``.

    "The trigger location must match the bucket's location": ``US-CENTRAL1`` ->
    ``us-central1``, the multi-region ``US`` -> ``us``, the dual-region ``NAM4`` -> ``nam4``
    (https://cloud.google.com/eventarc/docs/understand-locations).
    """
    return bucket_location.lower()


def _location(
    ctx: Context,
    trigger: Trigger,
    project_number: dict[str, str | None],
    caller: str = "bind_triggers",
) -> str:
    """Where the trigger must live, making sure its source exists.

    A Pub/Sub trigger lives in the pipeline's region, its topic created when missing (as
    ``gcloud functions deploy --trigger-topic`` does). A Cloud Storage trigger must live in
    its bucket's location, and the bucket must exist (the pipeline does not create
    buckets), be readable (its location is read, never guessed: Eventarc refuses a trigger
    elsewhere) and belong to the pipeline's project (Eventarc triggers only on buckets of
    the trigger's project: https://cloud.google.com/functions/docs/calling/storage).
    ``project_number`` caches the pipeline's project number across a step's triggers;
    ``caller`` is the function asking (``api: functions`` reads the bucket in ``build``),
    whose account a refusal tells the user to grant.
    """
    if trigger.kind == "pubsub":
        topic = ctx.settings.topic_path(trigger.topic or "")
        with contextlib.suppress(exceptions.AlreadyExists):
            ctx.clients.publisher.create_topic(name=topic)
        return ctx.settings.region
    name = trigger.bucket or ""
    try:
        bucket = ctx.clients.storage.lookup_bucket(name)
    except exceptions.Forbidden as exc:
        raise StepFailed(
            "TRIGGER_FAILED",
            f"bucket {name!r} of the storage trigger cannot be read by the {caller} "
            f"function's service account ({exc.message}); its location decides the "
            f"trigger's: grant that account {BUCKET_ROLE} (storage.buckets.get) on the "
            f"project {ctx.settings.project}, or use a bucket of that project",
        ) from None
    if bucket is None:
        raise StepFailed(
            "TRIGGER_FAILED",
            f"bucket {name!r} of the storage trigger does not exist; create it "
            "first (the pipeline does not create buckets)",
        )
    ours = _project_number(ctx, project_number)
    theirs = bucket.project_number
    if ours is not None and theirs is not None and str(theirs) != ours:
        raise StepFailed(
            "TRIGGER_FAILED",
            f"bucket {name!r} of the storage trigger belongs to another project (number "
            f"{theirs}); Eventarc watches only buckets of the trigger's project, "
            f"{ctx.settings.project}: use a bucket of that project",
        )
    if not bucket.location:
        raise StepFailed("TRIGGER_FAILED", f"bucket {name!r} has no location to put its trigger")
    return trigger_location(bucket.location)


def _project_number(ctx: Context, cache: dict[str, str | None]) -> str | None:
    """The pipeline's project number, read from its records bucket (made in that project);
    None when it cannot be read, and then buckets are not compared."""
    if "number" not in cache:
        try:
            records = ctx.clients.storage.lookup_bucket(ctx.settings.records_bucket)
        except exceptions.Forbidden:
            records = None
        number = None if records is None else records.project_number
        cache["number"] = None if number is None else str(number)
    return cache["number"]


def _create(
    ctx: Context, deployment: Deployment, location: str, trigger_id: str, trigger: Trigger
) -> None:
    from google.cloud import eventarc_v1

    fields: dict[str, Any] = {}
    if trigger.kind == "pubsub":
        fields["transport"] = {"pubsub": {"topic": ctx.settings.topic_path(trigger.topic or "")}}
    made = eventarc_v1.Trigger(
        event_filters=event_filters(trigger),
        destination={"cloud_run": {"service": deployment.service, "region": ctx.settings.region}},
        service_account=ctx.settings.trigger_service_account,
        labels={SERVICE_LABEL: deployment.service},
        **fields,
    )
    try:
        ctx.clients.eventarc.create_trigger(
            parent=f"projects/{ctx.settings.project}/locations/{location}",
            trigger=made,
            trigger_id=trigger_id,
        ).result(polling=ctx.clients.env.polling(300))
    except exceptions.AlreadyExists:
        pass  # a retried call: created the first time
    except exceptions.GoogleAPICallError as exc:
        reraise("TRIGGER_FAILED", f"Eventarc refused trigger {trigger_id}", exc)


def work(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    if deployment.manifest.api == "functions":  # the function's own trigger, its stage
        from orchestrator import functions_api  # imports this module

        return functions_api.bind_triggers(ctx, deployment)
    eventarc = ctx.clients.eventarc
    project = ctx.settings.project
    wanted = {t.trigger_id(deployment.service): t for t in deployment.manifest.triggers}
    numbers: dict[str, str | None] = {}
    where = {trigger_id: _location(ctx, t, numbers) for trigger_id, t in wanted.items()}
    # Triggers of earlier deployments may live in other locations (their buckets'): the
    # service's record remembers which, so stale ones are found wherever they are.
    record = locations_name(deployment.service)
    found = ctx.records.read(record)
    before = set(found[0]["trigger_locations"]) if found else set()
    existing: dict[str, str] = {}
    for location in sorted({ctx.settings.region, *where.values(), *before}):
        for t in eventarc.list_triggers(parent=f"projects/{project}/locations/{location}"):
            if t.labels.get(SERVICE_LABEL) == deployment.service:
                existing[t.name.rsplit("/", 1)[-1]] = location
    if wanted:
        set_invoker(
            ctx.clients.run_services,
            ctx.settings.service_path(deployment.service),
            {f"serviceAccount:{ctx.settings.trigger_service_account}"},
            None,
        )
    created = []
    for trigger_id, trigger in sorted(wanted.items()):
        if existing.get(trigger_id) == where[trigger_id]:
            continue
        _create(ctx, deployment, where[trigger_id], trigger_id, trigger)
        created.append(trigger_id)
    deleted = []
    for trigger_id, location in sorted(existing.items()):
        if where.get(trigger_id) == location:
            continue
        name = f"projects/{project}/locations/{location}/triggers/{trigger_id}"
        with contextlib.suppress(exceptions.NotFound):
            eventarc.delete_trigger(name=name).result(polling=ctx.clients.env.polling(300))
        deleted.append(trigger_id)
    if set(where.values()) != before:
        ctx.records.write(record, {"trigger_locations": sorted(set(where.values()))})
    return {
        "triggers": sorted(wanted),
        "created": created,
        "deleted": deleted,
        "unchanged": sorted(t for t in wanted if t not in created),
    }
