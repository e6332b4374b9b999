"""``google.pubsub.v1`` Publisher and Subscriber: parse and check requests, call the engine.

Messages arrive and leave as the client libraries' protobuf types; the engine does the
work. The Python client's StreamingPull sends acks and modacks as unary calls and only
heartbeats on the stream; other clients send them on the stream, and both are handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

from localcloud.core.errors import (
    FailedPrecondition,
    GoogleError,
    Internal,
    InvalidArgument,
    Unavailable,
    Unimplemented,
)
from localcloud.core.iam import Resolver
from localcloud.core.paging import page
from localcloud.core.wire import handler_for, rpc
from localcloud.pubsub import names
from localcloud.pubsub.engine import MAX_ATTRIBUTES, MAX_REQUEST_BYTES, PubSub
from localcloud.pubsub.queue import Consumer

LOG = logging.getLogger(__name__)
Empty = empty_pb2.Empty
RESPONSE_WINDOW = 0.005  # seconds between two responses on a busy StreamingPull stream


def check_publish(request: types.PublishRequest) -> None:
    """Everything Publish checks before the engine sees the request: the topic's name and
    Google's limits. Every way in (gRPC, a workflow's connector) goes through here."""
    names.topic(request.topic)
    check_messages(request)


def check_messages(request: types.PublishRequest) -> None:
    """Google's publish limits, each violation named."""
    value_limit = 1024
    size = request.ByteSize()
    if size > MAX_REQUEST_BYTES:
        raise InvalidArgument(
            f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes "
            f"(this request has {size})."
        )
    for i, msg in enumerate(request.messages):
        attributes = msg.attributes
        if not attributes and not msg.data:
            raise InvalidArgument(
                f"Message {i} is empty: each message must contain either non-empty data, "
                "or at least one attribute."
            )
        if attributes:
            _check_attributes(i, attributes, value_limit)
        key = msg.ordering_key  # over 1024 bytes takes over 256 characters
        if len(key) > 256 and len(key.encode()) > 1024:
            raise InvalidArgument(f"Message {i}: ordering_key exceeds 1024 bytes.")


def _check_attributes(i: int, attributes: Mapping[str, str], value_limit: int) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(
            f"Message {i} has {len(attributes)} attributes; the maximum is {MAX_ATTRIBUTES}."
        )
    for key, value in attributes.items():
        if len(key.encode()) > 256:
            raise InvalidArgument(f"Message {i}: attribute key {key[:40]!r}... exceeds 256 bytes.")
        if len(value.encode()) > value_limit:
            raise InvalidArgument(
                f"Message {i}: the value of attribute {key!r} exceeds {value_limit} bytes."
            )
        if key.startswith("goog"):
            raise InvalidArgument(
                f"Message {i}: attribute key {key!r} is reserved (keys must not start with goog)."
            )


class Publisher:
    SERVICE = "google.pubsub.v1.Publisher"

    def __init__(self, engine: PubSub) -> None:
        self.engine = engine

    @rpc("CreateTopic", types.Topic, types.Topic)
    async def create_topic(self, request, context):
        return await self.engine.create_topic(request)

    @rpc("UpdateTopic", types.UpdateTopicRequest, types.Topic)
    async def update_topic(self, request, context):
        return await self.engine.update_topic(request.topic, request.update_mask)

    @rpc("Publish", types.PublishRequest, types.PublishResponse)
    async def publish(self, request, context):
        check_publish(request)
        ids = await self.engine.publish(request.topic, list(request.messages))
        return types.PublishResponse.pb()(message_ids=ids)

    @rpc("GetTopic", types.GetTopicRequest, types.Topic)
    async def get_topic(self, request, context):
        return self.engine.get_topic(request.topic)

    @rpc("ListTopics", types.ListTopicsRequest, types.ListTopicsResponse)
    async def list_topics(self, request, context):
        project = names.project(request.project)
        items, token = page(self.engine.list_topics(project), request.page_size, request.page_token)
        return types.ListTopicsResponse.pb()(topics=items, next_page_token=token)

    @rpc(
        "ListTopicSubscriptions",
        types.ListTopicSubscriptionsRequest,
        types.ListTopicSubscriptionsResponse,
    )
    async def list_topic_subscriptions(self, request, context):
        subs = self.engine.topic_subscriptions(request.topic)
        items, token = page(subs, request.page_size, request.page_token)
        return types.ListTopicSubscriptionsResponse.pb()(subscriptions=items, next_page_token=token)

    @rpc("ListTopicSnapshots", types.ListTopicSnapshotsRequest, types.ListTopicSnapshotsResponse)
    async def list_topic_snapshots(self, request, context):
        self.engine.get_topic(request.topic)
        return types.ListTopicSnapshotsResponse.pb()()

    @rpc("DeleteTopic", types.DeleteTopicRequest, Empty)
    async def delete_topic(self, request, context):
        await self.engine.delete_topic(request.topic)
        return Empty()

    def subscription_topic(self, subscription: str) -> str | None:
        """The topic a subscription is attached to: DetachSubscription is checked there
        (core/permissions.json); None for no such subscription."""
        st = self.engine.subs.get(subscription)
        return st.pb.topic if st is not None else None

    @rpc("DetachSubscription", types.DetachSubscriptionRequest, types.DetachSubscriptionResponse)
    async def detach_subscription(self, request, context):
        await self.engine.detach_subscription(request.subscription)
        return types.DetachSubscriptionResponse.pb()()

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)


