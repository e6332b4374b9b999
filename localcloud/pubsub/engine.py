"""The Pub/Sub engine: topics, subscriptions, publish fan-out, leases and their ends.

State lives in memory (served from there) and is written through to SQLite before a
caller is answered: a Publish returns only once its messages are committed, an
Acknowledge once the backlog rows are gone. Each subscription has a pump task for lease
deadlines, backoff and retention, and, for push subscriptions, a push worker.

Limitations (also in docs/compatibility.md): snapshots and seek are not implemented;
``retain_acked_messages`` is stored but acknowledged messages are not kept; a delivery
attempt count survives a restart only once the message has been nacked or has expired;
when an ordered message is nacked, later messages of its key that are already leased are
not redelivered with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import field_mask_pb2

from localcloud.core.db import Database, Write, together
from localcloud.core.errors import AlreadyExists, InvalidArgument, NotFound
from localcloud.pubsub import names, store
from localcloud.pubsub.filter import Filter, FilterError, parse_filter
from localcloud.pubsub.queue import Consumer, Entry, Message, SubscriptionQueue

LOG = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 10 * 1000 * 1000
# One Pull/StreamingPull response stays under 4 MiB: with PUBSUB_EMULATOR_HOST the official
# clients open a plain insecure channel, whose receive limit is gRPC's default 4 MiB. (A
# single message above that still goes out alone; such a client cannot receive it, as with
# Google's own emulator.)
MAX_RESPONSE_BYTES = 3 * 1024 * 1024 + 512 * 1024
MAX_ATTRIBUTES = 100
DEFAULT_ACK_DEADLINE = 10
DEFAULT_RETENTION = 7 * 24 * 3600
DEFAULT_EXPIRATION_TTL = 31 * 24 * 3600


@dataclass(eq=False)
class SubState:
    pb: Any  # google.pubsub.v1.Subscription (protobuf)
    queue: SubscriptionQueue
    filter: Filter | None
    created: float
    pump: asyncio.Task | None = None
    push: Any = None  # push.PushWorker
    consumers: set[Consumer] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.pb.name

    @property
    def is_push(self) -> bool:
        return bool(self.pb.push_config.push_endpoint)


def ack_id(entry: Entry) -> str:
    return f"{entry.seq:x}-{entry.attempt:x}"


def parse_ack_id(value: str) -> tuple[int, int]:
    try:
        seq, attempt = value.split("-")
        return int(seq, 16), int(attempt, 16)
    except ValueError:
        raise InvalidArgument(
            f"You have passed an invalid ack ID to the service (ack_id={value})."
        ) from None


def _duration_seconds(duration: Any, default: float) -> float:
    seconds = duration.seconds + duration.nanos / 1e9
    return seconds if seconds > 0 else default


# What Eventarc sets on its subscriptions: (subscription, entry) -> (body, headers), or
# None to acknowledge the message without delivering it.
PushFormatter = Callable[[SubState, Entry], Any]


class PubSub:
    """All topics and subscriptions of every project."""

    def __init__(self, db: Database, *, push_backoff: tuple[float, float] = (0.1, 60.0)) -> None:
        self.db = db
        self.push_backoff = push_backoff
        loaded = store.init(db)
        self.seq = loaded.max_seq
        self.topics = loaded.topics
        self.subs: dict[str, SubState] = {}
        self.topic_subs: dict[str, set[str]] = {}
        self.push_factory: Callable[[PubSub, SubState], Any] | None = None
        # Push subscriptions whose messages another service shapes (Eventarc's CloudEvents):
        # formatter(sub, entry) -> (body, headers), or None to acknowledge without delivery.
        self.push_formatters: dict[str, PushFormatter] = {}
        # Eventarc's ``Trigger.retry_policy.max_attempts`` on its subscriptions: a message
        # whose delivery failed this many times is dropped. Pub/Sub itself has no such
        # limit (only a dead-letter policy ends redelivery), so users' own subscriptions
        # never get one.
        self.push_attempts: dict[str, int] = {}
        # Called with a deleted topic's or subscription's name (e.g. to drop its IAM policy).
        self.on_delete: list[Callable[[str], Awaitable[None]]] = []
        self.stopping = False
        self._creating: set[str] = set()
        for pb, created in loaded.subscriptions:
            self._install(pb, created)
        messages: dict[int, Message] = {}
        for sub_name, seq, attempt in loaded.backlog:
            st = self.subs.get(sub_name)
            pb = loaded.messages.get(seq)
            if st is None or pb is None:
                continue
            msg = messages.get(seq)
            if msg is None:
                ts = pb.publish_time.seconds + pb.publish_time.nanos / 1e9
                msg = messages[seq] = Message(seq, pb, pb.ByteSize(), ts)
            msg.refs += 1
            st.queue.add(Entry(msg, attempt=attempt), notify=False)
        LOG.info(
            "pubsub loaded %d topics, %d subscriptions, %d messages",
            len(self.topics),
            len(self.subs),
            len(messages),
        )

    # -- lifecycle ----------------------------------------------------------------------
    def _install(self, pb: Any, created: float) -> SubState:
        flt = parse_filter(pb.filter) if pb.filter else None
        st = SubState(pb, SubscriptionQueue(pb.enable_message_ordering), flt, created)
        self.subs[pb.name] = st
        self.topic_subs.setdefault(pb.topic, set()).add(pb.name)
        return st

    def _start_sub(self, st: SubState) -> None:
        if st.pump is None:
            st.pump = asyncio.get_running_loop().create_task(self._pump(st), name=f"pump {st.name}")
        self._sync_push(st)

    def _sync_push(self, st: SubState) -> None:
        if st.is_push and st.push is None and self.push_factory is not None:
            st.push = self.push_factory(self, st)
            st.push.start()
        elif not st.is_push and st.push is not None:
            st.push.stop()
            st.push = None

    async def start(self) -> None:
        for st in self.subs.values():
            self._start_sub(st)

    async def stop(self) -> None:
        """Close every stream with a retryable status and stop the background tasks."""
        from localcloud.core.errors import Unavailable

        self.stopping = True
        for st in self.subs.values():
            self._stop_sub(st, Unavailable("localcloud is shutting down; reconnect later"))
        tasks = [st.pump for st in self.subs.values() if st.pump]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _stop_sub(self, st: SubState, error: Exception) -> None:
        for consumer in list(st.consumers):
            consumer.close(error)
        if st.push is not None:
            st.push.stop()
            st.push = None

    # -- topics -------------------------------------------------------------------------
    def has_topic(self, name: str) -> bool:
        return name in self.topics

    def get_topic(self, name: str) -> Any:
        names.topic(name)
        topic = self.topics.get(name)
        if topic is None:
            raise NotFound(f"Resource not found (resource={name.rsplit('/', 1)[-1]}).")
        return topic

    async def create_topic(self, topic: Any) -> Any:
        names.topic(topic.name)
        if topic.name in self.topics:
            raise AlreadyExists(
                f"Resource already exists in the project (resource={topic.name.rsplit('/', 1)[-1]})."
            )
        if topic.HasField("message_retention_duration"):
            _check_retention(topic.message_retention_duration, "message_retention_duration")
        topic.state = 1  # ACTIVE
        await self.topics.put(topic)  # seen by a concurrent create before the commit
        return topic

    async def update_topic(self, topic: Any, mask: field_mask_pb2.FieldMask) -> Any:
        current = self.get_topic(topic.name)
        if not mask.paths:
            raise InvalidArgument("The update_mask in the UpdateTopicRequest must be set.")
        updated = type(current)()
        updated.CopyFrom(current)
        allowed = {"labels", "message_retention_duration", "message_storage_policy", "kms_key_name"}
        for path in mask.paths:
            if path not in allowed:
                raise InvalidArgument(f"Invalid update_mask provided: {path} cannot be updated.")
            _copy_field(topic, updated, path)
        if updated.HasField("message_retention_duration"):
            _check_retention(updated.message_retention_duration, "message_retention_duration")
        await self.topics.put(updated)
        return updated

    def list_topics(self, project: str) -> list[Any]:
        prefix = f"projects/{project}/topics/"
        return [t for n, t in sorted(self.topics.items()) if n.startswith(prefix)]

    async def delete_topic(self, name: str) -> None:
        self.get_topic(name)
        # Google keeps the subscriptions; their topic reads "_deleted-topic_".
        writes = [self.topics.stage_delete(name)]
        for sub_name in self.topic_subs.pop(name, set()):
            st = self.subs[sub_name]
            st.pb.topic = names.DELETED_TOPIC
            self.topic_subs.setdefault(names.DELETED_TOPIC, set()).add(sub_name)
            writes.append(store.put_subscription(st.pb, st.created))
        await self.db.write(together(*writes))
        await self._deleted(name)

    async def _deleted(self, name: str) -> None:
        for callback in self.on_delete:
            await callback(name)

    def topic_subscriptions(self, topic: str) -> list[str]:
        self.get_topic(topic)
        return sorted(self.topic_subs.get(topic, ()))

    # -- subscriptions ------------------------------------------------------------------
    def has_subscription(self, name: str) -> bool:
        return name in self.subs

    def format_pushes(
        self, subscription: str, formatter: PushFormatter | None, *, max_attempts: int = 0
    ) -> None:
        """Deliver ``subscription``'s pushes as ``formatter`` makes them (Eventarc's
        CloudEvents) instead of Pub/Sub's push body, dropping a message after
        ``max_attempts`` failed deliveries (0: redeliver as Pub/Sub does); None goes
        back to Pub/Sub's."""
        if formatter is None:
            self.push_formatters.pop(subscription, None)
        else:
            self.push_formatters[subscription] = formatter
        if formatter is not None and max_attempts > 0:
            self.push_attempts[subscription] = max_attempts
        else:
            self.push_attempts.pop(subscription, None)

    def get_subscription(self, name: str) -> SubState:
        names.subscription(name)
        st = self.subs.get(name)
        if st is None:
            raise NotFound(f"Resource not found (resource={name.rsplit('/', 1)[-1]}).")
        return st

    async def create_subscription(self, sub: Any) -> Any:
        names.subscription(sub.name)
        names.topic(sub.topic)
        if sub.name in self.subs or sub.name in self._creating:
            raise AlreadyExists(
                f"Resource already exists in the project (resource={sub.name.rsplit('/', 1)[-1]})."
            )
        if sub.topic not in self.topics:
            raise NotFound(f"Resource not found (resource={sub.topic.rsplit('/', 1)[-1]}).")
        _validate_subscription(sub)
        if not sub.ack_deadline_seconds:
            sub.ack_deadline_seconds = DEFAULT_ACK_DEADLINE
        if not sub.HasField("message_retention_duration"):
            sub.message_retention_duration.seconds = DEFAULT_RETENTION
        if not sub.HasField("expiration_policy"):
            sub.expiration_policy.ttl.seconds = DEFAULT_EXPIRATION_TTL
        sub.state = 1  # ACTIVE
        created = time.time()
        self._creating.add(sub.name)
        try:
            await _shielded(self._commit_subscription(sub, created))
        finally:
            self._creating.discard(sub.name)
        return sub

    async def _commit_subscription(self, sub: Any, created: float) -> None:
        await self.db.write(store.put_subscription(sub, created))
        self._start_sub(self._install(sub, created))

    async def update_subscription(self, sub: Any, mask: field_mask_pb2.FieldMask) -> Any:
        st = self.get_subscription(sub.name)
        if not mask.paths:
            raise InvalidArgument("The update_mask in the UpdateSubscriptionRequest must be set.")
        updated = type(st.pb)()
        updated.CopyFrom(st.pb)
        immutable = {"name", "topic", "filter", "enable_message_ordering"}
        for path in mask.paths:
            if path.split(".")[0] in immutable:
                raise InvalidArgument(f"Invalid update_mask provided: {path} cannot be updated.")
            if not _has_path(updated, path):
                raise InvalidArgument(f"Invalid update_mask provided: unknown field {path}.")
            _copy_field(sub, updated, path)
        _validate_subscription(updated)
        if not updated.ack_deadline_seconds:
            updated.ack_deadline_seconds = DEFAULT_ACK_DEADLINE
        st.pb = updated
        await self.db.write(store.put_subscription(updated, st.created))
        self._sync_push(st)
        return updated

    def list_subscriptions(self, project: str) -> list[Any]:
        prefix = f"projects/{project}/subscriptions/"
        return [st.pb for n, st in sorted(self.subs.items()) if n.startswith(prefix)]

    async def delete_subscription(self, name: str) -> None:
        st = self.get_subscription(name)
        del self.subs[name]
        self.topic_subs.get(st.pb.topic, set()).discard(name)
        self._stop_sub(st, NotFound(f"Resource not found (resource={name.rsplit('/', 1)[-1]})."))
        if st.pump:
            st.pump.cancel()
        orphaned = self._drop_refs(st.queue.clear())
        await self.db.write(store.delete_subscription(name, orphaned))
        await self._deleted(name)

    async def detach_subscription(self, name: str) -> None:
        st = self.get_subscription(name)
        st.pb.detached = True
        self.topic_subs.get(st.pb.topic, set()).discard(name)
        orphaned = self._drop_refs(entries := st.queue.clear())
        writes = [
            store.put_subscription(st.pb, st.created),
            store.remove([(name, e.seq) for e in entries], orphaned),
        ]
        await self.db.write(together(*writes))

    @staticmethod
    def _drop_refs(entries: Iterable[Entry]) -> list[int]:
        orphaned = []
        for entry in entries:
            entry.msg.refs -= 1
            if entry.msg.refs <= 0:
                orphaned.append(entry.seq)
        return orphaned

    # -- publish ------------------------------------------------------------------------
    async def publish(
        self, topic_name: str, messages: list[Any], *, also: Write | None = None
    ) -> list[str]:
        """Store and fan out; returns the message ids in request order.

        ``also``: a write of the caller's committed in the same transaction as the
        messages, for a record that must exist exactly when they do (what the storage
        notifier has announced)."""
        self.get_topic(topic_name)
        if not messages:
            raise InvalidArgument("The request contains no messages.")
        now = time.time()
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        rows: list[tuple[int, bytes]] = []
        fanout: list[tuple[str, int]] = []
        deliveries: list[tuple[SubState, Message]] = []
        subs = [
            self.subs[n]
            for n in self.topic_subs.get(topic_name, ())
            if not self.subs[n].pb.detached
        ]
        ids = []
        for pb in messages:
            self.seq += 1
            seq = self.seq
            pb.message_id = str(seq)
            published = pb.publish_time
            published.seconds, published.nanos = seconds, nanos
            msg = Message(seq, pb, pb.ByteSize(), now)
            ids.append(pb.message_id)
            wanted = False
            for st in subs:
                if st.filter is not None and not st.filter.matches(pb.attributes):
                    continue  # filtered out: acknowledged automatically, as in Google
                wanted = True
                msg.refs += 1
                fanout.append((st.name, seq))
                deliveries.append((st, msg))
            if wanted:
                rows.append((seq, pb.SerializeToString()))
        write = store.publish(topic_name, rows, fanout, self.seq)
        if also is not None:
            write = together(write, also)
        await _shielded(self._commit_publish(write, deliveries))
        return ids

    async def _commit_publish(self, write: Any, deliveries: list[tuple[SubState, Message]]) -> None:
        """Commit, then hand to the queues; shielded, so a cancelled call cannot commit
        messages that no subscriber would see until the next restart."""
        await self.db.write(write)
        touched = set()
        for st, msg in deliveries:
            if self.subs.get(st.name) is st:
                st.queue.add(Entry(msg), notify=False)
                touched.add(st)
        for st in touched:
            st.queue.notify()

    # -- delivery -----------------------------------------------------------------------
    def received(self, st: SubState, entries: list[Entry], into: Any) -> None:
        """Add ``entries`` to ``into``, a response's ``received_messages`` (built in place:
        a list handed to the response's constructor would be copied again)."""
        with_attempt = st.pb.HasField("dead_letter_policy")
        for entry in entries:
            rm = into.add(ack_id=ack_id(entry))
            rm.message.CopyFrom(entry.msg.pb)
            if with_attempt:
                rm.delivery_attempt = entry.attempt

    def attach(self, st: SubState, consumer: Consumer) -> None:
        st.consumers.add(consumer)

    def detach(self, st: SubState, consumer: Consumer) -> None:
        st.consumers.discard(consumer)
        st.queue.waiters.discard(consumer)

    async def next_batch(self, st: SubState, consumer: Consumer, limit: int = 1000) -> list[Entry]:
        """Wait until ``consumer`` may take messages and some are there; [] when closed."""
        while True:
            if consumer.closed:
                return []
            n, b = consumer.room()
            if n != 0 and b != 0 and not st.pb.detached:
                n = limit if n < 0 else min(n, limit)
                b = MAX_RESPONSE_BYTES if b < 0 else min(b, MAX_RESPONSE_BYTES)
                entries = st.queue.take(consumer, n, b)
                if entries:
                    st.queue.waiters.discard(consumer)
                    return entries
            consumer.wake.clear()
            st.queue.waiters.add(consumer)
            await consumer.wake.wait()

    def take(self, st: SubState, max_messages: int, deadline: float) -> list[Entry]:
        """Lease for a unary Pull (no flow-control holder)."""
        consumer = Consumer(deadline=deadline)
        entries = st.queue.take(consumer, max_messages, MAX_RESPONSE_BYTES)
        for entry in entries:  # a Pull's leases belong to no stream
            entry.holder = None
        return entries

    async def acknowledge(self, sub_name: str, ack_ids: Iterable[str]) -> None:
        st = self.get_subscription(sub_name)
        entries = []
        for value in ack_ids:
            seq, _attempt = parse_ack_id(value)
            entry = st.queue.ack(seq)
            if entry is not None:
                entries.append(entry)
        if entries:
            await self._forget(st, entries)

    async def ack_entries(self, st: SubState, entries: list[Entry]) -> None:
        gone = [e for e in entries if st.queue.ack(e.seq) is e]
        if gone:
            await self._forget(st, gone)

    async def _forget(self, st: SubState, entries: list[Entry]) -> None:
        """Persist removals; if the write fails, the entries come back (nothing is lost)."""
        orphaned = self._drop_refs(entries)
        try:
            await _shielded(
                self.db.write(store.remove([(st.name, e.seq) for e in entries], orphaned))
            )
        except Exception:
            for entry in entries:
                entry.msg.refs += 1
                if self.subs.get(st.name) is st and entry.seq not in st.queue.entries:
                    st.queue.add(entry)
            raise

    async def modify_ack_deadline(
        self, sub_name: str, ack_ids: Iterable[str], seconds: int
    ) -> None:
        st = self.get_subscription(sub_name)
        if not 0 <= seconds <= 600:
            raise InvalidArgument(
                f"Invalid ack deadline given: {seconds}. The ack deadline must be between "
                "0 and 600 seconds."
            )
        nacked = []
        for value in dict.fromkeys(ack_ids):
            entry = st.queue.lease_of(*parse_ack_id(value))
            if entry is None:
                continue  # expired or acknowledged already: ignored, as Google does
            if seconds == 0:
                nacked.append(entry)
            else:
                st.queue.extend(entry, seconds)
        if nacked:
            await self.redeliver(st, nacked)

    async def redeliver(self, st: SubState, entries: list[Entry]) -> None:
        """Nacked or lapsed leases: dead-letter those out of attempts, back off the rest."""
        policy = st.pb.dead_letter_policy if st.pb.HasField("dead_letter_policy") else None
        limit = self.push_attempts.get(st.name, 0)
        dead: list[Entry] = []
        dropped: list[Entry] = []
        seen: set[int] = set()
        for entry in entries:
            if (
                not entry.leased
                or entry.seq in seen
                or st.queue.entries.get(entry.seq) is not entry
            ):
                continue  # acknowledged, or already handled in this call
            seen.add(entry.seq)
            if limit and entry.attempt >= limit:
                dropped.append(entry)
                continue
            if policy is not None and entry.attempt >= (policy.max_delivery_attempts or 5):
                if policy.dead_letter_topic in self.topics:
                    dead.append(entry)
                    continue
                LOG.warning(
                    "dead-letter topic %s of %s does not exist; message %s stays",
                    policy.dead_letter_topic,
                    st.name,
                    entry.msg.pb.message_id,
                )
            st.queue.requeue(entry, self._backoff(st, entry.attempt))
            self.db.write_nowait(store.set_attempt(st.name, entry.seq, entry.attempt))
        if dropped:
            for entry in dropped:
                LOG.info(
                    "message %s of %s dropped after %d failed deliveries (max_attempts %d)",
                    entry.msg.pb.message_id,
                    st.name,
                    entry.attempt,
                    limit,
                )
            await self.ack_entries(st, dropped)
        if dead:
            try:
                await self._dead_letter(st, policy, dead)
            except Exception:
                LOG.exception("dead-lettering from %s failed; retrying later", st.name)
                for entry in dead:
                    if entry.leased and st.queue.entries.get(entry.seq) is entry:
                        st.queue.requeue(entry, max(self._backoff(st, entry.attempt), 1.0))

    def _backoff(self, st: SubState, attempt: int) -> float:
        if st.pb.HasField("retry_policy"):
            rp = st.pb.retry_policy
            lo = _duration_seconds(rp.minimum_backoff, 10.0)
            hi = _duration_seconds(rp.maximum_backoff, 600.0)
        elif st.is_push:
            lo, hi = self.push_backoff
        else:
            return 0.0
        return min(hi, lo * (2 ** max(attempt - 1, 0)))

    async def _dead_letter(self, st: SubState, policy: Any, entries: list[Entry]) -> None:
        project = names.subscription(st.name).project
        forwarded = []
        for entry in entries:
            src = entry.msg.pb
            pb = type(src)(data=src.data, ordering_key=src.ordering_key)
            pb.attributes.update(src.attributes)
            pb.attributes.update(
                {
                    "CloudPubSubDeadLetterSourceDeliveryCount": str(entry.attempt),
                    "CloudPubSubDeadLetterSourceSubscription": st.name.rsplit("/", 1)[-1],
                    "CloudPubSubDeadLetterSourceSubscriptionProject": project,
                    "CloudPubSubDeadLetterSourceTopicPublishTime": src.publish_time.ToJsonString(),
                }
            )
            forwarded.append(pb)
        await self.publish(policy.dead_letter_topic, forwarded)
        await self.ack_entries(st, entries)

    async def _pump(self, st: SubState) -> None:
        """Lease deadlines, backoff and retention of one subscription."""
        queue = st.queue
        while True:
            try:
                lapsed = queue.expired()
                if lapsed:
                    await self.redeliver(st, lapsed)
                queue.release_due()
                await self._expire_retention(st)
                at = queue.next_timer()
                queue.timer_at = at if at is not None else float("inf")
                timeout = 60.0 if at is None else min(max(at - queue.clock(), 0.0), 60.0)
                queue.pump_wake.clear()
                if timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queue.pump_wake.wait(), timeout)
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("pump of %s failed; retrying", st.name)
                await asyncio.sleep(1)

    async def _expire_retention(self, st: SubState) -> None:
        retention = _duration_seconds(st.pb.message_retention_duration, DEFAULT_RETENTION)
        horizon = time.time() - retention
        old = []
        for entry in st.queue.entries.values():
            if entry.msg.publish_ts >= horizon:
                break
            if not entry.leased:
                old.append(entry)
        if old:
            await self.ack_entries(st, old)


