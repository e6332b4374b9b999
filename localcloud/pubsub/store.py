"""Pub/Sub persistence beyond topics: subscriptions, messages and backlogs in SQLite.

Topics are a ``ProtoTable`` like every service's resources. The rest is not a table of
protos by name: a subscription lives in the engine with its queue and pump, and its row
carries a creation time its proto has no field for; a message is stored once under a
sequence number however many subscriptions want it; a backlog row is one (subscription,
message) with its attempt count. The engine keeps that live state in memory; these
functions build the writes that mirror it and load it back at start-up. A message row is
kept while any subscription's backlog row references it; acknowledging the last
reference deletes it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.pubsub_v1.types import PubsubMessage, Subscription, Topic

from localcloud.core.db import Database, Write
from localcloud.core.table import ProtoTable

SCHEMA = """
CREATE TABLE IF NOT EXISTS pubsub_subscriptions (
    name TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pubsub_messages (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pubsub_backlog (
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription, seq)
) WITHOUT ROWID;
"""

TopicPb = Topic.pb()
SubscriptionPb = Subscription.pb()
MessagePb = PubsubMessage.pb()


@dataclass
class Loaded:
    # The message types are generated at run time (Topic.pb()...): Any to the type checker.
    topics: ProtoTable[str, Any]
    subscriptions: list[tuple[Any, float]]
    messages: dict[int, Any]
    backlog: list[tuple[str, int, int]]
    max_seq: int


def init(db: Database) -> Loaded:
    db.execute_script(SCHEMA)
    # Messages no subscription still needs (e.g. a crash between ack and cleanup).
    db.execute_script(
        "DELETE FROM pubsub_messages WHERE seq NOT IN (SELECT seq FROM pubsub_backlog);"
    )
    topics: ProtoTable[str, Any] = ProtoTable(db, "pubsub_topics", TopicPb)
    subs = [
        (SubscriptionPb.FromString(b), created)
        for b, created in db.query("SELECT body, created FROM pubsub_subscriptions")
    ]
    messages = {
        seq: MessagePb.FromString(body)
        for seq, body in db.query("SELECT seq, body FROM pubsub_messages ORDER BY seq")
    }
    backlog = db.query("SELECT subscription, seq, attempt FROM pubsub_backlog ORDER BY seq")
    row = db.query("SELECT value FROM meta WHERE key='pubsub_max_seq'")
    max_seq = max([int(row[0][0])] if row else [0])
    if messages:
        max_seq = max(max_seq, max(messages))
    return Loaded(topics, subs, messages, backlog, max_seq)


def put_subscription(sub: Any, created: float) -> Write:
    name, body = sub.name, sub.SerializeToString()
    return lambda c: c.execute(
        "INSERT OR REPLACE INTO pubsub_subscriptions(name, body, created) VALUES (?, ?, ?)",
        (name, body, created),
    )


def delete_subscription(name: str, orphaned: Iterable[int]) -> Write:
    seqs = [(s,) for s in orphaned]

    def write(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM pubsub_subscriptions WHERE name=?", (name,))
        c.execute("DELETE FROM pubsub_backlog WHERE subscription=?", (name,))
        c.executemany("DELETE FROM pubsub_messages WHERE seq=?", seqs)

    return write


def publish(
    topic: str, messages: list[tuple[int, bytes]], fanout: list[tuple[str, int]], max_seq: int
) -> Write:
    """Insert the messages and one backlog row per (subscription, message) that wants it."""

    def write(c: sqlite3.Connection) -> None:
        if fanout:
            c.executemany(
                "INSERT INTO pubsub_messages(seq, topic, body) VALUES (?, ?, ?)",
                [(seq, topic, body) for seq, body in messages],
            )
            c.executemany("INSERT INTO pubsub_backlog(subscription, seq) VALUES (?, ?)", fanout)
        # Message ids stay unique across restarts even when nothing was stored.
        c.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('pubsub_max_seq', ?)", (str(max_seq),)
        )

    return write


def remove(entries: list[tuple[str, int]], orphaned: list[int]) -> Write:
    """Delete backlog rows (acknowledged, dead-lettered, expired) and unreferenced messages."""

    def write(c: sqlite3.Connection) -> None:
        c.executemany("DELETE FROM pubsub_backlog WHERE subscription=? AND seq=?", entries)
        if orphaned:
            c.executemany("DELETE FROM pubsub_messages WHERE seq=?", [(s,) for s in orphaned])

    return write


def set_attempt(subscription: str, seq: int, attempt: int) -> Write:
    return lambda c: c.execute(
        "UPDATE pubsub_backlog SET attempt=? WHERE subscription=? AND seq=?",
        (attempt, subscription, seq),
    )
