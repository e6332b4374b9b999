"""Triggers and their delivery, the way Eventarc does it: one Pub/Sub subscription each.

Creating a trigger creates a push subscription (and, for Pub/Sub triggers without a topic,
a topic) whose push endpoint is the Cloud Run service's URL plus the trigger's path, with
an OIDC token for the trigger's service account and the service URL as audience. The push
worker asks this module to turn each message into a CloudEvent (binary mode); messages a
trigger's path pattern does not match are acknowledged without delivery. Retries use the
subscription's retry policy (Eventarc's 10 s..600 s unless ``LOCALCLOUD_EVENTARC_*`` say
otherwise) for as long as the subscription keeps the message (Eventarc's 24 hours); a
dead-letter policy set on the trigger's subscription is honoured. A trigger's
``retry_policy.max_attempts`` (whose only valid value is 1) delivers each event once and
drops it if that delivery fails: what Cloud Functions' RETRY_POLICY_DO_NOT_RETRY makes
(https://cloud.google.com/eventarc/docs/reference/rest/v1/projects.locations.triggers#RetryPolicy,
https://cloud.google.com/eventarc/docs/retry-events).

A Cloud Storage trigger is checked against its bucket, read from localcloud's Cloud
Storage as Eventarc reads it from Google's: the bucket must exist, belong to the
trigger's project, and the trigger must live in the bucket's location (``US-CENTRAL1``
-> ``us-central1``, the multi-region ``US`` -> ``us``, the dual-region ``NAM4`` ->
``nam4``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
from google.cloud.eventarc_v1 import types
from google.protobuf import field_mask_pb2
from google.pubsub_v1.types import Subscription, Topic

from localcloud.core.clock import now
from localcloud.core.config import Config
from localcloud.core.errors import (
    Aborted,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from localcloud.core.names import parse_parent
from localcloud.core.projects import project_number
from localcloud.eventarc import events
from localcloud.eventarc.store import TriggerPb, TriggerStore
from localcloud.operations.store import OperationStore
from localcloud.pubsub.engine import PubSub

LOG = logging.getLogger(__name__)
_TRIGGER_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
# retry_policy is not immutable (Terraform's google_eventarc_trigger updates it in place).
MUTABLE = {
    "event_filters",
    "service_account",
    "destination",
    "labels",
    "transport",
    "retry_policy",
}
# "The default message retention duration set by Eventarc is 24 hours"
# (https://cloud.google.com/eventarc/docs/retry-events).
RETENTION_SECONDS = 24 * 3600


def _pubsub_topic(trigger: Any) -> str:
    """The topic a Pub/Sub trigger delivers from; "" for other triggers."""
    types_ = [f.value for f in trigger.event_filters if f.attribute == "type" and not f.operator]
    return str(trigger.transport.pubsub.topic) if types_ == [events.PUBSUB_TYPE] else ""


def parse_name(name: str) -> tuple[str, str, str]:
    parent, sep, trigger_id = name.rpartition("/triggers/")
    if not sep or not _TRIGGER_ID.fullmatch(trigger_id):
        raise InvalidArgument(
            f"Invalid trigger name {name!r}: expected projects/PROJECT/locations/LOCATION/triggers/TRIGGER "
            "(lowercase letters, digits and hyphens, starting with a letter)"
        )
    project, location = parse_parent(parent)
    return project, location, trigger_id


class EventRouter:
    def __init__(
        self,
        config: Config,
        store: TriggerStore,
        operations: OperationStore,
        pubsub: PubSub,
        run: Any,
    ) -> None:
        self.config = config
        self.store = store
        self.operations = operations
        self.pubsub = pubsub
        self.run = run  # the Cloud Run controller: destinations must exist
        self._session: aiohttp.ClientSession | None = None  # reads buckets from storage

    async def start(self) -> None:
        for trigger in self.store.triggers.values():
            self._register(trigger)

    async def stop(self) -> None:
        """Deliveries are Pub/Sub's push workers; they stop with Pub/Sub."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- API ----------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        parse_name(name)
        trigger = self.store.triggers.get(name)
        if trigger is None:
            raise NotFound(f"Trigger {name.rsplit('/', 1)[-1]} not found.")
        return trigger

    def list(self, parent: str) -> list[Any]:
        project, location = parse_parent(parent)
        prefix = f"projects/{project}/locations/{location}/triggers/"
        return [t for n, t in sorted(self.store.triggers.items()) if n.startswith(prefix)]

    async def create(self, parent: str, request: Any, trigger_id: str, validate_only: bool) -> Any:
        project, location = parse_parent(parent)
        if not _TRIGGER_ID.fullmatch(trigger_id):
            raise InvalidArgument(
                f"trigger_id {trigger_id!r} is invalid: lowercase letters, digits and hyphens, starting with a letter"
            )
        name = f"{parent}/triggers/{trigger_id}"
        if name in self.store.triggers:
            raise AlreadyExists(f"Trigger {trigger_id} already exists.")
        trigger = TriggerPb()
        trigger.CopyFrom(request)
        trigger.name = name
        self._validate(trigger, project, location)
        await self._check_bucket(trigger, project, location)
        if validate_only:
            return await self._operation(trigger, "create", done=True)
        trigger.uid = str(uuid.uuid4())
        trigger.create_time.CopyFrom(now())
        trigger.update_time.CopyFrom(trigger.create_time)
        await self._bind(trigger, project, location)
        self._etag(trigger)
        await self.store.triggers.put(trigger)
        return await self._operation(trigger, "create", done=True)

    async def update(
        self, request: Any, mask: field_mask_pb2.FieldMask, allow_missing: bool, validate_only: bool
    ) -> Any:
        project, location, trigger_id = parse_name(request.name)
        current = self.store.triggers.get(request.name)
        if current is None:
            if allow_missing:
                return await self.create(
                    f"projects/{project}/locations/{location}", request, trigger_id, validate_only
                )
            current = self.get(request.name)  # NotFound
        if request.etag and request.etag != current.etag:
            raise Aborted(f"etag {request.etag!r} does not match the trigger's current etag")
        updated = TriggerPb()
        updated.CopyFrom(current)
        paths = list(mask.paths) or [
            f
            for f in MUTABLE
            if request.HasField(f) or (f in ("event_filters", "labels") and getattr(request, f))
        ]
        for path in paths:
            top = path.split(".")[0]
            if top not in MUTABLE:
                raise InvalidArgument(f"update_mask: {path} cannot be updated")
            updated.ClearField(top)
            if top in ("event_filters",):
                updated.event_filters.extend(request.event_filters)
            elif top == "labels":
                updated.labels.update(request.labels)
            elif top == "service_account":
                updated.service_account = request.service_account
            else:
                getattr(updated, top).CopyFrom(getattr(request, top))
        self._validate(updated, project, location)
        await self._check_bucket(updated, project, location)
        if validate_only:
            return await self._operation(updated, "update", done=True)
        # A Pub/Sub trigger keeps the topic Eventarc made for it across an update (its
        # transport is the same unless the update names another).
        await self._unbind(current, keep_topic=_pubsub_topic(updated) == _pubsub_topic(current))
        updated.update_time.CopyFrom(now())
        await self._bind(updated, project, location)
        self._etag(updated)
        await self.store.triggers.put(updated)
        return await self._operation(updated, "update", done=True)

    async def delete(self, name: str, etag: str, allow_missing: bool, validate_only: bool) -> Any:
        parse_name(name)
        trigger = self.store.triggers.get(name)
        if trigger is None:
            if allow_missing:
                return await self._operation(TriggerPb(name=name), "delete", done=True)
            trigger = self.get(name)  # NotFound
        if etag and etag != trigger.etag:
            raise Aborted(f"etag {etag!r} does not match the trigger's current etag")
        if validate_only:
            return await self._operation(trigger, "delete", done=True)
        await self._unbind(trigger)
        await self.store.triggers.delete(name)
        return await self._operation(trigger, "delete", done=True)

    # -- validation ---------------------------------------------------------------------
    def _validate(self, trigger: Any, project: str, location: str) -> None:
        filters: dict[str, str] = {}
        for i, flt in enumerate(trigger.event_filters):
            if not flt.attribute:
                raise InvalidArgument(f"event_filters[{i}].attribute is required")
            if flt.operator not in ("", events.PATH_PATTERN):
                raise InvalidArgument(
                    f"event_filters[{i}].operator {flt.operator!r} is not supported (use match-path-pattern)"
                )
            if flt.attribute in filters:
                raise InvalidArgument(f"event_filters: attribute {flt.attribute!r} appears twice")
            filters[flt.attribute] = flt.value
        event_type = filters.get("type")
        if not event_type:
            raise InvalidArgument("event_filters: a filter on attribute 'type' is required")
        provider = events.provider_of(event_type)
        if provider is None:
            known = ", ".join(t for p in events.PROVIDERS.values() for t in p.event_types)
            raise InvalidArgument(
                f"event_filters: event type {event_type!r} is not supported; localcloud supports {known}"
            )
        for attribute in provider.required:
            if attribute not in filters:
                raise InvalidArgument(
                    f"event_filters: {event_type} requires a filter on attribute {attribute!r}"
                )
        allowed = set(provider.required) | set(provider.path_pattern_attributes)
        for i, flt in enumerate(trigger.event_filters):
            if flt.attribute not in allowed:
                raise InvalidArgument(
                    f"event_filters[{i}]: attribute {flt.attribute!r} is not a filtering attribute of {event_type}"
                )
            if (
                flt.operator == events.PATH_PATTERN
                and flt.attribute not in provider.path_pattern_attributes
            ):
                raise InvalidArgument(
                    f"event_filters[{i}]: match-path-pattern is not supported on {flt.attribute!r}"
                )
        if event_type == events.PUBSUB_TYPE and trigger.transport.pubsub.topic:
            topic = trigger.transport.pubsub.topic
            if not self.pubsub.has_topic(topic):
                raise InvalidArgument(f"transport.pubsub.topic {topic!r} does not exist")
        run = trigger.destination.cloud_run
        if not run.service:
            raise InvalidArgument(
                "destination.cloud_run.service is required (localcloud delivers to Cloud Run services)"
            )
        region = run.region or location
        service = f"projects/{project}/locations/{region}/services/{run.service}"
        if self.run.find(service) is None:
            raise InvalidArgument(
                f"destination.cloud_run.service {run.service!r} does not exist in {region}"
            )
        if run.path and not run.path.startswith("/"):
            raise InvalidArgument("destination.cloud_run.path must start with '/'")
        # "The maximum number of delivery attempts for any message. The only valid value
        # is 1." (Trigger.RetryPolicy; 0 is the field left unset: Eventarc's default retries)
        attempts = trigger.retry_policy.max_attempts
        if attempts not in (0, 1):
            raise InvalidArgument(
                f"Invalid value for retry_policy.max_attempts: {attempts}. "
                "The only valid value is 1."
            )

    async def _check_bucket(self, trigger: Any, project: str, location: str) -> None:
        """A storage trigger's bucket exists, is the trigger's project's and is where the
        trigger is, as Eventarc checks.

        Google's answers: an unreadable or missing bucket is PERMISSION_DENIED ("Bucket ...
        could not be validated. Please verify that the bucket exists and that the Eventarc
        service account has permission", as reported in
        https://github.com/google-github-actions/deploy-cloud-functions/issues/461); a
        trigger elsewhere than its bucket is INVALID_ARGUMENT ("Bucket "B" location "eu"
        does not match trigger location "europe-west1"",
        https://cloud.google.com/eventarc/docs/understand-locations). "The service and the
        bucket must be in the same Google Cloud project"
        (https://cloud.google.com/run/docs/triggering/storage-triggers): a bucket of
        another project is INVALID_ARGUMENT too, naming both projects (Google documents
        the rule, not its words; the bucket's project is its ``projectNumber``).
        """
        filters = {f.attribute: f.value for f in trigger.event_filters if not f.operator}
        if filters.get("type") not in events.STORAGE_TYPES:
            return
        bucket = filters.get("bucket", "")
        found = await self._bucket(bucket)
        if found is None:
            raise PermissionDenied(
                f'Permission "storage.buckets.get" denied on "Bucket \\"{bucket}\\" could '
                "not be validated. Please verify that the bucket exists and that the "
                'Eventarc service account has permission."'
            )
        theirs = str(found.get("projectNumber") or "")
        ours = project_number(project)
        if theirs.lstrip("0") != ours.lstrip("0"):
            raise InvalidArgument(
                f'The request was invalid: Bucket "{bucket}" belongs to project number '
                f'{theirs or "(none)"}, not to the trigger\'s project "{project}" (number '
                f"{ours}). Eventarc delivers Cloud Storage events only from buckets in the "
                "trigger's project: use a bucket of that project."
            )
        where = str(found.get("location") or "").lower()
        if where != location:
            raise InvalidArgument(
                f'The request was invalid: Bucket "{bucket}" location "{where}" does not '
                f'match trigger location "{location}". Try again by creating the trigger '
                f'in "{where}".'
            )

    async def _bucket(self, bucket: str) -> dict[str, Any] | None:
        """The bucket's resource from localcloud's Cloud Storage, or None if it has none."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        url = f"http://{self.config.storage_address}/storage/v1/b/{quote(bucket, safe='')}"
        try:
            async with self._session.get(url) as resp:
                if resp.status == 404:
                    return None
                if resp.status == 400:  # storage refused the name itself
                    raise InvalidArgument(
                        f"event_filters: bucket {bucket!r} is not a valid bucket name: "
                        f"{(await resp.text())[:300]}"
                    )
                if resp.status >= 400:
                    raise Unavailable(
                        f"Cloud Storage answered {resp.status} when Eventarc read bucket "
                        f"{bucket!r}: {(await resp.text())[:300]}"
                    )
                document = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError) as exc:
            raise Unavailable(
                f"Cloud Storage did not answer when Eventarc read bucket {bucket!r}: {exc}"
            ) from None
        return document if isinstance(document, dict) else None

    # -- binding ------------------------------------------------------------------------
    def _service(self, trigger: Any, project: str, location: str) -> Any:
        run = trigger.destination.cloud_run
        return self.run.get(
            f"projects/{project}/locations/{run.region or location}/services/{run.service}"
        )

    async def _bind(self, trigger: Any, project: str, location: str) -> None:
        trigger_id = trigger.name.rsplit("/", 1)[-1]
        suffix = f"{int(hashlib.sha256(trigger.uid.encode()).hexdigest(), 16) % 1000:03d}"
        filters = {f.attribute: f.value for f in trigger.event_filters if not f.operator}
        event_type = filters["type"]
        if event_type == events.PUBSUB_TYPE:
            topic = trigger.transport.pubsub.topic
            if not topic:
                topic = f"projects/{project}/topics/eventarc-{location}-{trigger_id}-{suffix}"
                if not self.pubsub.has_topic(topic):
                    await self.pubsub.create_topic(
                        Topic.pb()(name=topic, labels={"eventarc": "trigger"})
                    )
            pubsub_filter = ""
        else:
            topic = f"projects/{self.config.project}/topics/{self.config.storage_events_topic}"
            pubsub_filter = (
                f'attributes.bucketId = "{filters["bucket"]}" AND '
                f'attributes.eventType = "{events.STORAGE_TYPES[event_type]}"'
            )
        service = self._service(trigger, project, location)
        endpoint = service.uri + (trigger.destination.cloud_run.path or "")
        account = trigger.service_account or f"default-compute@{project}.iam.gserviceaccount.com"
        sub = Subscription.pb()(
            name=f"projects/{project}/subscriptions/eventarc-{location}-{trigger_id}-sub-{suffix}",
            topic=topic,
            filter=pubsub_filter,
            ack_deadline_seconds=60,
        )
        sub.message_retention_duration.seconds = RETENTION_SECONDS
        sub.push_config.push_endpoint = endpoint
        sub.push_config.oidc_token.service_account_email = account
        sub.push_config.oidc_token.audience = service.uri
        sub.retry_policy.minimum_backoff.FromMilliseconds(
            int(self.config.eventarc_min_backoff * 1000)
        )
        sub.retry_policy.maximum_backoff.FromMilliseconds(
            int(self.config.eventarc_max_backoff * 1000)
        )
        sub.labels["eventarc-trigger"] = trigger_id
        if not self.pubsub.has_subscription(sub.name):
            await self.pubsub.create_subscription(sub)
        trigger.transport.pubsub.topic = topic
        trigger.transport.pubsub.subscription = sub.name
        self._register(trigger)

    async def _unbind(self, trigger: Any, *, keep_topic: bool = False) -> None:
        sub = trigger.transport.pubsub.subscription
        self.pubsub.format_pushes(sub, None)
        if self.pubsub.has_subscription(sub):
            await self.pubsub.delete_subscription(sub)
        topic = trigger.transport.pubsub.topic
        if not keep_topic and "/topics/eventarc-" in topic and self.pubsub.has_topic(topic):
            await self.pubsub.delete_topic(topic)

    def _register(self, trigger: Any) -> None:
        sub = trigger.transport.pubsub.subscription
        if not sub:
            return
        filters = {f.attribute: f.value for f in trigger.event_filters if not f.operator}
        patterns = {
            f.attribute: f.value for f in trigger.event_filters if f.operator == events.PATH_PATTERN
        }
        event_type = filters["type"]
        topic = trigger.transport.pubsub.topic

        def format_event(st: Any, entry: Any) -> tuple[bytes, dict[str, str]] | None:
            message = entry.msg.pb
            if event_type == events.PUBSUB_TYPE:
                headers, body, attrs = events.pubsub_event(message, topic, st.name)
            else:
                headers, body, attrs = events.storage_event(event_type, message)
            for attribute, pattern in patterns.items():
                if not events.path_matches(pattern, attrs.get(attribute, "")):
                    return None  # acknowledged, not delivered
            return body, headers

        self.pubsub.format_pushes(sub, format_event, max_attempts=trigger.retry_policy.max_attempts)

    def _etag(self, trigger: Any) -> None:
        trigger.etag = hashlib.sha256(trigger.SerializeToString(deterministic=True)).hexdigest()[
            :16
        ]

    async def _operation(self, trigger: Any, verb: str, *, done: bool) -> Any:
        parent = trigger.name.rsplit("/triggers/", 1)[0]
        metadata = types.OperationMetadata.pb()(target=trigger.name, verb=verb, api_version="v1")
        metadata.create_time.CopyFrom(now())
        if not done:
            return await self.operations.create(parent, metadata)
        metadata.end_time.CopyFrom(metadata.create_time)
        return await self.operations.create(parent, metadata, response=trigger)
