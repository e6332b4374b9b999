"""The ``bind_triggers`` step: make the service's Eventarc triggers match its manifest exactly.

Each trigger has a stable id derived from the service and the trigger's content
(:meth:`Trigger.trigger_id`) and a label naming the service, so redeploying the same
manifest finds its triggers, a changed trigger is a new one, and a trigger no longer in
the manifest is found and deleted. Pub/Sub topics a trigger names are created when
missing (as ``gcloud functions deploy --trigger-topic`` does); buckets are not. A storage
trigger lives in its bucket's location, as Eventarc requires; the locations a service's
triggers live in are recorded so stale ones are found there later. The trigger service
account gets ``run.invoker`` on the service, since Eventarc calls it with that identity.
This is the last step: once its ``succeeded`` event is out, ``step.run`` releases the
service's lock.
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


def _location(ctx: Context, trigger: Trigger) -> str:
    """Where the trigger must live, making sure its source exists.

    A Pub/Sub trigger lives in the pipeline's region, its topic created when missing (as
    ``gcloud functions deploy --trigger-topic`` does). A Cloud Storage trigger must live in
    its bucket's location (``us`` for a multi-region bucket), and the bucket must exist: the
    pipeline does not create buckets.
    """
    if trigger.kind == "pubsub":
        topic = ctx.settings.topic_path(trigger.topic or "")
        with contextlib.suppress(exceptions.AlreadyExists):
            ctx.clients.publisher.create_topic(name=topic)
        return ctx.settings.region
    try:
        bucket = ctx.clients.storage.lookup_bucket(trigger.bucket)
    except exceptions.Forbidden:
        return ctx.settings.region  # not ours to read; Eventarc will say if it cannot watch it
    if bucket is None:
        raise StepFailed(
            "TRIGGER_FAILED",
            f"bucket {trigger.bucket!r} of the storage trigger does not exist; create it "
            "first (the pipeline does not create buckets)",
        )
    return (bucket.location or ctx.settings.region).lower()


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
    eventarc = ctx.clients.eventarc
    project = ctx.settings.project
    wanted = {t.trigger_id(deployment.service): t for t in deployment.manifest.triggers}
    where = {trigger_id: _location(ctx, t) for trigger_id, t in wanted.items()}
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
