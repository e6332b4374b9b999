"""Eventarc triggers as rows of serialized ``Trigger`` protos."""

from __future__ import annotations

from typing import Any

from google.cloud.eventarc_v1 import types

from localcloud.core.db import Database

TriggerPb = types.Trigger.pb()
SCHEMA = "CREATE TABLE IF NOT EXISTS eventarc_triggers (name TEXT PRIMARY KEY, body BLOB NOT NULL);"


class TriggerStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.execute_script(SCHEMA)
        self.triggers: dict[str, Any] = {
            t.name: t
            for t in (
                TriggerPb.FromString(b) for (b,) in db.query("SELECT body FROM eventarc_triggers")
            )
        }

    async def put(self, trigger: Any) -> None:
        self.triggers[trigger.name] = trigger
        row = (trigger.name, trigger.SerializeToString())
        await self.db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO eventarc_triggers VALUES (?, ?)", row)
        )

    async def delete(self, name: str) -> None:
        self.triggers.pop(name, None)
        await self.db.write(
            lambda c: c.execute("DELETE FROM eventarc_triggers WHERE name=?", (name,))
        )
