"""SQLite persistence with group commit, off the event loop.

Every service keeps its live state in memory and writes through to one SQLite database
(WAL mode) under the data directory. Writes are queued to one writer thread that runs
whatever is waiting in a single transaction and commits once, then resolves each
caller's future: under load many publishes share one commit, and a caller is answered
only after its rows are committed, so a Publish that returned survives a SIGKILL.

Each write runs inside its own SAVEPOINT, so one failing write rolls back alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

LOG = logging.getLogger(__name__)

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], Any]
_STOP = object()
SCHEMA_VERSION = 1
CHECKPOINT_INTERVAL = 0.5


def connect(path: Path, *, fsync: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL survives a killed process (the WAL is in the OS's hands once written);
    # FULL also survives a power cut, at the price of an fsync per commit.
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    # Checkpoints run in their own thread (Database._checkpoints), not inside commits,
    # where they would stall the writer for milliseconds at a time.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def together(*writes: Write) -> Write:
    """Several writes as one: they share a savepoint, so they commit or roll back together."""

    def write(conn: sqlite3.Connection) -> None:
        for each in writes:
            each(conn)

    return write


class Database:
    """One SQLite file: synchronous reads at start-up, queued group-committed writes after."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = connect(path, fsync=fsync)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self.fsync = fsync
        self.commits = 0
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._conn.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} was written by a newer localcloud (schema {row[0]} > {SCHEMA_VERSION})"
            )

    # -- start-up (before the loop serves) ---------------------------------------------
    def execute_script(self, sql: str) -> None:
        self._conn.executescript(sql)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read synchronously. Only for start-up loading, before writes begin."""
        return self._conn.execute(sql, params).fetchall()

    # -- running -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
            self._thread.start()
            self._stop_checkpoints.clear()
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="db-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _checkpoints(self) -> None:
        """Copy the WAL back into the database every half second, beside the writer."""
        conn = connect(self.path, fsync=self.fsync)
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_INTERVAL):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    LOG.warning("WAL checkpoint failed: %s", exc)
        finally:
            conn.close()

    async def write(self, fn: Write) -> Any:
        """Run ``fn(conn)`` in the writer thread; return once its transaction committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._queue.put((fn, loop, future))
        return await future

    def write_nowait(self, fn: Write) -> None:
        """Queue a write whose completion nobody waits for (still committed in order)."""
        self._queue.put((fn, None, None))

    def close(self) -> None:
        """Flush every queued write, then close. Safe to call twice."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join()
            self._checkpointer = None
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
        except sqlite3.ProgrammingError:
            pass

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            self._commit([item for item in batch if item is not _STOP])
            if stop:
                return

    def _commit(self, batch: list[tuple]) -> None:
        if not batch:
            return
        results: list[tuple[Any, bool]] = []
        conn = self._conn
        try:
            conn.execute("BEGIN")
            for fn, _loop, _future in batch:
                conn.execute("SAVEPOINT w")
                try:
                    results.append((fn(conn), True))
                    conn.execute("RELEASE w")
                except Exception as exc:
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    results.append((exc, False))
                    if _future is None:
                        LOG.error("background write failed", exc_info=exc)
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            LOG.exception("commit failed")
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            results = [(exc, False)] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple]] = {}
        for (_fn, loop, future), (value, ok) in zip(batch, results, strict=True):
            if future is not None:
                by_loop.setdefault(loop, []).append((future, value, ok))
        for loop, done in by_loop.items():  # one wake-up of each loop per commit
            loop.call_soon_threadsafe(_resolve, done)


def _resolve(done: list[tuple[asyncio.Future, Any, bool]]) -> None:
    for future, value, ok in done:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
