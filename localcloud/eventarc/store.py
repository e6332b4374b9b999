"""Eventarc triggers: serialized ``Trigger`` protos, kept in memory and written through."""

from __future__ import annotations

from typing import Any

from google.cloud.eventarc_v1 import types

from localcloud.core.db import Database
from localcloud.core.table import ProtoTable

TriggerPb = types.Trigger.pb()


class TriggerStore:
    def __init__(self, db: Database) -> None:
        self.triggers: ProtoTable[str, Any] = ProtoTable(db, "eventarc_triggers", TriggerPb)