async def _shielded(coro: Any) -> Any:
    """Run ``coro`` to the end even if the caller is cancelled (state and disk agree)."""
    return await asyncio.shield(asyncio.ensure_future(coro))


def _check_retention(duration: Any, field_name: str) -> None:
    seconds = duration.seconds + duration.nanos / 1e9
    if not 600 <= seconds <= 31 * 24 * 3600:
        raise InvalidArgument(
            f"Invalid {field_name}: must be between 10 minutes and 31 days, got {seconds:g}s."
        )


def _validate_subscription(sub: Any) -> None:
    if sub.ack_deadline_seconds and not 10 <= sub.ack_deadline_seconds <= 600:
        raise InvalidArgument(
            f"Invalid ack_deadline_seconds: {sub.ack_deadline_seconds}. "
            "It must be between 10 and 600 seconds."
        )
    if sub.filter:
        try:
            parse_filter(sub.filter)
        except FilterError as exc:
            raise InvalidArgument(str(exc)) from None
    if sub.HasField("message_retention_duration"):
        _check_retention(sub.message_retention_duration, "message_retention_duration")
    if sub.HasField("dead_letter_policy"):
        dlp = sub.dead_letter_policy
        names.topic(dlp.dead_letter_topic)
        if dlp.max_delivery_attempts and not 5 <= dlp.max_delivery_attempts <= 100:
            raise InvalidArgument(
                f"Invalid dead_letter_policy.max_delivery_attempts: {dlp.max_delivery_attempts}. "
                "It must be between 5 and 100."
            )
        if not dlp.max_delivery_attempts:
            dlp.max_delivery_attempts = 5
    if sub.HasField("retry_policy"):
        rp = sub.retry_policy
        lo = _duration_seconds(rp.minimum_backoff, 10.0)
        hi = _duration_seconds(rp.maximum_backoff, 600.0)
        if not (0 <= lo <= 600 and 0 <= hi <= 600 and lo <= hi):
            raise InvalidArgument(
                "Invalid retry_policy: minimum_backoff and maximum_backoff must be between "
                "0 and 600 seconds, minimum not above maximum."
            )
    endpoint = sub.push_config.push_endpoint
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise InvalidArgument(
            f"Invalid push_config.push_endpoint: {endpoint!r} is not an http(s) URL."
        )


def _has_path(message: Any, path: str) -> bool:
    """True when ``path`` names a field; paths into maps, lists or scalars are not fields."""
    target = message
    parts = path.split(".")
    for i, part in enumerate(parts):
        field_desc = target.DESCRIPTOR.fields_by_name.get(part)
        if field_desc is None:
            return False
        if i == len(parts) - 1:
            return True
        if field_desc.message_type is None or field_desc.is_repeated:
            return False
        target = getattr(target, part)
    return True


def _copy_field(src: Any, dst: Any, path: str) -> None:
    """Copy one field-mask path from ``src`` to ``dst`` (absent in ``src`` clears it)."""
    *parents, last = path.split(".")
    for part in parents:
        src, dst = getattr(src, part), getattr(dst, part)
    desc = dst.DESCRIPTOR.fields_by_name[last]
    if desc.is_repeated or (
        desc.message_type is not None and desc.message_type.GetOptions().map_entry
    ):
        dst.ClearField(last)
        getattr(dst, last).MergeFrom(getattr(src, last))
    elif desc.message_type is not None:
        if src.HasField(last):
            getattr(dst, last).CopyFrom(getattr(src, last))
        else:
            dst.ClearField(last)
    else:
        setattr(dst, last, getattr(src, last))
