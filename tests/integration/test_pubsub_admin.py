"""Topics and subscriptions through the official client, on localcloud and (parity) Google's emulator.

Expectations come from the Pub/Sub reference:
https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1 and
https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names.
"""

from __future__ import annotations

import threading

import pytest
from google.api_core import exceptions
from google.protobuf import field_mask_pb2

pytestmark = pytest.mark.parity


def test_topic_lifecycle(pubsub_target, make_topic):
    topic = make_topic(labels={"team": "core"})
    got = pubsub_target.publisher.get_topic(topic=topic)
    assert got.name == topic
    assert got.labels == {"team": "core"}
    names = {t.name for t in pubsub_target.publisher.list_topics(project="projects/local-project")}
    assert topic in names
    pubsub_target.publisher.delete_topic(topic=topic)
    with pytest.raises(exceptions.NotFound):
        pubsub_target.publisher.get_topic(topic=topic)


def test_create_existing_topic_is_already_exists(pubsub_target, make_topic):
    topic = make_topic()
    with pytest.raises(exceptions.AlreadyExists):
        pubsub_target.publisher.create_topic(name=topic)


@pytest.mark.parametrize(
    "topic_id",
    ["ab", "1starts-with-digit", "goog-reserved", "has space", "x" * 256, "bad/slash"],
)
def test_bad_topic_names_are_invalid_argument(pubsub_target, topic_id):
    with pytest.raises(exceptions.InvalidArgument):
        pubsub_target.publisher.create_topic(name=f"projects/local-project/topics/{topic_id}")


def test_publish_to_missing_topic_is_not_found(pubsub_target):
    missing = pubsub_target.topic_path("missing")
    with pytest.raises(exceptions.NotFound):
        pubsub_target.publisher.publish(missing, b"x").result(timeout=30)


def test_subscription_lifecycle(pubsub_target, make_topic, make_subscription):
    topic = make_topic()
    sub = make_subscription(topic, ack_deadline_seconds=30, labels={"a": "b"})
    got = pubsub_target.subscriber.get_subscription(subscription=sub)
    assert got.topic == topic
    assert got.ack_deadline_seconds == 30
    assert got.labels == {"a": "b"}
    listed = {
        s.name
        for s in pubsub_target.subscriber.list_subscriptions(project="projects/local-project")
    }
    assert sub in listed
    assert sub in set(pubsub_target.publisher.list_topic_subscriptions(topic=topic))

    updated = pubsub_target.subscriber.update_subscription(
        request={
            "subscription": {"name": sub, "ack_deadline_seconds": 45},
            "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"]),
        }
    )
    assert updated.ack_deadline_seconds == 45
    assert updated.labels == {"a": "b"}  # untouched by the mask

    pubsub_target.subscriber.delete_subscription(subscription=sub)
    with pytest.raises(exceptions.NotFound):
        pubsub_target.subscriber.get_subscription(subscription=sub)


def test_subscription_to_missing_topic_is_not_found(pubsub_target):
    with pytest.raises(exceptions.NotFound):
        pubsub_target.subscriber.create_subscription(
            name=pubsub_target.subscription_path(), topic=pubsub_target.topic_path("missing")
        )


def test_existing_subscription_is_already_exists(pubsub_target, make_topic, make_subscription):
    topic = make_topic()
    sub = make_subscription(topic)
    with pytest.raises(exceptions.AlreadyExists):
        pubsub_target.subscriber.create_subscription(name=sub, topic=topic)


def test_deleting_topic_keeps_subscriptions_as_deleted_topic(
    pubsub_target, make_topic, make_subscription
):
    """Google: a subscription outlives its topic, whose name then reads `_deleted-topic_`."""
    topic = make_topic()
    sub = make_subscription(topic)
    pubsub_target.publisher.delete_topic(topic=topic)
    assert pubsub_target.subscriber.get_subscription(subscription=sub).topic == "_deleted-topic_"


def test_bad_filter_is_invalid_argument(local_target, local_topic):
    """Google rejects a filter it cannot parse (the official emulator accepts it: no parity)."""
    topic = local_topic()
    with pytest.raises(exceptions.InvalidArgument, match="Invalid filter"):
        local_target.subscriber.create_subscription(
            request={
                "name": local_target.subscription_path(),
                "topic": topic,
                "filter": 'attributes.k = "v" AND',
            }
        )


def test_ack_deadline_out_of_range_is_invalid_argument(pubsub_target, make_topic):
    topic = make_topic()
    with pytest.raises(exceptions.InvalidArgument):
        pubsub_target.subscriber.create_subscription(
            name=pubsub_target.subscription_path(), topic=topic, ack_deadline_seconds=601
        )


def test_list_topics_pages(local_target, local_topic):
    """Page tokens: every topic exactly once across pages of 2."""
    made = {local_topic("paged") for _ in range(5)}
    pager = local_target.publisher.list_topics(
        request={"project": "projects/local-project", "page_size": 2}
    )
    seen = [t.name for t in pager]
    assert made <= set(seen)
    assert len(seen) == len(set(seen))


def test_update_immutable_field_is_invalid_argument(local_target, local_topic, local_subscription):
    sub = local_subscription(local_topic())
    with pytest.raises(exceptions.InvalidArgument, match="filter"):
        local_target.subscriber.update_subscription(
            request={
                "subscription": {"name": sub, "filter": "attributes:x"},
                "update_mask": field_mask_pb2.FieldMask(paths=["filter"]),
            }
        )


def test_update_mask_into_a_map_is_invalid_argument(local_target, local_topic, local_subscription):
    """A mask path must name a field; `labels.a` is a map key (Google: INVALID_ARGUMENT)."""
    sub = local_subscription(local_topic(), labels={"a": "b"})
    with pytest.raises(exceptions.InvalidArgument):
        local_target.subscriber.update_subscription(
            request={
                "subscription": {"name": sub, "labels": {"a": "c"}},
                "update_mask": field_mask_pb2.FieldMask(paths=["labels.a"]),
            }
        )


def test_concurrent_creates_of_one_subscription_one_wins(local_target, local_topic):
    topic = local_topic()
    name = local_target.subscription_path("race")
    results: list[str] = []

    def create() -> None:
        try:
            local_target.subscriber.create_subscription(name=name, topic=topic)
            results.append("created")
        except exceptions.AlreadyExists:
            results.append("exists")

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert sorted(results) == ["created", "exists", "exists", "exists"]
    finally:
        local_target.subscriber.delete_subscription(subscription=name)
