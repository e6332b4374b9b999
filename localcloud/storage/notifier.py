"""Object notifications in Google's format, as durable as the objects they announce.

Cloud Storage publishes a notification for every object finalized, deleted or updated
(https://cloud.google.com/storage/docs/pubsub-notifications): attributes
``notificationConfig``, ``eventType``, ``payloadFormat``, ``bucketId``, ``objectId``,
``objectGeneration``, ``eventTime`` (and ``overwroteGeneration``/``overwrittenByGeneration``
when a write replaced an object), and the JSON_API_V1 object resource as the payload.
localcloud publishes them for every bucket to ``config.storage_events_topic``.

The storage front (``front.py``) answers every write, and it announces each one before it
answers: the notification is published and the object's row in ``storage_announced``
(bucket, name: the resource last announced) is written in the same SQLite transaction
(``PubSub.publish(..., also=...)``). So a write that was answered has its notification
committed (a SIGKILL right after cannot lose it), and the table always says exactly what
was announced. At start, before the front opens its port, ``recover`` compares every
bucket's objects with the table and announces what a crash left unsaid: an object
stored by the backend whose answer never reached the front (OBJECT_FINALIZE), one whose
metageneration moved on (OBJECT_METADATA_UPDATE), one announced but gone (OBJECT_DELETE).
Each change is announced once: the announcement and its row commit together.

A data directory of the earlier design (fake-gcs-server published raw events to an
internal topic, republished from here) is taken over once: raw events still waiting are
announced, and the objects already stored count as announced (they were, by then).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.pubsub_v1.types import PubsubMessage, Topic

from localcloud.core.config import Config
from localcloud.core.db import Database
from localcloud.pubsub.engine import PubSub
from localcloud.storage import layout

LOG = logging.getLogger(__name__)
MessagePb = PubsubMessage.pb()

FINALIZE = "OBJECT_FINALIZE"
METADATA_UPDATE = "OBJECT_METADATA_UPDATE"
DELETE = "OBJECT_DELETE"
SCHEMA = """
CREATE TABLE IF NOT EXISTS storage_announced (
    bucket TEXT NOT NULL,
    name TEXT NOT NULL,
    resource TEXT NOT NULL,
    PRIMARY KEY (bucket, name)
);
"""
SEEDED = "storage_announced_seeded"  # meta key: the table describes the objects stored
# The earlier design's internal topic, where fake-gcs-server published its own events.
LEGACY_TOPIC = "projects/localcloud-internal/topics/storage-raw-events"
LEGACY_SUBSCRIPTION = "projects/localcloud-internal/subscriptions/storage-raw-events-notifier"

Key = tuple[str, str]


def events_topic(config: Config) -> str:
    return f"projects/{config.project}/topics/{config.storage_events_topic}"


@dataclass
class Event:
    """One notification: its type, the object resource it carries, extra attributes."""

    kind: str
    resource: dict[str, Any]
    attributes: dict[str, str] = field(default_factory=dict)


def key_of(resource: Mapping[str, Any]) -> Key:
    return str(resource.get("bucket", "")), str(resource.get("name", ""))


def generation_of(resource: Mapping[str, Any]) -> str:
    return str(resource.get("generation") or "0")


def metageneration_of(resource: Mapping[str, Any]) -> int:
    try:
        return int(resource.get("metageneration") or 1)
    except (TypeError, ValueError):
        return 1


def payload(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource a notification carries: JSON_API_V1 without ACLs, int64s as strings."""
    out = {k: v for k, v in resource.items() if k != "acl"}
    out["generation"] = generation_of(resource)
    out["metageneration"] = str(metageneration_of(resource))
    out["size"] = str(resource.get("size") or "0")
    return out


def message(event: Event, config: Config) -> Any:
    """Google's notification message for ``event``."""
    bucket, name = key_of(event.resource)
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    # The time of the change: the backend's ``updated`` for a write, now for a delete.
    when = now if event.kind == DELETE else str(event.resource.get("updated") or now)
    pb = MessagePb(data=json.dumps(event.resource).encode())
    pb.attributes.update(
        {
            "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/localcloud",
            "eventType": event.kind,
            "payloadFormat": "JSON_API_V1",
            "bucketId": bucket,
            "objectId": name,
            "objectGeneration": generation_of(event.resource),
            "eventTime": when,
            **event.attributes,
        }
    )
    return pb


