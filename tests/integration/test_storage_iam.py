"""Bucket IAM on the storage port, through ``google.cloud.storage`` with bearer tokens.

Google's rules these tests hold localcloud to:

- the permission each JSON API method needs:
  https://cloud.google.com/storage/docs/access-control/iam-json (replacing an object needs
  ``storage.objects.delete`` as well as ``storage.objects.create``);
- bucket policies: https://cloud.google.com/storage/docs/json_api/v1/buckets/getIamPolicy,
  setIamPolicy, testIamPermissions;
- a new bucket's policy gives its project's owners, editors and viewers the legacy roles:
  https://cloud.google.com/storage/docs/access-control/iam#convenience-values;
- a bad token is 401, a missing permission 403 naming caller and permission
  (https://cloud.google.com/storage/docs/json_api/v1/status-codes).

The local user (no credentials) owns the project; a stranger is a service account with a
token localcloud minted and no grant until a test gives it one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import grpc
import pytest
import requests
from google.api_core.exceptions import BadRequest, Forbidden, NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import resourcemanager_v3, storage
from google.cloud.resourcemanager_v3.services.projects.transports import ProjectsGrpcTransport
from google.oauth2.credentials import Credentials

from localcloud import testing
from localcloud.core.oidc import Issuer

PROJECT = "local-project"
STRANGER = f"stranger-{uuid.uuid4().hex[:6]}@{PROJECT}.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{STRANGER}"


@pytest.fixture(scope="module")
def issuer(localcloud: testing.Instance) -> Issuer:
    return Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)


def endpoint(instance: testing.Instance) -> str:
    return instance.env["STORAGE_EMULATOR_HOST"]


@pytest.fixture(scope="module")
def owner(localcloud: testing.Instance) -> storage.Client:
    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint(localcloud)},
    )


@pytest.fixture(scope="module")
def token(issuer: Issuer) -> str:
    return issuer.mint_access_token(STRANGER)


@pytest.fixture(scope="module")
def stranger(localcloud: testing.Instance, token: str) -> storage.Client:
    return storage.Client(
        project=PROJECT,
        credentials=Credentials(token),
        client_options={"api_endpoint": endpoint(localcloud)},
    )


@pytest.fixture
def bucket(owner: storage.Client) -> Iterator[storage.Bucket]:
    made = owner.create_bucket(f"iam-{uuid.uuid4().hex[:12]}")
    yield made
    for blob in owner.list_blobs(made.name):
        blob.delete()
    made.delete()


def grant(bucket: storage.Bucket, role: str, member: str = MEMBER) -> None:
    policy = bucket.get_iam_policy()
    policy.bindings.append({"role": role, "members": {member}})
    bucket.set_iam_policy(policy)


def test_a_new_buckets_policy_gives_its_projects_owners_editors_and_viewers(bucket) -> None:
    policy = bucket.get_iam_policy()
    owners = {f"projectEditor:{PROJECT}", f"projectOwner:{PROJECT}"}
    assert policy["roles/storage.legacyBucketOwner"] == owners
    assert policy["roles/storage.legacyObjectOwner"] == owners
    assert policy["roles/storage.legacyBucketReader"] == {f"projectViewer:{PROJECT}"}
    assert policy.etag


def test_bucket_policy_round_trip_and_etag(bucket) -> None:
    policy = bucket.get_iam_policy()
    stale = policy.etag
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {MEMBER}})
    stored = bucket.set_iam_policy(policy)
    assert stored["roles/storage.objectViewer"] == {MEMBER}
    assert stored.etag != stale
    assert bucket.get_iam_policy()["roles/storage.objectViewer"] == {MEMBER}
    # Written back with the old etag, the read-modify-write is refused, not merged.
    policy.etag = stale
    with pytest.raises(Exception) as refused:
        bucket.set_iam_policy(policy)
    assert getattr(refused.value, "code", None) == 412


def test_an_unknown_role_is_refused_naming_it(bucket) -> None:
    policy = bucket.get_iam_policy()
    policy.bindings.append({"role": "roles/storage.objectViewr", "members": {MEMBER}})
    with pytest.raises(BadRequest, match=r"roles/storage\.objectViewr"):
        bucket.set_iam_policy(policy)


def test_reading_denied_without_a_role_and_allowed_with_it(bucket, stranger) -> None:
    bucket.blob("a.txt").upload_from_string(b"secret")
    theirs = stranger.bucket(bucket.name)
    with pytest.raises(Forbidden) as denied:
        theirs.blob("a.txt").download_as_bytes()
    message = denied.value.message
    assert f"{STRANGER} does not have storage.objects.get access" in message
    assert f"projects/_/buckets/{bucket.name}/objects/a.txt" in message
    with pytest.raises(Forbidden, match=re.escape("storage.objects.list")):
        list(stranger.list_blobs(bucket.name))

    grant(bucket, "roles/storage.objectViewer")
    assert theirs.blob("a.txt").download_as_bytes() == b"secret"
    assert [b.name for b in stranger.list_blobs(bucket.name)] == ["a.txt"]
    # Reading is not writing.
    with pytest.raises(Forbidden, match=re.escape("storage.objects.create")):
        theirs.blob("b.txt").upload_from_string(b"x")
    with pytest.raises(Forbidden, match=re.escape("storage.objects.delete")):
        theirs.blob("a.txt").delete()


def test_replacing_an_object_needs_delete_as_well_as_create(bucket, stranger) -> None:
    bucket.blob("there.txt").upload_from_string(b"old")
    grant(bucket, "roles/storage.objectCreator")
    theirs = stranger.bucket(bucket.name)
    theirs.blob("new.txt").upload_from_string(b"new")  # a new object: create is enough
    with pytest.raises(Forbidden, match=re.escape("storage.objects.delete")):
        theirs.blob("there.txt").upload_from_string(b"replaced")
    # Resumable uploads are checked when they start (the session URL is the capability).
    with pytest.raises(Forbidden, match=re.escape("storage.objects.delete")):
        theirs.blob("there.txt", chunk_size=256 * 1024).upload_from_string(b"r" * 300_000)
    assert bucket.blob("there.txt").download_as_bytes() == b"old"
    grant(bucket, "roles/storage.objectAdmin")
    theirs.blob("there.txt").upload_from_string(b"replaced")
    assert bucket.blob("there.txt").download_as_bytes() == b"replaced"


def test_copy_and_compose_need_get_on_the_sources(bucket, owner, stranger) -> None:
    other = owner.create_bucket(f"iam-src-{uuid.uuid4().hex[:10]}")
    try:
        other.blob("src").upload_from_string(b"abc")
        grant(bucket, "roles/storage.objectAdmin")
        theirs = stranger.bucket(bucket.name)
        with pytest.raises(Forbidden, match=re.escape("storage.objects.get")):
            stranger.bucket(other.name).copy_blob(stranger.bucket(other.name).blob("src"), theirs)
        grant(other, "roles/storage.objectViewer")
        stranger.bucket(other.name).copy_blob(
            stranger.bucket(other.name).blob("src"), theirs, "copied"
        )
        assert bucket.blob("copied").download_as_bytes() == b"abc"
        theirs.blob("whole").compose([theirs.blob("copied"), theirs.blob("copied")])
        assert bucket.blob("whole").download_as_bytes() == b"abcabc"
    finally:
        other.blob("src").delete()
        other.delete()


def test_bucket_methods_need_bucket_permissions(bucket, stranger, token, localcloud) -> None:
    theirs = stranger.bucket(bucket.name)
    with pytest.raises(
        Forbidden, match=re.escape("storage.buckets.get access to the Google Cloud Storage")
    ):
        theirs.reload()
    with pytest.raises(Forbidden, match=re.escape("storage.buckets.getIamPolicy")):
        theirs.get_iam_policy()
    with pytest.raises(
        Forbidden, match=re.escape("storage.buckets.create access to the Google Cloud project")
    ):
        stranger.create_bucket(f"iam-no-{uuid.uuid4().hex[:10]}")
    with pytest.raises(Forbidden, match=re.escape("storage.buckets.list")):
        list(stranger.list_buckets())
    # testIamPermissions needs nothing and answers truthfully.
    asked = ["storage.objects.get", "storage.objects.create", "storage.buckets.delete"]
    assert theirs.test_iam_permissions(asked) == []
    grant(bucket, "roles/storage.objectViewer")
    assert theirs.test_iam_permissions(asked) == ["storage.objects.get"]
    assert bucket.test_iam_permissions(asked) == asked  # the owner, through projectOwner:
    # The XML API's download path is checked as objects.get.
    bucket.blob("x").upload_from_string(b"x")
    url = f"{endpoint(localcloud)}/{bucket.name}/x"
    assert requests.get(url, headers={"Authorization": "Bearer " + token}, timeout=10).ok
    with pytest.raises(Forbidden, match=re.escape("storage.buckets.delete")):
        theirs.delete()


def test_a_project_grant_reaches_every_bucket_of_the_project(bucket, localcloud) -> None:
    """A grant on the project is inherited by the bucket (and its objects)."""
    projects = resourcemanager_v3.ProjectsClient(
        transport=ProjectsGrpcTransport(
            channel=grpc.insecure_channel(localcloud.config.grpc_address)
        )
    )
    reader = f"reader-{uuid.uuid4().hex[:6]}@{PROJECT}.iam.gserviceaccount.com"
    issuer = Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)
    client = storage.Client(
        project=PROJECT,
        credentials=Credentials(issuer.mint_access_token(reader)),
        client_options={"api_endpoint": endpoint(localcloud)},
    )
    bucket.blob("p").upload_from_string(b"p")
    with pytest.raises(Forbidden):
        client.bucket(bucket.name).blob("p").download_as_bytes()
    resource = f"projects/{PROJECT}"
    policy = projects.get_iam_policy(request={"resource": resource})
    policy.bindings.add(role="roles/storage.objectViewer", members=[f"serviceAccount:{reader}"])
    projects.set_iam_policy(request={"resource": resource, "policy": policy})
    try:
        assert client.bucket(bucket.name).blob("p").download_as_bytes() == b"p"
    finally:
        policy = projects.get_iam_policy(request={"resource": resource})
        for binding in policy.bindings:
            if f"serviceAccount:{reader}" in binding.members:
                binding.members.remove(f"serviceAccount:{reader}")
        projects.set_iam_policy(request={"resource": resource, "policy": policy})


def test_bad_tokens_are_401(bucket, localcloud, issuer) -> None:
    """The client would try to refresh a token on 401, so the requests go bare."""
    url = f"{endpoint(localcloud)}/storage/v1/b/{bucket.name}/o"
    expired = issuer.mint_access_token(STRANGER, lifetime_seconds=-60)
    for bad in ("ya29.not-a-token", expired):
        answer = requests.get(url, headers={"Authorization": f"Bearer {bad}"}, timeout=10)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "invalid authentication credentials" in answer.json()["error"]["message"]


def test_a_deleted_buckets_policy_does_not_outlive_it(owner) -> None:
    name = f"iam-again-{uuid.uuid4().hex[:10]}"
    first = owner.create_bucket(name)
    grant(first, "roles/storage.objectViewer")
    first.delete()
    with pytest.raises(NotFound):
        owner.bucket(name).get_iam_policy()
    second = owner.create_bucket(name)
    try:
        roles = {b["role"] for b in second.get_iam_policy().bindings}
        assert roles and "roles/storage.objectViewer" not in roles
    finally:
        second.delete()
