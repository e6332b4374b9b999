"""Push subscriptions: what localcloud POSTs to an endpoint, and what it does with the answer.

Expectations come from Google's documentation:

- push delivery and the JSON envelope: https://cloud.google.com/pubsub/docs/push
- authentication of push requests: https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions
- payload unwrapping: https://cloud.google.com/pubsub/docs/payload-unwrapping and
  ``PushConfig.NoWrapper`` in https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1
- dead-letter topics: https://cloud.google.com/pubsub/docs/handling-failures

Each test runs its own HTTP receiver on a free loopback port (``http.server`` in a
background thread) that records every request and answers with scripted status codes.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import google.auth.transport.requests
import pytest
from google.oauth2 import id_token
from google.protobuf import duration_pb2, timestamp_pb2

from localcloud import testing

PROJECT = "local-project"
SERVICE_ACCOUNT = "pusher@local-project.iam.gserviceaccount.com"


@dataclass(frozen=True)
class PushRequest:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased: HTTP header names are case-insensitive
    body: bytes
    at: float  # time.monotonic() on arrival

    def envelope(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A push endpoint: records requests and answers with ``statuses`` in turn, then ``default``."""

    def __init__(self, statuses: Sequence[int] = (), default: int = 200) -> None:
        self.default = default
        self._statuses = list(statuses)
        self._requests: list[PushRequest] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver._record(
                    PushRequest(
                        "POST",
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.monotonic(),
                    )
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, request: PushRequest) -> int:
        with self._cond:
            self._requests.append(request)
            status = self._statuses.pop(0) if self._statuses else self.default
            self._cond.notify_all()
        return status

    def endpoint(self, path: str = "/push") -> str:
        return f"{self.url}{path}"

    @property
    def requests(self) -> list[PushRequest]:
        with self._cond:
            return list(self._requests)

    def wait_for(
        self,
        count: int,
        timeout: float = 10.0,
        where: Callable[[PushRequest], bool] = lambda _r: True,
    ) -> list[PushRequest]:
        """At least ``count`` matching requests, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matching = [r for r in self._requests if where(r)]
                remaining = deadline - time.monotonic()
                if len(matching) >= count or remaining <= 0:
                    break
                self._cond.wait(remaining)
        assert len(matching) >= count, (
            f"expected {count} push request(s) within {timeout:g}s, got {len(matching)}"
        )
        return matching

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def push_receiver() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on free loopback ports; stop them after the test."""
    started: list[Receiver] = []

    def make(statuses: Sequence[int] = (), default: int = 200) -> Receiver:
        receiver = Receiver(statuses, default)
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


