"""The delivery state machine of one subscription, table-driven (knative reconciler style).

Each case: messages arrive (seq, ordering key), a script of events runs against a fake
clock, and what each ``take`` returns is checked.
"""

from __future__ import annotations

import asyncio

import pytest
from google.pubsub_v1.types import PubsubMessage

from localcloud.pubsub.queue import Consumer, Entry, Message, SubscriptionQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_queue(ordered: bool, messages: list[tuple[int, str]]) -> tuple[SubscriptionQueue, Clock]:
    clock = Clock()
    queue = SubscriptionQueue(ordered, clock=clock)
    for seq, key in messages:
        pb = PubsubMessage.pb()(data=b"x", ordering_key=key, message_id=str(seq))
        queue.add(Entry(Message(seq, pb, 1, 0.0)), notify=False)
    return queue, clock


def run(queue: SubscriptionQueue, clock: Clock, script: list[tuple]) -> list[list[int]]:
    """Events: ("take", n) | ("ack", seq) | ("nack", seq, delay) | ("tick", s) | ("expire",)."""
    taken: list[list[int]] = []
    consumer = Consumer(deadline=10)
    for event in script:
        match event:
            case ("take", n):
                taken.append([e.seq for e in queue.take(consumer, n, -1)])
            case ("ack", seq):
                queue.ack(seq)
            case ("nack", seq, delay):
                queue.requeue(queue.entries[seq], delay)
            case ("tick", seconds):
                clock.now += seconds
                queue.release_due()
            case ("expire",):
                for entry in queue.expired():
                    queue.requeue(entry, 0)
    return taken


CASES = [
    # name, ordered, messages, script, expected takes
    ("fifo", False, [(1, ""), (2, ""), (3, "")], [("take", 2), ("take", 5)], [[1, 2], [3]]),
    (
        "acked is gone",
        False,
        [(1, ""), (2, "")],
        [("take", 1), ("ack", 1), ("take", 5)],
        [[1], [2]],
    ),
    (
        "nack redelivers first",
        False,
        [(1, ""), (2, ""), (3, "")],
        [("take", 1), ("nack", 1, 0), ("take", 1)],
        [[1], [1]],
    ),
    (
        "backoff delays redelivery",
        False,
        [(1, ""), (2, "")],
        [
            ("take", 1),
            ("nack", 1, 5),
            ("take", 5),
            ("tick", 4),
            ("take", 5),
            ("tick", 2),
            ("take", 5),
        ],
        [[1], [2], [], [1]],
    ),
    (
        "lapsed lease redelivers",
        False,
        [(1, "")],
        [("take", 1), ("tick", 9), ("expire",), ("take", 1), ("tick", 2), ("expire",), ("take", 1)],
        [[1], [], [1]],
    ),
    (
        "ordered key waits for its ack",
        True,
        [(1, "a"), (2, "a"), (3, "b")],
        [("take", 1), ("take", 5), ("take", 5), ("ack", 1), ("take", 5)],
        [[1], [3], [], [2]],
    ),
    (
        "ordered run in one batch",
        True,
        [(1, "a"), (2, "a"), (3, "a")],
        [("take", 5), ("take", 5)],
        [[1, 2, 3], []],
    ),
    (
        "ordered nack keeps order",
        True,
        [(1, "a"), (2, "a")],
        [("take", 1), ("nack", 1, 0), ("take", 5)],
        [[1], [1, 2]],
    ),
    (
        "unordered keys ignore order",
        False,
        [(1, "a"), (2, "a")],
        [("take", 1), ("take", 1)],
        [[1], [2]],
    ),
]


@pytest.mark.parametrize(("name", "ordered", "messages", "script", "expected"), CASES)
def test_queue(name, ordered, messages, script, expected):
    async def scenario() -> list[list[int]]:
        queue, clock = make_queue(ordered, messages)
        return run(queue, clock, script)

    assert asyncio.run(scenario()) == expected, name


def test_consumer_flow_control_counts_outstanding():
    async def scenario() -> None:
        queue, _clock = make_queue(False, [(i, "") for i in range(1, 6)])
        consumer = Consumer(max_messages=2, deadline=10)
        n, b = consumer.room()
        got = queue.take(consumer, n, b)
        assert [e.seq for e in got] == [1, 2]
        assert consumer.room()[0] == 0
        queue.ack(1)
        assert consumer.room()[0] == 1

    asyncio.run(scenario())