class Notifier:
    """Announces object changes; owns the ``storage_announced`` table."""

    def __init__(self, engine: PubSub, db: Database, config: Config) -> None:
        self.engine = engine
        self.db = db
        self.config = config
        seeded = bool(db.query("SELECT 1 FROM meta WHERE key=?", (SEEDED,)))
        db.execute_script(SCHEMA)
        # Until the first recovery of this design, objects stored count as announced.
        self.seeding = not seeded
        self.announced: dict[Key, dict[str, Any]] = {
            (bucket, name): json.loads(resource)
            for bucket, name, resource in db.query(
                "SELECT bucket, name, resource FROM storage_announced"
            )
        }

    async def start(self) -> None:
        topic = events_topic(self.config)
        if not self.engine.has_topic(topic):
            await self.engine.create_topic(Topic.pb()(name=topic))
        await self._take_over_legacy()

    async def stop(self) -> None:
        """Nothing runs in the background: every announcement is awaited by its write."""

    # -- what the front calls, holding the object's lock, before it answers ---------------
    async def finalized(self, resource: dict[str, Any]) -> None:
        """A write made a new generation (upload, copy, rewrite, compose)."""
        await self._announce(self._finalize_events(payload(resource)))

    async def updated(self, resource: dict[str, Any]) -> None:
        """A patch or update changed the object's metadata."""
        await self._announce([Event(METADATA_UPDATE, payload(resource))])

    async def deleted(self, bucket: str, name: str, resource: dict[str, Any] | None) -> None:
        """The live object was deleted. The resource announced for it says what was (the
        backend's delete answer carries nothing); ``resource`` stands in if there is none."""
        gone = self.announced.get((bucket, name))
        if gone is None and resource is not None:
            gone = payload(resource)
        if gone is None:
            gone = {"kind": "storage#object", "bucket": bucket, "name": name}
        await self._announce([Event(DELETE, gone)])

    def has(self, bucket: str, name: str) -> bool:
        return (bucket, name) in self.announced

    def _finalize_events(self, resource: dict[str, Any]) -> list[Event]:
        """OBJECT_FINALIZE, after OBJECT_DELETE of the live object it replaced (no
        versioning), each naming the other's generation as Google's do."""
        previous = self.announced.get(key_of(resource))
        new = generation_of(resource)
        if previous is None or generation_of(previous) == new:
            return [Event(FINALIZE, resource)]
        old = generation_of(previous)
        return [
            Event(DELETE, previous, {"overwrittenByGeneration": new}),
            Event(FINALIZE, resource, {"overwroteGeneration": old}),
        ]

    # -- at start -----------------------------------------------------------------------
    async def recover(self, stored: Mapping[Key, dict[str, Any]]) -> None:
        """Announce what the objects ``stored`` (every bucket's, as the backend lists them,
        names decoded) say happened and the table does not: run before the front serves."""
        if self.seeding:
            await self._seed(stored)
            return
        events: list[Event] = []
        for key, found in stored.items():
            resource = payload(found)
            announced = self.announced.get(key)
            if announced is None or generation_of(announced) != generation_of(resource):
                events += self._finalize_events(resource)
            elif metageneration_of(resource) > metageneration_of(announced):
                events.append(Event(METADATA_UPDATE, resource))
        events += [Event(DELETE, gone) for key, gone in self.announced.items() if key not in stored]
        if events:
            LOG.warning(
                "storage: announcing %d object changes a crash left unannounced", len(events)
            )
            await self._announce(events)

    async def _seed(self, stored: Mapping[Key, dict[str, Any]]) -> None:
        rows = {key: payload(resource) for key, resource in stored.items()}

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM storage_announced")
            conn.executemany(
                "INSERT INTO storage_announced VALUES (?, ?, ?)",
                [(*key, json.dumps(resource)) for key, resource in rows.items()],
            )
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (SEEDED,))

        await self.db.write(write)
        self.announced = rows
        self.seeding = False
        if rows:
            LOG.info("storage: %d objects stored before this version count as announced", len(rows))

    async def _take_over_legacy(self) -> None:
        """Announce the raw events the earlier design left on its internal topic, then
        remove that topic (nothing publishes there any more)."""
        if self.engine.has_subscription(LEGACY_SUBSCRIPTION):
            st = self.engine.get_subscription(LEGACY_SUBSCRIPTION)
            found: list[Event | None] = []
            while entries := self.engine.take(st, 1000, 60.0):
                found += [_legacy_event(entry.msg.pb) for entry in entries]
            events = [e for e in found if e is not None]
            if events:
                LOG.info("storage: announcing %d events of the earlier design", len(events))
                await self._announce(events)
            await self.engine.delete_subscription(LEGACY_SUBSCRIPTION)
        if self.engine.has_topic(LEGACY_TOPIC):
            await self.engine.delete_topic(LEGACY_TOPIC)

    # -- the one write ------------------------------------------------------------------
    async def _announce(self, events: list[Event]) -> None:
        """Publish ``events`` and record each object's announced state, as one commit."""
        topic = events_topic(self.config)
        if not self.engine.has_topic(topic):
            LOG.warning("storage events topic %s was deleted; recreating it", topic)
            await self.engine.create_topic(Topic.pb()(name=topic))
        changes: dict[Key, dict[str, Any] | None] = {}
        for event in events:
            changes[key_of(event.resource)] = None if event.kind == DELETE else event.resource

        def record(conn: sqlite3.Connection) -> None:
            for key, resource in changes.items():
                if resource is None:
                    conn.execute("DELETE FROM storage_announced WHERE bucket=? AND name=?", key)
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO storage_announced VALUES (?, ?, ?)",
                        (*key, json.dumps(resource)),
                    )

        await self.engine.publish(topic, [message(e, self.config) for e in events], also=record)
        for key, resource in changes.items():
            if resource is None:
                self.announced.pop(key, None)
            else:
                self.announced[key] = resource


def _legacy_event(raw: Any) -> Event | None:
    """An event fake-gcs-server published in the earlier design (object names encoded)."""
    attrs = dict(raw.attributes)
    try:
        resource = json.loads(raw.data or b"{}")
        resource["name"] = layout.decode(attrs.get("objectId") or resource.get("name", ""))
    except (ValueError, TypeError, AttributeError):
        LOG.warning("storage: dropping an event of the earlier design that names no object")
        return None
    resource.setdefault("bucket", attrs.get("bucketId", ""))
    return Event(attrs.get("eventType", FINALIZE), payload(resource))