class Subscriber:
    SERVICE = "google.pubsub.v1.Subscriber"

    def __init__(self, engine: PubSub) -> None:
        self.engine = engine

    @rpc("CreateSubscription", types.Subscription, types.Subscription)
    async def create_subscription(self, request, context):
        return await self.engine.create_subscription(request)

    @rpc("GetSubscription", types.GetSubscriptionRequest, types.Subscription)
    async def get_subscription(self, request, context):
        return self.engine.get_subscription(request.subscription).pb

    @rpc("UpdateSubscription", types.UpdateSubscriptionRequest, types.Subscription)
    async def update_subscription(self, request, context):
        return await self.engine.update_subscription(request.subscription, request.update_mask)

    @rpc("ListSubscriptions", types.ListSubscriptionsRequest, types.ListSubscriptionsResponse)
    async def list_subscriptions(self, request, context):
        project = names.project(request.project)
        subs = self.engine.list_subscriptions(project)
        items, token = page(subs, request.page_size, request.page_token)
        return types.ListSubscriptionsResponse.pb()(subscriptions=items, next_page_token=token)

    @rpc("DeleteSubscription", types.DeleteSubscriptionRequest, Empty)
    async def delete_subscription(self, request, context):
        await self.engine.delete_subscription(request.subscription)
        return Empty()

    @rpc("ModifyAckDeadline", types.ModifyAckDeadlineRequest, Empty)
    async def modify_ack_deadline(self, request, context):
        await self.engine.modify_ack_deadline(
            request.subscription, request.ack_ids, request.ack_deadline_seconds
        )
        return Empty()

    @rpc("Acknowledge", types.AcknowledgeRequest, Empty)
    async def acknowledge(self, request, context):
        await self.engine.acknowledge(request.subscription, request.ack_ids)
        return Empty()

    @rpc("ModifyPushConfig", types.ModifyPushConfigRequest, Empty)
    async def modify_push_config(self, request, context):
        sub = types.Subscription.pb()(name=request.subscription)
        sub.push_config.CopyFrom(request.push_config)
        mask = types.UpdateSubscriptionRequest.pb()().update_mask
        mask.paths.append("push_config")
        await self.engine.update_subscription(sub, mask)
        return Empty()

    @rpc("Pull", types.PullRequest, types.PullResponse)
    async def pull(self, request, context):
        st = self.engine.get_subscription(request.subscription)
        if request.max_messages <= 0:
            raise InvalidArgument("max_messages must be greater than 0.")
        if st.is_push:
            raise FailedPrecondition(
                f"Subscription {st.name} is a push subscription; pull is refused."
            )
        entries = self.engine.take(st, request.max_messages, st.pb.ack_deadline_seconds)
        if not entries and not request.return_immediately:
            # Wait a while for messages, as Google's Pull does, then answer (maybe empty).
            remaining = context.time_remaining()
            wait = 10.0 if remaining is None else max(min(remaining - 0.5, 10.0), 0.0)
            consumer = Consumer(
                max_messages=request.max_messages, deadline=st.pb.ack_deadline_seconds
            )
            self.engine.attach(st, consumer)
            try:
                entries = await asyncio.wait_for(self.engine.next_batch(st, consumer), wait)
            except TimeoutError:
                entries = []
            finally:
                self.engine.detach(st, consumer)
            for entry in entries:
                entry.holder = None  # a Pull's leases belong to no stream
        response = types.PullResponse.pb()()
        self.engine.received(st, entries, response.received_messages)
        return response

    @rpc(
        "StreamingPull",
        types.StreamingPullRequest,
        types.StreamingPullResponse,
        request_streaming=True,
        response_streaming=True,
    )
    async def streaming_pull(self, requests, context) -> AsyncIterator:
        requests = requests.__aiter__()
        first = await anext(requests, None)
        if first is None:
            return
        if self.engine.stopping:
            raise Unavailable("localcloud is shutting down; reconnect later")
        if not first.subscription:
            raise InvalidArgument("The first StreamingPullRequest must name a subscription.")
        st = self.engine.get_subscription(first.subscription)
        deadline = first.stream_ack_deadline_seconds
        if not 10 <= deadline <= 600:
            raise InvalidArgument(
                f"Invalid stream_ack_deadline_seconds: {deadline}. It must be between 10 and 600."
            )
        if st.is_push:
            raise FailedPrecondition(
                f"Subscription {st.name} is a push subscription; StreamingPull is refused."
            )
        consumer = Consumer(
            max_messages=max(first.max_outstanding_messages, 0),
            max_bytes=max(first.max_outstanding_bytes, 0),
            deadline=deadline,
        )
        self.engine.attach(st, consumer)
        reader = asyncio.create_task(self._read_stream(st, consumer, first, requests))
        props = types.StreamingPullResponse.pb().SubscriptionProperties(
            message_ordering_enabled=st.pb.enable_message_ordering
        )
        loop = asyncio.get_running_loop()
        last_sent = 0.0
        try:
            while True:
                # A busy stream gets at most one response per window, so messages published
                # close together share a response (and the client's one modack per response);
                # an idle stream answers at once.
                wait = last_sent + RESPONSE_WINDOW - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                entries = await self.engine.next_batch(st, consumer)
                if not entries:
                    break
                last_sent = loop.time()
                response = types.StreamingPullResponse.pb()(subscription_properties=props)
                self.engine.received(st, entries, response.received_messages)
                yield response
        finally:
            self.engine.detach(st, consumer)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if consumer.close_error is not None:
            raise consumer.close_error

    async def _read_stream(self, st, consumer: Consumer, first, requests) -> None:
        """Acks, modacks and deadline changes sent on the stream; its end closes it."""
        try:
            request = first
            while True:
                if request.stream_ack_deadline_seconds:
                    consumer.deadline = min(max(request.stream_ack_deadline_seconds, 10), 600)
                if request.ack_ids:
                    await self.engine.acknowledge(st.name, request.ack_ids)
                for ack_ids, seconds in _modacks(request):
                    await self.engine.modify_ack_deadline(st.name, ack_ids, seconds)
                request = await anext(requests, None)
                if request is None:
                    break
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            raise
        except GoogleError as exc:
            consumer.close(exc)  # e.g. a bad ack id: the stream ends with its code, as in Google
            return
        except Exception as exc:
            LOG.exception("stream of %s failed", st.name)
            consumer.close(Internal(f"internal error: {exc}"))
            return
        if not consumer.closed:
            consumer.close()

    @rpc("GetSnapshot", types.GetSnapshotRequest, types.Snapshot)
    async def get_snapshot(self, request, context):
        raise _no_snapshots()

    @rpc("ListSnapshots", types.ListSnapshotsRequest, types.ListSnapshotsResponse)
    async def list_snapshots(self, request, context):
        names.project(request.project)
        return types.ListSnapshotsResponse.pb()()

    @rpc("CreateSnapshot", types.CreateSnapshotRequest, types.Snapshot)
    async def create_snapshot(self, request, context):
        raise _no_snapshots()

    @rpc("UpdateSnapshot", types.UpdateSnapshotRequest, types.Snapshot)
    async def update_snapshot(self, request, context):
        raise _no_snapshots()

    @rpc("DeleteSnapshot", types.DeleteSnapshotRequest, Empty)
    async def delete_snapshot(self, request, context):
        raise _no_snapshots()

    @rpc("Seek", types.SeekRequest, types.SeekResponse)
    async def seek(self, request, context):
        raise _no_snapshots()

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(self.SERVICE, self)


