"""Publishing and receiving through the official client, the way applications do.

Each scenario marked ``parity`` runs against localcloud and against Google's official
emulator (when installed) with the same assertions. Expected behaviour from
https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1 and the guides cited.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1

from localcloud import testing


def pull_all(subscriber, sub: str, want: int, timeout: float = 15.0) -> list:
    """Pull until ``want`` messages arrived (or the time is up); does not ack."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": sub, "max_messages": want - len(got)}, timeout=5
        )
        got.extend(response.received_messages)
    return got


def stream(subscriber, sub: str, want: int, timeout: float = 15.0, ack: bool = True) -> list:
    """Receive over StreamingPull (SubscriberClient.subscribe) until ``want`` arrived."""
    got: list = []
    done = threading.Event()
    lock = threading.Lock()

    def callback(message) -> None:
        with lock:
            got.append(message)
            if len(got) >= want:
                done.set()
        if ack:
            message.ack()

    future = subscriber.subscribe(sub, callback)
    done.wait(timeout)
    future.cancel()
    with contextlib.suppress(Exception):
        future.result(timeout=10)
    return got


@pytest.mark.parity
def test_publish_pull_ack(pubsub_target, make_topic, make_subscription):
    topic = make_topic()
    sub = make_subscription(topic)
    ids = [
        pubsub_target.publisher.publish(topic, f"m{i}".encode(), n=str(i)).result(timeout=30)
        for i in range(5)
    ]
    assert len(set(ids)) == 5
    got = pull_all(pubsub_target.subscriber, sub, 5)
    assert sorted(m.message.data for m in got) == [f"m{i}".encode() for i in range(5)]
    assert {m.message.message_id for m in got} == set(ids)
    assert all(m.message.attributes["n"] == m.message.data.decode()[1:] for m in got)
    assert all(m.message.publish_time.timestamp() > 0 for m in got)
    pubsub_target.subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    # Acknowledged: nothing comes back.
    response = pubsub_target.subscriber.pull(
        request={"subscription": sub, "max_messages": 10, "return_immediately": True}, timeout=5
    )
    assert list(response.received_messages) == []


@pytest.mark.parity
def test_only_messages_published_after_subscribing_arrive(
    pubsub_target, make_topic, make_subscription
):
    topic = make_topic()
    pubsub_target.publisher.publish(topic, b"before").result(timeout=30)
    sub = make_subscription(topic)
    pubsub_target.publisher.publish(topic, b"after").result(timeout=30)
    got = pull_all(pubsub_target.subscriber, sub, 1)
    assert [m.message.data for m in got] == [b"after"]


@pytest.mark.parity
def test_streaming_pull_receives_everything(pubsub_target, make_topic, make_subscription):
    topic = make_topic()
    sub = make_subscription(topic)
    futures = [pubsub_target.publisher.publish(topic, f"s{i}".encode()) for i in range(300)]
    for f in futures:
        f.result(timeout=30)
    got = stream(pubsub_target.subscriber, sub, 300)
    assert {m.data for m in got} == {f"s{i}".encode() for i in range(300)}


@pytest.mark.parity
def test_unacked_message_is_redelivered_after_deadline(
    pubsub_target, make_topic, make_subscription
):
    """A lease that lapses makes the message deliverable again (ModifyAckDeadline to 1 s)."""
    topic = make_topic()
    sub = make_subscription(topic)
    pubsub_target.publisher.publish(topic, b"again").result(timeout=30)
    first = pull_all(pubsub_target.subscriber, sub, 1)
    assert len(first) == 1
    pubsub_target.subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[first[0].ack_id], ack_deadline_seconds=1
    )
    second = pull_all(pubsub_target.subscriber, sub, 1)  # pulls until the lease lapses
    assert [m.message.message_id for m in second] == [first[0].message.message_id]


@pytest.mark.parity
def test_nack_redelivers_immediately(pubsub_target, make_topic, make_subscription):
    topic = make_topic()
    sub = make_subscription(topic)
    pubsub_target.publisher.publish(topic, b"nack me").result(timeout=30)
    first = pull_all(pubsub_target.subscriber, sub, 1)
    pubsub_target.subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[first[0].ack_id], ack_deadline_seconds=0
    )
    second = pull_all(pubsub_target.subscriber, sub, 1, timeout=5)
    assert [m.message.data for m in second] == [b"nack me"]


