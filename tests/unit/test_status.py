"""The status event contract (docs/pipeline.md, "Status events") and its publisher.

CloudEvents 1.0 structured JSON mode: https://github.com/cloudevents/spec (spec.md,
formats/json-format.md). Ordering: https://cloud.google.com/pubsub/docs/ordering.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

import pytest

from orchestrator import status
from orchestrator.status import (
    STATES,
    STEPS,
    StatusEvent,
    StatusEventError,
    StatusPublisher,
    from_message,
    to_message,
)

EVENTS = [
    StatusEvent("d-0123456789abcdef", "hello", "accepted", "running"),
    StatusEvent(
        "d-0123456789abcdef",
        "hello",
        "build",
        "succeeded",
        message="built in 3.2 s",
        details={"image": "us-central1-docker.pkg.dev/p/functions/hello@sha256:ab", "n": [1, 2]},
        source_uri="gs://src/hello.zip#17",
    ),
    StatusEvent(
        "d-0123456789abcdef",
        "hello",
        "deploy",
        "failed",
        message="revision hello-00002 did not start: ModuleNotFoundError: No module named 'x'",
        error_code="DEPLOY_FAILED",
        details={"revision": "hello-00002"},
    ),
    StatusEvent(
        "d-1", "", "accepted", "failed", message="function.yaml: ...", error_code="INVALID_MANIFEST"
    ),
    StatusEvent(
        "d-1", "svc", "done", "succeeded", details={"url": "http://svc.run.localhost:8080"}
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.step}-{e.state}")
def test_round_trip(event):
    data, attributes, _ = to_message(event)
    back = from_message(data, attributes)
    assert back == event
    assert back.event_id and back.time


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.step}-{e.state}")
def test_exact_attributes_and_ordering_key(event):
    _, attributes, key = to_message(event)
    assert attributes == {
        "deployment_id": event.deployment_id,
        "service": event.service,
        "step": event.step,
        "state": event.state,
    }
    assert all(isinstance(v, str) for v in attributes.values())
    assert key == event.deployment_id


def test_body_is_a_structured_mode_cloudevent():
    data, _, _ = to_message(EVENTS[2])
    body = json.loads(data)
    assert set(body) == {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "subject",
        "data",
    }
    assert body["specversion"] == "1.0"
    uuid.UUID(body["id"])
    assert body["source"] == "//orchestrator/deployments/d-0123456789abcdef"
    assert body["type"] == status.EVENT_TYPE == "dev.orchestrator.deploy.status.v1"
    assert body["datacontenttype"] == "application/json"
    assert body["subject"] == "d-0123456789abcdef"
    assert body["time"].endswith("Z")
    datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
    assert body["data"] == {
        "deployment_id": "d-0123456789abcdef",
        "service": "hello",
        "step": "deploy",
        "state": "failed",
        "message": EVENTS[2].message,
        "source_uri": "",
        "error": {"code": "DEPLOY_FAILED", "message": EVENTS[2].message},
        "details": {"revision": "hello-00002"},
    }


def test_only_failures_carry_an_error():
    for event in EVENTS:
        body = json.loads(to_message(event)[0])
        assert ("error" in body["data"]) == (event.state == "failed")


def test_each_message_gets_a_new_id_unless_one_is_given():
    ids = {json.loads(to_message(EVENTS[0])[0])["id"] for _ in range(3)}
    assert len(ids) == 3
    event = StatusEvent(
        "d-1", "s", "build", "running", event_id="fixed", time="2024-01-01T00:00:00Z"
    )
    body = json.loads(to_message(event)[0])
    assert (body["id"], body["time"]) == ("fixed", "2024-01-01T00:00:00Z")


def test_steps_and_states_are_the_design_s():
    assert STEPS == ("accepted", "build", "push", "deploy", "bind_triggers", "done")
    # skipped: push, when Cloud Functions deploys the function (api: functions).
    assert STATES == ("running", "succeeded", "skipped", "failed")


def test_a_skipped_step_is_an_event_without_an_error():
    event = StatusEvent("d-1", "svc", "push", "skipped", "skipped: not needed", details={"a": 1})
    data, attributes, key = to_message(event)
    assert attributes["state"] == "skipped" and key == "d-1"
    assert "error" not in json.loads(data)["data"]
    assert from_message(data, attributes) == event


BAD_EVENTS = [
    (StatusEvent("d-1", "s", "compile", "running"), "step 'compile'"),
    (StatusEvent("d-1", "s", "build", "done"), "state 'done'"),
    (StatusEvent("", "s", "build", "running"), "deployment_id"),
    (StatusEvent("d-1", "s", "build", "failed", message="x"), "needs an error_code"),
    (StatusEvent("d-1", "s", "build", "failed", error_code="BUILD_FAILED"), "needs a message"),
    (
        StatusEvent("d-1", "s", "build", "failed", message="x", error_code="oops"),
        "UPPER_SNAKE_CASE",
    ),
    (StatusEvent("d-1", "s", "build", "running", details={"t": object()}), "JSON"),
]


@pytest.mark.parametrize(("event", "words"), BAD_EVENTS)
def test_contract_violations_are_refused(event, words):
    with pytest.raises(StatusEventError, match=words):
        to_message(event)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a status event"),
        (json.dumps({"type": "other", "specversion": "1.0"}).encode(), "not a status event"),
        (json.dumps({"type": status.EVENT_TYPE, "specversion": "0.3"}).encode(), "specversion"),
        (json.dumps({"type": status.EVENT_TYPE, "specversion": "1.0"}).encode(), "no data"),
        (
            json.dumps(
                {"type": status.EVENT_TYPE, "specversion": "1.0", "data": {"step": "x"}}
            ).encode(),
            "deployment_id",
        ),
    ],
)
def test_unreadable_messages_are_refused(data, words):
    with pytest.raises(StatusEventError, match=words):
        from_message(data, {})


def test_attributes_fill_gaps_in_a_sparse_body():
    body = {"type": status.EVENT_TYPE, "specversion": "1.0", "data": {"message": "hi"}}
    attrs = {"deployment_id": "d-9", "service": "s", "step": "push", "state": "running"}
    event = from_message(json.dumps(body).encode(), attrs)
    assert event == StatusEvent("d-9", "s", "push", "running", message="hi")


class FakeFuture:
    def __init__(self, result=None, error=None):
        self._result, self._error = result, error

    def result(self, timeout=None):
        if self._error:
            raise self._error
        return self._result


class FakePublisher:
    def __init__(self, error=None):
        self.calls, self.resumed, self.error = [], [], error

    def publish(self, topic, data, ordering_key="", **attrs):
        self.calls.append((topic, data, ordering_key, attrs))
        return FakeFuture(str(len(self.calls)), self.error)

    def resume_publish(self, topic, ordering_key):
        self.resumed.append((topic, ordering_key))


def test_publisher_sends_data_attributes_and_ordering_key():
    fake = FakePublisher()
    pub = StatusPublisher(publisher=fake, project="p")
    assert pub.topic == "projects/p/topics/deploy-status"
    assert pub.publish(EVENTS[1]) == "1"
    topic, data, key, attrs = fake.calls[0]
    assert topic == "projects/p/topics/deploy-status"
    assert key == EVENTS[1].deployment_id
    assert attrs == to_message(EVENTS[1])[1]
    assert from_message(data, attrs) == EVENTS[1]


def test_publisher_refuses_bad_events_before_publishing():
    fake = FakePublisher()
    with pytest.raises(StatusEventError):
        StatusPublisher("projects/p/topics/t", publisher=fake).publish(
            StatusEvent("d-1", "s", "nope", "running")
        )
    assert fake.calls == []


def test_failed_publish_resumes_the_ordering_key_and_raises():
    fake = FakePublisher(error=RuntimeError("unavailable"))
    pub = StatusPublisher("projects/p/topics/t", publisher=fake)
    with pytest.raises(RuntimeError, match="unavailable"):
        pub.publish(EVENTS[0])
    assert fake.resumed == [("projects/p/topics/t", EVENTS[0].deployment_id)]


def _pull(subscriber, subscription: str, want: int, timeout: float = 20.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 10}, timeout=5
        )
        got.extend(response.received_messages)
        if response.received_messages:
            # with ordering, the next message of a key comes after the previous one is acked
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [r.ack_id for r in response.received_messages],
                }
            )
    return got


def test_publish_in_order_through_localcloud(
    localcloud, local_target, local_topic, local_subscription
):
    """Real official client, ordering on: each deployment's events arrive in step order."""
    from orchestrator.clients import Clients

    topic = local_topic("deploy-status")
    ordered = local_subscription(topic, enable_message_ordering=True)
    failed_only = local_subscription(topic, filter='attributes.state = "failed"')
    publisher = StatusPublisher(topic, publisher=Clients().ordered_publisher)

    sent: list[StatusEvent] = []
    for deployment in ("d-aaaaaaaaaaaaaaaa", "d-bbbbbbbbbbbbbbbb"):
        for step in STEPS[:-1]:
            sent.append(StatusEvent(deployment, "svc", step, "running"))
            sent.append(StatusEvent(deployment, "svc", step, "succeeded", details={"step": step}))
        sent.append(
            StatusEvent(deployment, "svc", "done", "failed", message="x", error_code="INTERNAL")
        )
    ids = [publisher.publish(event) for event in sent]
    assert len(set(ids)) == len(sent)

    got = _pull(local_target.subscriber, ordered, len(sent))
    assert len(got) == len(sent)
    by_key: dict[str, list[StatusEvent]] = {}
    for received in got:
        message = received.message
        assert message.ordering_key == message.attributes["deployment_id"]
        assert set(message.attributes) == set(status.ATTRIBUTES)
        by_key.setdefault(message.ordering_key, []).append(
            from_message(message.data, message.attributes)
        )
    for deployment, events in by_key.items():
        assert events == [e for e in sent if e.deployment_id == deployment]

    failures = _pull(local_target.subscriber, failed_only, 2)
    assert sorted(r.message.attributes["deployment_id"] for r in failures) == [
        "d-aaaaaaaaaaaaaaaa",
        "d-bbbbbbbbbbbbbbbb",
    ]
