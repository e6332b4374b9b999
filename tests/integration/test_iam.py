"""IAM policies on Pub/Sub topics and subscriptions through the official clients.

Expectations come from Google's documentation:

- ``google.iam.v1.IAMPolicy`` (Get/Set/TestIamPermissions, etags):
  https://cloud.google.com/iam/docs/reference/rpc/google.iam.v1
- concurrency control with etags: https://cloud.google.com/iam/docs/policies#etag
- Pub/Sub access control and permissions: https://cloud.google.com/pubsub/docs/access-control
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from google.api_core.exceptions import Aborted, NotFound
from google.iam.v1 import policy_pb2

PROJECT = "local-project"
ROLE = "roles/pubsub.subscriber"
MEMBER = "serviceAccount:reader@local-project.iam.gserviceaccount.com"


def _with_binding(policy: policy_pb2.Policy, role: str, member: str) -> policy_pb2.Policy:
    """A copy of ``policy`` (etag included) with ``member`` added to ``role``."""
    updated = policy_pb2.Policy()
    updated.CopyFrom(policy)
    for binding in updated.bindings:
        if binding.role == role:
            binding.members.append(member)
            return updated
    updated.bindings.add(role=role, members=[member])
    return updated


def _members(policy: policy_pb2.Policy, role: str) -> set[str]:
    return {m for b in policy.bindings if b.role == role for m in b.members}


@pytest.fixture(params=["topic", "subscription"])
def resource(
    request: pytest.FixtureRequest,
    publisher: Any,
    subscriber: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
) -> tuple[Any, str]:
    """(client, resource name): a topic via the publisher, a subscription via the subscriber."""
    topic = local_topic()
    if request.param == "topic":
        return publisher, topic
    return subscriber, local_subscription(topic)


def test_policy_round_trip(resource: tuple[Any, str]) -> None:
    """A binding set with SetIamPolicy is what GetIamPolicy returns, under a new etag."""
    client, name = resource
    initial = client.get_iam_policy(request={"resource": name}, timeout=10)
    assert initial.etag, "GetIamPolicy must return an etag for read-modify-write"
    assert not _members(initial, ROLE)

    stored = client.set_iam_policy(
        request={"resource": name, "policy": _with_binding(initial, ROLE, MEMBER)}, timeout=10
    )
    assert _members(stored, ROLE) == {MEMBER}
    assert stored.etag and stored.etag != initial.etag

    fetched = client.get_iam_policy(request={"resource": name}, timeout=10)
    assert _members(fetched, ROLE) == {MEMBER}
    assert fetched.etag == stored.etag


def test_stale_etag_is_aborted(resource: tuple[Any, str]) -> None:
    """A SetIamPolicy carrying an etag that no longer matches fails with ABORTED.

    https://cloud.google.com/iam/docs/policies#etag ; without an etag the policy is
    overwritten unconditionally (``Policy.etag``).
    """
    client, name = resource
    first = client.get_iam_policy(request={"resource": name}, timeout=10)
    client.set_iam_policy(
        request={"resource": name, "policy": _with_binding(first, ROLE, MEMBER)}, timeout=10
    )

    other = "user:late@example.com"
    with pytest.raises(Aborted):
        client.set_iam_policy(
            request={"resource": name, "policy": _with_binding(first, ROLE, other)}, timeout=10
        )
    assert _members(client.get_iam_policy(request={"resource": name}, timeout=10), ROLE) == {MEMBER}

    blind = policy_pb2.Policy()
    blind.bindings.add(role=ROLE, members=[other])
    client.set_iam_policy(request={"resource": name, "policy": blind}, timeout=10)
    assert _members(client.get_iam_policy(request={"resource": name}, timeout=10), ROLE) == {other}


def test_missing_resources_are_not_found(publisher: Any, subscriber: Any) -> None:
    """IAM calls on a topic or subscription that does not exist fail with NOT_FOUND."""
    topic = f"projects/{PROJECT}/topics/missing-{uuid.uuid4().hex[:10]}"
    sub = f"projects/{PROJECT}/subscriptions/missing-{uuid.uuid4().hex[:10]}"
    policy = policy_pb2.Policy()
    policy.bindings.add(role=ROLE, members=[MEMBER])
    for client, name in ((publisher, topic), (subscriber, sub)):
        with pytest.raises(NotFound):
            client.get_iam_policy(request={"resource": name}, timeout=10)
        with pytest.raises(NotFound):
            client.set_iam_policy(request={"resource": name, "policy": policy}, timeout=10)
        with pytest.raises(NotFound):
            client.test_iam_permissions(
                request={"resource": name, "permissions": ["pubsub.topics.get"]}, timeout=10
            )


def test_test_iam_permissions_returns_the_valid_subset(
    publisher: Any,
    subscriber: Any,
    local_topic: Callable[..., str],
    local_subscription: Callable[..., str],
) -> None:
    """TestIamPermissions answers with the subset of the asked permissions that apply.

    https://cloud.google.com/pubsub/docs/access-control#permissions
    """
    topic = local_topic()
    sub = local_subscription(topic)
    asked = [
        "pubsub.topics.publish",
        "storage.objects.get",
        "pubsub.subscriptions.consume",
        "pubsub.topics.get",
        "pubsub.topics.notARealPermission",
        "pubsub.subscriptions.get",
    ]
    on_topic = publisher.test_iam_permissions(
        request={"resource": topic, "permissions": asked}, timeout=10
    )
    assert list(on_topic.permissions) == ["pubsub.topics.publish", "pubsub.topics.get"]
    on_sub = subscriber.test_iam_permissions(
        request={"resource": sub, "permissions": asked}, timeout=10
    )
    assert list(on_sub.permissions) == ["pubsub.subscriptions.consume", "pubsub.subscriptions.get"]


def test_recreated_topic_starts_without_the_old_policy(publisher: Any) -> None:
    """DeleteTopic: "a new topic may be created with the same name; this is an entirely new
    topic with none of the old configuration" - its IAM policy included.

    https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1#google.pubsub.v1.Publisher.DeleteTopic
    """
    name = f"projects/{PROJECT}/topics/iam-recreated-{uuid.uuid4().hex[:10]}"
    publisher.create_topic(request={"name": name})
    try:
        policy = publisher.get_iam_policy(request={"resource": name}, timeout=10)
        publisher.set_iam_policy(
            request={"resource": name, "policy": _with_binding(policy, ROLE, MEMBER)}, timeout=10
        )
        publisher.delete_topic(topic=name)
        publisher.create_topic(request={"name": name})
        fresh = publisher.get_iam_policy(request={"resource": name}, timeout=10)
        assert not _members(fresh, ROLE), "the deleted topic's IAM policy survived on the new one"
    finally:
        with contextlib.suppress(NotFound):
            publisher.delete_topic(topic=name)