@pytest.mark.parity
def test_ordering_keys_are_delivered_in_order(pubsub_target, make_topic, make_subscription):
    """https://cloud.google.com/pubsub/docs/ordering: same key, same order as published."""
    topic = make_topic()
    sub = make_subscription(topic, enable_message_ordering=True)
    publisher = pubsub_target.ordered_publisher()
    futures = []
    for i in range(60):
        key = f"key-{i % 3}"
        futures.append(publisher.publish(topic, f"{key}:{i}".encode(), ordering_key=key))
    for f in futures:
        f.result(timeout=30)
    got = stream(pubsub_target.subscriber, sub, 60, timeout=20)
    by_key: dict[str, list[int]] = defaultdict(list)
    for m in got:
        key, n = m.data.decode().split(":")
        assert m.ordering_key == key
        by_key[key].append(int(n))
    assert set(by_key) == {"key-0", "key-1", "key-2"}
    for key, seq in by_key.items():
        assert seq == sorted(seq), f"{key} arrived out of order: {seq}"
        assert len(seq) == 20


def test_oversized_message_is_invalid_argument_and_server_keeps_serving(
    local_target, local_topic, local_subscription
):
    """Google refuses publish requests over 10 MB (https://cloud.google.com/pubsub/quotas);
    the official emulator accepts them, so this is not a parity test."""
    pubsub_target, make_topic, make_subscription = local_target, local_topic, local_subscription
    topic = make_topic()
    sub = make_subscription(topic)
    with pytest.raises(exceptions.InvalidArgument):
        pubsub_target.publisher.api.publish(
            topic=topic, messages=[{"data": b"x" * (10 * 1000 * 1000 + 1)}]
        )
    pubsub_target.publisher.publish(topic, b"still here").result(timeout=30)
    assert [m.message.data for m in pull_all(pubsub_target.subscriber, sub, 1)] == [b"still here"]


def test_empty_message_is_invalid_argument(local_target, local_topic):
    with pytest.raises(exceptions.InvalidArgument, match="empty"):
        local_target.publisher.api.publish(topic=local_topic(), messages=[{"data": b""}])


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"data": b"x", "attributes": {str(i): "v" for i in range(101)}}, "101 attributes"),
        ({"attributes": {"k" * 257: "v"}}, "exceeds 256 bytes"),
        ({"attributes": {"k": "é" * 513}}, "exceeds 1024 bytes"),
        ({"attributes": {"googkey": "v"}}, "reserved"),
        ({"data": b"x", "ordering_key": "é" * 513}, "ordering_key exceeds 1024 bytes"),
        ({"attributes": {"k": "v"}, "ordering_key": "k" * 1025}, "ordering_key exceeds"),
    ],
    ids=["attributes", "key", "value", "goog", "ordering-key-bytes", "ordering-key"],
)
def test_publish_limits_are_refused_naming_the_message(local_target, local_topic, message, words):
    """Google's limits on a published message, counted in UTF-8 bytes; the message in
    error is named by its index."""
    fine = {"data": b"ok", "ordering_key": "é" * 512, "attributes": {"k": "é" * 512}}
    with pytest.raises(exceptions.InvalidArgument, match=f"Message 1.*{words}"):
        local_target.publisher.api.publish(topic=local_topic(), messages=[fine, message])


def test_bad_ack_id_is_invalid_argument(local_target, local_topic, local_subscription):
    sub = local_subscription(local_topic())
    with pytest.raises(exceptions.InvalidArgument, match="ack ID"):
        local_target.subscriber.acknowledge(subscription=sub, ack_ids=["not-an-ack-id!"])


