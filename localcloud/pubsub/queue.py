"""One subscription's delivery state: what is waiting, leased, delayed, and for whom.

Pure in-memory bookkeeping with no I/O, so the engine decides policy (dead letters,
backoff, persistence) and this module only answers "what can be delivered now".

- Unordered messages wait in ``ready`` in publish order.
- With message ordering on, messages with an ordering key wait in a per-key queue; a key
  is delivered only while none of its messages is leased, and then as a run of
  consecutive messages, so a subscriber never sees a key's messages out of order.
- A lease ends by ack, by a nack (deadline 0) or by its deadline lapsing; the engine then
  requeues the entry, possibly after a backoff (``delayed``).
- ``Consumer`` is a StreamingPull stream, a waiting Pull or a push worker: it holds leases
  and has room for more according to its flow control.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class Message:
    """A published message, shared by every subscription that receives it."""

    seq: int
    pb: Any  # google.pubsub.v1.PubsubMessage (protobuf)
    size: int
    publish_ts: float  # wall clock, for retention
    refs: int = 0


@dataclass(slots=True, eq=False)
class Entry:
    """A message in one subscription's backlog."""

    msg: Message
    attempt: int = 0  # deliveries so far
    leased: bool = False
    expiry: float = 0.0
    available_at: float = 0.0
    holder: Consumer | None = None

    @property
    def seq(self) -> int:
        return self.msg.seq

    @property
    def key(self) -> str:
        return self.msg.pb.ordering_key


@dataclass(eq=False)
class Consumer:
    """Who receives: its flow control, its ack deadline and its wake-up signal."""

    max_messages: int = 0  # 0: no limit
    max_bytes: int = 0  # 0: no limit
    deadline: float = 10.0
    outstanding: int = 0
    outstanding_bytes: int = 0
    closed: bool = False
    close_error: Exception | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def room(self) -> tuple[int, int]:
        """(messages, bytes) this consumer may still take; 0 means none, -1 no limit."""
        n = -1 if not self.max_messages else max(self.max_messages - self.outstanding, 0)
        b = -1 if not self.max_bytes else max(self.max_bytes - self.outstanding_bytes, 0)
        return n, b

    def close(self, error: Exception | None = None) -> None:
        self.closed = True
        self.close_error = error
        self.wake.set()


