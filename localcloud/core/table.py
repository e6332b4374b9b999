"""One table of protobuf messages: live in memory, written through to SQLite.

Every service keeps its resources the same way. Reads come from a dict, because they are
on every request and must not wait for a thread. A write changes the dict first, before
any await, so a check-then-create (``if name in table: raise AlreadyExists``) cannot race
another request on the same loop; then it waits for the row's commit (``core/db.py``), so
a caller answered "created" finds the resource again after a SIGKILL. A row is the key
column(s), any plain columns a store wants SQL to see, and the message serialized in
``body``; the column layout is the one the services' hand-written tables used, so a data
directory made before this class still loads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from localcloud.core.db import Database, Write

M = TypeVar("M", bound=Message)
K = TypeVar("K", bound=Hashable)
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class Column(Generic[M]):
    """A plain column beside the body, taken from the message at each write.

    For what SQL itself needs to see: an order to load in, a parent to delete children
    by, or a column an older table already had and its rows must keep filling.
    """

    name: str
    of: Callable[[M], Any]
    type: str = "TEXT"


def _name(message: Any) -> Any:
    return message.name


class ProtoTable(Mapping[K, M], Generic[K, M]):
    """Messages of one type by key: a read-only mapping, changed only by awaited writes.

    ``key`` names the key column(s); with several the mapping's keys are tuples.
    ``key_of`` reads the key from a message (None where a message does not carry it, as
    an IAM policy does not name its resource: then ``put`` is given the key). ``parent``
    names a key column or a ``Column`` whose value groups rows, for ``children`` and
    deleting a resource's children with it; it is indexed in memory and in SQLite.
    """

    def __init__(
        self,
        db: Database,
        table: str,
        message_type: type[M],
        *,
        key: str | tuple[str, ...] = "name",
        key_of: Callable[[M], K] | None = _name,
        columns: Sequence[Column[M]] = (),
        parent: str | None = None,
        order_by: str | None = None,
    ) -> None:
        self._db = db
        self._table = table
        self._key = (key,) if isinstance(key, str) else key
        self._key_of = key_of
        self._columns = tuple(columns)
        self._parent = parent
        names = [table, *self._key, *(c.name for c in self._columns)]
        bad = [n for n in (*names, parent, order_by) if n and not _IDENTIFIER.fullmatch(n)]
        if bad:  # they are put into SQL as they are
            raise ValueError(f"table {table}: {bad} are not plain SQL names")
        if parent is not None and parent not in names[1:]:
            raise ValueError(f"table {table}: parent {parent!r} is neither a key nor a column")
        self._rows: dict[K, M] = {}
        self._parent_of: dict[K, str] = {}
        self._by_parent: dict[str, dict[K, None]] = {}  # insertion-ordered sets of keys
        all_columns = [*self._key, *(c.name for c in self._columns), "body"]
        where_key = " AND ".join(f"{k}=?" for k in self._key)
        self._upsert_sql = (
            f"INSERT OR REPLACE INTO {table}({', '.join(all_columns)}) "
            f"VALUES ({', '.join('?' * len(all_columns))})"
        )
        self._delete_sql = f"DELETE FROM {table} WHERE {where_key}"
        self._delete_children_sql = f"DELETE FROM {table} WHERE {parent}=?"
        db.execute_script(self._schema())
        keys = ", ".join(self._key)
        for *key_values, body in db.query(
            f"SELECT {keys}, body FROM {table} ORDER BY {order_by or keys}"
        ):
            self._remember(self._key_from(tuple(key_values)), message_type.FromString(body))

    def _schema(self) -> str:
        definitions = [
            *(f"{k} TEXT NOT NULL" for k in self._key),
            *(f"{c.name} {c.type} NOT NULL" for c in self._columns),
            "body BLOB NOT NULL",
            f"PRIMARY KEY ({', '.join(self._key)})",
        ]
        sql = f"CREATE TABLE IF NOT EXISTS {self._table} ({', '.join(definitions)});"
        if self._parent is not None and self._parent != self._key[0]:
            sql += (
                f"CREATE INDEX IF NOT EXISTS {self._table}_by_{self._parent} "
                f"ON {self._table}({self._parent});"
            )
        return sql

    # -- reading ---------------------------------------------------------------------------
    def __getitem__(self, key: K) -> M:
        return self._rows[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def children(self, parent: str) -> list[M]:
        """The messages whose parent column is ``parent``, oldest put first."""
        return [self._rows[k] for k in self._by_parent.get(parent, ())]

    # -- writing ---------------------------------------------------------------------------
    async def put(self, message: M, *, key: K | None = None, after_commit: bool = False) -> None:
        """Insert or replace; return once committed.

        The message itself is kept (not a copy), as the engines expect of their live
        objects. Readers see it at once, unless ``after_commit``: then they see the old
        value until the row is on disk (an operation must never be seen done and then,
        after a crash, running again). A write that fails puts memory back as it was.
        """
        key = self._key_for(message, key)
        write = self._upsert(key, message)
        if after_commit:
            await self._db.write(write)
            self._remember(key, message)
            return
        previous = self._rows.get(key)
        self._remember(key, message)
        try:
            await self._db.write(write)
        except Exception:
            if self._rows.get(key) is message:
                self._restore(key, previous)
            raise

    async def delete(self, key: K) -> None:
        """Remove (a missing key is no error); return once committed."""
        previous = self._rows.get(key)
        write = self.stage_delete(key)
        try:
            await self._db.write(write)
        except Exception:
            if key not in self._rows:
                self._restore(key, previous)
            raise

    # Staged changes: memory changes now and the returned write is the caller's to commit,
    # alone or with other tables' in one transaction (``db.together``), so a resource and
    # its children never survive a crash half deleted.
    def stage_put(self, message: M, *, key: K | None = None) -> Write:
        key = self._key_for(message, key)
        self._remember(key, message)
        return self._upsert(key, message)

    def stage_delete(self, key: K) -> Write:
        self._forget(key)
        values = self._key_values(key)
        sql = self._delete_sql
        return lambda conn: conn.execute(sql, values)

    def stage_delete_children(self, parent: str) -> Write:
        if self._parent is None:
            raise TypeError(f"{self._table} has no parent column")
        for key in list(self._by_parent.get(parent, ())):
            self._forget(key)
        sql = self._delete_children_sql
        return lambda conn: conn.execute(sql, (parent,))

    # -- inside ----------------------------------------------------------------------------
    def _key_for(self, message: M, key: K | None) -> K:
        if key is not None:
            return key
        if self._key_of is None:
            raise TypeError(f"{self._table}: messages do not carry their key; pass key=")
        return self._key_of(message)

    def _key_values(self, key: K) -> tuple:
        return key if len(self._key) > 1 else (key,)  # type: ignore[return-value]

    def _key_from(self, values: tuple) -> K:
        return values if len(self._key) > 1 else values[0]  # type: ignore[return-value]

    def _upsert(self, key: K, message: M) -> Write:
        # Serialized now: the caller may go on changing its live message before the commit.
        row = (
            *self._key_values(key),
            *(c.of(message) for c in self._columns),
            message.SerializeToString(),
        )
        sql = self._upsert_sql
        return lambda conn: conn.execute(sql, row)

    def _parent_value(self, key: K, message: M) -> str:
        if self._parent in self._key:
            return self._key_values(key)[self._key.index(self._parent)]
        return next(c.of(message) for c in self._columns if c.name == self._parent)

    def _remember(self, key: K, message: M) -> None:
        self._rows[key] = message
        if self._parent is None:
            return
        parent = self._parent_value(key, message)
        old = self._parent_of.get(key)
        if old != parent:
            self._unlink(key)
            self._parent_of[key] = parent
            self._by_parent.setdefault(parent, {})[key] = None

    def _forget(self, key: K) -> None:
        self._rows.pop(key, None)
        self._unlink(key)

    def _unlink(self, key: K) -> None:
        parent = self._parent_of.pop(key, None)
        if parent is not None:
            siblings = self._by_parent[parent]
            siblings.pop(key, None)
            if not siblings:
                del self._by_parent[parent]

    def _restore(self, key: K, previous: M | None) -> None:
        if previous is None:
            self._forget(key)
        else:
            self._remember(key, previous)