FILTER_CASES = [
    ('attributes.kind = "zip"', [{"kind": "zip"}], [{"kind": "tar"}, {}]),
    ('attributes.kind != "zip"', [{"kind": "tar"}, {}], [{"kind": "zip"}]),
    ("attributes:kind", [{"kind": ""}, {"kind": "x"}], [{}]),
    ('hasPrefix(attributes.path, "src/")', [{"path": "src/a"}], [{"path": "lib/src/"}, {}]),
    (
        'attributes.a = "1" AND (attributes.b = "2" OR NOT attributes:c)',
        [{"a": "1", "b": "2", "c": "x"}, {"a": "1"}],
        [{"a": "1", "c": "x"}, {"b": "2"}],
    ),
]


@pytest.mark.parametrize(("flt", "matching", "other"), FILTER_CASES)
def test_subscription_filter(local_target, local_topic, local_subscription, flt, matching, other):
    """https://cloud.google.com/pubsub/docs/subscription-message-filter: only matches arrive;
    the rest are acknowledged automatically."""
    topic = local_topic()
    sub = local_subscription(topic, filter=flt)
    for i, attrs in enumerate(other):
        local_target.publisher.publish(topic, f"other-{i}".encode(), **attrs).result(timeout=30)
    for i, attrs in enumerate(matching):
        local_target.publisher.publish(topic, f"match-{i}".encode(), **attrs).result(timeout=30)
    # A matching sentinel, published last: once it is pulled, so is all that came before.
    local_target.publisher.publish(topic, b"sentinel", **matching[0]).result(timeout=30)
    got = pull_all(local_target.subscriber, sub, len(matching) + 1)
    local_target.subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    assert sorted(m.message.data.decode() for m in got) == [
        *(f"match-{i}" for i in range(len(matching))),
        "sentinel",
    ]
    rest = local_target.subscriber.pull(
        request={"subscription": sub, "max_messages": 10, "return_immediately": True}, timeout=5
    )
    assert list(rest.received_messages) == []


