"""Cloud Storage through ``google.cloud.storage``, and its Pub/Sub object notifications.

Expectations come from Google's documentation:

- buckets and objects: https://cloud.google.com/storage/docs/json_api/v1
- preconditions: https://cloud.google.com/storage/docs/request-preconditions
- notifications: https://cloud.google.com/storage/docs/pubsub-notifications

localcloud publishes every bucket's notifications on one topic,
``projects/local-project/topics/localcloud-storage-events``; other tests may write to
other buckets at the same time, so each test subscribes with a filter on its own bucket.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.api_core.exceptions import NotFound, PreconditionFailed
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.protobuf import timestamp_pb2

from localcloud import testing

PROJECT = "local-project"
EVENTS_TOPIC = f"projects/{PROJECT}/topics/localcloud-storage-events"


@pytest.fixture
def gcs(localcloud: testing.Instance) -> storage.Client:
    """The official client, pointed at localcloud by STORAGE_EMULATOR_HOST."""
    return storage.Client(project=PROJECT, credentials=AnonymousCredentials())


@pytest.fixture
def make_bucket(gcs: storage.Client) -> Iterator[Callable[[], storage.Bucket]]:
    """Create uniquely named buckets; delete them (and their objects) after the test."""
    created: list[storage.Bucket] = []

    def make() -> storage.Bucket:
        bucket = gcs.create_bucket(f"lc-test-{uuid.uuid4().hex[:12]}")
        created.append(bucket)
        return bucket

    yield make
    for bucket in created:
        try:
            for blob in gcs.list_blobs(bucket.name):
                blob.delete()
            bucket.delete()
        except NotFound:
            pass


def _timestamp(text: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(text)  # raises ValueError unless RFC 3339
    return ts


def test_bucket_create_get_list(
    gcs: storage.Client, make_bucket: Callable[[], storage.Bucket]
) -> None:
    """A created bucket can be read back and is listed in its project."""
    bucket = make_bucket()
    fetched = gcs.get_bucket(bucket.name)
    assert fetched.name == bucket.name
    assert bucket.name in {b.name for b in gcs.list_buckets()}
    with pytest.raises(NotFound):
        gcs.get_bucket(f"lc-missing-{uuid.uuid4().hex[:12]}")


def test_object_upload_download(
    gcs: storage.Client, make_bucket: Callable[[], storage.Bucket]
) -> None:
    """An uploaded object downloads byte for byte, with its content type and size."""
    bucket = make_bucket()
    payload = bytes(range(256)) * 10
    bucket.blob("dir/data.bin").upload_from_string(payload, content_type="application/x-test")

    blob = bucket.get_blob("dir/data.bin")
    assert blob is not None
    assert blob.size == len(payload)
    assert blob.content_type == "application/x-test"
    assert blob.generation
    assert blob.download_as_bytes() == payload
    assert [b.name for b in gcs.list_blobs(bucket.name, prefix="dir/")] == ["dir/data.bin"]


def test_if_generation_match_zero_creates_only_once(
    make_bucket: Callable[[], storage.Bucket],
) -> None:
    """``ifGenerationMatch=0`` succeeds only when no live object has that name.

    https://cloud.google.com/storage/docs/request-preconditions#special-case
    """
    bucket = make_bucket()
    bucket.blob("once.txt").upload_from_string(b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob("once.txt").upload_from_string(b"second", if_generation_match=0)
    assert bucket.blob("once.txt").download_as_bytes() == b"first"


def _collect_events(
    subscriber: Any, subscription: str, wanted: set[str], timeout: float = 15.0
) -> dict[str, list[Any]]:
    """Pull and acknowledge until every event type in ``wanted`` arrived (or ``timeout``)."""
    events: dict[str, list[Any]] = {}
    deadline = time.monotonic() + timeout
    while not wanted <= events.keys() and time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 10}, timeout=2.5
        )
        if not response.received_messages:
            continue
        for received in response.received_messages:
            message = received.message
            events.setdefault(message.attributes["eventType"], []).append(message)
        subscriber.acknowledge(
            request={
                "subscription": subscription,
                "ack_ids": [r.ack_id for r in response.received_messages],
            }
        )
    missing = wanted - events.keys()
    assert not missing, f"no {sorted(missing)} notification within {timeout:g}s; got {events}"
    return events


def _check_notification(message: Any, bucket: str, name: str, generation: int) -> dict:
    """The attributes every notification carries; returns the JSON_API_V1 payload.

    https://cloud.google.com/storage/docs/pubsub-notifications#attributes
    """
    attrs = dict(message.attributes)
    assert attrs["notificationConfig"].startswith(
        f"projects/_/buckets/{bucket}/notificationConfigs/"
    )
    assert attrs["payloadFormat"] == "JSON_API_V1"
    assert attrs["bucketId"] == bucket
    assert attrs["objectId"] == name
    assert attrs["objectGeneration"] == str(generation)
    _timestamp(attrs["eventTime"])
    payload = json.loads(message.data)
    assert payload["kind"] == "storage#object"
    assert payload["bucket"] == bucket
    assert payload["name"] == name
    # int64 fields are JSON strings in the JSON API.
    assert payload["generation"] == str(generation)
    return payload


@pytest.fixture
def bucket_events(
    make_bucket: Callable[[], storage.Bucket], local_subscription: Callable[..., str]
) -> tuple[storage.Bucket, str]:
    """A new bucket and a pull subscription to the notifications of that bucket only."""
    bucket = make_bucket()
    sub = local_subscription(
        EVENTS_TOPIC, "storage-events", filter=f'attributes.bucketId = "{bucket.name}"'
    )
    return bucket, sub


def test_finalize_notification(subscriber: Any, bucket_events: tuple[storage.Bucket, str]) -> None:
    """A new object publishes OBJECT_FINALIZE with its object resource as the payload.

    https://cloud.google.com/storage/docs/pubsub-notifications#events
    """
    bucket, sub = bucket_events
    body = b'{"hello": "storage"}'
    blob = bucket.blob("reports/today.json")
    blob.upload_from_string(body, content_type="application/json")
    assert blob.generation

    (finalize,) = _collect_events(subscriber, sub, {"OBJECT_FINALIZE"})["OBJECT_FINALIZE"]
    payload = _check_notification(finalize, bucket.name, blob.name, blob.generation)
    assert payload["size"] == str(len(body))
    assert payload["contentType"] == "application/json"
    assert payload["metageneration"] == "1"


def test_metadata_update_notification(
    subscriber: Any, bucket_events: tuple[storage.Bucket, str]
) -> None:
    """Patching metadata publishes OBJECT_METADATA_UPDATE with the object's new metadata.

    Known difference (docs/compatibility.md): Google keeps the generation and bumps the
    metageneration (https://cloud.google.com/storage/docs/metadata#generation-number);
    fake-gcs-server gives the patched object a new generation, so the notification names
    the generation the client now sees.
    """
    bucket, sub = bucket_events
    blob = bucket.blob("notes.txt")
    blob.upload_from_string(b"some notes", content_type="text/plain")
    _collect_events(subscriber, sub, {"OBJECT_FINALIZE"})

    blob.metadata = {"color": "blue"}
    blob.patch()

    events = _collect_events(subscriber, sub, {"OBJECT_METADATA_UPDATE"})
    assert "OBJECT_FINALIZE" not in events
    (update,) = events["OBJECT_METADATA_UPDATE"]
    payload = _check_notification(update, bucket.name, blob.name, blob.generation)
    assert payload["metadata"] == {"color": "blue"}
    assert payload["size"] == str(len(b"some notes"))
    assert payload["contentType"] == "text/plain"


def test_delete_notification(subscriber: Any, bucket_events: tuple[storage.Bucket, str]) -> None:
    """Deleting an object publishes OBJECT_DELETE naming the deleted generation.

    https://cloud.google.com/storage/docs/pubsub-notifications#events
    """
    bucket, sub = bucket_events
    blob = bucket.blob("gone.bin")
    blob.upload_from_string(b"\x00" * 42)
    generation = blob.generation
    _collect_events(subscriber, sub, {"OBJECT_FINALIZE"})

    blob.delete()
    events = _collect_events(subscriber, sub, {"OBJECT_DELETE"})
    (delete,) = events["OBJECT_DELETE"]
    payload = _check_notification(delete, bucket.name, blob.name, generation)
    assert payload["size"] == "42"
