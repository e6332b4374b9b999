"""A change to IAM holds from the very next call, through the official clients.

localcloud remembers its permission checks' answers (``core/authz.py``: every call is
checked, and reading the policies of a resource and its ancestors each time cost enough to
show in the benchmarks). On Google a change "typically takes effect within 2 minutes"
(https://cloud.google.com/iam/docs/access-change-propagation); locally nothing waits, so a
test (or a deployment) that grants and then calls sees the grant at once. These tests hold
every kind of change to that: a grant and a revocation on a resource and on its project, a
custom role deleted (its bindings stay but grant nothing,
https://cloud.google.com/iam/docs/creating-custom-roles#deleting-custom-role), a topic
deleted and made again (a new topic starts with no policy of its own), and a bucket made,
deleted and made again in another project (its default policy and its parent are then that
project's: https://cloud.google.com/storage/docs/access-control/iam#convenience-values).

The owner is the local user (no credentials); the stranger is a service account calling
with an access token localcloud minted, and holds only what a test grants it. Each test
works in a project of its own, so its grants touch no other test's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import iam_admin_v1, resourcemanager_v3, storage
from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport
from google.cloud.resourcemanager_v3.services.projects.transports import ProjectsGrpcTransport
from google.iam.v1 import policy_pb2
from google.oauth2.credentials import Credentials
from google.pubsub_v1.services.publisher import PublisherClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

from localcloud import testing
from localcloud.core.oidc import Issuer

STRANGER = f"stranger-{uuid.uuid4().hex[:6]}@local-project.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{STRANGER}"
PUBLISH = "pubsub.topics.publish"


def new_project() -> str:
    return f"next-call-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def host(localcloud: testing.Instance) -> str:
    return localcloud.config.grpc_address


@pytest.fixture(scope="module")
def token(localcloud: testing.Instance) -> str:
    issuer = Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)
    return issuer.mint_access_token(STRANGER)


@pytest.fixture(scope="module")
def publisher(host: str) -> Any:
    return PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host)))


@pytest.fixture(scope="module")
def as_stranger(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="module")
def can_publish(publisher: Any, as_stranger: list[tuple[str, str]]) -> Callable[[str], bool]:
    """Whether the stranger's Publish to a topic goes through (twice, so the answer the
    first call left behind is the one the second reads), and TestIamPermissions agrees."""

    def ask(topic: str) -> bool:
        outcomes = []
        for _ in range(2):
            try:
                publisher.publish(topic=topic, messages=[{"data": b"x"}], metadata=as_stranger)
                outcomes.append(True)
            except exceptions.PermissionDenied as exc:
                assert f"Permission '{PUBLISH}' denied on resource '{topic}'" in str(exc)
                outcomes.append(False)
        held = publisher.test_iam_permissions(
            request={"resource": topic, "permissions": [PUBLISH]}, metadata=as_stranger
        )
        assert outcomes == [outcomes[0]] * 2 and outcomes[0] == (PUBLISH in held.permissions)
        return outcomes[0]

    return ask


def _grant(policy: policy_pb2.Policy, role: str, member: str = MEMBER) -> policy_pb2.Policy:
    policy.bindings.add(role=role, members=[member])
    return policy


def _without(policy: policy_pb2.Policy, role: str) -> policy_pb2.Policy:
    kept = policy_pb2.Policy(version=policy.version, etag=policy.etag)
    kept.bindings.extend(b for b in policy.bindings if b.role != role)
    return kept


def test_a_grant_and_a_revocation_on_a_topic_hold_from_the_next_call(
    publisher: Any, can_publish: Callable[[str], bool]
) -> None:
    topic = publisher.create_topic(name=f"projects/{new_project()}/topics/topic").name
    assert not can_publish(topic)
    policy = publisher.get_iam_policy(request={"resource": topic})
    granted = publisher.set_iam_policy(
        request={"resource": topic, "policy": _grant(policy, "roles/pubsub.publisher")}
    )
    assert can_publish(topic)
    publisher.set_iam_policy(
        request={"resource": topic, "policy": _without(granted, "roles/pubsub.publisher")}
    )
    assert not can_publish(topic)


def test_a_grant_and_a_revocation_on_the_project_hold_from_the_next_call(
    host: str, publisher: Any, can_publish: Callable[[str], bool]
) -> None:
    project = new_project()
    topic = publisher.create_topic(name=f"projects/{project}/topics/topic").name
    projects = resourcemanager_v3.ProjectsClient(
        transport=ProjectsGrpcTransport(channel=grpc.insecure_channel(host))
    )
    resource = f"projects/{project}"
    assert not can_publish(topic)
    policy = projects.get_iam_policy(request={"resource": resource})  # the local user owns it
    granted = projects.set_iam_policy(
        request={"resource": resource, "policy": _grant(policy, "roles/pubsub.publisher")}
    )
    assert can_publish(topic)
    projects.set_iam_policy(
        request={"resource": resource, "policy": _without(granted, "roles/pubsub.publisher")}
    )
    assert not can_publish(topic)


def test_a_deleted_custom_role_grants_nothing_from_the_next_call(
    host: str, publisher: Any, can_publish: Callable[[str], bool]
) -> None:
    project = new_project()
    topic = publisher.create_topic(name=f"projects/{project}/topics/topic").name
    iam = iam_admin_v1.IAMClient(transport=IAMGrpcTransport(channel=grpc.insecure_channel(host)))
    role = iam.create_role(
        request={
            "parent": f"projects/{project}",
            "role_id": "publishOnly",
            "role": {"title": "Publish only", "included_permissions": [PUBLISH]},
        }
    )
    policy = publisher.get_iam_policy(request={"resource": topic})
    publisher.set_iam_policy(request={"resource": topic, "policy": _grant(policy, role.name)})
    assert can_publish(topic)
    iam.delete_role(request={"name": role.name, "etag": role.etag})
    assert not can_publish(topic)


def test_a_topic_made_again_starts_without_the_old_ones_grants(
    publisher: Any, can_publish: Callable[[str], bool]
) -> None:
    topic = publisher.create_topic(name=f"projects/{new_project()}/topics/topic").name
    policy = publisher.get_iam_policy(request={"resource": topic})
    publisher.set_iam_policy(
        request={"resource": topic, "policy": _grant(policy, "roles/pubsub.publisher")}
    )
    assert can_publish(topic)
    publisher.delete_topic(topic=topic)
    publisher.create_topic(name=topic)
    assert not can_publish(topic)


def test_a_bucket_inherits_from_the_project_it_is_made_in_from_the_next_call(
    localcloud: testing.Instance, host: str, token: str
) -> None:
    """The stranger may read objects in project A (granted there), not in project B.
    Asked about a bucket before it exists, then about the same name made in A, deleted,
    and made again in B, it gets each time the answer of the bucket as it is."""
    endpoint = {"api_endpoint": localcloud.env["STORAGE_EMULATOR_HOST"]}
    theirs = storage.Client(
        project="local-project", credentials=Credentials(token), client_options=endpoint
    )
    a, b = new_project(), new_project()
    projects = resourcemanager_v3.ProjectsClient(
        transport=ProjectsGrpcTransport(channel=grpc.insecure_channel(host))
    )
    policy = projects.get_iam_policy(request={"resource": f"projects/{a}"})
    projects.set_iam_policy(
        request={
            "resource": f"projects/{a}",
            "policy": _grant(policy, "roles/storage.objectViewer"),
        }
    )
    name = f"next-call-{uuid.uuid4().hex[:12]}"

    def stranger_reads() -> bool:
        try:
            return theirs.bucket(name).blob("o").download_as_bytes() == b"data"
        except exceptions.Forbidden:
            return False

    assert not stranger_reads()  # no such bucket: the default project's, where it has nothing
    for project, readable in ((a, True), (b, False)):
        owner = storage.Client(
            project=project, credentials=AnonymousCredentials(), client_options=endpoint
        )
        bucket = owner.create_bucket(name)
        bucket.blob("o").upload_from_string(b"data")
        assert stranger_reads() is readable
        assert stranger_reads() is readable
        bucket.blob("o").delete()
        bucket.delete()