def test_dead_letter_after_max_delivery_attempts(local_target, local_topic, local_subscription):
    """https://cloud.google.com/pubsub/docs/handling-failures: after max_delivery_attempts the
    message goes to the dead-letter topic with the CloudPubSubDeadLetter* attributes, and
    delivery_attempt counts deliveries."""
    topic = local_topic()
    dead_topic = local_topic("dead")
    dead_sub = local_subscription(dead_topic, prefix="dead-sub")
    sub = local_subscription(
        topic,
        dead_letter_policy={"dead_letter_topic": dead_topic, "max_delivery_attempts": 5},
    )
    local_target.publisher.publish(topic, b"poison", origin="test").result(timeout=30)
    attempts = []
    for _ in range(5):
        got = pull_all(local_target.subscriber, sub, 1, timeout=5)
        assert len(got) == 1
        attempts.append(got[0].delivery_attempt)
        local_target.subscriber.modify_ack_deadline(
            subscription=sub, ack_ids=[got[0].ack_id], ack_deadline_seconds=0
        )
    assert attempts == [1, 2, 3, 4, 5]
    dead = pull_all(local_target.subscriber, dead_sub, 1)
    assert len(dead) == 1
    attrs = dict(dead[0].message.attributes)
    assert dead[0].message.data == b"poison"
    assert attrs["origin"] == "test"
    assert attrs["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attrs["CloudPubSubDeadLetterSourceSubscription"] == sub.rsplit("/", 1)[-1]
    assert attrs["CloudPubSubDeadLetterSourceSubscriptionProject"] == "local-project"
    assert "CloudPubSubDeadLetterSourceTopicPublishTime" in attrs
    rest = local_target.subscriber.pull(
        request={"subscription": sub, "max_messages": 1, "return_immediately": True}, timeout=5
    )
    assert list(rest.received_messages) == []


def test_retry_policy_backs_off(local_target, local_topic, local_subscription):
    """With a retry policy a nacked message waits at least minimum_backoff."""
    topic = local_topic()
    sub = local_subscription(
        topic, retry_policy={"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 2}}
    )
    local_target.publisher.publish(topic, b"slow").result(timeout=30)
    got = pull_all(local_target.subscriber, sub, 1)
    nacked_at = time.monotonic()
    local_target.subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[got[0].ack_id], ack_deadline_seconds=0
    )
    again = pull_all(local_target.subscriber, sub, 1)
    assert len(again) == 1
    assert time.monotonic() - nacked_at >= 0.9


def test_streaming_pull_flow_control_limits_outstanding(
    local_target, local_topic, local_subscription
):
    """The client's FlowControl max_messages is honoured by the server's StreamingPull."""
    topic = local_topic()
    sub = local_subscription(topic)
    for f in [local_target.publisher.publish(topic, f"f{i}".encode()) for i in range(20)]:
        f.result(timeout=30)
    held = []
    lock = threading.Lock()
    future = local_target.subscriber.subscribe(
        sub,
        lambda m: (lock.acquire(), held.append(m), lock.release()),
        flow_control=pubsub_v1.types.FlowControl(max_messages=5),
    )
    try:
        testing.wait_for(lambda: len(held) >= 5, 10, "the first 5 messages")
        # The server leased the stream no more than 5: the other 15 are still there for a
        # Pull. (The client holds back what it got beyond its limit, so the callbacks alone
        # would not tell.) Nacked again at once, for the stream.
        rest = local_target.subscriber.pull(
            request={"subscription": sub, "max_messages": 20, "return_immediately": True},
            timeout=5,
        ).received_messages
        assert len(rest) == 15
        local_target.subscriber.modify_ack_deadline(
            subscription=sub, ack_ids=[m.ack_id for m in rest], ack_deadline_seconds=0
        )
        with lock:
            outstanding = len(held)
        assert outstanding == 5
        for m in list(held):
            m.ack()
        testing.wait_for(lambda: len(held) >= 10, 10, "5 more once the first 5 were acked")
    finally:
        future.cancel()


def test_large_messages_arrive_in_responses_under_the_grpc_limit(
    local_target, local_topic, local_subscription
):
    """Eight 1.5 MB messages (12 MB) must not go out as one response: with
    PUBSUB_EMULATOR_HOST the official client's channel receives at most 4 MiB per message,
    and an oversized response would fail and be redelivered forever."""
    topic = local_topic()
    sub = local_subscription(topic)
    payload = b"x" * 1_500_000
    for f in [local_target.publisher.publish(topic, payload, n=str(i)) for i in range(8)]:
        f.result(timeout=60)
    pulled = local_target.subscriber.pull(
        request={"subscription": sub, "max_messages": 8}, timeout=10
    ).received_messages
    assert 0 < len(pulled) < 8, "one unary Pull response must stay under 4 MiB"
    local_target.subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[m.ack_id for m in pulled], ack_deadline_seconds=0
    )
    got = stream(local_target.subscriber, sub, 8, timeout=60)
    assert sorted({int(m.attributes["n"]) for m in got}) == list(range(8))
    assert all(len(m.data) == len(payload) for m in got)


def test_duplicate_ack_ids_in_a_nack_do_not_wedge_an_ordering_key(
    local_target, local_topic, local_subscription
):
    topic = local_topic()
    sub = local_subscription(topic, enable_message_ordering=True)
    publisher = local_target.ordered_publisher()
    publisher.publish(topic, b"first", ordering_key="k").result(timeout=30)
    (first,) = pull_all(local_target.subscriber, sub, 1)
    local_target.subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[first.ack_id, first.ack_id], ack_deadline_seconds=0
    )
    (again,) = pull_all(local_target.subscriber, sub, 1)
    assert again.message.data == b"first"
    local_target.subscriber.acknowledge(subscription=sub, ack_ids=[again.ack_id])
    publisher.publish(topic, b"second", ordering_key="k").result(timeout=30)
    assert [m.message.data for m in pull_all(local_target.subscriber, sub, 1)] == [b"second"]


def test_bad_ack_id_on_the_stream_ends_it_with_invalid_argument(
    local_target, local_topic, local_subscription
):
    sub = local_subscription(local_topic())
    requests = iter(
        [
            {"subscription": sub, "stream_ack_deadline_seconds": 10},
            {"ack_ids": ["bogus"]},
        ]
    )
    responses = local_target.subscriber.api.streaming_pull(requests=requests, timeout=10)
    with pytest.raises(exceptions.InvalidArgument, match="ack ID"):
        for _ in responses:
            pass
