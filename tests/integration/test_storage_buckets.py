"""Buckets' location, storage class and project through ``google.cloud.storage``, as Google
keeps them: https://cloud.google.com/storage/docs/json_api/v1/buckets/insert (``location``
defaults to ``US``; ``project`` is required), https://cloud.google.com/storage/docs/locations
(regions, dual-regions, multi-regions) and buckets.list (one project's buckets).
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
from google.api_core.exceptions import BadRequest, NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localcloud import testing
from localcloud.core.projects import project_number

PROJECT = "local-project"
OTHER = "bucket-test-other-project"


def client_of(instance: testing.Instance, project: str = PROJECT) -> storage.Client:
    return storage.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": instance.env["STORAGE_EMULATOR_HOST"]},
    )


@pytest.fixture
def gcs(localcloud: testing.Instance) -> storage.Client:
    return client_of(localcloud)


@pytest.fixture
def make_bucket(
    localcloud: testing.Instance,
) -> Iterator[Callable[..., storage.Bucket]]:
    """Create uniquely named buckets (in ``project``, with ``fields``); delete them after."""
    created: list[storage.Bucket] = []

    def make(project: str = PROJECT, storage_class: str = "", **fields: object) -> storage.Bucket:
        client = client_of(localcloud, project)
        wanted = client.bucket(f"lc-loc-{uuid.uuid4().hex[:12]}")
        if storage_class:
            wanted.storage_class = storage_class
        bucket = client.create_bucket(wanted, **fields)
        created.append(bucket)
        return bucket

    yield make
    for bucket in created:
        with contextlib.suppress(NotFound):
            bucket.delete(force=True)


def raw(instance: testing.Instance, method: str, path: str, body: dict | None = None):
    """A JSON API request without the client (which always sends ``project``)."""
    request = urllib.request.Request(
        instance.env["STORAGE_EMULATOR_HOST"] + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_a_bucket_made_without_a_location_is_in_the_us_multi_region(gcs, make_bucket):
    bucket = make_bucket()
    for seen in (bucket, gcs.get_bucket(bucket.name)):
        assert seen.location == "US"
        assert seen.location_type == "multi-region"
        assert seen.storage_class == "STANDARD"
        assert seen.project_number == int(project_number(PROJECT))
    listed = {b.name: b for b in gcs.list_buckets()}
    assert listed[bucket.name].location == "US"


@pytest.mark.parametrize(
    ("asked", "location", "kind"),
    [
        ("us-east1", "US-EAST1", "region"),
        ("EUROPE-WEST4", "EUROPE-WEST4", "region"),
        ("nam4", "NAM4", "dual-region"),
        ("eu", "EU", "multi-region"),
        ("ASIA", "ASIA", "multi-region"),
    ],
)
def test_a_bucket_keeps_the_location_it_was_made_in(gcs, make_bucket, asked, location, kind):
    """Uppercased as Google answers it, with the location type Google derives."""
    bucket = make_bucket(location=asked)
    assert (bucket.location, bucket.location_type) == (location, kind)
    again = gcs.get_bucket(bucket.name)
    assert (again.location, again.location_type) == (location, kind)


def test_a_configurable_dual_region_is_its_multi_region_with_two_regions(gcs, make_bucket):
    bucket = make_bucket(location="US", data_locations=["us-east1", "us-west1"])
    again = gcs.get_bucket(bucket.name)
    assert (again.location, again.location_type) == ("US", "dual-region")
    assert again.data_locations == ["US-EAST1", "US-WEST1"]
    with pytest.raises(BadRequest, match=r"EUROPE-WEST1.* not a region of the US"):
        make_bucket(location="US", data_locations=["us-east1", "europe-west1"])


def test_a_location_google_does_not_have_is_refused_and_no_bucket_made(gcs):
    for location in ("mars-central1", "us-central", "global", "us-central1-a"):
        name = f"lc-loc-{uuid.uuid4().hex[:12]}"
        with pytest.raises(BadRequest) as refused:
            gcs.create_bucket(name, location=location)
        assert "The specified location constraint is not valid." in refused.value.message
        assert location in refused.value.message
        assert gcs.lookup_bucket(name) is None


def test_the_storage_class_is_kept_checked_and_changeable(gcs, make_bucket):
    bucket = make_bucket(location="us-central1", storage_class="NEARLINE")
    assert gcs.get_bucket(bucket.name).storage_class == "NEARLINE"
    bucket.storage_class = "COLDLINE"
    bucket.patch()
    assert gcs.get_bucket(bucket.name).storage_class == "COLDLINE"
    assert gcs.get_bucket(bucket.name).location == "US-CENTRAL1"
    with pytest.raises(BadRequest, match="storageClass 'WARM'"):
        make_bucket(storage_class="WARM")


def test_a_bucket_belongs_to_the_project_it_was_made_in(gcs, make_bucket, localcloud):
    """buckets.list lists the named project's buckets only; a bucket is read by its name
    from any project, and says which project it is in by number."""
    ours = make_bucket()
    theirs = make_bucket(OTHER, location="us-central1")
    assert theirs.project_number == int(project_number(OTHER)) != ours.project_number
    assert gcs.get_bucket(theirs.name).project_number == theirs.project_number
    mine = {b.name for b in gcs.list_buckets()}
    assert ours.name in mine and theirs.name not in mine
    other = {b.name for b in client_of(localcloud, OTHER).list_buckets()}
    assert theirs.name in other and ours.name not in other
    # A project named by its number finds the same buckets.
    by_number = {b.name for b in client_of(localcloud, project_number(OTHER)).list_buckets()}
    assert by_number == other


def test_insert_and_list_require_a_project(localcloud):
    name = f"lc-loc-{uuid.uuid4().hex[:12]}"
    for method, path, body in (
        ("POST", "/storage/v1/b", {"name": name}),
        ("GET", "/storage/v1/b", None),
    ):
        status, error = raw(localcloud, method, path, body)
        assert status == 400
        assert error["error"]["message"] == "Required parameter: project"
        assert error["error"]["errors"][0]["reason"] == "required"
    assert raw(localcloud, "GET", f"/storage/v1/b/{name}")[0] == 404


def test_a_deleted_buckets_name_made_again_has_the_new_location(gcs):
    name = f"lc-loc-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(name, location="eu").delete()
    try:
        again = gcs.create_bucket(name)
        assert (again.location, gcs.get_bucket(name).location) == ("US", "US")
    finally:
        gcs.bucket(name).delete()


def test_a_bucket_cannot_be_moved_by_a_patch(gcs, make_bucket, localcloud):
    """A bucket's location is set when it is made; a patch naming another one is refused
    rather than answered as if the bucket had moved."""
    bucket = make_bucket(location="us-east1")
    status, error = raw(localcloud, "PATCH", f"/storage/v1/b/{bucket.name}", {"location": "EU"})
    assert status == 400
    assert "location cannot be changed" in error["error"]["message"]
    assert gcs.get_bucket(bucket.name).location == "US-EAST1"


def test_buckets_made_before_locations_were_kept_stay_in_the_region(tmp_path):
    """A data directory from before: its buckets have no side file. They answer what they
    always answered (localcloud's region, its default project) and keep it once adopted,
    even when localcloud starts with another region; new buckets keep their own."""
    data_dir = tmp_path / "data"
    instance = testing.start(data_dir)
    try:
        gcs = client_of(instance)
        gcs.create_bucket("made-before")
        gcs.create_bucket("made-after", location="asia")
        side_files = list((data_dir / "storage").glob(".made-before.*"))
        assert len(side_files) == 1
        instance.stop()
        side_files[0].unlink()  # as a data directory made before this change has it
        instance = instance.restart()
        gcs = client_of(instance)
        before = gcs.get_bucket("made-before")
        assert (before.location, before.location_type) == ("US-CENTRAL1", "region")
        assert before.project_number == int(project_number(PROJECT))
        assert "made-before" in {b.name for b in gcs.list_buckets()}
        assert gcs.get_bucket("made-after").location == "ASIA"
        instance.stop()
        instance = testing.start(
            data_dir, config=instance.config, extra_env={"LOCALCLOUD_REGION": "europe-west1"}
        )
        assert instance.config.region == "europe-west1"
        gcs = client_of(instance)
        assert gcs.get_bucket("made-before").location == "US-CENTRAL1"
        assert gcs.get_bucket("made-after").location == "ASIA"
    finally:
        instance.stop()