def _modacks(request) -> list[tuple[list[str], int]]:
    if len(request.modify_deadline_ack_ids) != len(request.modify_deadline_seconds):
        raise InvalidArgument(
            "modify_deadline_seconds and modify_deadline_ack_ids must have the same length."
        )
    groups: dict[int, list[str]] = {}
    for ack, seconds in zip(
        request.modify_deadline_ack_ids, request.modify_deadline_seconds, strict=False
    ):
        groups.setdefault(seconds, []).append(ack)
    return [(ack_ids, seconds) for seconds, ack_ids in groups.items()]


def _no_snapshots() -> Unimplemented:
    return Unimplemented(
        "Snapshots and Seek are not supported by localcloud (see docs/compatibility.md)."
    )


TOPIC_PERMISSIONS = {
    "pubsub.topics.attachSubscription",
    "pubsub.topics.delete",
    "pubsub.topics.detachSubscription",
    "pubsub.topics.get",
    "pubsub.topics.getIamPolicy",
    "pubsub.topics.publish",
    "pubsub.topics.setIamPolicy",
    "pubsub.topics.update",
    "pubsub.topics.updateTag",
}
SUBSCRIPTION_PERMISSIONS = {
    "pubsub.subscriptions.consume",
    "pubsub.subscriptions.delete",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.getIamPolicy",
    "pubsub.subscriptions.setIamPolicy",
    "pubsub.subscriptions.update",
}


def pubsub_resources(engine: PubSub) -> Resolver:
    """Which names are topics and subscriptions, for the IAM methods: whether each exists
    and the permissions valid on it (what TestIamPermissions may report)."""

    def resolve(resource: str) -> tuple[bool, set[str]] | None:
        parts = resource.split("/")
        if len(parts) != 4 or parts[0] != "projects":
            return None
        if parts[2] == "topics":
            names.topic(resource)
            return engine.has_topic(resource), TOPIC_PERMISSIONS
        if parts[2] == "subscriptions":
            names.subscription(resource)
            return engine.has_subscription(resource), SUBSCRIPTION_PERMISSIONS
        return None

    return resolve
