"""Functions: serialized ``Function`` protos, kept in memory and written through."""

from __future__ import annotations

from typing import Any

from google.cloud.functions_v2 import types

from localcloud.core.db import Database
from localcloud.core.table import Column, ProtoTable

FunctionPb = types.Function.pb()


def _parent(function: Any) -> str:
    return str(function.name).rsplit("/functions/", 1)[0]


class FunctionStore:
    def __init__(self, db: Database) -> None:
        self.functions: ProtoTable[str, Any] = ProtoTable(
            db, "functions_v2", FunctionPb, columns=[Column("parent", _parent)], parent="parent"
        )
