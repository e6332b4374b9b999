"""Object notifications in Google's format, on one localcloud Pub/Sub topic.

fake-gcs-server publishes its own event shape to an internal topic; this task rewrites
each event the way Cloud Storage's Pub/Sub notifications look
(https://cloud.google.com/storage/docs/pubsub-notifications): attributes
``notificationConfig``, ``eventType``, ``payloadFormat``, ``bucketId``, ``objectId``,
``objectGeneration``, ``eventTime``, and a JSON_API_V1 object resource as the payload
(int64 fields as strings), then publishes it to ``config.storage_events_topic``.
fake-gcs-server knows objects by their encoded names (``layout.py``); the notifications
carry the names the clients gave.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

from google.pubsub_v1.types import PubsubMessage, Subscription, Topic

from localcloud.core.config import Config
from localcloud.pubsub.engine import PubSub
from localcloud.pubsub.queue import Consumer
from localcloud.storage import layout
from localcloud.storage.gcs import INTERNAL_PROJECT, RAW_TOPIC

LOG = logging.getLogger(__name__)
MessagePb = PubsubMessage.pb()


def events_topic(config: Config) -> str:
    return f"projects/{config.project}/topics/{config.storage_events_topic}"


KNOWN_OBJECTS = 10_000


def rewrite(raw: Any, config: Config, known: OrderedDict | None = None) -> Any:
    """Google's notification message for one fake-gcs-server event.

    fake-gcs-server's delete events carry no content fields (size 0, no hashes); Google's
    carry the deleted object's resource. ``known`` remembers the last resource seen per
    object so a delete notification can say what was deleted.
    """
    attrs = dict(raw.attributes)
    obj = json.loads(raw.data or b"{}")
    bucket = attrs.get("bucketId") or obj.get("bucket", "")
    name = attrs.get("objectId") or obj.get("name", "")
    try:
        name = layout.decode(name)
    except ValueError:
        LOG.warning("storage event for an object the front did not name: %r", name[:200])
    generation = str(attrs.get("objectGeneration") or obj.get("generation") or "0")
    base = f"http://{config.storage_address}"
    resource = {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{generation}",
        "selfLink": f"{base}/storage/v1/b/{bucket}/o/{quote(name, safe='')}",
        "mediaLink": f"{base}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
        f"?generation={generation}&alt=media",
        "name": name,
        "bucket": bucket,
        "generation": generation,
        "metageneration": str(obj.get("metageneration") or "1"),
        "contentType": obj.get("contentType") or "application/octet-stream",
        "timeCreated": obj.get("timeCreated", ""),
        "updated": obj.get("updated", ""),
        "storageClass": obj.get("storageClass") or "STANDARD",
        "size": str(obj.get("size") or "0"),
        "md5Hash": obj.get("md5Hash", ""),
        "crc32c": obj.get("crc32c", ""),
    }
    for key in ("contentEncoding", "metadata"):
        if obj.get(key):
            resource[key] = obj[key]
    event_type = attrs.get("eventType", "OBJECT_FINALIZE")
    if known is not None:
        object_key = (bucket, name)
        if event_type == "OBJECT_DELETE":
            previous = known.pop(object_key, None)
            if previous is not None and previous["generation"] == generation:
                # The deleted object's content fields, which the raw event lacks.
                for field in ("size", "md5Hash", "crc32c", "contentType", "metadata"):
                    if field in previous:
                        resource[field] = previous[field]
        else:
            known[object_key] = resource
            known.move_to_end(object_key)
            while len(known) > KNOWN_OBJECTS:
                known.popitem(last=False)
    message = MessagePb(data=json.dumps(resource).encode())
    message.attributes.update(
        {
            "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/localcloud",
            "eventType": event_type,
            "payloadFormat": "JSON_API_V1",
            "bucketId": bucket,
            "objectId": name,
            "objectGeneration": generation,
            "eventTime": attrs.get("eventTime") or obj.get("updated", ""),
        }
    )
    return message


class Notifier:
    def __init__(self, engine: PubSub, config: Config) -> None:
        self.engine = engine
        self.config = config
        self.raw_topic = f"projects/{INTERNAL_PROJECT}/topics/{RAW_TOPIC}"
        self.raw_sub = f"projects/{INTERNAL_PROJECT}/subscriptions/{RAW_TOPIC}-notifier"
        self.consumer = Consumer(max_messages=256, deadline=60)
        self.task: asyncio.Task | None = None
        self.known: OrderedDict = OrderedDict()

    async def start(self) -> None:
        for topic in (self.raw_topic, events_topic(self.config)):
            if not self.engine.has_topic(topic):
                await self.engine.create_topic(Topic.pb()(name=topic))
        if not self.engine.has_subscription(self.raw_sub):
            await self.engine.create_subscription(
                Subscription.pb()(name=self.raw_sub, topic=self.raw_topic, ack_deadline_seconds=60)
            )
        self.task = asyncio.get_running_loop().create_task(self._run(), name="storage notifier")

    async def stop(self) -> None:
        self.consumer.close()
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        st = self.engine.get_subscription(self.raw_sub)
        self.engine.attach(st, self.consumer)
        target = events_topic(self.config)
        while True:
            entries = await self.engine.next_batch(st, self.consumer)
            if not entries:
                return
            try:
                if not self.engine.has_topic(target):
                    LOG.warning("storage events topic %s was deleted; recreating it", target)
                    await self.engine.create_topic(Topic.pb()(name=target))
                await self.engine.publish(
                    target, [rewrite(e.msg.pb, self.config, self.known) for e in entries]
                )
                await self.engine.ack_entries(st, entries)
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("could not forward storage events; will retry")
                await self.engine.redeliver(st, entries)
                await asyncio.sleep(1)
