"""The ``bind_triggers`` step: make the service's Eventarc triggers match its manifest exactly.

Each trigger has a stable id derived from the service and the trigger's content
(:meth:`Trigger.trigger_id`) and a label naming the service, so redeploying the same
manifest finds its triggers, a changed trigger is a new one, and a trigger no longer in
the manifest is found and deleted. Pub/Sub topics a trigger names are created when
missing (as ``gcloud functions deploy --trigger-topic`` does); buckets are not. The trigger
service account gets ``run.invoker`` on the service, since Eventarc calls it with that
identity. This is the last step: it releases the service's lock.
"""

from __future__ import annotations

import contextlib
from typing import Any

from google.api_core import exceptions

from orchestrator.clients import polling
from orchestrator.deploy import set_invoker
from orchestrator.manifest import Trigger
from orchestrator.step import Context, Deployment, StepFailed, reraise

SERVICE_LABEL = "orchestrator-service"
POLLING = polling(300)


def event_filters(trigger: Trigger) -> list[dict[str, str]]:
    filters = [{"attribute": "type", "value": trigger.event_type}]
    if trigger.kind == "storage":
        filters.append({"attribute": "bucket", "value": trigger.bucket or ""})
    return filters


def _ensure_source(ctx: Context, trigger: Trigger) -> None:
    if trigger.kind == "pubsub":
        topic = ctx.settings.topic_path(trigger.topic or "")
        with contextlib.suppress(exceptions.AlreadyExists):
            ctx.clients.publisher.create_topic(name=topic)
        return
    try:
        exists = ctx.clients.storage.bucket(trigger.bucket).exists()
    except exceptions.Forbidden:
        exists = True  # not ours to read; Eventarc will say if it cannot watch it
    if not exists:
        raise StepFailed(
            "TRIGGER_FAILED",
            f"bucket {trigger.bucket!r} of the storage trigger does not exist; create it "
            "first (the pipeline does not create buckets)",
        )


def _create(ctx: Context, deployment: Deployment, trigger_id: str, trigger: Trigger) -> None:
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
            parent=ctx.settings.location_path, trigger=made, trigger_id=trigger_id
        ).result(polling=POLLING)
    except exceptions.AlreadyExists:
        pass  # a retried call: created the first time
    except exceptions.GoogleAPICallError as exc:
        reraise("TRIGGER_FAILED", f"Eventarc refused trigger {trigger_id}", exc)


def work(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    eventarc = ctx.clients.eventarc
    wanted = {t.trigger_id(deployment.service): t for t in deployment.manifest.triggers}
    existing = {
        t.name.rsplit("/", 1)[-1]
        for t in eventarc.list_triggers(parent=ctx.settings.location_path)
        if t.labels.get(SERVICE_LABEL) == deployment.service
    }
    if wanted:
        set_invoker(
            ctx,
            ctx.settings.service_path(deployment.service),
            {f"serviceAccount:{ctx.settings.trigger_service_account}"},
            None,
        )
    created = []
    for trigger_id, trigger in sorted(wanted.items()):
        if trigger_id in existing:
            continue
        _ensure_source(ctx, trigger)
        _create(ctx, deployment, trigger_id, trigger)
        created.append(trigger_id)
    deleted = []
    for trigger_id in sorted(existing - wanted.keys()):
        name = f"{ctx.settings.location_path}/triggers/{trigger_id}"
        with contextlib.suppress(exceptions.NotFound):
            eventarc.delete_trigger(name=name).result(polling=POLLING)
        deleted.append(trigger_id)
    ctx.records.release(deployment.service, deployment.deployment_id)
    return {
        "triggers": sorted(wanted),
        "created": created,
        "deleted": deleted,
        "unchanged": sorted(existing & wanted.keys()),
    }
