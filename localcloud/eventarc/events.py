"""The events localcloud's Eventarc delivers, in the formats Google's Eventarc uses.

Deliveries are CloudEvents in binary content mode (``ce-*`` headers, the data as the
body), shaped like the examples in googleapis/google-cloudevents:

- Cloud Storage ``google.cloud.storage.object.v1.{finalized,deleted,metadataUpdated}``:
  source ``//storage.googleapis.com/projects/_/buckets/BUCKET``, subject
  ``objects/NAME``, the ``bucket`` extension, data = the object resource
  (``StorageObjectData``), built from localcloud's storage notifications.
- Pub/Sub ``google.cloud.pubsub.topic.v1.messagePublished``: source
  ``//pubsub.googleapis.com/projects/P/topics/T``, data =
  ``{"message": {...}, "subscription": ...}`` (``MessagePublishedData``).
"""

from __future__ import annotations

import base64
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

STORAGE_TYPES = {
    "google.cloud.storage.object.v1.finalized": "OBJECT_FINALIZE",
    "google.cloud.storage.object.v1.deleted": "OBJECT_DELETE",
    "google.cloud.storage.object.v1.metadataUpdated": "OBJECT_METADATA_UPDATE",
}
PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
PATH_PATTERN = "match-path-pattern"


@dataclass(frozen=True)
class Provider:
    name: str
    display_name: str
    event_types: dict[str, str]
    required: tuple[str, ...]
    path_pattern_attributes: tuple[str, ...] = field(default=())


PROVIDERS = {
    "storage.googleapis.com": Provider(
        "storage.googleapis.com",
        "Cloud Storage",
        {t: f"The object was {t.rsplit('.', 1)[-1]}." for t in STORAGE_TYPES},
        ("type", "bucket"),
        ("subject",),
    ),
    "pubsub.googleapis.com": Provider(
        "pubsub.googleapis.com",
        "Cloud Pub/Sub",
        {PUBSUB_TYPE: "A message was published to the Pub/Sub topic."},
        ("type",),
    ),
}


def provider_of(event_type: str) -> Provider | None:
    for provider in PROVIDERS.values():
        if event_type in provider.event_types:
            return provider
    return None


def path_matches(pattern: str, value: str) -> bool:
    """Eventarc path patterns: ``*`` matches within one segment, ``**`` any segments."""
    pat = [p for p in pattern.strip("/").split("/") if p]
    parts = [p for p in value.strip("/").split("/") if p]

    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(parts)
        if pat[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], pat[i]) and match(i + 1, j + 1)

    return match(0, 0)


def storage_event(event_type: str, message: Any) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """(ce headers, body, attributes for filtering) for a storage notification message."""
    attrs = message.attributes
    bucket = attrs.get("bucketId", "")
    name = attrs.get("objectId", "")
    headers = {
        "ce-specversion": "1.0",
        "ce-id": message.message_id,
        "ce-type": event_type,
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "ce-subject": f"objects/{name}",
        "ce-time": attrs.get("eventTime") or message.publish_time.ToJsonString(),
        "ce-bucket": bucket,
        "Content-Type": "application/json; charset=utf-8",
    }
    return headers, message.data, {"bucket": bucket, "subject": f"objects/{name}"}


def pubsub_event(
    message: Any, topic: str, subscription: str
) -> tuple[dict[str, str], bytes, dict[str, str]]:
    body: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "messageId": message.message_id,
            "message_id": message.message_id,
            "publishTime": message.publish_time.ToJsonString(),
            "publish_time": message.publish_time.ToJsonString(),
        },
        "subscription": subscription,
    }
    if message.attributes:
        body["message"]["attributes"] = dict(message.attributes)
    if message.ordering_key:
        body["message"]["orderingKey"] = message.ordering_key
    headers = {
        "ce-specversion": "1.0",
        "ce-id": message.message_id,
        "ce-type": PUBSUB_TYPE,
        "ce-source": f"//pubsub.googleapis.com/{topic}",
        "ce-time": message.publish_time.ToJsonString(),
        "Content-Type": "application/json; charset=utf-8",
    }
    return headers, json.dumps(body).encode(), {"topic": topic}
