"""What the storage notifier announces at start: the recovery a crash may need.

The front announces each write before answering it (tests/integration/test_persistence.py
kills localcloud right after an upload); this checks the other half on a real SQLite
file and Pub/Sub engine: given the objects the backend holds, ``recover`` announces
exactly the changes the ``storage_announced`` table does not know of, once, and a data
directory of the earlier design starts with what it stores counted as announced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.pubsub_v1.types import Subscription

from localcloud.core.config import Config
from localcloud.core.db import Database
from localcloud.pubsub.engine import PubSub
from localcloud.storage.notifier import Notifier, events_topic

SUBSCRIPTION = "projects/local-project/subscriptions/events"


def obj(name: str, generation: int, metageneration: int = 1) -> dict[str, Any]:
    return {
        "kind": "storage#object",
        "bucket": "b",
        "name": name,
        "generation": str(generation),
        "metageneration": str(metageneration),
        "size": "3",
        "updated": "2026-01-02T03:04:05.000000Z",
        "acl": [{"entity": "projectOwner-local-project"}],
    }


def stored(*resources: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["bucket"], r["name"]): r for r in resources}


Sent = list[tuple[str, str, str, dict[str, str]]]
Pull = Callable[[], Awaitable[Sent]]


def with_notifier(data: Path, body: Callable[[Notifier, Pull], Awaitable[None]]) -> None:
    """Run ``body`` with a started notifier on ``data`` and a way to pull what it sent:
    (event type, object, generation, the other attributes) of each new message."""

    async def main() -> None:
        db = Database(data / "localcloud.db")
        engine = PubSub(db)
        config = Config(data_dir=data)
        notifier = Notifier(engine, db, config)
        db.start()
        try:
            await engine.start()
            await notifier.start()
            if not engine.has_subscription(SUBSCRIPTION):
                await engine.create_subscription(
                    Subscription.pb()(name=SUBSCRIPTION, topic=events_topic(config))
                )
            st = engine.get_subscription(SUBSCRIPTION)

            async def sent() -> Sent:
                entries = engine.take(st, 100, 60.0)
                out = []
                for entry in entries:
                    attrs = dict(entry.msg.pb.attributes)
                    extra = {k: v for k, v in attrs.items() if k.startswith("overw")}
                    out.append(
                        (attrs["eventType"], attrs["objectId"], attrs["objectGeneration"], extra)
                    )
                    assert '"acl"' not in entry.msg.pb.data.decode()
                await engine.ack_entries(st, entries)
                return out

            await body(notifier, sent)
        finally:
            await engine.stop()
            db.close()

    asyncio.run(main())


def test_recovery_announces_only_what_was_not_announced(tmp_path: Path) -> None:
    async def first(notifier: Notifier, sent: Pull) -> None:
        await notifier.recover({})  # a new data directory
        await notifier.finalized(obj("a", 1))
        await notifier.finalized(obj("gone", 1))
        assert await sent() == [
            ("OBJECT_FINALIZE", "a", "1", {}),
            ("OBJECT_FINALIZE", "gone", "1", {}),
        ]
        await notifier.recover(stored(obj("a", 1), obj("gone", 1)))
        assert await sent() == []  # all announced already

    async def after_a_crash(notifier: Notifier, sent: Pull) -> None:
        # Stored, never announced: a new generation of a, a new object; gone was deleted.
        await notifier.recover(stored(obj("a", 2), obj("new", 5)))
        assert sorted(await sent()) == [
            ("OBJECT_DELETE", "a", "1", {"overwrittenByGeneration": "2"}),
            ("OBJECT_DELETE", "gone", "1", {}),
            ("OBJECT_FINALIZE", "a", "2", {"overwroteGeneration": "1"}),
            ("OBJECT_FINALIZE", "new", "5", {}),
        ]
        await notifier.recover(stored(obj("a", 2, metageneration=2), obj("new", 5)))
        assert await sent() == [("OBJECT_METADATA_UPDATE", "a", "2", {})]

    async def again(notifier: Notifier, sent: Pull) -> None:
        await notifier.recover(stored(obj("a", 2, metageneration=2), obj("new", 5)))
        assert await sent() == []  # what was announced was recorded with it

    for body in (first, after_a_crash, again):
        with_notifier(tmp_path, body)


def test_objects_of_an_earlier_data_directory_count_as_announced(tmp_path: Path) -> None:
    async def upgraded(notifier: Notifier, sent: Pull) -> None:
        await notifier.recover(stored(obj("old", 1)))
        assert await sent() == []
        await notifier.deleted("b", "old", None)
        (deleted,) = await sent()
        assert deleted == ("OBJECT_DELETE", "old", "1", {})  # the resource it had

    with_notifier(tmp_path, upgraded)