class SubscriptionQueue:
    def __init__(self, ordered: bool, clock: Any = time.monotonic) -> None:
        self.ordered = ordered
        self.clock = clock
        self.entries: dict[int, Entry] = {}
        self.ready: deque[Entry] = deque()
        self.key_queues: dict[str, deque[Entry]] = {}
        self.key_leased: Counter[str] = Counter()
        self.ready_keys: deque[str] = deque()
        self._ready_key_set: set[str] = set()
        self.leases: list[tuple[float, int, int]] = []
        self.delayed: list[tuple[float, int]] = []
        self.waiters: set[Consumer] = set()
        self.pump_wake = asyncio.Event()
        self.timer_at = float("inf")
        self._stale = 0  # acknowledged entries possibly still in ``ready``

    def __len__(self) -> int:
        return len(self.entries)

    # -- arrival ------------------------------------------------------------------------
    def add(self, entry: Entry, *, notify: bool = True) -> None:
        self.entries[entry.seq] = entry
        if self.ordered and entry.key:
            self._queue_keyed(entry)
        else:
            self.ready.append(entry)
        if notify:
            self.notify()

    def notify(self) -> None:
        for consumer in self.waiters:
            consumer.wake.set()

    def _queue_keyed(self, entry: Entry) -> None:
        q = self.key_queues.setdefault(entry.key, deque())
        if not q or q[-1].seq < entry.seq:
            q.append(entry)
        elif entry.seq < q[0].seq:
            q.appendleft(entry)  # the usual requeue: the key's oldest message
        else:
            q.insert(bisect.bisect(q, entry.seq, key=lambda e: e.seq), entry)
        self._maybe_ready_key(entry.key)

    def _maybe_ready_key(self, key: str) -> None:
        if self.key_leased[key] or key in self._ready_key_set:
            return
        q = self.key_queues.get(key)
        if q and q[0].available_at <= self.clock():
            self.ready_keys.append(key)
            self._ready_key_set.add(key)

    # -- delivery -----------------------------------------------------------------------
    def take(self, consumer: Consumer | None, max_messages: int, max_bytes: int) -> list[Entry]:
        """Lease up to the given limits (-1: none) to ``consumer``; at least one if any."""
        out: list[Entry] = []
        budget_n = max_messages if max_messages >= 0 else 1 << 30
        budget_b = max_bytes if max_bytes >= 0 else 1 << 62
        deadline = consumer.deadline if consumer else 10.0
        now = self.clock()
        while budget_n > 0 and (budget_b > 0 or not out):
            if self.ready:
                entry = self.ready.popleft()
                if entry.leased or self.entries.get(entry.seq) is not entry:
                    continue  # acknowledged or re-leased since it was queued
                if entry.available_at > now:
                    continue  # the delayed heap brings it back
                if out and entry.msg.size > budget_b:
                    self.ready.appendleft(entry)  # next response
                    break
                self._lease(entry, consumer, deadline, now)
                out.append(entry)
                budget_n -= 1
                budget_b -= entry.msg.size
            elif self.ready_keys:
                key = self.ready_keys.popleft()
                self._ready_key_set.discard(key)
                q = self.key_queues.get(key)
                no_room = False
                while q and budget_n > 0:
                    if q[0].available_at > now:
                        break  # backing off: release_due makes the key ready again
                    if out and q[0].msg.size > budget_b:
                        no_room = True
                        break
                    entry = q.popleft()
                    self._lease(entry, consumer, deadline, now)
                    self.key_leased[key] += 1
                    out.append(entry)
                    budget_n -= 1
                    budget_b -= entry.msg.size
                if q is not None and not q:
                    del self.key_queues[key]
                elif no_room and not self.key_leased[key]:
                    # Nothing of this key went out: it stays first in line for the next take.
                    self.ready_keys.appendleft(key)
                    self._ready_key_set.add(key)
                    break
            else:
                break
        if out:
            expiry = out[0].expiry
            if expiry < self.timer_at:
                self.pump_wake.set()
        return out

    def _lease(self, entry: Entry, consumer: Consumer | None, deadline: float, now: float) -> None:
        entry.attempt += 1
        entry.leased = True
        entry.expiry = now + deadline
        entry.holder = consumer
        if consumer is not None:
            consumer.outstanding += 1
            consumer.outstanding_bytes += entry.msg.size
        heapq.heappush(self.leases, (entry.expiry, entry.seq, entry.attempt))

    def _release(self, entry: Entry) -> None:
        entry.leased = False
        holder, entry.holder = entry.holder, None
        if holder is not None:
            holder.outstanding -= 1
            holder.outstanding_bytes -= entry.msg.size
            holder.wake.set()
        if self.ordered and entry.key:
            self.key_leased[entry.key] -= 1
            if self.key_leased[entry.key] <= 0:
                del self.key_leased[entry.key]

    # -- lease ends ---------------------------------------------------------------------
    def ack(self, seq: int) -> Entry | None:
        """Remove an entry for good; None when it is not (or no longer) in the backlog."""
        entry = self.entries.pop(seq, None)
        if entry is None:
            return None
        if not entry.leased:
            self._stale += 1
            if self._stale > 64 and self._stale * 2 > len(self.ready):
                self._compact()
        if entry.leased:
            self._release(entry)
            if self.ordered and entry.key:
                self._maybe_ready_key(entry.key)
                self.notify()
        elif self.ordered and entry.key:
            q = self.key_queues.get(entry.key)
            if q is not None and entry in q:
                q.remove(entry)
                if not q:
                    del self.key_queues[entry.key]
        return entry

    def _compact(self) -> None:
        """Drop acknowledged entries still sitting in ``ready`` (they hold message bodies)."""
        self.ready = deque(e for e in self.ready if self.entries.get(e.seq) is e and not e.leased)
        self._stale = 0

    def lease_of(self, seq: int, attempt: int) -> Entry | None:
        """The entry if ``(seq, attempt)`` names its current lease."""
        entry = self.entries.get(seq)
        if entry is None or not entry.leased or entry.attempt != attempt:
            return None
        return entry

    def extend(self, entry: Entry, seconds: float, now: float | None = None) -> None:
        entry.expiry = (self.clock() if now is None else now) + seconds
        heapq.heappush(self.leases, (entry.expiry, entry.seq, entry.attempt))
        if len(self.leases) > 4096 and len(self.leases) > 4 * len(self.entries):
            self._rebuild_leases()
        if entry.expiry < self.timer_at:
            self.pump_wake.set()

    def requeue(self, entry: Entry, delay: float) -> None:
        """Make a leased (or lapsed) entry deliverable again after ``delay`` seconds."""
        if not entry.leased:
            return  # already waiting: requeueing twice would deliver it twice
        self._release(entry)
        entry.available_at = self.clock() + delay if delay > 0 else 0.0
        if delay > 0:
            heapq.heappush(self.delayed, (entry.available_at, entry.seq))
            if entry.available_at < self.timer_at:
                self.pump_wake.set()
        if self.ordered and entry.key:
            self._queue_keyed(entry)
        elif delay <= 0:
            self.ready.appendleft(entry)
        if delay <= 0:
            self.notify()

    def _rebuild_leases(self) -> None:
        """Drop stale heap tuples left by extensions and acks."""
        self.leases = [(e.expiry, e.seq, e.attempt) for e in self.entries.values() if e.leased]
        heapq.heapify(self.leases)

    def expired(self) -> list[Entry]:
        """Leases whose deadline has passed (still leased, same attempt)."""
        now = self.clock()
        out = []
        while self.leases and self.leases[0][0] <= now:
            expiry, seq, attempt = heapq.heappop(self.leases)
            entry = self.entries.get(seq)
            if entry and entry.leased and entry.attempt == attempt and entry.expiry == expiry:
                out.append(entry)
        return out

    def release_due(self) -> None:
        """Delayed entries whose backoff has passed become deliverable."""
        now = self.clock()
        woke = False
        while self.delayed and self.delayed[0][0] <= now:
            _at, seq = heapq.heappop(self.delayed)
            entry = self.entries.get(seq)
            if entry is None or entry.leased:
                continue
            woke = True
            if self.ordered and entry.key:
                self._maybe_ready_key(entry.key)
            else:
                self.ready.append(entry)
        if woke:
            self.notify()

    def next_timer(self) -> float | None:
        times = []
        if self.leases:
            times.append(self.leases[0][0])
        if self.delayed:
            times.append(self.delayed[0][0])
        return min(times) if times else None

    def clear(self) -> list[Entry]:
        """Drop everything (subscription deleted or detached); returns what was dropped."""
        dropped = list(self.entries.values())
        for entry in dropped:
            if entry.leased:
                self._release(entry)
        self.entries.clear()
        self.ready.clear()
        self.key_queues.clear()
        self.ready_keys.clear()
        self._ready_key_set.clear()
        self.leases.clear()
        self.delayed.clear()
        return dropped