def _timestamp(text: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(text)  # raises ValueError unless RFC 3339
    return ts


def _for_message(message_id: str) -> Callable[[PushRequest], bool]:
    return lambda r: r.envelope()["message"]["messageId"] == message_id


# The ordering key of the messages a test follows with a sentinel (see _until_sentinel).
KEY = "followed"


def _until_sentinel(publisher: Any, topic: str, receiver: Receiver) -> list[PushRequest]:
    """The requests before a sentinel published now on ordering key ``KEY``: everything
    the key's earlier messages will ever bring.

    The subscription orders messages, so a key's next message is pushed only once the one
    before it is acknowledged (or dead-lettered): a nacked or unanswered message comes
    again before the sentinel can. ``publisher`` must be an ordered publisher."""
    sentinel = publisher.publish(topic, b"sentinel", ordering_key=KEY).result(10)
    receiver.wait_for(1, timeout=30, where=_for_message(sentinel))
    return [r for r in receiver.requests if not _for_message(sentinel)(r)]


def _pull(subscriber: Any, subscription: str, timeout: float = 10.0) -> list[Any]:
    """Pull until something arrives or ``timeout`` passes (each Pull waits at most 2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 10}, timeout=2.5
        )
        if response.received_messages:
            return list(response.received_messages)
    return []


def test_push_delivers_google_envelope_and_200_acknowledges(
    local_target: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """The body is Google's JSON envelope; a 200 acknowledges (https://cloud.google.com/pubsub/docs/push)."""
    receiver = push_receiver()
    topic = local_topic()
    sub = local_subscription(
        topic,
        push_config={"push_endpoint": receiver.endpoint("/events")},
        enable_message_ordering=True,  # for the sentinel at the end
    )
    publisher = local_target.ordered_publisher()
    before = time.time()
    message_id = publisher.publish(
        topic, b"hello push", ordering_key=KEY, color="blue", size="3"
    ).result(10)

    (request,) = receiver.wait_for(1)
    assert request.method == "POST"
    assert request.path == "/events"
    assert request.headers["content-type"].startswith("application/json")
    envelope = request.envelope()
    assert envelope["subscription"] == sub
    message = envelope["message"]
    assert base64.b64decode(message["data"]) == b"hello push"
    assert message["attributes"] == {"color": "blue", "size": "3"}
    assert message["messageId"] == message_id
    assert message["orderingKey"] == KEY
    published = _timestamp(message["publishTime"]).ToNanoseconds() / 1e9
    assert before - 5 <= published <= time.time() + 5
    # deliveryAttempt is only sent when the subscription has a dead-letter policy.
    assert "deliveryAttempt" not in envelope

    assert _until_sentinel(publisher, topic, receiver) == [request], (
        "an acknowledged message was pushed again"
    )


def test_push_redelivers_after_error_with_backoff(
    local_target: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """A 500 is a nack: the same message comes again after a backoff; 204 acknowledges it.

    https://cloud.google.com/pubsub/docs/push#receive_push (success codes 102, 200, 201,
    202, 204; other codes are retried with exponential backoff).
    """
    receiver = push_receiver(statuses=[500], default=204)
    topic = local_topic()
    local_subscription(
        topic, push_config={"push_endpoint": receiver.endpoint()}, enable_message_ordering=True
    )
    publisher = local_target.ordered_publisher()
    message_id = publisher.publish(topic, b"retry me", ordering_key=KEY).result(10)

    first, second = receiver.wait_for(2)
    assert first.envelope()["message"]["messageId"] == message_id
    assert second.envelope()["message"]["messageId"] == message_id
    assert base64.b64decode(second.envelope()["message"]["data"]) == b"retry me"
    assert second.at - first.at > 0.05, "redelivered without any backoff"

    assert _until_sentinel(publisher, topic, receiver) == [first, second], (
        "the 204 did not acknowledge the message"
    )


def test_push_oidc_token_verifies_with_google_auth(
    localcloud: testing.Instance,
    publisher: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """``Authorization: Bearer`` carries an ID token for the service account and audience.

    Without an audience the push endpoint URL is the audience (``PushConfig.OidcToken``).
    https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions
    """
    receiver = push_receiver()
    audience = "https://my-service.example.run.app"
    topic = local_topic()
    local_subscription(
        topic,
        push_config={
            "push_endpoint": receiver.endpoint("/with-audience"),
            "oidc_token": {"service_account_email": SERVICE_ACCOUNT, "audience": audience},
        },
    )
    local_subscription(
        topic,
        push_config={
            "push_endpoint": receiver.endpoint("/default-audience"),
            "oidc_token": {"service_account_email": SERVICE_ACCOUNT},
        },
    )
    publisher.publish(topic, b"authenticated").result(10)
    receiver.wait_for(2)

    certs_url = f"{localcloud.config.http_url}/oauth2/v1/certs"
    http = google.auth.transport.requests.Request()
    expected = {
        "/with-audience": audience,
        "/default-audience": receiver.endpoint("/default-audience"),
    }
    for request in receiver.requests:
        scheme, _, token = request.headers["authorization"].partition(" ")
        assert scheme == "Bearer"
        claims = id_token.verify_token(
            token, http, audience=expected[request.path], certs_url=certs_url
        )
        assert claims["email"] == SERVICE_ACCOUNT
        assert claims["email_verified"] is True
        assert claims["aud"] == expected[request.path]
        assert claims["iss"] == localcloud.config.http_url


def test_push_no_wrapper_sends_raw_body_and_metadata_headers(
    publisher: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """With ``no_wrapper`` the data is the body; ``write_metadata`` adds x-goog-pubsub-* headers.

    https://cloud.google.com/pubsub/docs/payload-unwrapping
    """
    receiver = push_receiver()
    topic = local_topic()
    sub = local_subscription(
        topic,
        push_config={"push_endpoint": receiver.endpoint(), "no_wrapper": {"write_metadata": True}},
    )
    data = b'{"status": "Hello there"}'
    message_id = publisher.publish(topic, data, color="blue").result(10)

    (request,) = receiver.wait_for(1)
    assert request.body == data
    headers = request.headers
    assert headers["x-goog-pubsub-message-id"] == message_id
    assert headers["x-goog-pubsub-subscription-name"] in {sub, sub.rsplit("/", 1)[-1]}
    _timestamp(headers["x-goog-pubsub-publish-time"])


def test_push_no_wrapper_writes_attributes_as_plain_headers(
    publisher: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """``NoWrapper.write_metadata``: "Writes the Pub/Sub message attributes to <KEY>:<VAL>
    headers of the HTTP request" (metadata, not attributes, gets the x-goog-pubsub- prefix).

    https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1#google.pubsub.v1.PushConfig.NoWrapper
    """
    receiver = push_receiver()
    topic = local_topic()
    local_subscription(
        topic,
        push_config={"push_endpoint": receiver.endpoint(), "no_wrapper": {"write_metadata": True}},
    )
    publisher.publish(topic, b"raw", color="blue").result(10)

    (request,) = receiver.wait_for(1)
    assert request.body == b"raw"
    assert request.headers.get("color") == "blue", sorted(request.headers)


def test_push_no_wrapper_without_metadata_sends_only_the_data(
    publisher: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """ "Write metadata disabled. Only delivers the raw, decoded message data."

    https://cloud.google.com/pubsub/docs/payload-unwrapping
    """
    receiver = push_receiver()
    topic = local_topic()
    local_subscription(
        topic,
        push_config={"push_endpoint": receiver.endpoint(), "no_wrapper": {"write_metadata": False}},
    )
    publisher.publish(topic, b"only data", color="blue").result(10)

    (request,) = receiver.wait_for(1)
    assert request.body == b"only data"
    leaked = sorted(h for h in request.headers if h.startswith("x-goog-pubsub-") or h == "color")
    assert leaked == [], f"metadata or attributes sent without write_metadata: {leaked}"


def test_push_dead_letters_after_max_delivery_attempts(
    local_target: Any,
    subscriber: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """An endpoint that always fails: attempts 1..5, then the dead-letter topic gets the message.

    The envelope carries ``deliveryAttempt``; the forwarded message has the
    ``CloudPubSubDeadLetterSource*`` attributes. https://cloud.google.com/pubsub/docs/handling-failures
    """
    receiver = push_receiver(default=500)
    topic = local_topic()
    dead_topic = local_topic("dead")
    dead_sub = local_subscription(dead_topic, "dead")
    sub = local_subscription(
        topic,
        push_config={"push_endpoint": receiver.endpoint()},
        dead_letter_policy={"dead_letter_topic": dead_topic, "max_delivery_attempts": 5},
        retry_policy={
            "minimum_backoff": duration_pb2.Duration(nanos=100_000_000),
            "maximum_backoff": duration_pb2.Duration(nanos=200_000_000),
        },
        enable_message_ordering=True,  # for the sentinel at the end
    )
    publisher = local_target.ordered_publisher()
    message_id = publisher.publish(topic, b"poison", ordering_key=KEY, origin="test").result(10)

    received = _pull(subscriber, dead_sub)
    assert len(received) == 1
    forwarded = received[0].message
    assert forwarded.data == b"poison"
    attrs = dict(forwarded.attributes)
    assert attrs["origin"] == "test"
    assert attrs["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attrs["CloudPubSubDeadLetterSourceSubscription"] == sub.rsplit("/", 1)[-1]
    assert attrs["CloudPubSubDeadLetterSourceSubscriptionProject"] == PROJECT
    subscriber.acknowledge(request={"subscription": dead_sub, "ack_ids": [received[0].ack_id]})

    pushes = receiver.wait_for(5, where=_for_message(message_id))
    assert [p.envelope()["deliveryAttempt"] for p in pushes] == [1, 2, 3, 4, 5]
    original_publish = _timestamp(pushes[0].envelope()["message"]["publishTime"])
    source_publish = _timestamp(attrs["CloudPubSubDeadLetterSourceTopicPublishTime"])
    assert (
        source_publish.ToNanoseconds() // 1_000_000 == original_publish.ToNanoseconds() // 1_000_000
    )

    assert len(_until_sentinel(publisher, topic, receiver)) == 5, (
        "the message was pushed again after dead-lettering"
    )


def test_modify_push_config_to_pull_stops_pushes(
    publisher: Any,
    subscriber: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """An empty ``push_config`` turns a push subscription into a pull one.

    ModifyPushConfig: "An empty pushConfig signifies that the Pub/Sub system should stop
    pushing messages from the given subscription and allow messages to be pulled".
    https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions/modifyPushConfig
    """
    receiver = push_receiver()
    topic = local_topic()
    sub = local_subscription(topic, push_config={"push_endpoint": receiver.endpoint()})
    publisher.publish(topic, b"pushed").result(10)
    receiver.wait_for(1)

    subscriber.modify_push_config(request={"subscription": sub, "push_config": {}})
    assert subscriber.get_subscription(subscription=sub).push_config.push_endpoint == ""
    publisher.publish(topic, b"pulled").result(10)

    received = _pull(subscriber, sub)
    assert [m.message.data for m in received] == [b"pulled"]
    subscriber.acknowledge(request={"subscription": sub, "ack_ids": [received[0].ack_id]})
    # The pulled message is the sentinel: a push still running would have leased it first,
    # and held it until the receiver answered, so its request would be recorded by now.
    assert len(receiver.requests) == 1, "pushes continued after switching to pull"


def test_modify_push_config_turns_pull_into_push(
    publisher: Any,
    subscriber: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
    push_receiver: Callable[..., Receiver],
) -> None:
    """Setting a push endpoint on a pull subscription pushes its backlog there.

    https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions/modifyPushConfig
    """
    receiver = push_receiver()
    topic = local_topic()
    sub = local_subscription(topic)
    message_id = publisher.publish(topic, b"waiting in the backlog").result(10)

    subscriber.modify_push_config(
        request={"subscription": sub, "push_config": {"push_endpoint": receiver.endpoint()}}
    )
    (request,) = receiver.wait_for(1)
    assert request.envelope()["message"]["messageId"] == message_id
    assert request.envelope()["subscription"] == sub
